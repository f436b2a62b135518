"""What the demo shows: where to look, the live view (or a plain status line without a terminal),
and the summary at the end. Pure functions of a `Snapshot` and the command results."""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from hub.clients.management import management_url
from hub.core.config import Settings
from hub.core.exit_codes import ExitCode
from hub.core.printable import printable
from hub.core.secrets import StackSecrets
from hub.demo.activity import Snapshot
from hub.demo.scenario import CommandResult

CHRONOGRAF_URL = "http://localhost:8888"


def where_to_look(
    settings: Settings, secrets: StackSecrets | None, docker: bool, logs: Path, metrics_port: int | None = None
) -> list[str]:
    """Where a person looks, and with which account; where a password lives, never the password itself."""
    user = settings.amqp.user
    reader = settings.influx_reader.user or "(none)"
    query = "SELECT * FROM thermostat WHERE time > now() - 1m"
    own = secrets is not None and settings.amqp.password == secrets.hub_password
    hub_password = f"hub_password in {settings.secrets_path}" if own else "the one in IOT_AMQP_URL"
    lines = [
        f"InfluxDB     {settings.influx_url}  database {settings.influx_db}, user {reader} (reads only), e.g.",
        f"             curl -u {reader} -G {settings.influx_url}/query --data-urlencode db={settings.influx_db} "
        f"--data-urlencode {shlex.quote('q=' + query)}",
        f"RabbitMQ UI  {management_url(settings).replace('127.0.0.1', 'localhost')}/  user {user}",
        f"passwords    {hub_password}" + (", influx_reader_password beside it (mode 0600)" if own else ""),
        "the CLI      python -m hub devices · python -m hub tail 'alerts.#' · python -m hub send --help",
        f"logs         {logs}/hub.log, {logs}/sim.log",
    ]
    if metrics_port:
        lines.insert(4, f"hub metrics  http://localhost:{metrics_port}/metrics  (Prometheus; /health too)")
    if docker:
        lines.insert(4, f"Chronograf   {CHRONOGRAF_URL}  (dashboards over InfluxDB)")
    return lines


def _cell(value: object) -> Text:
    """What InfluxDB holds, shown as text: no markup read in it, no control character left."""
    return Text(printable(str(value)))


def _clock(at_ms: Any) -> str:
    return datetime.fromtimestamp(int(at_ms) / 1000).strftime("%H:%M:%S") if at_ms else "--:--:--"


def render(
    snapshot: Snapshot, results: list[CommandResult], count: int, elapsed_s: float, duration_s: float, error: str
) -> Group:
    ends = f"stops in {max(0, duration_s - elapsed_s):.0f} s" if duration_s else "runs until Ctrl-C"
    head = Text(f"IoT hub demo · {count} simulated devices · {elapsed_s:.0f} s · {ends} · Ctrl-C stops", "bold")
    protocols = ", ".join(f"{p} {n}" for p, n in sorted(snapshot.by_protocol().items()))
    alerts = sum(snapshot.alerts_by_severity.values())
    alert_text = ", ".join(f"{s} {n}" for s, n in sorted(snapshot.alerts_by_severity.items())) or "none"
    figures = Table.grid(padding=(0, 3))
    figures.add_row(
        f"readings stored [bold]{snapshot.stored:,}[/]",
        f"[bold]{snapshot.rate_per_s:.1f}[/]/s",
        f"devices online [bold]{snapshot.online}[/]/{len(snapshot.fleet)}" + (f" ({protocols})" if protocols else ""),
        f"alerts [bold]{alerts}[/] ({alert_text})",
        f"alarms raised [bold]{snapshot.alarms('raised')}[/], cleared [bold]{snapshot.alarms('cleared')}[/]",
        f"dead-lettered [bold]{snapshot.dead_lettered}[/]",
    )
    sent = Table(title="commands sent by the demo with the CLI", title_justify="left", expand=True)
    for column in ("command", "outcome", "why"):
        sent.add_column(column)
    for result in results[-8:]:
        style = "green" if result.ok else "yellow" if result.exit_code == ExitCode.DEVICE_REFUSED else "red"
        sent.add_row(result.command.shown, Text(printable(result.summary()), style=style), result.command.why)
    recorded = Table(title="commands recorded by the hub (InfluxDB `commands`)", title_justify="left", expand=True)
    for column in ("time", "device", "command", "status", "origin", "rtt ms"):
        recorded.add_column(column)
    for row in snapshot.recent_commands:
        rtt = row.get("rtt_ms")
        recorded.add_row(
            _clock(row.get("time")),
            *(_cell(row.get(column, "")) for column in ("device", "command", "status", "origin")),
            f"{rtt:.1f}" if isinstance(rtt, int | float) else "",
        )
    alert_table = Table(title="latest alerts (InfluxDB `alerts`)", title_justify="left", expand=True)
    for column in ("time", "severity", "device", "message"):
        alert_table.add_column(column)
    for row in snapshot.recent_alerts:
        alert_table.add_row(
            _clock(row.get("time")), *(_cell(row.get(column, "")) for column in ("severity", "device", "message"))
        )
    parts: list[Any] = [head, figures, sent, recorded, alert_table]
    story = snapshot.alarm_story()
    if story:
        parts.append(Text(printable(story)))
    if error:
        parts.append(Text(error, style="red"))
    return Group(*parts)


def plain_line(snapshot: Snapshot, results: list[CommandResult], elapsed_s: float) -> str:
    ok = sum(result.ok for result in results)
    return (
        f"[{elapsed_s:5.0f} s] stored {snapshot.stored} readings ({snapshot.rate_per_s:.1f}/s), "
        f"{snapshot.online}/{len(snapshot.fleet)} devices online, "
        f"{sum(snapshot.alerts_by_severity.values())} alerts, {snapshot.alarms('raised')} alarms raised"
        f" ({snapshot.alarms('cleared')} cleared), {len(results)} commands sent ({ok} all ok)"
    )


def final_report(snapshot: Snapshot, results: list[CommandResult], elapsed_s: float) -> str:
    outcomes = [o for result in results for o in result.outcomes]
    answered = [o for o in outcomes if o.get("status") not in ("timeout", "unknown_device")]
    ok = sum(o.get("status") == "ok" for o in answered)
    recorded = ", ".join(f"{s} {n}" for s, n in sorted(snapshot.commands_by_status.items())) or "none"
    rate = snapshot.stored / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"demo summary: {snapshot.stored} readings stored from {len(snapshot.fleet)} devices "
        f"({rate:.1f}/s over {elapsed_s:.0f} s); {len(results)} CLI commands, {len(answered)} answered "
        f"({ok} ok); {sum(snapshot.alerts_by_severity.values())} alerts; {snapshot.alarms('raised')} alarms raised,"
        f" {snapshot.alarms('cleared')} cleared; hub recorded commands: {recorded}"
        + (f"\n{printable(story)}" if (story := snapshot.alarm_story()) else "\nno alarm raised and cleared yet")
    )
