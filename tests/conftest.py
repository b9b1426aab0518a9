from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).parent
PLUGINS = TESTS / "plugins"


def cli_env(extra: dict[str, str] | None = None, plugins: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    if plugins:
        env["CHIPAUDIT_CHECK_MODULES"] = "fake_checks"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def chipaudit_argv(*args: str) -> list[str]:
    """The console script pip installed beside this interpreter where there is one: the installed entry
    point, without a version manager's shim on PATH (pyenv's bash wrapper costs 0.3 s a call)."""
    beside = Path(sys.executable).parent / "chipaudit"
    exe = str(beside) if beside.is_file() else shutil.which("chipaudit")
    return [exe, *args] if exe else [sys.executable, "-c", "from chipaudit.cli import main; main()", *args]


def chipaudit(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(chipaudit_argv(*args), capture_output=True, text=True, env=env or cli_env(),
                          timeout=timeout, cwd=cwd)


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every run records itself in a history database in the user's data folder: keep tests' runs out
    of the real one (this process and every CLI it starts)."""
    path = tmp_path_factory.mktemp("xdg-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(path))
    return path


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Registers the fake checks in this process and in any worker or CLI it starts."""
    env = cli_env(plugins=True)
    monkeypatch.setenv("CHIPAUDIT_CHECK_MODULES", env["CHIPAUDIT_CHECK_MODULES"])
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    monkeypatch.syspath_prepend(str(PLUGINS))
    return env
