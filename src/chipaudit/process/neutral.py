"""Device processes that do not carry the tool's name.

A device stack that knows what an audit looks like reads the process it runs in: its command line,
the names of its loaded modules and their files, the files it has open. A worker started as
`python -m chipaudit.runner.worker` says "audit" in every one of them. So every device process runs
from a stage: a copy of this package made once per audit under a neutral package name, in a
neutral temporary folder, started as `PYTHON FOLDER/main.py` (the interpreter's own path as its
argv[0], as a virtual environment or pyenv starts a user's script). The process is told which module
to run on its first line of input (process/child.py), never on its command line.

The copy is the package's own files with the import statements renamed (`from chipaudit.x import y`
becomes `from NAME.x import y`, `import chipaudit` becomes `import NAME as chipaudit`); nothing else
in the text changes, so data formats named after the tool (report and baseline schemas) stay what
they are. It is compiled once, so that each process
imports it as fast as the installed package.

Cannot hide: the layout of the modules under the neutral name (a stack that knows the tool's
sub-package names can still match them), and site check modules (CHIPAUDIT_CHECK_MODULES), which
import the tool by its name: where one is named, the tool's name is among the loaded modules (`alias`).
"""

from __future__ import annotations

import atexit
import compileall
import contextlib
import importlib
import importlib.abc
import importlib.util
import re
import secrets
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

TOOL = "chipaudit"
# Package names that real training and serving jobs use, one drawn per audit: a stack that refused
# to misbehave under every one of them would be quiet in production too.
NAMES = ("model", "trainer", "serving", "inference", "engine", "pipeline", "workload", "runtime", "app", "jobs")
SCRIPT = "main.py"
_FROM = re.compile(rf"^(\s*)from(\s+){TOOL}(?=[\s.])", re.MULTILINE)
_IMPORT = re.compile(rf"^(\s*)import(\s+){TOOL}\s*$", re.MULTILINE)  # the code goes on naming it `{TOOL}`
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


@dataclass(frozen=True)
class Stage:
    folder: Path
    package: str

    @property
    def script(self) -> Path:
        return self.folder / SCRIPT

    def command(self) -> list[str]:
        """A device process's command line: the interpreter and the stage's script, as a user's job."""
        return [sys.executable, str(self.script)]

    def module(self, name: str) -> str:
        """`name` (a module of this package, by either name) as the stage names it."""
        head, _, tail = name.partition(".")
        return f"{self.package}.{tail}" if head in (TOOL, root()) and tail else name


def root() -> str:
    """The name this package is loaded under: the tool's own, or a stage's."""
    return __name__.split(".")[0]


def rewrite(text: str, package: str) -> str:
    """A module's text with its imports of this package renamed to `package`."""
    return _IMPORT.sub(rf"\1import\2{package} as {TOOL}", _FROM.sub(rf"\1from\2{package}", text))


_lock = threading.Lock()


@cache
def _made() -> Stage:
    """Copy and compile this package under a neutral name (once per process)."""
    source = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    stage = Stage(folder, secrets.choice(NAMES))
    target = folder / stage.package
    shutil.copytree(source, target, ignore=_SKIP)
    for path in target.rglob("*.py"):
        path.write_text(rewrite(path.read_text(encoding="utf-8"), stage.package), encoding="utf-8")
    stage.script.write_text(f"from {stage.package}.process.launch import main\n\nmain()\n", encoding="utf-8")
    with contextlib.redirect_stdout(None):
        compileall.compile_dir(str(target), quiet=2, workers=1)
    return stage


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`chipaudit[.x]` as the stage's own modules, the same objects: a site check module imports the
    tool by its name, and its checks must be this package's classes (a NotApplicable it raises must
    be the one the worker catches)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name == TOOL or name.startswith(TOOL + "."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(root() + spec.name[len(TOOL):])

    def exec_module(self, module: ModuleType) -> None:
        pass


def alias() -> None:
    """In a process that runs from a stage, let `import chipaudit...` give the stage's modules (once)."""
    if root() != TOOL and not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())


def prepare() -> None:
    """Start making this process's stage in the background (seconds of compiling on a small host),
    so that the first device process does not wait for all of it."""
    if root() == TOOL:
        threading.Thread(target=stage, name="stage", daemon=True).start()


def stage() -> Stage:
    """The stage device processes start from: this process's own when it runs from one (a worker
    starting a behaviour workload), else a new copy for this process's lifetime."""
    if root() != TOOL:
        return Stage(Path(__file__).resolve().parents[2], root())
    with _lock:
        return _made()
