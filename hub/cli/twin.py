"""`python -m hub twin show|set|diff`: what each device should be, what it says it is, and the gap.

What a device wrote (its reported values, a refusal's detail) is printed only through
`hub.core.printable` and as `rich.text.Text`, as the other commands do.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hub.control.args import parse_duration, parse_value
from hub.control.twin import (
    build_rollout,
    bulk_rollouts,
    changes,
    parse_percent,
    parse_stages,
    pending_for_ms,
    publish,
    publish_changes,
    read_rollouts,
    read_twins,
    targets,
)
from hub.core.config import load_settings
from hub.core.contract import SENSOR_PATTERN, Scalar, now_ms, require_identifier
from hub.core.errors import ConfigError
from hub.core.models import load_models
from hub.core.printable import printable, printable_json
from hub.core.twin import Twin

_PROPERTY = re.compile(SENSOR_PATTERN)
#: Tables are laid out for this width when the output is not a terminal.
PIPE_WIDTH = 200


def _console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False)


def _text(value: object, style: str = "") -> Text:
    return Text(printable(str(value)), style=style)


def _value(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _influx_option(func: Any) -> Any:
    return click.option("--influx-url", default=None, help="InfluxDB [IOT_INFLUX_URL]")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def twin() -> None:
    """Device twins: what each device should be (desired), what it reports, and the delta.

    The hub's twin service (`hub run`) sends the commands that close each delta when the device
    is online, now or when it comes back; a property the device refuses is left failed.

    \b
    Examples:
      python -m hub twin set th-0001 setpoint=23
      python -m hub twin set --kind thermostat setpoint=20
      python -m hub twin show th-0001 --json
      python -m hub twin diff --site plant-a
    """


@twin.command()
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="the twin as one JSON object")
@_influx_option
def show(device: str, as_json: bool, influx_url: str | None) -> None:
    """A device's twin: desired, reported, delta, in_sync, version and what is under way.

    --json prints device, site, kind, version, desired, reported, delta, in_sync, online,
    pending (per property of the delta: state, since_ms, attempts, command_id, reason),
    waiting (commands queued for the device) and updated_ms.
    """
    require_identifier(device, "device")
    settings = load_settings(influx_url=influx_url)
    found = next((t for t in read_twins(settings) if t.device == device), None)
    if found is None:
        raise ConfigError(f"{device} has no twin yet: set one with `python -m hub twin set {device} key=value`")
    view = found.view()
    if as_json:
        click.echo(printable_json(view))
        return
    out = _console()
    state = Text("in sync", style="green") if found.in_sync else Text("not in sync", style="yellow")
    line = Text(f"{found.device} ({found.kind or '?'}, {found.site or '?'}) version {found.version} · ")
    line.append(state)
    line.append(" · online" if found.online else " · offline")
    out.print(line)
    out.print(_property_table([found], now_ms()))


@twin.command(name="set")
@click.argument("words", nargs=-1, metavar="[DEVICE]... KEY=VALUE...")
@click.option("--kind", default=None, help="every device of this kind (from the fleet)")
@click.option("--site", default=None, help="every device of this site (from the fleet)")
@click.option("--all", "everyone", is_flag=True, help="every device of the fleet")
@click.option(
    "--rollout",
    "rollout",
    default=None,
    metavar="SHARES",
    help="in stages: 10%,50%,100% changes the first 10% of the devices (by name), then 50%, then all",
)
@click.option(
    "--pause",
    "pause",
    default="30s",
    show_default=True,
    help="with --rollout: the longest wait for a stage to be in sync before the next",
)
@click.option(
    "--abort-failures",
    "abort_failures",
    default="5%",
    show_default=True,
    help="with --rollout: stop when more than this share of the devices changed so far failed",
)
@click.option("--json", "as_json", is_flag=True, help="print the changes published (or the rollout), as JSON")
@click.option("--amqp-url", default=None, help="RabbitMQ [IOT_AMQP_URL]")
@_influx_option
def set_desired(
    words: tuple[str, ...],
    kind: str | None,
    site: str | None,
    everyone: bool,
    rollout: str | None,
    pause: str,
    abort_failures: str,
    as_json: bool,
    amqp_url: str | None,
    influx_url: str | None,
) -> None:
    """Set desired properties of devices; the hub converges them, now or when each comes online.

    Each value is checked against the property's type and range in the device models first
    (exit 2, the range named); `key=null` drops a property from desired. Returns once the
    change is safely queued for the hub (`hub.twin`), not when the devices have it: see
    `twin show` / `twin diff`. With --kind/--site/--all the change goes as one-stage rollouts
    of up to 1000 devices each (also listed by `hub rollouts`).

    \b
    Examples:
      python -m hub twin set th-0001 setpoint=23
      python -m hub twin set th-0001 th-0002 setpoint=21 interval_ms=5000
      python -m hub twin set --site plant-a --kind power_meter relay=false
      python -m hub twin set --kind thermostat setpoint=20 --rollout 10%,50%,100% --pause 30s --abort-failures 5%

    A rollout is run by the hub (it goes on after a restart); `python -m hub rollouts` shows it.
    """
    devices = [word for word in words if "=" not in word]
    values: dict[str, Scalar | None] = {}
    for word in words:
        name, sep, raw = word.partition("=")
        if not sep:
            continue
        if not _is_property_name(name):
            raise ConfigError(f"property name {name!r} is not allowed: use a-z, 0-9 and '_', starting with a letter")
        values[name] = None if raw == "null" else parse_value(raw)
    settings = load_settings(amqp_url=amqp_url, influx_url=influx_url)
    models = load_models(settings.models_file)
    chosen = targets(settings, devices, kind, site, everyone)
    if rollout is not None:
        staged = build_rollout(
            models,
            chosen,
            values,
            parse_stages(rollout),
            parse_duration(pause, "--pause"),
            parse_percent(abort_failures, "--abort-failures"),
        )
        publish(settings, [staged], lambda message: message.routing_key)
        if as_json:
            click.echo(printable_json({"rollout": staged.id, "devices": len(staged.devices), "stages": staged.stages}))
        else:
            _console().print(
                _text(f"rollout {staged.id} of {len(staged.devices)} devices started; see `python -m hub rollouts`")
            )
        return
    if not devices and None not in values.values():  # --kind/--site/--all: a few bulk messages
        bulk = bulk_rollouts(models, chosen, values)
        publish(settings, bulk, lambda message: message.routing_key)
        if as_json:
            click.echo(printable_json([{"rollout": r.id, "devices": len(r.devices)} for r in bulk]))
        else:
            shown = " ".join(f"{name}={_value(value)}" for name, value in values.items())
            count = len(chosen)
            _console().print(_text(f"{shown} desired for {count} device{'s' if count != 1 else ''}"))
        return
    messages = changes(models, chosen, values)
    publish_changes(settings, messages)
    if as_json:
        click.echo(printable_json([{"device": m.device, "id": m.id, "desired": m.desired} for m in messages]))
        return
    shown = " ".join(f"{name}={_value(value)}" for name, value in values.items())
    _console().print(_text(f"{shown} desired for {len(messages)} device{'s' if len(messages) != 1 else ''}"))


@twin.command()
@click.option("--site", default=None, help="only devices of this site")
@click.option("--kind", default=None, help="only devices of this kind")
@click.option("--json", "as_json", is_flag=True, help="a JSON array, one twin per device not in sync")
@_influx_option
def diff(site: str | None, kind: str | None, as_json: bool, influx_url: str | None) -> None:
    """The devices not in sync: each property pending, its desired and reported value, its state
    and for how long it has waited.

    --json prints `twin show --json` objects with `pending_ms` (how long the oldest property waited).
    """
    site = None if site is None else require_identifier(site, "site")
    kind = None if kind is None else require_identifier(kind, "kind")
    settings = load_settings(influx_url=influx_url)
    now = now_ms()
    behind = [
        t
        for t in read_twins(settings)
        if not t.in_sync and (site is None or t.site == site) and (kind is None or t.kind == kind)
    ]
    if as_json:
        click.echo(printable_json([{**t.view(), "pending_ms": pending_for_ms(t, now)} for t in behind]))
        return
    out = _console()
    if not behind:
        out.print("every twin is in sync")
        return
    out.print(_property_table(behind, now, only_delta=True))
    failed = sum(bool(t.failed) for t in behind)
    out.print(
        f"{len(behind)} device{'s' if len(behind) != 1 else ''} not in sync"
        + (f", {failed} with a failed property" if failed else "")
    )


def _is_property_name(name: str) -> bool:
    return _PROPERTY.match(name) is not None


def _property_table(twins: Sequence[Twin], now: int, only_delta: bool = False) -> Table:
    table = Table()
    for column in ("device", "property", "desired", "reported", "state", "pending for"):
        table.add_column(column)
    for one in twins:
        delta = one.delta
        names = list(delta) if only_delta else sorted({*one.desired, *one.reported})
        for name in names:
            converging = one.converging.get(name)
            if name not in one.desired:
                state = Text("reported", style="dim")
            elif name not in delta:
                state = Text("in sync", style="green")
            elif converging is not None and converging.state == "failed":
                state = Text(f"failed: {printable(converging.reason)}", style="red")
            elif converging is not None and converging.state == "sent":
                state = Text(f"sent (attempt {converging.attempts})", style="yellow")
            else:
                state = Text("pending" if one.online else "pending (offline)", style="yellow")
            waited = "-"
            if converging is not None and name in delta:
                waited = f"{max(0, now - converging.since_ms) // 1000} s"
            desired = _value(one.desired[name]) if name in one.desired else "-"
            reported = _value(one.reported[name]) if name in one.reported else "-"
            table.add_row(_text(one.device), _text(name), _text(desired), _text(reported), state, waited)
    return table


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="a JSON array, one object per rollout, newest first")
@_influx_option
def rollouts(as_json: bool, influx_url: str | None) -> None:
    """Rollouts (`twin set ... --rollout`) and their progress, newest first.

    --json prints objects with id, state (running, completed, aborted), desired, devices, stages,
    stage (1-based), changed (devices changed so far), in_sync, failed, reason, created_ms and
    updated_ms.
    """
    settings = load_settings(influx_url=influx_url)
    found = read_rollouts(settings)
    if as_json:
        click.echo(printable_json([r.view() for r in found]))
        return
    out = _console()
    if not found:
        out.print("no rollout yet: `python -m hub twin set --kind K key=value --rollout 10%,50%,100%`")
        return
    table = Table()
    for column in ("rollout", "state", "desired", "stage", "changed", "in sync", "failed", "reason"):
        table.add_column(column)
    styles = {"running": "yellow", "completed": "green", "aborted": "red"}
    for r in found:
        desired = " ".join(f"{k}={_value(v)}" for k, v in r.desired.items())
        stage = f"{r.stage + 1} of {len(r.stages)} ({r.stages[r.stage]}%)"
        table.add_row(
            _text(r.id),
            _text(r.state, styles.get(r.state, "")),
            _text(desired),
            stage,
            f"{r.reached} of {len(r.devices)}",
            str(r.in_sync),
            str(r.failed),
            _text(r.reason),
        )
    out.print(table)
