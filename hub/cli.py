"""`python -m hub`: the command-line shell over the hub library.

Every `HubError` becomes one line on stderr and its exit code; no tracebacks for users.
"""

from __future__ import annotations

import importlib
import sys

import click

from hub.errors import HubError

#: Subcommands, each in the module that owns it: (module, attribute).
SUBCOMMANDS = [
    ("hub.stack.cli", "stack"),
    ("hub.control.cli", "send"),
    ("hub.control.cli", "devices"),
    ("hub.control.cli", "tail"),
    ("hub.demo", "demo"),
    ("hub.run", "run"),
    ("hub.dashboard.cli", "dashboard"),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """IoT telemetry hub: MQTT and STOMP devices -> RabbitMQ -> InfluxDB, rules and commands.

    Settings come from IOT_* environment variables; flags override them.
    """


for module_name, attribute in SUBCOMMANDS:
    cli.add_command(getattr(importlib.import_module(module_name), attribute))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HubError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
