"""Waiting until the demo can go on: the hub's queues there, the devices online."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from hub.clients.management import read_queue_names
from hub.core.config import Settings
from hub.core.errors import StackError

#: How long the hub may take to declare its queues, and the devices to come online.
HUB_READY_TIMEOUT_S = 60.0
DEVICES_ONLINE_TIMEOUT_S = 60.0
#: How often a wait asks again.
POLL_S = 0.5

T = TypeVar("T")


def hub_queues_declared(settings: Settings) -> bool:
    names = read_queue_names(settings)
    return names is not None and {"hub.store", "hub.presence", "hub.commands"} <= names


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
