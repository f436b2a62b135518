"""The hub's services: telemetry, presence and commands, each a handler its runner drives over
its own queues (`hub.runtime.runner`).

- `telemetry`: each reading once, from its partition `hub.telemetry.<p>`: stored in the outputs
  (InfluxDB), batched, acked once written; per-device statistics and the rules of rules.yaml
  (alerts, rule commands); a sign of life for presence in the same process;
- `presence`: online/offline transitions of every device into `device_status`;
- `commands`: every command's lifecycle into `commands`;
- `notify`: alarm transitions to the channels of the notification file (a router, and delivery
  workers per channel); started by default only when that file exists.
- `logs`: devices' log lines into `device_logs`, rate-limited per device.
- `twin`: each device's twin (desired, reported) into `twins`, and the commands that converge it;
  its readings from telemetry in the same process, as presence's signs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from hub.core.config import Settings
from hub.runtime.handler import Handler
from hub.runtime.middleware import Middleware
from hub.runtime.runner import Runner
from hub.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

#: What `hub run` starts without `--only` (and `notify` when the notification file exists).
DEFAULT_SERVICES = ("telemetry", "presence", "commands", "logs", "twin")
SERVICES = (*DEFAULT_SERVICES, "notify")
#: Names of the services telemetry replaced; `hub run --only store` still means telemetry.
ALIASES = {"store": "telemetry", "rules": "telemetry"}


def service_names(only: tuple[str, ...]) -> tuple[str, ...]:
    """The services `--only` names, aliases resolved (logged in one line as deprecated), in order; all if none."""
    if not only:
        return DEFAULT_SERVICES
    old = sorted({name for name in only if name in ALIASES})
    if old:
        log.warning(
            "event=deprecated services=%s use=telemetry (store and rules are one service now, on the telemetry"
            " partitions)",
            ",".join(old),
        )
    return tuple(dict.fromkeys(ALIASES.get(name, name) for name in only))


def build_services(
    settings: Settings, names: tuple[str, ...], stop: threading.Event, middleware: Sequence[Middleware]
) -> list[Runner]:
    """The named services, each a handler with its runner, sharing nothing but the stop event and
    the middleware: each consumes what it needs over its own connection. No I/O happens here."""
    from hub.services.commands.service import CommandsHandler
    from hub.services.logs.service import LogsHandler
    from hub.services.presence.service import PresenceHandler
    from hub.services.presence.signs import SignsFeed
    from hub.services.presence.tracker import PresenceTracker
    from hub.services.rules.loader import load_rules
    from hub.services.telemetry.service import TelemetryHandler
    from hub.services.twin.feed import ReadingsFeed
    from hub.services.twin.service import TwinHandler

    # Beside telemetry of every partition in this process, presence takes its signs of life and the
    # twin its readings from it (no extra queue a reading is routed to); with only some partitions
    # they would miss the other devices' readings.
    every_partition = settings.hub_partition_ids == tuple(range(settings.partitions))
    beside_telemetry = "telemetry" in names and every_partition
    feed = SignsFeed(PresenceTracker()) if "presence" in names and beside_telemetry else None
    readings = ReadingsFeed() if "twin" in names and beside_telemetry else None
    handlers: list[Handler] = []
    for name in names:
        if name == "telemetry":
            handlers.append(
                TelemetryHandler.from_settings(settings, load_rules(settings.rules_file), signs=feed, twin=readings)
            )
        elif name == "presence":
            handlers.append(PresenceHandler.from_settings(settings, feed))
        elif name == "commands":
            handlers.append(CommandsHandler.from_settings(settings))
        elif name == "logs":
            handlers.append(LogsHandler.from_settings(settings))
        elif name == "twin":
            handlers.append(TwinHandler.from_settings(settings, feed=readings))
        elif name == "notify":
            handlers.extend(notify_handlers(settings))
    runners = [
        Runner.from_settings(output_settings(settings, handler.name), handler, stop, middleware) for handler in handlers
    ]
    telemetry = next((runner for runner in runners if runner.name == "telemetry"), None)
    if telemetry is not None:  # no silence is judged while telemetry does not read
        if feed is not None:
            feed.source = _snapshot_of(telemetry)
        if readings is not None:
            readings.source = _snapshot_of(telemetry)
    return runners


def notify_handlers(settings: Settings) -> list[Handler]:
    """The router and `IOT_NOTIFY_WORKERS` delivery workers per channel of the notification file."""
    from hub.core.errors import ConfigError
    from hub.services.notify.config import load_notify, notify_path
    from hub.services.notify.plan import RetrySchedule
    from hub.services.notify.router import NotifyRouter
    from hub.services.notify.senders import sender_for
    from hub.services.notify.worker import DeliveryWorker

    path = notify_path(settings.notify_file)
    config = load_notify(path)
    if config is None:
        raise ConfigError(f"notification file {path} not found (IOT_NOTIFY_FILE): the notify service has nothing to do")
    for name in config.placeholder_secrets():
        log.warning(
            "event=placeholder_secret channel=%s file=%s (the example's secret signs nothing a receiver should trust:"
            " set your own)",
            name,
            path,
        )
    retries = RetrySchedule(settings.notify_retry_delays_ms)
    handlers: list[Handler] = [NotifyRouter(config)]
    for channel_name, channel in config.channels.items():
        sender = sender_for(channel, settings.notify_timeout_s)
        for number in range(1, settings.notify_workers + 1):
            handlers.append(DeliveryWorker(channel_name, sender, retries, number))
    return handlers


def output_settings(settings: Settings, service: str) -> Settings:
    """The settings a service's outputs write with: the logs service's go to the logs' own
    retention policy when IOT_LOG_RETENTION gives them one."""
    if service == "logs" and settings.log_rp:
        return settings.model_copy(update={"influx_rp": settings.log_rp})
    return settings


def _snapshot_of(runner: Runner) -> Callable[[], Snapshot]:
    return lambda: runner.snapshot
