"""Where the twin service gets the readings from, chosen when the hub starts (as presence's signs).

- **beside the telemetry service, in one process that consumes every partition**: telemetry
  already decodes every reading of every device and drops it here: no extra queue a reading is
  routed to in the broker;
- **otherwise** (`hub run --only twin`, telemetry elsewhere, or only some partitions here): the
  twin consumes a side queue of its own bound to `telemetry.#` (`service.readings_queue`).

Readings wait here, decoded, until the twin takes them in its own thread (`take`): appending to
and popping from a deque are thread-safe, so the telemetry hot path costs one append (a batch:
one `extend`). Only the newest state and a sign of life matter: the feed keeps at most
`MAX_WAITING_READINGS`, dropping the oldest, as the side queue would.

While telemetry does not read (disconnected, retrying a write, or in a write longer than
`STALL_S`), no reading comes: silence counts only from when it reads again (`silence_from`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

from hub.core.contract import Reading
from hub.runtime.snapshot import Snapshot
from hub.services.twin.book import TwinBook

#: Readings waiting for the twin at most (the oldest are dropped first), as `READINGS_MAX_LENGTH`
#: caps the side queue: the twin takes them at every tick and delivery, so this is only reached
#: while it cannot (a write of its own retried).
MAX_WAITING_READINGS = 10_000


class ReadingsFeed:
    """Thread-safe hand-over: `reading` and `batch` from telemetry's thread, `take` from the twin's."""

    def __init__(self, source: Callable[[], Snapshot] | None = None) -> None:
        #: The snapshot of the runner that feeds it (set once the runners are built).
        self.source = source
        #: Each reading with the hub clock when telemetry read it.
        self._readings: deque[tuple[Reading, int]] = deque(maxlen=MAX_WAITING_READINGS)

    def reading(self, reading: Reading, at_ms: int) -> None:
        self._readings.append((reading, at_ms))

    def batch(self, readings: Iterable[Reading], at_ms: int) -> None:
        """A batch's entries, oldest first (the book keeps the newest report of each actuator)."""
        self._readings.extend((reading, at_ms) for reading in readings)

    def take(self, book: TwinBook) -> int:
        """Apply the waiting readings to `book` as the side queue's would be; how many there were."""
        readings, on_reading, taken = self._readings, book.on_reading, 0
        while readings:
            reading, at_ms = readings.popleft()
            on_reading(reading.device, reading.site, reading.kind, reading.readings, reading.ts, at_ms)
            taken += 1
        return taken

    def silence_from(self, now_ms: int) -> int:
        """The hub clock silence counts from: now while the feeding runner does not read, else when
        it last started reading again (0 without a source)."""
        if self.source is None:
            return 0
        snapshot = self.source()
        return now_ms if snapshot.stalled(time.monotonic()) else snapshot.reading_since_ms
