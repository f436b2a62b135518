"""Run a click command as a program: the one place errors become exit codes.

Every `HubError` becomes one line on stderr and its class's exit code; Ctrl-C (and SIGTERM,
where the program turns it into KeyboardInterrupt) ends with `ExitCode.INTERRUPTED`. No tracebacks
for users. Ctrl-C raises KeyboardInterrupt even in a program started with SIGINT ignored (see
`hub.core.signals`); a command that must stop more gently installs its own handler on top.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

import click

from hub.core.errors import HubError
from hub.core.exit_codes import ExitCode
from hub.core.signals import raise_interrupt


def run_command(command: click.Command) -> NoReturn:
    # Not left to Python: it makes SIGINT a KeyboardInterrupt only where SIGINT was not ignored at start.
    signal.signal(signal.SIGINT, raise_interrupt)
    try:
        returned = command.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(ExitCode.INTERRUPTED)
    # click returns the code of a `ctx.exit(code)` instead of raising when not standalone.
    sys.exit(returned if isinstance(returned, int) else 0)
