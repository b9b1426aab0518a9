"""The command line: one module per command family, each only parsing options, calling the layers
below and mapping what they say to the exit-code contract (common.py). `main` is the one place where
whatever escapes a command becomes one line on stderr and an exit code.
"""

from __future__ import annotations

import sys

import typer

from chipaudit.cli import audit, evidence, fleet, performance, stack, watch
from chipaudit.cli.common import INCONCLUSIVE, app, fail
from chipaudit.errors import InputError, Unavailable, crash_log, one_line
from chipaudit.report.model import EXIT_USAGE

__all__ = ["app", "audit", "evidence", "fleet", "main", "performance", "stack", "watch"]

# typer >= 0.26 vendors its own copy of click; reach its exceptions through a public typer class.
_click = sys.modules[next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException").__module__]
CONTRACT = (0, 1, 2, 3)
# Groups after the commands, in the order a user meets them.
app.add_typer(stack.baseline_app, name="baseline")
app.add_typer(fleet.fleet_app, name="fleet")


def _crashed(e: BaseException) -> int:
    """Anything unforeseen: exit 3 (no verdict), never 1, which would blame the device."""
    what = "I/O error" if isinstance(e, OSError) else f"internal error: {type(e).__name__}"
    fail(f"{what}: {one_line(e) or type(e).__name__} (traceback in {crash_log(e)})")
    return INCONCLUSIVE


def main() -> None:
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="chipaudit", standalone_mode=False)
    except _click.NoArgsIsHelpError as e:
        typer.echo(e.ctx.get_help() if e.ctx else "")
        code = 0
    except _click.ClickException as e:
        fail(f"error: {e.format_message()}")
        code = EXIT_USAGE
    except InputError as e:
        fail(f"error: {e}")
        code = EXIT_USAGE
    except Unavailable as e:
        fail(f"error: {e}")
        code = INCONCLUSIVE
    except (typer.Abort, KeyboardInterrupt):
        fail("aborted")
        code = INCONCLUSIVE
    except Exception as e:
        code = _crashed(e)
    if not isinstance(code, int):
        code = 0
    if code not in CONTRACT:
        fail(f"internal error: exit status {code} is outside the contract (0, 1, 2, 3)")
        code = INCONCLUSIVE
    sys.exit(code)
