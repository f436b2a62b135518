"""`python -m hub`: the command-line shell over the hub library (errors become exit codes in `hub.core.program`)."""

from __future__ import annotations

import importlib

import click

from hub.core.program import run_command

#: Subcommands, each in the module that owns it: (module, attribute).
SUBCOMMANDS = [
    ("hub.stack.cli", "stack"),
    ("hub.cli.control", "send"),
    ("hub.cli.control", "devices"),
    ("hub.cli.control", "tail"),
    ("hub.cli.control", "commands"),
    ("hub.cli.logs", "logs"),
    ("hub.cli.alarms", "alarms"),
    ("hub.cli.readings", "readings"),
    ("hub.cli.twin", "twin"),
    ("hub.cli.twin", "rollouts"),
    ("hub.cli.identity", "provision"),
    ("hub.cli.identity", "revoke"),
    ("hub.cli.identity", "impostors"),
    ("hub.cli.audit", "audit"),
    ("hub.demo.app", "demo"),
    ("hub.cli.run", "run"),
    ("hub.cli.notify", "notify"),
    ("hub.dashboard.cli", "dashboard"),
]


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or help lists it):
    `python -m hub send` does not pay for the stack's, the dashboard's or the hub's imports."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(attribute for _module, attribute in SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module_name, attribute in SUBCOMMANDS:
            if attribute == cmd_name:
                command = getattr(importlib.import_module(module_name), attribute)
                assert isinstance(command, click.Command) and command.name == cmd_name
                return command
        return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """IoT telemetry hub: MQTT and STOMP devices -> RabbitMQ -> InfluxDB, rules and commands.

    Settings come from IOT_* environment variables; flags override them.
    """


def main() -> None:
    run_command(cli)
