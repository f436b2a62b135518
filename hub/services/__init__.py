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

from hub.core.config import Settings
from hub.runtime.service import Service

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


def build_services(settings: Settings, names: tuple[str, ...], stop: threading.Event) -> list[Service]:
    """The named services, sharing nothing but the stop event: each consumes what it needs itself."""
    from hub.services.commands.service import CommandsService
    from hub.services.presence.service import PresenceService
    from hub.services.presence.signs import SignsFeed
    from hub.services.presence.tracker import PresenceTracker
    from hub.services.rules.loader import load_rules
    from hub.services.telemetry.service import TelemetryService

    # Beside telemetry of every partition in this process, presence takes its signs of life from
    # it (no extra copy); with only some partitions it would miss the other devices' readings.
    every_partition = settings.hub_partition_ids == tuple(range(settings.partitions))
    feed = SignsFeed(PresenceTracker()) if "presence" in names and "telemetry" in names and every_partition else None
    services: list[Service] = []
    for name in names:
        if name == "telemetry":
            services.append(TelemetryService(settings, stop, rules=load_rules(settings.rules_file), signs=feed))
        elif name == "presence":
            services.append(PresenceService(settings, stop, feed=feed))
        elif name == "commands":
            services.append(CommandsService(settings, stop))
    return services
