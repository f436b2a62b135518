"""`python -m hub stack up|down|status`: the native stack from the command line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hub.clients.influx import InfluxHttp
from hub.clients.management import read_hub_consumers
from hub.core.config import CLUSTER_STATE_FILE, Settings, load_settings
from hub.core.errors import StackError, StorageUnavailable
from hub.core.retention import BadDuration, parse_span, quote_identifier
from hub.core.secrets import SECRETS_FILE_NAME, read_secrets
from hub.stack.certs import DOCKER_RABBITMQ_UID, ensure_dev_tls
from hub.stack.cluster import Cluster, ClusterStatus
from hub.stack.compose import ensure_compose_secrets
from hub.stack.influx import account_plan, backfill_rollups, ensure_retention
from hub.stack.migrate import migrate as run_migration
from hub.stack.packages import ensure_packages
from hub.stack.stack import Stack, StackStatus

console = Console()


def _settings(**flags: object) -> Stack:
    return Stack(load_settings(**flags))


def _running(stack_dir: str | None) -> Stack | Cluster:
    """The cluster when `stack up --nodes N` made one in this folder, else the single-node stack."""
    single = _settings(stack_dir=stack_dir)
    if (single.root / CLUSTER_STATE_FILE).exists():
        return Cluster(single.settings)
    return single


_port_options = [
    click.option("--amqp-url", default=None, help="AMQP URL; its port is the AMQP listener [IOT_AMQP_URL]"),
    click.option("--mqtt-port", type=int, default=None, help="MQTT listener [IOT_MQTT_PORT, 1883]"),
    click.option("--stomp-port", type=int, default=None, help="STOMP listener [IOT_STOMP_PORT, 61613]"),
    click.option("--amqps-port", type=int, default=None, help="AMQPS listener [IOT_AMQPS_PORT, 5671]"),
    click.option("--mqtts-port", type=int, default=None, help="MQTTS listener [IOT_MQTTS_PORT, 8883]"),
    click.option("--stomps-port", type=int, default=None, help="STOMP over TLS listener [IOT_STOMPS_PORT, 61614]"),
    click.option("--management-port", type=int, default=None, help="RabbitMQ HTTP API [IOT_MANAGEMENT_PORT, 15672]"),
    click.option("--influx-url", default=None, help="InfluxDB URL; its port is bound [IOT_INFLUX_URL]"),
    click.option("--stack-dir", default=None, help="data, logs and pid files [IOT_STACK_DIR, .stack]"),
]


F = TypeVar("F", bound=Callable[..., Any])


def port_options(func: F) -> F:
    for option in reversed(_port_options):
        func = option(func)
    return func


@click.group()
def stack() -> None:
    """The native stack: a project-local RabbitMQ node (MQTT, STOMP, management, Prometheus)
    and InfluxDB, with all data and logs under .stack/ in the checkout.

    \b
    Examples:
      python -m hub stack up
      IOT_MQTT_PORT=11883 python -m hub stack up
      python -m hub stack up --no-plain       # TLS listeners only
      python -m hub stack up --nodes 3        # a 3-node RabbitMQ cluster (node i: ports + i*100)
      python -m hub stack certs               # what docker compose mounts: certificates, secrets
      python -m hub stack status
      python -m hub stack retention --backfill 7d   # retention and roll-ups; roll up the last 7 days now
      python -m hub stack migrate             # queues of an older hub, after `hub run` refused them
      python -m hub stack down
    """


@stack.command()
@port_options
@click.option(
    "--plain/--no-plain",
    "plain_listeners",
    default=None,
    help="plain listeners on loopback (default), or none: TLS only [IOT_PLAIN_LISTENERS, true]",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="RabbitMQ nodes; more than 1 forms a cluster, node i on every port + i*100",
)
def up(nodes: int, **flags: object) -> None:
    """Install what is missing, start RabbitMQ and InfluxDB, wait until they answer.

    The first start makes a development CA and the node's certificate under <stack dir>/tls/,
    and the accounts' passwords in <stack dir>/secrets.json (mode 0600), where the hub, the CLI
    and the simulator find them (IOT_AMQP_URL, IOT_ADMIN_PASSWORD, IOT_INFLUX_* still win).
    """
    single = _settings(**flags)
    the_stack: Stack | Cluster = single if nodes == 1 else Cluster(single.settings, nodes)
    if nodes == 1 and (single.root / CLUSTER_STATE_FILE).exists():
        raise StackError("a cluster runs in this folder: `python -m hub stack down` first")
    with console.status("starting the stack") as spinner:
        status = the_stack.up(progress=lambda msg: spinner.update(msg))
    if status.already_running:
        console.print(f"[yellow]the stack is already running[/] (under {status.root}); left as it is")
    _print(status)


@stack.command()
@click.option("--purge", is_flag=True, help="also delete the stack's data and logs")
@click.option("--stack-dir", default=None, help="data, logs and pid files [IOT_STACK_DIR, .stack]")
def down(purge: bool, stack_dir: str | None) -> None:
    """Stop exactly the processes `stack up` started."""
    stopped = _running(stack_dir).down(purge=purge)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack.command()
@click.option("--stack-dir", default=None, help="data, logs and pid files [IOT_STACK_DIR, .stack]")
def status(stack_dir: str | None) -> None:
    """Say what runs, with its pid and URLs; exit code 1 when the stack is not running."""
    running = _running(stack_dir)
    current = running.status()
    _print(current)
    if current.running:
        _print_consumers(running.settings)
    if not current.running:
        raise SystemExit(1)


@stack.command()
@click.option("--stack-dir", default=None, help="data, logs and pid files [IOT_STACK_DIR, .stack]")
@click.option(
    "--key-owner",
    type=int,
    default=None,
    help=f"give server.key to this user id (docker compose: the image's rabbitmq user, {DOCKER_RABBITMQ_UID}); "
    "needs root",
)
def certs(stack_dir: str | None, key_owner: int | None) -> None:
    """Make the development CA and the node's certificate under <stack dir>/tls/ (once; `up` does it too),
    and the secrets docker compose reads under <stack dir>/compose/ (from <stack dir>/secrets.json, made once).

    docker compose mounts .stack/tls/ and .stack/compose/ of the checkout: run this first.
    """
    settings = load_settings(stack_dir=stack_dir)
    compose = ensure_compose_secrets(settings, key_owner)
    files = ensure_dev_tls(Stack(settings).tls.folder)
    if key_owner is not None:
        try:
            os.chown(files.server_key, key_owner, -1)
        except PermissionError:
            raise StackError(
                f"only root may give {files.server_key} to user {key_owner}: run `sudo chown {key_owner} "
                f"{files.server_key}`"
            ) from None
    console.print(f"CA: {files.ca_cert}\nserver certificate: {files.server_cert}\nserver key: {files.server_key}")
    console.print(f"secrets for docker compose (mode 0600): {compose.folder}/, from {settings.secrets_path}")


@stack.command()
@click.option("--amqp-url", default=None, help="AMQP URL of the broker [IOT_AMQP_URL]")
def migrate(amqp_url: str | None) -> None:
    """Replace hub queues an older hub declared with other arguments, moving their messages;
    retire hub.store / hub.rules and partitions above IOT_PARTITIONS, their readings moved into the partitions.

    Stop every hub first. A hub that finds an outdated queue exits (code 3) and names this
    command. Safe to run again: an interrupted migration is finished, current queues are kept.
    """
    table = Table(title="hub queues")
    for column in ("queue", "outcome", "messages moved", "note"):
        table.add_column(column)
    settings = load_settings(amqp_url=amqp_url)
    for done in run_migration(
        settings, lambda m: console.print(f"{m.queue}: {m.outcome}" + (f" ({m.note})" if m.note else ""))
    ):
        table.add_row(done.queue, done.outcome, str(done.moved), done.note)
    console.print(table)


@stack.command()
@click.option("--backfill", "backfill", default=None, metavar="SPAN", help="also roll up the last SPAN now (6h, 7d...)")
@click.option("--influx-url", default=None, help="InfluxDB URL [IOT_INFLUX_URL]")
@click.option("--stack-dir", default=None, help="data, logs and pid files [IOT_STACK_DIR, .stack]")
@click.option("--json", "as_json", is_flag=True, help="the policies and queries as JSON")
def retention(backfill: str | None, influx_url: str | None, stack_dir: str | None, as_json: bool) -> None:
    """Set InfluxDB's retention policies and roll-up queries from IOT_RETENTION_* (as `up` does), as its admin.

    Alters what exists, never duplicates, deletes no point; the first time on a database with
    history, rolls that history up before setting the raw retention. --backfill SPAN runs the
    roll-ups over the last SPAN at once: readings that came later than the continuous queries look
    back (a device's old buffer).
    """
    try:
        span_s = parse_span(backfill) if backfill is not None else None
    except BadDuration as exc:
        raise click.BadParameter(str(exc), param_hint="--backfill") from None
    settings = load_settings(influx_url=influx_url, stack_dir=stack_dir)
    plan = settings.retention
    login = account_plan(settings).admin
    admin = InfluxHttp(settings.influx_url, settings.influx_db, user=login.user, password=login.password)
    try:
        try:
            with console.status("setting the retention policies") as spinner:
                ensure_retention(admin, plan, lambda message: spinner.update(message))
            written = None
            if span_s is not None:
                now_ms = int(time.time() * 1000)
                with Progress(console=console, transient=True) as bar:
                    task = bar.add_task("rolling up", total=None)
                    written = backfill_rollups(
                        admin,
                        plan,
                        now_ms - span_s * 1000,
                        now_ms,
                        lambda done, total: bar.update(task, completed=done, total=total),
                    )
            policies = admin.administer(f"SHOW RETENTION POLICIES ON {quote_identifier(plan.db)}")[0]
            queries = admin.administer("SHOW CONTINUOUS QUERIES")[0]
        except StorageUnavailable as exc:
            raise StackError(str(exc)) from exc
    finally:
        admin.close()
    rows = [row for series in policies for row in series.rows]
    mine = [row for series in queries if series.name == plan.db for row in series.rows]
    if as_json:
        console.print_json(data={"policies": rows, "continuous_queries": mine, "backfilled_points": written})
        return
    table = Table(title=f"retention policies of {plan.db}")
    for column in ("policy", "duration", "shard duration", "default"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["name"]), str(row["duration"]), str(row["shardGroupDuration"]), str(row["default"]))
    console.print(table)
    console.print(f"continuous queries: {', '.join(str(row['name']) for row in mine) or 'none'}")
    if written is not None:
        console.print(f"backfilled: {written} roll-up points written")


@stack.command()
def install() -> None:
    """Install the Debian packages rabbitmq-server and influxdb if they are missing."""
    installed = ensure_packages()
    console.print(f"installed: {' '.join(installed)}" if installed else "rabbitmq-server and influxdb are installed")


def _print(status: StackStatus) -> None:
    if not status.services:
        console.print(f"no stack under {status.root}")
        return
    secrets = status.root / SECRETS_FILE_NAME
    table = Table(title=f"stack under {status.root}")
    for column in ("service", "pid", "state", "endpoints"):
        table.add_column(column)
    for service in status.services:
        state = "[green]running[/]" if service.running else "[red]stopped[/]"
        endpoints = "\n".join(f"{k}: {v}" for k, v in service.endpoints.items())
        table.add_row(service.name, str(service.pid), state, endpoints)
    console.print(table)
    console.print(
        f"accounts' passwords: {secrets} (mode 0600; the hub, the CLI and the simulator read them there)"
        if secrets.exists()
        else f"no secrets file {secrets}: `python -m hub stack up` makes it",
        soft_wrap=True,
        highlight=False,
    )
    if isinstance(status, ClusterStatus):
        _print_cluster(status)


def _print_consumers(settings: Settings) -> None:
    """Who consumes each hub queue: each has one active consumer (a telemetry partition, presence, commands)."""
    consumers = read_hub_consumers(settings)
    if consumers is None:
        console.print("hub consumers: the management API does not answer")
        return
    table = Table(title="hub consumers (single_active: delivered to; waiting: a standby)")
    for column in ("queue", "connection", "status"):
        table.add_column(column)
    for queue, connection, activity in consumers:
        table.add_row(queue, connection, activity)
    console.print(table if consumers else "hub consumers: none (no hub runs)")


def _print_cluster(status: ClusterStatus) -> None:
    queues = Table(title="quorum queues")
    for column in ("queue", "leader", "members"):
        queues.add_column(column)
    for queue in status.queues:
        queues.add_row(queue.name, queue.leader, "\n".join(queue.members))
    console.print(queues)
    console.print("clients reach every node with:")
    held = read_secrets(status.root / SECRETS_FILE_NAME)
    for name, value in status.exports.items():
        # The stack's own password stays in its file: a client without one in the URL reads it there.
        shown = value.replace(f":{held.hub_password}@", "@") if held is not None else value
        console.print(f"export {name}='{shown}'", soft_wrap=True, highlight=False)
