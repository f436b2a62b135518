"""The hub's services: store, rules, presence and commands, each consuming its own queue.

- `store`: telemetry into the outputs (InfluxDB), batched, acked once written;
- `rules`: per-device statistics and rules, alerts and rule commands;
- `presence`: online/offline transitions of every device into `device_status`;
- `commands`: every command's lifecycle into `commands`.
"""

from __future__ import annotations

import threading

from hub.core.config import Settings
from hub.runtime.service import Service

SERVICES = ("store", "rules", "presence", "commands")


def build_services(settings: Settings, names: tuple[str, ...], stop: threading.Event) -> list[Service]:
    """The named services, sharing nothing but the stop event: each consumes what it needs itself."""
    from hub.services.commands.service import CommandsService
    from hub.services.presence.service import PresenceService
    from hub.services.presence.signs import SignsFeed
    from hub.services.presence.tracker import PresenceTracker
    from hub.services.rules.loader import load_rules
    from hub.services.rules.service import RulesService
    from hub.services.store.service import StoreService

    # Beside rules in this process, presence takes its signs of life from rules (no extra copy).
    feed = SignsFeed(PresenceTracker()) if "presence" in names and "rules" in names else None
    services: list[Service] = []
    for name in names:
        if name == "store":
            services.append(StoreService(settings, stop))
        elif name == "rules":
            services.append(RulesService(settings, stop, rules=load_rules(settings.rules_file), signs=feed))
        elif name == "presence":
            services.append(PresenceService(settings, stop, feed=feed))
        elif name == "commands":
            services.append(CommandsService(settings, stop))
    return services
