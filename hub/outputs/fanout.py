"""Every configured output gets every batch; each retries on its own (Telegraf's running outputs).

A batch counts as written once every output has taken it; only then are its deliveries acked.
An output that failed keeps trying with its own backoff while the others are done; one that
refuses the points themselves gets them one at a time, so only the points it refuses are
reported (and dead-lettered by the caller), the rest stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

from hub.core.backoff import OUTPUT_RETRY, Backoff
from hub.core.config import Settings
from hub.core.errors import HubError, PointsRejected, StorageUnavailable
from hub.core.points import Point
from hub.outputs.base import Output
from hub.outputs.registry import open_output, output_names

log = logging.getLogger(__name__)

#: Called before each wait: (output name, attempt number, the error).
RetryHook = Callable[[str, int, Exception], None]
Sleep = Callable[[float], None]


class Refusal(NamedTuple):
    """An output refused one point: `rejected_by_<family>` is the dead-letter reason."""

    family: str
    detail: str

    @property
    def reason(self) -> str:
        return f"rejected_by_{self.family}"


class RunningOutput:
    """One output as the hub runs it: opened lazily, reopened after a failure, with its own backoff."""

    def __init__(self, name: str, opener: Callable[[], Output]) -> None:
        self.name = name
        self._opener = opener
        self.output: Output | None = None
        self.backoff = Backoff(OUTPUT_RETRY)

    @property
    def family(self) -> str:
        return self.output.family if self.output is not None else self.name

    def open(self) -> Output:
        if self.output is None:
            self.output = self._opener()
        return self.output

    def write(self, points: Sequence[Point]) -> None:
        self.open().write(points)
        self.backoff.reset()

    def close(self) -> None:
        if self.output is not None:
            self.output.close()
            self.output = None


def _given(output: Output) -> Callable[[], Output]:
    return lambda: output


class OutputSet:
    """The outputs of one service; `write` returns only when every one of them holds the batch."""

    def __init__(self, settings: Settings, names: Sequence[str] | None = None) -> None:
        self.outputs = [
            RunningOutput(name, partial(open_output, settings, name)) for name in (names or output_names(settings))
        ]

    @classmethod
    def of(cls, *outputs: Output) -> OutputSet:
        """These outputs, already open (tests, and outputs built by hand)."""
        output_set = cls.__new__(cls)
        output_set.outputs = [RunningOutput(output.name, _given(output)) for output in outputs]
        return output_set

    def open(self) -> None:
        """Open every output now (fail early on a bad configuration or an unreachable server)."""
        for running in self.outputs:
            running.open()

    def write(
        self, points: Sequence[Point], stop: threading.Event, sleep: Sleep, on_retry: RetryHook
    ) -> dict[int, Refusal]:
        """Write `points` to every output; returns {index in `points`: refusal} for points an output refused.

        Retries until every output has them; raises `StorageUnavailable` if `stop` is set first.
        """
        rejected: dict[int, Refusal] = {}
        pending = list(self.outputs)
        while pending:
            for running in list(pending):
                try:
                    running.write(points)
                except PointsRejected as exc:
                    log.warning("output=%s event=batch_rejected points=%d error=%r", running.name, len(points), exc)
                    rejected.update(self._one_by_one(running, points, stop, sleep, on_retry))
                except StorageUnavailable as exc:
                    self._note_failure(running, exc, on_retry)
                    continue
                pending.remove(running)
            if pending:
                if stop.is_set():
                    raise StorageUnavailable(f"stopped while output(s) {', '.join(r.name for r in pending)} retried")
                sleep(min(running.backoff.next_delay_s() for running in pending))
                if stop.is_set():  # the wait was cut short by a stop: no further attempt
                    raise StorageUnavailable(f"stopped while output(s) {', '.join(r.name for r in pending)} retried")
        return rejected

    def _one_by_one(
        self, running: RunningOutput, points: Sequence[Point], stop: threading.Event, sleep: Sleep, on_retry: RetryHook
    ) -> dict[int, Refusal]:
        rejected: dict[int, Refusal] = {}
        for index, point in enumerate(points):
            while True:
                try:
                    running.write([point])
                except PointsRejected as exc:
                    rejected[index] = Refusal(running.family, str(exc))
                except StorageUnavailable as exc:
                    self._note_failure(running, exc, on_retry)
                    if stop.is_set():
                        raise
                    sleep(running.backoff.next_delay_s())
                    if stop.is_set():
                        raise
                    continue
                break
        return rejected

    def _note_failure(self, running: RunningOutput, exc: StorageUnavailable, on_retry: RetryHook) -> None:
        running.close()  # reopened (and its server probed again) on the next attempt
        on_retry(running.name, running.backoff.attempts + 1, exc)

    def write_once(self, points: Sequence[Point]) -> None:
        """One attempt at every output (the monitor's statistics: the next round replaces a lost one)."""
        errors = []
        for running in self.outputs:
            try:
                running.write(points)
            except HubError as exc:
                running.close()
                errors.append(f"{running.name}: {exc}")
        if errors:
            raise StorageUnavailable("; ".join(errors))

    def close(self) -> None:
        for running in self.outputs:
            running.close()
