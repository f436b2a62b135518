"""Ctrl-C, SIGTERM and a closed terminal (SIGHUP) all stop the demo the same clean way."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: What the demo treats as "stop now".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    """Turn a stop signal into KeyboardInterrupt, so one `except` path stops cleanly."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def handling_stop_signals(handler: Handler) -> Iterator[None]:
    """`handler` for every stop signal inside the block; the previous handlers again after it."""
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
