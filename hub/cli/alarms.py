"""`python -m hub alarms`: the alarms (active, cleared, all), and `alarms ack` to acknowledge them."""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hub.control.alarms import DEFAULT_SINCE_S, AlarmFilter, acks_for, read_alarms, send_acks
from hub.core.alarms import SEVERITY_RANK
from hub.core.config import load_settings
from hub.core.contract import now_ms
from hub.core.exit_codes import ALARMS_EXIT_CODES_HELP
from hub.core.printable import printable, printable_json

#: Tables are laid out for this width when the output is not a terminal.
PIPE_WIDTH = 200
_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _text(value: object, style: str = "") -> Text:
    return Text(printable(str(value)), style=style)


def _when(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group("alarms", invoke_without_command=True, epilog=ALARMS_EXIT_CODES_HELP)
@click.option(
    "--state",
    type=click.Choice(["active", "cleared", "all"]),
    default="active",
    show_default=True,
    help="which alarms",
)
@click.option("--severity", type=click.Choice(list(SEVERITY_RANK)), default=None, help="only this severity")
@click.option("--device", default=None, help="only this device's alarms")
@click.option("--site", default=None, help="only this site's alarms")
@click.option(
    "--since", "since_s", type=click.IntRange(min=1), default=DEFAULT_SINCE_S, show_default=True,
    help="seconds back for cleared alarms (every active one is listed)",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="a JSON array, one object per alarm")
@click.option("--influx-url", default=None, help="InfluxDB [IOT_INFLUX_URL]")
@click.pass_context
def alarms(
    ctx: click.Context,
    state: str,
    severity: str | None,
    device: str | None,
    site: str | None,
    since_s: int,
    as_json: bool,
    influx_url: str | None,
) -> None:
    """The alarms the rules raised: one per alarm type and device, active (acked or not) until
    its condition has been false for the rule's `clear_after`, then cleared.

    Each has its id (`<type>:<device>:<raised time>`), type, the rule that last tripped it, its
    device, severity, state, whether it is acked, its trips (count), when it was raised and
    cleared, and the last value that tripped it.

    \b
    Examples:
      python -m hub alarms
      python -m hub alarms --state all --severity critical --site plant-a
      python -m hub alarms --json | jq '.[] | select(.acked | not) | .id'
      python -m hub alarms ack 'co2-high:aq-0001:1765150000000' --note 'window opened'
    """
    ctx.obj = influx_url
    if ctx.invoked_subcommand is not None:
        return
    chosen = AlarmFilter(state, severity, device, site)  # type: ignore[arg-type]
    found = chosen.select(read_alarms(load_settings(influx_url=influx_url), since_s))
    if as_json:
        click.echo(printable_json([alarm.as_json() for alarm in found]))
        return
    out = Console(file=sys.stdout, width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False)
    if not found:
        out.print(f"no {'' if state == 'all' else state + ' '}alarm")
        return
    table = Table(title=f"{len(found)} alarm{'s' if len(found) != 1 else ''} ({state})")
    for column in ("id", "type", "rule", "device", "severity", "state", "acked", "count", "raised", "cleared", "last"):
        table.add_column(column, justify="right" if column in ("count", "last") else "left")
    for alarm in found:
        acked = f"yes ({alarm.acked_by})" if alarm.acked else "no"
        last = "-" if alarm.value is None else f"{alarm.value:g}"
        table.add_row(
            *map(_text, (alarm.id, alarm.type, alarm.rule, alarm.device)),
            _text(alarm.severity, _SEVERITY_STYLE.get(alarm.severity, "")),
            _text(alarm.state, "red" if alarm.active else "green"),
            _text(acked),
            str(alarm.count),
            _when(alarm.raised_at),
            _when(alarm.cleared_at),
            _text(last),
        )
    out.print(table)


@alarms.command("ack", epilog=ALARMS_EXIT_CODES_HELP)
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--note", default="", help="why, or what is being done (recorded with the ack)")
@click.option("--by", default=None, help="who acknowledges [default: the OS user]")
@click.option("--amqp-url", default=None, help="RabbitMQ [IOT_AMQP_URL]")
@click.pass_obj
def ack(influx_url: str | None, ids: tuple[str, ...], note: str, by: str | None, amqp_url: str | None) -> None:
    """Acknowledge active alarms: "seen, working on it". Recorded with who (--by) and the note,
    and published as the alarm's `acked` transition, once however often it is sent.

    An id the hub has not recorded, or of a cleared alarm, is an error (exit 2) and nothing is sent.
    """
    settings = load_settings(influx_url=influx_url, amqp_url=amqp_url)
    acks = acks_for(read_alarms(settings), ids, by or getpass.getuser(), note, now_ms())
    send_acks(settings, acks)
    for sent in acks:
        click.echo(f"acknowledged {printable(sent.alarm_id)} (by {printable(sent.by)})")
