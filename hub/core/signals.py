"""The stop signals (SIGINT, SIGTERM) of a program: as KeyboardInterrupt, or as a request its loop looks at.

A program installs its handlers itself, whatever it inherited: a process started with SIGINT
ignored (any background job of a shell script: the shell ignores SIGINT for it) never gets
Python's KeyboardInterrupt, which Python installs only where SIGINT is not ignored, so a
Ctrl-C or a `kill -INT` sent to it would otherwise be lost.

- `interrupting()`: the first stop signal raises KeyboardInterrupt where the program is, so its
  `finally` blocks stop what it started (benchmarks: their stack); later ones are ignored until
  the block ends, so that cleanup is not cut short.
- `stop_requested()`: the first stop signal only sets an event the program's loop looks at
  between two calls into a client library (pika's BlockingConnection is not reentrant: an
  exception raised in the middle of its I/O may leave the connection mid-frame, and closing it
  then is no longer sure to end); a second one raises KeyboardInterrupt (the user insists).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: What a program treats as "stop now": Ctrl-C, and `kill` / `timeout` / a service manager.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    """Turn a stop signal into KeyboardInterrupt, so one `except` (or `finally`) path stops cleanly."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def handling(signals: tuple[signal.Signals, ...], handler: Handler) -> Iterator[None]:
    """`handler` for each of `signals` inside the block; the previous handlers again after it."""
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupt_once() -> Callable[[int, FrameType | None], None]:
    """A handler that raises KeyboardInterrupt the first time and ignores every later signal."""
    fired = False

    def interrupt_once(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise_interrupt(signum, frame)

    return interrupt_once


@contextlib.contextmanager
def interrupting(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Inside the block, the first of `signals` raises KeyboardInterrupt and any later one is ignored."""
    with handling(signals, _interrupt_once()):
        yield


def interrupt_on_stop_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
    """`interrupting` for the rest of the program (the first line of a benchmark's `main`): a benchmark
    stopped by `timeout` (SIGTERM) or Ctrl-C runs its `finally` blocks, which stop the stack it started."""
    handler = _interrupt_once()
    for sig in signals:
        signal.signal(sig, handler)


@contextlib.contextmanager
def stop_requested(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[threading.Event]:
    """An event the first of `signals` sets inside the block; a second one raises KeyboardInterrupt."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise_interrupt(signum, frame)
        stop.set()

    with handling(signals, request_stop):
        yield stop
