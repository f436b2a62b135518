"""The hub's services: telemetry, presence and commands, each a handler its runner drives over
its own queues (`hub.runtime.runner`).

- `telemetry`: each reading once, from its partition `hub.telemetry.<p>`: stored in the outputs
  (InfluxDB), batched, acked once written; per-device statistics and the rules of rules.yaml
  (alerts, rule commands); a sign of life for presence in the same process;
- `presence`: online/offline transitions of every device into `device_status`;
- `commands`: every command's lifecycle into `commands`;
- `twin`: each device's twin (desired, reported) into `twins`, and the commands that converge it.
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

SERVICES = ("telemetry", "presence", "commands", "twin")
#: Names of the services telemetry replaced; `hub run --only store` still means telemetry.
ALIASES = {"store": "telemetry", "rules": "telemetry"}


def service_names(only: tuple[str, ...]) -> tuple[str, ...]:
    """The services `--only` names, aliases resolved (logged in one line as deprecated), in order; all if none."""
    if not only:
        return SERVICES
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
    from hub.services.presence.service import PresenceHandler
    from hub.services.presence.signs import SignsFeed
    from hub.services.presence.tracker import PresenceTracker
    from hub.services.rules.loader import load_rules
    from hub.services.telemetry.service import TelemetryHandler
    from hub.services.twin.service import TwinHandler

    # Beside telemetry of every partition in this process, presence takes its signs of life from
    # it (no extra copy); with only some partitions it would miss the other devices' readings.
    every_partition = settings.hub_partition_ids == tuple(range(settings.partitions))
    feed = SignsFeed(PresenceTracker()) if "presence" in names and "telemetry" in names and every_partition else None
    handlers: list[Handler] = []
    for name in names:
        if name == "telemetry":
            handlers.append(TelemetryHandler.from_settings(settings, load_rules(settings.rules_file), signs=feed))
        elif name == "presence":
            handlers.append(PresenceHandler.from_settings(settings, feed))
        elif name == "commands":
            handlers.append(CommandsHandler.from_settings(settings))
        elif name == "twin":
            handlers.append(TwinHandler.from_settings(settings))
    runners = [Runner.from_settings(settings, handler, stop, middleware) for handler in handlers]
    telemetry = next((runner for runner in runners if runner.name == "telemetry"), None)
    if feed is not None and telemetry is not None:  # presence judges no silence while telemetry does not read
        feed.source = _snapshot_of(telemetry)
    return runners


def _snapshot_of(runner: Runner) -> Callable[[], Snapshot]:
    return lambda: runner.snapshot
