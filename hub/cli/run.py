"""`python -m hub run`: the hub's services in one process (`--only` picks some of them).

Every service consumes its own quorum queues. Telemetry is spread over IOT_PARTITIONS partition
queues by device: `--partitions 0-1` on one machine and `--partitions 2-3` on another share it,
and a second process on the same partitions is a hot standby (each partition has one active
consumer).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from hub.core.config import PROJECT_ROOT, load_settings
from hub.runtime.supervisor import run_hub
from hub.services import ALIASES, SERVICES, build_services, service_names
from hub.services.notify.config import load_notify, notify_path

#: The rules file shipped at the root of the checkout, used when IOT_RULES_FILE is not found from here.
DEFAULT_RULES = "rules.yaml"
LOG_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


@click.command("run")
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(SERVICES + tuple(ALIASES)),
    help="Run only this service (repeatable). Default: all of telemetry, presence, commands, logs, twin, and"
    " notify when the notification file exists [IOT_NOTIFY_FILE]. `store` and `rules` are deprecated names of"
    " telemetry.",
)
@click.option(
    "--partitions",
    "hub_partitions",
    help="The telemetry partitions this process consumes, e.g. 0-1,3 (default: all) [IOT_HUB_PARTITIONS]",
)
@click.option("--amqp-url", help="RabbitMQ URL [IOT_AMQP_URL]")
@click.option("--influx-url", help="InfluxDB URL [IOT_INFLUX_URL]")
@click.option("--influx-db", help="Database (1.x) or bucket (v2) [IOT_INFLUX_DB]")
@click.option("--influx-api", type=click.Choice(["auto", "v1", "v2"]), help="Write API [IOT_INFLUX_API]")
@click.option("--rules-file", type=click.Path(path_type=Path), help="Rules file (YAML) [IOT_RULES_FILE]")
@click.option(
    "--metrics-port",
    metavar="PORT|off",
    help="Port of /metrics and /health on 127.0.0.1; 0 = any free port (logged), e.g. for a standby hub on the"
    " same machine; off = none. A port already taken is an error [IOT_METRICS_PORT, default 9108]",
)
@click.option(
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
def run(
    only: tuple[str, ...],
    hub_partitions: str | None,
    amqp_url: str | None,
    influx_url: str | None,
    influx_db: str | None,
    influx_api: str | None,
    rules_file: Path | None,
    metrics_port: str | None,
    log_level: str,
) -> None:
    """Run the hub: store readings in InfluxDB, track presence, apply rules, record command outcomes.

    Stop with Ctrl-C or SIGTERM: open batches are written and acked first.
    """
    logging.basicConfig(level=log_level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its connect errors are logged by us, in one line
    settings = load_settings(
        amqp_url=amqp_url,
        influx_url=influx_url,
        influx_db=influx_db,
        influx_api=influx_api,
        rules_file=rules_file,
        metrics_port=metrics_port,
        hub_partitions=hub_partitions,
    )
    if settings.rules_file == Path(DEFAULT_RULES) and not settings.rules_file.exists():
        settings = settings.model_copy(update={"rules_file": PROJECT_ROOT / DEFAULT_RULES})
    names = service_names(only)
    if "telemetry" in names:
        from hub.services.rules.loader import load_rules

        load_rules(settings.rules_file)  # a broken rules file is a clear error before anything starts
    # A broken notification file likewise; no file: no notify service (unless --only names it).
    if not only or "notify" in names:
        found = load_notify(notify_path(settings.notify_file)) is not None
        names = names if "notify" in names or not found else (*names, "notify")
    run_hub(settings, lambda stop, middleware: build_services(settings, names, stop, middleware))
