"""`python -m hub run`: the hub's services in one process, each in its own thread.

Every service consumes its own quorum queue, so several processes (`--only store` on three
machines, say) share the work as competing consumers. SIGTERM/SIGINT stop cleanly: open
batches are written and acked first; SIGKILL loses nothing either, the broker redelivers.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click
from prometheus_client import disable_created_metrics

from hub.config import Settings, load_settings
from hub.consumer import AmqpService
from hub.errors import HubError
from hub.health import Monitor

log = logging.getLogger("hub")

SERVICES = ("store", "rules", "presence", "commands")
#: How long a clean stop may take (writing the last batches) before threads are abandoned.
STOP_GRACE_S = 30.0
#: The rules file shipped at the root of the checkout, used when IOT_RULES_FILE is not found from here.
DEFAULT_RULES = "rules.yaml"
REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def build_services(settings: Settings, names: tuple[str, ...], stop: threading.Event) -> list[AmqpService]:
    from hub.commands import CommandsService
    from hub.presence import PresenceService, PresenceTracker
    from hub.rules.loader import load_rules
    from hub.rules.service import RulesService
    from hub.store.consumer import StoreService

    tracker = PresenceTracker()
    services: list[AmqpService] = []
    for name in names:
        if name == "store":
            services.append(StoreService(settings, stop))
        elif name == "rules":
            services.append(RulesService(settings, stop, rules=load_rules(settings.rules_file), tracker=tracker))
        elif name == "presence":
            services.append(PresenceService(settings, stop, tracker=tracker))
        elif name == "commands":
            services.append(CommandsService(settings, stop))
    return services


def run_hub(settings: Settings, names: tuple[str, ...], on_ready: Callable[[], None] = lambda: None) -> None:
    disable_created_metrics()  # type: ignore[no-untyped-call]
    stop = threading.Event()
    services = build_services(settings, names, stop)
    monitor = Monitor(settings, [s.stats for s in services], stop)
    if settings.metrics_port:
        monitor.serve_http(settings.metrics_port)
    failures: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run_target() -> None:
            try:
                target()
            except BaseException as exc:  # a service that cannot go on (bad config) stops the hub
                failures.append(exc)

        return run_target

    threads = [threading.Thread(target=guarded(s.run), name=s.name, daemon=True) for s in services]
    threads.append(threading.Thread(target=monitor.run, name="monitor", daemon=True))

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("event=stopping signal=%d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for thread in threads:
        thread.start()
    log.info("event=started services=%s", ",".join(names))
    on_ready()
    while not stop.wait(0.5):
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            log.error("event=service_died services=%s", ",".join(dead))
            stop.set()
    for thread in threads:
        thread.join(STOP_GRACE_S)
    monitor.close()
    log.info("event=stopped")
    for failure in failures:
        if isinstance(failure, HubError):
            raise failure
    if failures:
        raise HubError(f"a service stopped unexpectedly: {failures[0]!r}")


@click.command("run")
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(SERVICES),
    help="Run only this service (repeatable). Default: all of store, rules, presence, commands.",
)
@click.option("--amqp-url", help="RabbitMQ URL [IOT_AMQP_URL]")
@click.option("--influx-url", help="InfluxDB URL [IOT_INFLUX_URL]")
@click.option("--influx-db", help="Database (1.x) or bucket (v2) [IOT_INFLUX_DB]")
@click.option("--influx-api", type=click.Choice(["auto", "v1", "v2"]), help="Write API [IOT_INFLUX_API]")
@click.option("--rules-file", type=click.Path(path_type=Path), help="Rules file (YAML) [IOT_RULES_FILE]")
@click.option("--metrics-port", type=int, help="Port of /metrics and /health, 0 = off [IOT_METRICS_PORT]")
@click.option(
    "--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"])
)
def run(
    only: tuple[str, ...],
    amqp_url: str | None,
    influx_url: str | None,
    influx_db: str | None,
    influx_api: str | None,
    rules_file: Path | None,
    metrics_port: int | None,
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
    )
    if settings.rules_file == Path(DEFAULT_RULES) and not settings.rules_file.exists():
        settings = settings.model_copy(update={"rules_file": REPO_ROOT / DEFAULT_RULES})
    names = tuple(dict.fromkeys(only)) if only else SERVICES
    if "rules" in names:
        from hub.rules.loader import load_rules

        load_rules(settings.rules_file)  # a broken rules file is a clear error before anything starts
    run_hub(settings, names)
