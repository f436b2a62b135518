"""`python -m hub`: the command-line shell over the hub library (errors handled by `hub.shell`)."""

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
    ("hub.cli.identity", "provision"),
    ("hub.cli.identity", "revoke"),
    ("hub.cli.identity", "impostors"),
    ("hub.demo.app", "demo"),
    ("hub.cli.run", "run"),
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
    run_command(cli)
