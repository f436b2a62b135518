"""`python -m hub audit`: one table of what a running deployment exposes; exit 1 on any finding."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from ipaddress import ip_address

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hub.control.security_audit import (
    Listener,
    Row,
    account_rows,
    configured_secret_rows,
    endpoint_rows,
    impostor_rows,
    influx_rows,
    known_login_rows,
    listener_rows,
    mode_rows,
    tls_rows,
)
from hub.core.config import CLUSTER_STATE_FILE, Settings, load_settings
from hub.core.errors import HubError
from hub.core.printable import printable, printable_json
from hub.stack.brokerauth import operator_accounts
from hub.stack.cluster import Cluster
from hub.stack.sockets import listening_sockets
from hub.stack.stack import Stack

#: Exit codes: nothing found, something found (as `hub impostors`).
CLEAN, FINDINGS = 0, 1
#: Columns of the table when stdout is not a terminal (a log, a pipe).
REPORT_WIDTH = 160
VERDICT_STYLE = {"ok": "green", "finding": "bold red", "skipped": "dim"}


def _guarded(check: str, probe: Callable[[], list[Row]]) -> list[Row]:
    """A check's rows, or one finding saying why it could not look."""
    try:
        return probe()
    except HubError as exc:
        return [Row(check, "could not check", "finding", str(exc))]


def machine_addresses() -> list[str]:
    """This machine's own addresses beyond loopback, as its host name resolves (what a network dials)."""
    try:
        found = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(entry[4][0]) for entry in found if not ip_address(str(entry[4][0])).is_loopback})


def audit_rows(settings: Settings, addresses: Sequence[str] = ()) -> list[Row]:
    """Every check, against the stack in IOT_STACK_DIR when one runs here, else against the configured endpoints.

    The TLS listeners are dialled at the configured host and at each of `addresses` (default: this
    machine's own addresses beyond loopback)."""
    single = Stack(settings)
    here: Stack | Cluster = Cluster(settings) if (single.root / CLUSTER_STATE_FILE).exists() else single
    nodes = here.node_ports() if any(s.running for s in here.status().services) else []
    dialled = list(dict.fromkeys([settings.amqp.host, *(addresses or machine_addresses())]))
    if nodes:
        tls_ports = {
            port: name for n in nodes for port, name in ((n.amqps, "AMQPS"), (n.mqtts, "MQTTS"), (n.stomps, "STOMPS"))
        }
        amqp_ports = {n.amqps: "AMQPS" for n in nodes} | {n.amqp: "AMQP" for n in nodes if settings.plain_listeners}
        sockets = listening_sockets(here.server_pids())
        rows = listener_rows([Listener(str(s.address), s.port, s.process) for s in sockets], tls_ports)
        service = here.broker_auth()
        if service is not None and service.counts() is not None:
            rows.append(Row("broker auth", service.url, "ok", "every login asks it: client ids are checked"))
        else:
            rows.append(Row("broker auth", "the stack's service", "finding", "not running: MQTT client ids unchecked"))
    else:
        tls_ports = {settings.amqps_port: "AMQPS", settings.mqtts_port: "MQTTS", settings.stomps_port: "STOMPS"}
        amqp_ports = {settings.amqp.port: "AMQPS" if settings.amqp.tls else "AMQP"}
        rows = endpoint_rows(settings)
        rows.append(Row("broker auth", "the broker's", "skipped", f"no stack runs in {settings.stack_path}"))
    operators = operator_accounts(settings)
    rows += configured_secret_rows(settings)
    rows += _guarded("secrets", lambda: known_login_rows(settings, amqp_ports, dialled))
    rows += tls_rows(dialled, tls_ports)
    rows += influx_rows(settings)
    rows += mode_rows(settings.stack_path)
    rows += _guarded("device accounts", lambda: account_rows(settings, operators))
    rows += _guarded("impostors", lambda: impostor_rows(settings))
    return rows


def render(rows: list[Row]) -> Table:
    table = Table(title="hub audit", title_justify="left")
    for column in ("check", "subject", "verdict", "detail"):
        table.add_column(column)
    for row in rows:
        # Text, not markup, and escaped: subjects and details carry account names and paths.
        verdict = Text(row.verdict, VERDICT_STYLE[row.verdict])
        table.add_row(Text(row.check), Text(printable(row.subject)), verdict, Text(printable(row.detail)))
    return table


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row instead of the table.")
@click.option(
    "--address",
    "addresses",
    multiple=True,
    help="Also dial the TLS listeners here (repeatable; default: this machine's addresses beyond loopback).",
)
def audit(as_json: bool, addresses: tuple[str, ...]) -> None:
    """Check a running deployment before a port is opened to a network: exit 1 on any finding.

    \b
    It checks, from this machine:
      listeners     the stack's sockets beyond loopback, each TLS or plain
      broker auth   the service that refuses foreign MQTT client ids runs
      secrets       no password this project ever published logs in anywhere
      TLS versions  each TLS listener refuses TLS 1.0 and 1.1
      InfluxDB      a query and a write without a login get 401
      file modes    the stack folder and its secrets are owner-only
      device accounts  each has exactly its own permissions, no tags
      impostors     no MQTT client connected under another's client id
    Uses the admin account (IOT_ADMIN_USER / IOT_ADMIN_PASSWORD, or the stack's generated one).

    \b
    Example:
      python -m hub audit
    """
    rows = audit_rows(load_settings(), addresses)
    if as_json:
        for row in rows:
            click.echo(printable_json(asdict(row)))
    else:
        Console(highlight=False, width=None if sys.stdout.isatty() else REPORT_WIDTH).print(render(rows))
    findings = sum(row.verdict == "finding" for row in rows)
    click.echo(f"{findings} finding(s)" if findings else "no findings", err=True)
    sys.exit(FINDINGS if findings else CLEAN)
