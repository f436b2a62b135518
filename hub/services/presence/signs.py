"""Where presence gets its signs of life (readings) from, and when silence can be judged.

Presence is the one writer of `device_status`, and it must be right however the services are
laid out. So it takes readings from one of two sources, chosen when the hub starts:

- **beside the telemetry service, in one process that consumes every partition**: telemetry
  already reads every reading of every device, and drops each one's sign of life into this
  feed: no extra copy of the telemetry in the broker or the hub;
- **otherwise** (`hub run --only presence`, telemetry elsewhere, or only some partitions here):
  presence consumes a side queue of its own bound to `telemetry.#` (see `service.py`).

Signs wait here, raw, until presence takes them in its own thread (`take`): the tracker has one
thread, and presence applies what it recorded before any sign (after a restart) first. Only
recent signs matter: the feed keeps at most `MAX_WAITING_SIGNS`, dropping the oldest.

While the feeding runner does not read (disconnected, retrying a write, or in a write longer than
`STALL_S`) its snapshot says it is stalled: silence is not judged meanwhile, and counts again from
when it reads again (`Snapshot.reading_since_ms`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from hub.core.contract import Transport
from hub.runtime.snapshot import Snapshot
from hub.services.presence.tracker import PresenceTracker, Transition

#: Signs waiting for presence at most (the oldest are dropped first): presence takes them every
#: few hundred milliseconds, so this is only reached while it cannot (a write of its own retried).
MAX_WAITING_SIGNS = 100_000

#: One sign of life: device, site, kind, protocol, the device's timestamp, the hub clock when read.
Sign = tuple[str, str, str, Transport, int, int]


class SignsFeed:
    """Thread-safe hand-over: `sign` from the feeding thread, `take` and `stalled` from presence's."""

    def __init__(self, tracker: PresenceTracker, source: Callable[[], Snapshot] | None = None) -> None:
        self.tracker = tracker
        #: The snapshot of the runner that feeds it (None: presence's own runner, which never stalls
        #: its side queue: it is read without acks, even while a write of presence is retried).
        self.source = source
        self._signs: deque[Sign] = deque(maxlen=MAX_WAITING_SIGNS)

    def sign(self, device: str, site: str, kind: str, protocol: Transport, device_ts: int, at_ms: int) -> None:
        self._signs.append((device, site, kind, protocol, device_ts, at_ms))

    def take(self) -> list[Transition]:
        """Apply the waiting signs to the tracker; the transitions they caused, for presence to write."""
        transitions = []
        signs, on_telemetry = self._signs, self.tracker.on_telemetry
        while signs:
            transition = on_telemetry(*signs.popleft())
            if transition is not None:
                transitions.append(transition)
        return transitions

    def stalled(self) -> bool:
        """True while silence cannot be judged: the feeding runner is not reading. Every device
        counts as heard from when it last started reading again."""
        if self.source is None:
            return False
        snapshot = self.source()
        self.tracker.heard_from_all(snapshot.reading_since_ms)
        return snapshot.stalled(time.monotonic())
