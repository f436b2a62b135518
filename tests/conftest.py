"""The harness: one real RabbitMQ node (MQTT, STOMP) and one real influxd per test session.

They run as local processes on free ports with their data in a temporary directory, started
by the same code as `python -m hub stack up`, and are always stopped at the end, even when
tests fail or the run is interrupted.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from hub.config import Settings
from hub.errors import StackError
from hub.stack import Stack
from hub.stack.stack import settings_on_free_ports


def _raise_keyboard_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at the session's running stack."""
    # A CI time-out sends SIGTERM: turn it into an exception so the finally below still runs.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        settings, the_stack = started_stack(tmp_path_factory)
        try:
            yield settings
        finally:
            the_stack.down()
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Another program may take one of our free ports between the choice and RabbitMQ's bind.
START_ATTEMPTS = 3


def started_stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Stack]:
    """A running stack on free ports in a new temporary directory (the caller stops it)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        settings = settings_on_free_ports(tmp_path_factory.mktemp("stack"))
        the_stack = Stack(settings)
        try:
            the_stack.up()
            return settings, the_stack
        except StackError:
            the_stack.down()
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")
