"""The bounded buffer of readings a device has produced but the broker has not confirmed.

A reading waits here until its connection is up, is handed over (becoming in flight under a
token: the MQTT message id or the STOMP receipt id) and leaves only when the broker confirms
it (PUBACK / RECEIPT). When the connection drops, what was in flight goes back to the front,
in `seq` order, and is sent again after the reconnect: at least once, never out of order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator

#: Unconfirmed readings one device keeps (~17 minutes at one reading a second); beyond it the oldest go.
OUTBOX_MAX_READINGS = 1_000
#: Readings one connection may have unconfirmed at once; the rest wait in order.
MAX_IN_FLIGHT = 100

Entry = tuple[int, bytes]


class Outbox:
    def __init__(self, capacity: int = OUTBOX_MAX_READINGS, window: int = MAX_IN_FLIGHT) -> None:
        self.capacity, self.window = capacity, window
        self._waiting: deque[Entry] = deque()
        self._in_flight: dict[Hashable, Entry] = {}
        #: Readings thrown away because the buffer was full (the oldest go first).
        self.dropped = 0
        self.confirmed = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def add(self, seq: int, body: bytes) -> None:
        while len(self) >= self.capacity and self._waiting:
            self._waiting.popleft()
            self.dropped += 1
        self._waiting.append((seq, body))

    def sendable(self) -> Iterator[Entry]:
        """Waiting readings in order, as long as the in-flight window has room; each must be `sent` or `unsent`."""
        room = self.window - len(self._in_flight)
        while self._waiting and room > 0:
            room -= 1
            yield self._waiting.popleft()

    def sent(self, token: Hashable, entry: Entry) -> None:
        self._in_flight[token] = entry

    def unsent(self, entry: Entry) -> None:
        """Put back a reading that could not be handed over (the connection just went away)."""
        self._waiting.appendleft(entry)

    def confirm(self, token: Hashable) -> bool:
        if self._in_flight.pop(token, None) is None:
            return False
        self.confirmed += 1
        return True

    def requeue_in_flight(self) -> int:
        """The connection is gone: unconfirmed readings go back to the front, oldest first."""
        back = sorted(self._in_flight.values())
        self._in_flight.clear()
        self._waiting.extendleft(reversed(back))
        return len(back)

    def seqs(self) -> list[int]:
        return sorted([seq for seq, _ in self._waiting] + [seq for seq, _ in self._in_flight.values()])
