"""`python -m hub logs`: what devices logged, stored or live (`-f`).

Every word a device wrote (message, field names and values, even its id) reaches the terminal
only through `hub.core.printable` and as a `rich.text.Text`: control characters escaped, no
markup read.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from hub.control.logs import (
    DEFAULT_LIMIT,
    DEFAULT_SINCE,
    LogEntry,
    LogFollower,
    levels_from,
    parse_since,
    read_logs,
    site_devices,
)
from hub.core.config import load_settings
from hub.core.contract import LOG_LEVELS, require_identifier
from hub.core.errors import InvalidMessage
from hub.core.exit_codes import LOGS_EXIT_CODES_HELP
from hub.core.printable import printable, printable_json
from hub.core.signals import stop_requested

LEVEL_STYLE = {"debug": "dim", "info": "blue", "warning": "yellow", "error": "red", "critical": "bold red"}
#: Tables and lines are laid out for this width when the output is not a terminal.
PIPE_WIDTH = 200


def _clock(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return printable_json(value)


def entry_text(entry: LogEntry) -> Text:
    """One line: time, device, level, message, fields; whatever the device wrote escaped."""
    style = LEVEL_STYLE.get(entry.level, "")
    text = Text(f"{_clock(entry.time)} ", style="dim")
    text.append(printable(entry.device), style="bold")
    text.append(" ")
    text.append(f"{printable(entry.level):<8}", style=style)
    if entry.source != "device":
        text.append(f"[{printable(entry.source)}] ", style="magenta")
    text.append(printable(entry.message), style=style if entry.level in ("error", "critical") else "")
    for name, value in entry.fields.items():
        text.append(f" {printable(str(name))}={printable(_value(value))}", style="dim")
    return text


@click.command("logs", epilog=LOGS_EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", default=None, help="only this device's lines")
@click.option("--site", default=None, help="only the lines of this site's devices (as the fleet view places them)")
@click.option(
    "--level",
    type=click.Choice(LOG_LEVELS),
    default="debug",
    show_default=True,
    help="this level and every one above it (warning: warning, error, critical)",
)
@click.option("--since", "since", default=None, help=f"how far back, e.g. 90s, 15m, 1h, 2d [default: {DEFAULT_SINCE}]")
@click.option(
    "--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True, help="newest lines shown"
)
@click.option("-f", "--follow", is_flag=True, help="follow new lines live (stored ones first only with --since)")
@click.option(
    "--for", "seconds", type=click.FloatRange(min=0), default=None, help="with -f: stop after this many seconds"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--amqp-url", default=None, help="RabbitMQ [IOT_AMQP_URL]")
@click.option("--influx-url", default=None, help="InfluxDB [IOT_INFLUX_URL]")
def logs(
    device: str | None,
    site: str | None,
    level: str,
    since: str | None,
    limit: int,
    follow: bool,
    seconds: float | None,
    as_json: bool,
    amqp_url: str | None,
    influx_url: str | None,
) -> None:
    """What devices logged (`logs/<device>/<level>`), oldest first, or live with -f.

    Stored lines are read back from the outputs (`device_logs` in InfluxDB): the newest --limit
    of the last --since (default 1h). With -f, new lines are shown as they arrive, through a
    temporary queue bound to `logs.<device or *>.<level>` for each level asked; the stored
    lines come first only when --since is given. --site takes the devices the fleet view
    places at that site when the command starts. Lines marked [hub] are the hub's about a
    device (how many lines its rate limit dropped). --json prints objects with time (epoch ms),
    device, level, message, fields and source (device or hub), one per line.

    \b
    Examples:
      python -m hub logs
      python -m hub logs --device env-0001 --since 1d
      python -m hub logs -f --level warning
      python -m hub logs --site plant-a --level error --json | jq .message
    """
    if device is not None:
        require_identifier(device, "device")
    levels = levels_from(level)
    since_s = parse_since(since if since is not None else DEFAULT_SINCE)
    settings = load_settings(amqp_url=amqp_url, influx_url=influx_url)
    devices = [device] if device is not None else None
    if site is not None:
        at_site = site_devices(settings, site)
        devices = [d for d in at_site if d == device] if device is not None else at_site
    out = Console(file=sys.stdout, highlight=False, soft_wrap=True, markup=False)
    err = Console(file=sys.stderr, highlight=False, width=None if sys.stderr.isatty() else PIPE_WIDTH)
    only = None if level == LOG_LEVELS[0] else levels

    def show(entry: LogEntry) -> None:
        if as_json:
            out.file.write(printable_json(entry.as_json()) + "\n")
        else:
            out.print(entry_text(entry))
        out.file.flush()

    def show_invalid(routing_key: str, body: bytes, exc: InvalidMessage) -> None:
        if not as_json:
            preview = body[:160].decode("utf-8", errors="replace")
            err.print(Text(printable(f"invalid ({exc.reason}) on {routing_key}: {preview}"), style="bold red"))

    if not follow:
        entries = read_logs(settings, since_s, devices, only, limit)
        for entry in entries:
            show(entry)
        if not entries and not as_json:
            err.print("no log line in that time: devices publish them to logs/<device>/<level>")
        return
    # Ctrl-C (or SIGTERM) ends the loop between two reads, and the queue goes with the connection (exit 0).
    with stop_requested() as stop, LogFollower(settings, device, levels, devices) as follower:
        # Bound before the store is read: a line stored meanwhile is shown once (`seen`), none is missed.
        if since is not None:
            for entry in read_logs(settings, since_s, devices, only, limit):
                follower.seen.add(entry.key)
                show(entry)
        started = time.monotonic()
        if not as_json:
            who = device or (f"site {site}" if site else "every device")
            err.print(f"following {', '.join(levels)} lines of {printable(who)}; Ctrl-C stops", style="dim")
        shown = follower.follow(show, show_invalid, seconds=seconds, stop=stop)
        if not as_json:
            err.print(f"{shown} lines in {time.monotonic() - started:.1f} s", style="dim")
