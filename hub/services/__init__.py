"""The hub's services: telemetry, presence and commands, each consuming its own queues.

- `telemetry`: each reading once, from its partition `hub.telemetry.<p>`: stored in the outputs
  (InfluxDB), batched, acked once written; per-device statistics and the rules of rules.yaml
  (alerts, rule commands); a sign of life for presence in the same process;
- `presence`: online/offline transitions of every device into `device_status`;
- `commands`: every command's lifecycle into `commands`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from hub.core.config import Settings
from hub.runtime.health import Unit
from hub.runtime.middleware import Middleware
from hub.runtime.runner import Runner
from hub.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

SERVICES = ("telemetry", "presence", "commands")
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
) -> list[Unit]:
    """The named services, each with its runner, sharing nothing but the stop event and the middleware:
    each consumes what it needs itself."""
    from hub.services.commands.service import CommandsService
    from hub.services.presence.service import PresenceService
    from hub.services.presence.signs import SignsFeed
    from hub.services.presence.tracker import PresenceTracker
    from hub.services.rules.loader import load_rules
    from hub.services.telemetry.service import TelemetryHandler

    # Beside telemetry of every partition in this process, presence takes its signs of life from
    # it (no extra copy); with only some partitions it would miss the other devices' readings.
    every_partition = settings.hub_partition_ids == tuple(range(settings.partitions))
    feed = SignsFeed(PresenceTracker()) if "presence" in names and "telemetry" in names and every_partition else None
    services: list[Unit] = []
    for name in names:
        if name == "telemetry":
            handler = TelemetryHandler.from_settings(settings, load_rules(settings.rules_file), signs=feed)
            telemetry = Runner.from_settings(settings, handler, stop, middleware)
            if feed is not None:  # presence judges no silence while telemetry does not read
                feed.source = _snapshot_of(telemetry)
            services.append(telemetry)
        elif name == "presence":
            services.append(PresenceService(settings, stop, feed=feed, middleware=middleware))
        elif name == "commands":
            services.append(CommandsService(settings, stop, middleware=middleware))
    return services


def _snapshot_of(runner: Runner) -> Callable[[], Snapshot]:
    return lambda: runner.snapshot
