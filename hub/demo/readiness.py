"""Waiting until the demo can go on: the hub consuming every queue it serves, the devices online.

The hub's queues are declared by rabbitmq/definitions.json before the hub ever starts, so
their existence says nothing; a consumer on each of them says the hub is taking messages.
The management API counts consumers in its statistics, refreshed every
`collect_statistics_interval` (5 s by default), so the count may trail the hub by that much.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from hub.clients.management import read_consumer_count
from hub.core.config import Settings
from hub.core.errors import StackError
from hub.runtime.topology import service_queues
from hub.services import DEFAULT_SERVICES

#: How long the hub may take to consume its queues, and the devices to come online.
HUB_READY_TIMEOUT_S = 60.0
DEVICES_ONLINE_TIMEOUT_S = 60.0
#: How often a wait asks again.
POLL_S = 0.5


def hub_queue_names(settings: Settings) -> tuple[str, ...]:
    """The queues `python -m hub run` consumes by default, as the demo runs it: every telemetry
    partition, and those of presence, commands, logs and twin."""
    return tuple(q.name for service in DEFAULT_SERVICES for q in service_queues(service, settings.hub_partition_ids))


T = TypeVar("T")


def hub_consuming(settings: Settings) -> bool:
    """Every hub queue has at least one consumer, as the management API says."""
    return all((read_consumer_count(settings, name) or 0) >= 1 for name in hub_queue_names(settings))


def wait_for(
    console: Console,
    what: str,
    check: Callable[[], T | None],
    timeout_s: float,
    still_fine: Callable[[], None],
    logs: Path,
) -> T:
    """Poll `check` until it returns something truthy and return that; `StackError` after `timeout_s`.

    `still_fine` runs before every poll and raises when waiting longer is pointless (a child died).
    """
    deadline = time.monotonic() + timeout_s
    with console.status(what):
        while True:
            still_fine()
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise StackError(f"gave up after {timeout_s:.0f} s {what}; see the logs under {logs}")
            time.sleep(POLL_S)
