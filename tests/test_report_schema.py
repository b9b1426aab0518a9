"""The published JSON Schema: shipped, equal to the model, printed by `chipaudit schema`, and used."""

from __future__ import annotations

import json

from conftest import chipaudit
from evidence_support import synthetic_report

from chipaudit.report import schema
from chipaudit.report.model import SCHEMA_VERSION


def test_shipped_schema_equals_the_model() -> None:
    assert schema.shipped_text() == schema.dumps(schema.generate()), (
        "the report model changed: regenerate the schema with  python -m chipaudit.report.schema --write")


def test_schema_command_prints_the_shipped_file() -> None:
    p = chipaudit("schema")
    assert p.returncode == 0
    assert p.stdout == schema.shipped_text()
    document = json.loads(p.stdout)
    assert document["$schema"] == schema.JSON_SCHEMA_DIALECT and SCHEMA_VERSION in document["title"]


def test_reports_validate_and_bad_ones_are_named() -> None:
    good = json.loads(synthetic_report(failing=True).to_json())
    assert good["schema"] == SCHEMA_VERSION
    assert schema.problems(good) == []
    bad = dict(good, verdict="maybe", surprise=1, schema="chipaudit.report/0")
    bad["checks"] = [dict(good["checks"][0], status="fine")]
    found = schema.problems(bad)
    assert any("chipaudit.report/0" in p for p in found)
    assert any(p.startswith("verdict:") for p in found)
    assert any(p.startswith("checks/0/status:") for p in found)
    assert any("surprise" in p for p in found)
    assert schema.problems([]) == ["the report is not a JSON object"]
