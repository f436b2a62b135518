"""The bounded buffer of readings a device has produced but the broker has not confirmed.

A reading waits here until its connection is up, is handed over (becoming in flight under a
token: the MQTT message id or the STOMP receipt id) and leaves only when the broker confirms
it (PUBACK / RECEIPT). When the connection drops, what was in flight goes back to the front,
in `seq` order, and is sent again after the reconnect: at least once, never out of order.
Several waiting readings may leave as one message (`sendable_groups`: a batch), confirmed together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator

#: Unconfirmed readings one device keeps (~17 minutes at one reading a second); beyond it the oldest go.
OUTBOX_MAX_READINGS = 1_000
#: Readings one connection may have unconfirmed at once; the rest wait in order.
MAX_IN_FLIGHT = 100

Entry = tuple[int, bytes]
Group = list[Entry]


class Outbox:
    def __init__(self, capacity: int = OUTBOX_MAX_READINGS, window: int = MAX_IN_FLIGHT) -> None:
        self.capacity, self.window = capacity, window
        self._waiting: deque[Entry] = deque()
        self._in_flight: dict[Hashable, Group] = {}
        #: Readings thrown away because the buffer was full (the oldest go first).
        self.dropped = 0
        self.confirmed = 0

    def __len__(self) -> int:
        return len(self._waiting) + sum(map(len, self._in_flight.values()))

    @property
    def in_flight(self) -> int:
        """Messages handed over and not confirmed yet (a batch is one)."""
        return len(self._in_flight)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

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

    def sendable_groups(self, most: int, max_bytes: int) -> Iterator[Group]:
        """Waiting readings in order, up to `most` a group and `max_bytes` of their bodies (at least one),
        as long as the in-flight window (in messages) has room; each group must be `sent` or `unsent`."""
        room = self.window - len(self._in_flight)
        while self._waiting and room > 0:
            room -= 1
            group = [self._waiting.popleft()]
            size = len(group[0][1])
            while self._waiting and len(group) < most and size + len(self._waiting[0][1]) <= max_bytes:
                entry = self._waiting.popleft()
                group.append(entry)
                size += len(entry[1])
            yield group

    def sent(self, token: Hashable, entry: Entry | Group) -> None:
        self._in_flight[token] = entry if isinstance(entry, list) else [entry]

    def unsent(self, entry: Entry | Group) -> None:
        """Put back what could not be handed over (the connection just went away)."""
        self._waiting.extendleft(reversed(entry if isinstance(entry, list) else [entry]))

    def confirm(self, token: Hashable) -> bool:
        group = self._in_flight.pop(token, None)
        if group is None:
            return False
        self.confirmed += len(group)
        return True

    def requeue_in_flight(self) -> int:
        """The connection is gone: unconfirmed readings go back to the front, oldest first."""
        back = sorted(entry for group in self._in_flight.values() for entry in group)
        self._in_flight.clear()
        self._waiting.extendleft(reversed(back))
        return len(back)

    def seqs(self) -> list[int]:
        in_flight = [seq for group in self._in_flight.values() for seq, _ in group]
        return sorted([seq for seq, _ in self._waiting] + in_flight)
