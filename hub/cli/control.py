"""`python -m hub send|devices|tail|commands`: actuate devices, see the fleet, watch the exchange.

What a device wrote (an ack's detail and state, a status's fw, a body, a topic word) is printed
only through `hub.core.printable` (its control characters escaped) and, in tables and lines, as
a `rich.text.Text`, so neither the terminal nor rich's markup acts on it.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click
from pika.spec import BasicProperties
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hub.control.args import parse_command_args, parse_duration
from hub.control.fleet_view import DeviceView, StateFilter, read_fleet, select
from hub.control.history import DEFAULT_LIMIT, read_history
from hub.control.send import DEFAULT_TIMEOUT_S, CommandSender, Outcome, overall_exit_code
from hub.control.tail import Tail, as_json_line, describe
from hub.control.twin import read_twins
from hub.core.config import Settings, load_settings
from hub.core.contract import now_ms, require_identifier
from hub.core.errors import ConfigError, HubError
from hub.core.exit_codes import DEVICES_EXIT_CODES_HELP, EXIT_CODES_HELP, TAIL_EXIT_CODES_HELP, ExitCode
from hub.core.models import CommandSpec, DeviceModels, default_models, load_models
from hub.core.printable import printable, printable_json
from hub.core.signals import stop_requested
from hub.core.twin import Twin

#: Tables are laid out for this width when the output is not a terminal (a pipe, a file, CI).
PIPE_WIDTH = 200
_STATUS_STYLE = {
    "ok": "green",
    "error": "red",
    "unsupported": "yellow",
    "expired": "yellow",
    "timeout": "red",
    "unknown_device": "red",
    "queued": "cyan",
    "sent": "yellow",
}


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else PIPE_WIDTH, highlight=False)


def _text(value: object, style: str = "") -> Text:
    """A table cell or a piece of a line from data: no markup read in it, no control character left."""
    return Text(printable(str(value)), style=style)


def _amqp_option(func: Any) -> Any:
    return click.option("--amqp-url", default=None, help="RabbitMQ [IOT_AMQP_URL]")(func)


def _influx_option(func: Any) -> Any:
    return click.option("--influx-url", default=None, help="InfluxDB [IOT_INFLUX_URL]")(func)


def _validated(name: str | None, what: str) -> str | None:
    return None if name is None else require_identifier(name, what)


# --- send --------------------------------------------------------------------------------------


class _SendCommand(click.Command):
    """`send`, whose help lists the commands of the device models (IOT_MODELS_FILE's too)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        models = _help_models()
        with formatter.section("Commands of the device models"):
            formatter.write_dl([(spec.usage(), _command_help(models, spec)) for spec in models.commands().values()])
        super().format_epilog(ctx, formatter)


def _help_models() -> DeviceModels:
    """The models `send` would use; the shipped ones when the settings or the extra file are broken."""
    try:
        return load_models(load_settings().models_file)
    except ConfigError:
        return default_models()


def _command_help(models: DeviceModels, spec: CommandSpec) -> str:
    kinds = models.kinds_with_command(spec.name)
    scope = "every kind" if spec.name in models.common_commands else ", ".join(kinds)
    return f"{scope} — {spec.describe_args() or spec.description}"


@click.command(
    cls=_SendCommand,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.argument("words", nargs=-1, metavar="[DEVICE] COMMAND [KEY=VALUE]...")
@click.option("--site", default=None, help="send to every device of this site (from the fleet view)")
@click.option("--kind", default=None, help="send to every device of this kind (from the fleet view)")
@click.option("--all", "everyone", is_flag=True, help="send to every device of the fleet")
@click.option(
    "--state",
    type=click.Choice(["online", "offline", "all"]),
    default="online",
    show_default=True,
    help="with --site/--kind/--all: which devices of the fleet to address",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="seconds to wait for the acks; the command expires then",
)
@click.option(
    "--ttl",
    "ttl",
    default=None,
    metavar="DURATION",
    help="for a device that is offline: the hub keeps the command and sends it when the device comes back"
    " within DURATION (90s, 15m, 1h, 2d), else records it expired; send returns once it is queued",
)
@click.option("--wait", is_flag=True, help="with --ttl: wait for the outcome, up to the ttl, offline or not")
@click.option("--json", "as_json", is_flag=True, help="print the outcome(s) as JSON")
@_amqp_option
@_influx_option
def send(
    words: tuple[str, ...],
    site: str | None,
    kind: str | None,
    everyone: bool,
    state: StateFilter,
    timeout_s: float,
    ttl: str | None,
    wait: bool,
    as_json: bool,
    amqp_url: str | None,
    influx_url: str | None,
) -> None:
    """Send a command to a device (or many) and wait for its ack.

    Arguments are KEY=VALUE; a value is read as JSON where it is one (21.5, true, 5000)
    and as text otherwise. Prints the outcome, the device's state after the command and
    the round-trip time. The command is published persistently, with an id and an expiry
    (--timeout), and is never executed after it. Arguments of a command the device models
    declare (listed below) are checked first: a bad one is a usage error, and nothing is sent.

    \b
    Examples:
      python -m hub send env-0001 ping
      python -m hub send env-0001 set_interval ms=5000
      python -m hub send thermo-0003 set_setpoint value=23.5 --timeout 5
      python -m hub send --kind power_meter set_relay on=false
      python -m hub send --site plant-a --json ping
      python -m hub send th-0001 set_setpoint value=21 --ttl 1h
    """
    many = everyone or site is not None or kind is not None
    needed = 1 if many else 2
    if len(words) < needed:
        what = "COMMAND" if many else "DEVICE and COMMAND"
        raise click.UsageError(f"give {what} (e.g. `send env-0001 ping` or `send --all ping`)")
    if many and len(words) > 1 and "=" not in words[1]:
        raise click.UsageError(f"with --site/--kind/--all give no DEVICE: {words[0]!r} would be the command")
    device = None if many else require_identifier(words[0], "device")
    command = require_identifier(words[0 if many else 1], "command")
    args = parse_command_args(words[needed:])
    ttl_s = None if ttl is None else parse_duration(ttl, "--ttl")
    if wait and ttl_s is None:
        raise click.UsageError("--wait goes with --ttl (without it, send always waits)")
    settings = load_settings(amqp_url=amqp_url, influx_url=influx_url)
    load_models(settings.models_file).validate_command(command, args)
    if device is not None:
        devices = [device]
    else:
        devices = _select_targets(settings, _validated(site, "site"), _validated(kind, "kind"), state)
    err = _console(stderr=True)
    # Ctrl-C (or SIGTERM) ends the wait for acks between two reads; the connection closes cleanly (exit 130).
    with stop_requested() as stop, CommandSender(settings, origin="cli", stop=stop) as sender:
        if ttl_s is not None:
            outcomes = sender.send_or_queue(devices, command, args, ttl_s, wait, timeout_s)
        elif len(devices) == 1:
            outcomes = sender.send(devices, command, args, timeout_s)
        else:
            answered = 0

            def progress(_outcome: Outcome) -> None:
                nonlocal answered
                answered += 1
                spinner.update(f"{command} to {len(devices)} devices: {answered} answered")

            with err.status(f"{command} to {len(devices)} devices") as spinner:
                outcomes = sender.send(devices, command, args, timeout_s, on_outcome=progress)
    if as_json:
        payload: Any = [o.as_json() for o in outcomes] if many else outcomes[0].as_json()
        click.echo(printable_json(payload))
    elif many:
        _print_summary(outcomes, command)
    else:
        _print_outcome(outcomes[0], args)
    raise SystemExit(int(overall_exit_code(outcomes)))


def _select_targets(settings: Settings, site: str | None, kind: str | None, state: StateFilter) -> list[str]:
    fleet = read_fleet(settings)
    chosen = select(fleet, site=site, kind=kind, state=state)
    if not chosen:
        wanted = " ".join(f"{k}={v}" for k, v in (("site", site), ("kind", kind)) if v) or "any site and kind"
        known = len(fleet)
        raise _NoTargets(
            f"no {'' if state == 'all' else state + ' '}device matches {wanted} among the {known} devices "
            "the hub has seen: see `python -m hub devices`"
        )
    return [view.device for view in chosen]


class _NoTargets(ConfigError):
    exit_code = int(ExitCode.UNKNOWN_DEVICE)


def _print_outcome(outcome: Outcome, args: dict[str, Any]) -> None:
    call = " ".join([outcome.command, *(f"{k}={json.dumps(v)}" for k, v in args.items())])
    who = _text(f" {outcome.device} {call}: ")
    if outcome.status == "ok":
        out = _console()
        out.print(Text.assemble(("✓", "green"), who, ("ok", "green"), f" in {outcome.rtt_ms:.1f} ms"))
        if outcome.state:
            out.print(Text.assemble("  state: ", _state_text(outcome.state)))
        return
    if outcome.status == "queued":
        _console().print(Text.assemble(("…", "cyan"), who, ("queued", "cyan"), ": ", _text(outcome.detail)))
        return
    err = _console(stderr=True)
    if outcome.status == "unknown_device":
        err.print(
            Text.assemble(
                ("✗", "red"),
                who,
                "unknown device: nothing listens for its commands and the fleet has never seen it; "
                "check the name with `python -m hub devices`",
            )
        )
        return
    if outcome.status == "timeout":
        err.print(
            Text.assemble(
                ("✗", "red"),
                who,
                "timeout: ",
                _text(outcome.detail),
                "; see `python -m hub devices`, or retry with a longer --timeout",
            )
        )
        return
    rtt = f" in {outcome.rtt_ms:.1f} ms" if outcome.rtt_ms is not None else ""
    detail = Text.assemble(": ", _text(outcome.detail)) if outcome.detail else ""
    err.print(Text.assemble(("✗", "red"), who, "device answered ", (outcome.status, "yellow"), rtt, detail))
    if outcome.state:
        err.print(Text.assemble("  state: ", _state_text(outcome.state)))


def _state_text(state: dict[str, Any]) -> Text:
    """A device's state after a command (keys and values its own), as `key=json` pairs."""
    return _text(" ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in state.items()))


def _print_summary(outcomes: Sequence[Outcome], command: str) -> None:
    table = Table(title=f"{command} to {len(outcomes)} device{'s' if len(outcomes) != 1 else ''}")
    for column, justify in (("device", "left"), ("status", "left"), ("rtt ms", "right"), ("state / detail", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for o in outcomes:
        rtt = f"{o.rtt_ms:.1f}" if o.rtt_ms is not None else "-"
        info = _state_text(o.state) if o.status == "ok" or not o.detail else _text(o.detail)
        table.add_row(_text(o.device), Text(o.status, style=_STATUS_STYLE[o.status]), rtt, info)
    counts = Counter(o.status for o in outcomes)
    rtts = [o.rtt_ms for o in outcomes if o.rtt_ms is not None]
    line = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    if rtts:
        line += f" · rtt median {statistics.median(rtts):.1f} ms, max {max(rtts):.1f} ms"
    out = _console()
    out.print(table)
    out.print(line)


# --- devices -----------------------------------------------------------------------------------


@click.command(epilog=DEVICES_EXIT_CODES_HELP)
@click.option("--site", default=None, help="only devices of this site")
@click.option("--kind", default=None, help="only devices of this kind")
@click.option("--state", type=click.Choice(["online", "offline", "all"]), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="a JSON array, one object per device, for scripts")
@_influx_option
def devices(site: str | None, kind: str | None, state: StateFilter, as_json: bool, influx_url: str | None) -> None:
    """The fleet: every device the hub has seen, online or not, with its latest readings.

    Read from InfluxDB (what the hub stored: `device_status` and each kind's readings).
    --json prints objects with device, kind, site, protocol (mqtt|stomp), online (bool),
    last_seen (epoch ms), state, reason, interval_ms, fw, readings, readings_at, stale
    (online by the hub's last word, but silent for long: is the hub running?) and twin
    (null without desired properties, else in_sync, pending, failed, version).

    \b
    Examples:
      python -m hub devices
      python -m hub devices --site plant-a --state offline
      python -m hub devices --kind thermostat --json | jq '.[].device'
    """
    settings = load_settings(influx_url=influx_url)
    models = load_models(settings.models_file)
    fleet = read_fleet(settings)
    chosen = select(fleet, site=_validated(site, "site"), kind=_validated(kind, "kind"), state=state)
    twins = _twins(settings)
    if as_json:
        click.echo(printable_json([{**view.as_json(), "twin": twin_sync(twins.get(view.device))} for view in chosen]))
        return
    out = _console()
    if not fleet:
        out.print(
            "no device has reported yet: start the hub (`python -m hub run`) and devices (`python -m devices.sim`)"
        )
        return
    out.print(_fleet_table(chosen, now_ms(), models, twins))
    online = sum(view.online and not view.stale for view in chosen)
    stale = sum(view.stale for view in chosen)
    shown = f"{len(chosen)} of {len(fleet)}" if len(chosen) != len(fleet) else str(len(fleet))
    line = f"{shown} devices: [green]{online} online[/], [red]{len(chosen) - online - stale} offline[/]"
    out.print(line + (f", [yellow]{stale} stale[/] (silent, though online by the hub's last word)" if stale else ""))


def _ago(at_ms: int, now: int) -> str:
    seconds = max(0, (now - at_ms) // 1000)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return datetime.fromtimestamp(at_ms / 1000).strftime("%Y-%m-%d %H:%M")


def _reading_text(name: str, value: float | bool, unit: str) -> str:
    if isinstance(value, bool):
        return f"{name}={'on' if value else 'off'}"
    return f"{name}={value:g}{unit}"


def _twins(settings: Settings) -> dict[str, Twin]:
    """Each device's twin; none when they cannot be read (the fleet is shown without the column's values)."""
    try:
        return {twin.device: twin for twin in read_twins(settings)}
    except HubError:
        return {}


def twin_sync(twin: Twin | None) -> dict[str, Any] | None:
    """A device's twin sync as `devices --json` shows it: in_sync, and how many properties are pending or failed."""
    if twin is None or not twin.desired:
        return None
    return {"in_sync": twin.in_sync, "pending": len(twin.delta), "failed": len(twin.failed), "version": twin.version}


def _sync_text(twin: Twin | None) -> Text:
    sync = twin_sync(twin)
    if sync is None:
        return Text("-", style="dim")
    if sync["in_sync"]:
        return Text("in sync", style="green")
    if sync["failed"]:
        return Text(f"{sync['failed']} failed", style="red")
    return Text(f"{sync['pending']} pending", style="yellow")


def _fleet_table(
    views: Sequence[DeviceView], now: int, models: DeviceModels, twins: dict[str, Twin] | None = None
) -> Table:
    twins = twins or {}
    table = Table()
    for column in ("device", "kind", "site", "protocol", "state", "last seen", "twin", "latest readings"):
        table.add_column(column, overflow="fold" if column == "latest readings" else "ellipsis")
    for view in views:
        if view.stale:
            state = Text("online?", style="yellow")
            state.append(" (silent; is the hub running?)", style="dim")
        else:
            state = Text(view.state, style="green" if view.online else "red")
        if not view.online and view.reason:
            state.append(_text(f" ({view.reason})", style="dim"))
        readings = " ".join(
            _reading_text(name, value, models.unit(name, view.kind)) for name, value in view.readings.items()
        )
        cells = (view.device, view.kind, view.site, view.protocol)
        table.add_row(
            *map(_text, cells), state, _ago(view.last_seen, now), _sync_text(twins.get(view.device)), _text(readings)
        )
    return table


# --- commands --------------------------------------------------------------------------------


@click.command("commands", epilog=DEVICES_EXIT_CODES_HELP)
@click.option("--device", default=None, help="only the commands of this device")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True, help="how many")
@click.option("--since", "since_s", type=click.IntRange(min=1), default=86_400, show_default=True, help="seconds back")
@click.option("--json", "as_json", is_flag=True, help="a JSON array, one object per command, newest first")
@_influx_option
def commands(device: str | None, limit: int, since_s: int, as_json: bool, influx_url: str | None) -> None:
    """Recent commands and their outcomes, from what the hub recorded (`commands` in InfluxDB).

    One row per command: when it was sent (or queued), by whom (cli, rule or twin), its state
    (queued while it waits for an offline device, sent while it waits for its ack, then ok,
    error, unsupported, expired or timeout) and the round trip between the command's and the
    ack's own times.

    \b
    Examples:
      python -m hub commands
      python -m hub commands --device th-0001 --limit 5
      python -m hub commands --json | jq '.[] | select(.status != "ok")'
    """
    settings = load_settings(influx_url=influx_url)
    history = read_history(settings, limit, _validated(device, "device"), since_s)
    if as_json:
        click.echo(printable_json([record.as_json() for record in history]))
        return
    out = _console()
    if not history:
        out.print("no command recorded in that time: send one with `python -m hub send DEVICE ping`")
        return
    table = Table(title=f"the last {len(history)} commands")
    for column in ("sent", "device", "command", "origin", "outcome", "rtt ms", "detail"):
        table.add_column(column, justify="right" if column == "rtt ms" else "left")
    now = now_ms()
    for record in history:
        rtt = f"{record.rtt_ms:.1f}" if record.rtt_ms is not None else "-"
        sent = _ago(record.sent_at, now) if record.sent_at is not None else "?"
        style = _STATUS_STYLE.get(record.status, "yellow")
        cells = (record.device, record.command, record.origin)
        table.add_row(sent, *map(_text, cells), _text(record.status, style), rtt, _text(record.detail))
    out.print(table)


# --- tail --------------------------------------------------------------------------------------


@click.command(epilog=TAIL_EXIT_CODES_HELP)
@click.argument("patterns", nargs=-1, metavar="[PATTERN]...")
@click.option("--count", "max_count", type=click.IntRange(min=1), default=None, help="stop after N messages")
@click.option("--for", "seconds", type=click.FloatRange(min=0), default=None, help="stop after this many seconds")
@click.option("--json", "as_json", is_flag=True, help="one raw JSON object per message")
@_amqp_option
def tail(
    patterns: tuple[str, ...], max_count: int | None, seconds: float | None, as_json: bool, amqp_url: str | None
) -> None:
    """Watch what crosses exchange `iot`, live: telemetry, status, commands, acks, alerts and alarms.

    PATTERN is an AMQP routing-key pattern (default `#`, everything): `*` matches one word,
    `#` any number. Keys are telemetry.<site>.<kind>.<device>, status.<device>,
    commands.<device>, acks.<device>, alerts.<severity>.<site>.<device> and
    logs.<device>.<level> (`hub logs` shows these better) and
    alarms.<severity>.<site>.<kind>.<device>. Colours say the type; `invalid` marks a body that
    breaks the contract. Ctrl-C stops it (exit 0).

    \b
    Examples:
      python -m hub tail
      python -m hub tail 'alerts.critical.#'
      python -m hub tail 'telemetry.plant-a.#' 'status.*'
      python -m hub tail 'commands.*' 'acks.*' --count 10 --json
    """
    settings = load_settings(amqp_url=amqp_url)
    models = load_models(settings.models_file)
    out = Console(file=sys.stdout, highlight=False, soft_wrap=True, markup=False)
    err = _console(stderr=True)

    def show(routing_key: str, body: bytes, props: BasicProperties) -> None:
        received = now_ms()
        if as_json:
            out.file.write(as_json_line(routing_key, body, props.app_id, received) + "\n")
        else:
            line = describe(routing_key, body, props.app_id, models)
            clock = datetime.fromtimestamp(received / 1000).strftime("%H:%M:%S.%f")[:-3]
            text = Text(f"{clock} ", style="dim")
            text.append(printable(routing_key), style=f"bold {line.style}")
            text.append("  ")
            text.append(line.text, style=line.style)
            out.print(text)
        out.file.flush()

    # Ctrl-C (or SIGTERM) ends the loop between two reads and the connection closes cleanly (exit 0).
    with stop_requested() as stop, Tail(settings, patterns) as tailer:
        started = time.monotonic()
        if not as_json:
            err.print(f"[dim]tailing {' '.join(tailer.patterns)} on exchange iot; Ctrl-C stops[/]")
        tailer.follow(show, max_count=max_count, seconds=seconds, stop=stop)
        if not as_json:
            err.print(f"[dim]{tailer.count} messages in {time.monotonic() - started:.1f} s[/]")
