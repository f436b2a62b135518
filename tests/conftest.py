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

from hub.core.config import Settings
from tests.support import fleet_credentials, started_stack

#: The tests' fleets are at most this big: their devices get credentials once, for the session,
#: in the stack's credentials file where `Fleet` (like `python -m devices.sim`) looks for them.
TEST_FLEET_DEVICES = 16


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
            fleet_credentials(settings, TEST_FLEET_DEVICES)
            yield settings
        finally:
            the_stack.down()
    finally:
        signal.signal(signal.SIGTERM, previous)
