"""`python -m hub readings DEVICE`: a device's readings over a past range, at the resolution that fits it."""

from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table

from hub.cli.control import _console, _influx_option, _text
from hub.control.readings import DEFAULT_POINTS, read_readings
from hub.core.config import load_settings
from hub.core.contract import require_identifier
from hub.core.exit_codes import DEVICES_EXIT_CODES_HELP
from hub.core.printable import printable_json
from hub.core.retention import BadDuration, parse_span

RESOLUTION_TEXT = {"raw": "the raw readings", "1m": "the 1-minute roll-ups", "1h": "the 1-hour roll-ups"}


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


@click.command(epilog=DEVICES_EXIT_CODES_HELP)
@click.argument("device")
@click.option("--since", "since", default="6h", show_default=True, help="how far back: 90m, 6h, 7d, 2w, 1y...")
@click.option(
    "--points", type=click.IntRange(1, 10_000), default=DEFAULT_POINTS, show_default=True, help="buckets at most"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object: the resolution and the buckets")
@_influx_option
def readings(device: str, since: str, points: int, as_json: bool, influx_url: str | None) -> None:
    """Mean, minimum and maximum of each sensor of DEVICE per bucket over the last --since.

    The range picks the resolution: the raw readings up to 6 hours, the 1-minute roll-ups up to
    7 days, the 1-hour roll-ups beyond (and the next coarser one when the range begins before a
    resolution's retention, IOT_RETENTION_*).

    \b
    Examples:
      python -m hub readings env-0001
      python -m hub readings th-0002 --since 30d --points 30
      python -m hub readings env-0001 --since 1y --json | jq '.buckets[] | select(.sensor == "temperature")'
    """
    try:
        since_s = parse_span(since)
    except BadDuration as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    device = require_identifier(device, "device")
    found = read_readings(load_settings(influx_url=influx_url), device, since_s, points)
    if as_json:
        click.echo(printable_json(found.as_json()))
        return
    out = _console()
    source = RESOLUTION_TEXT.get(found.resolution.name, found.resolution.name)
    if not found.buckets:
        out.print(f"no reading of {device} in the last {since} ({source})")
        return
    table = Table(title=f"{device}, the last {since}: {source}, {found.bucket_s} s per row")
    for column in ("time", "sensor", "mean", "min", "max"):
        table.add_column(column, justify="left" if column in ("time", "sensor") else "right")
    for bucket in found.buckets:
        at = datetime.fromtimestamp(bucket.time_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(at, _text(bucket.sensor), _number(bucket.mean), _number(bucket.min), _number(bucket.max))
    out.print(table)
