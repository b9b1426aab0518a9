"""The published JSON Schema of the report.

The schema is generated from the report model and shipped as a file (chipaudit/data/report.schema.json)
so that anyone can validate a report without this tool; a test keeps the file equal to the model.
After changing the model, regenerate it with:

    python -m chipaudit.report.schema --write
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from chipaudit.report.model import SCHEMA_VERSION, Report

SCHEMA_FILE = "report.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# This package, by the name it is loaded under (a device process loads it from a neutral stage).
_PACKAGE = __name__.split(".")[0]
SCHEMA_ID = "https://chipaudit.dev/schema/" + SCHEMA_VERSION.replace("chipaudit.", "") + ".json"
# Enough to show what is wrong without flooding a terminal.
MAX_ERRORS_SHOWN = 5


def generate() -> dict[str, Any]:
    schema = {"$schema": JSON_SCHEMA_DIALECT, "$id": SCHEMA_ID, **Report.model_json_schema(by_alias=True)}
    schema["title"] = f"chipaudit report ({SCHEMA_VERSION})"
    return schema


def dumps(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def shipped_path() -> Path:
    return Path(str(resources.files(_PACKAGE).joinpath("data", SCHEMA_FILE)))


def shipped_text() -> str:
    return resources.files(_PACKAGE).joinpath("data", SCHEMA_FILE).read_text(encoding="utf-8")


@cache
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(shipped_text()))


def problems(document: Any) -> list[str]:
    """What makes `document` not a report of the published schema (empty when it is one)."""
    if not isinstance(document, dict):
        return ["the report is not a JSON object"]
    found: list[str] = []
    if document.get("schema") != SCHEMA_VERSION:
        found.append(f"schema is {document.get('schema')!r}, this tool reads {SCHEMA_VERSION!r}")
    for error in sorted(_validator().iter_errors(document), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        found.append(f"{where}: {error.message[:200]}")
    if len(found) > MAX_ERRORS_SHOWN:
        found = [*found[:MAX_ERRORS_SHOWN], f"... and {len(found) - MAX_ERRORS_SHOWN} more"]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chipaudit.report.schema",
                                     description="Print the report schema generated from the model.")
    parser.add_argument("--write", action="store_true", help=f"rewrite the shipped {SCHEMA_FILE}")
    args = parser.parse_args(argv)
    text = dumps(generate())
    if args.write:
        shipped_path().write_text(text, encoding="utf-8")
        print(f"wrote {shipped_path()}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
