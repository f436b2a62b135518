"""Where presence gets its signs of life (readings) from, and when silence can be judged.

Presence is the one writer of `device_status`, and it must be right however the services are
laid out. So it takes readings from one of two sources, chosen when the hub starts:

- **beside the telemetry service, in one process that consumes every partition**: telemetry
  already reads every reading of every device, and hands each one to this feed: no extra copy
  of the telemetry in the broker or the hub;
- **otherwise** (`hub run --only presence`, telemetry elsewhere, or only some partitions here):
  presence consumes a queue of its own bound to `telemetry.#` (see `service.py`).

Transitions found here are written by presence, never by the feeding service. While the feeding
service cannot take deliveries (its write is being retried: InfluxDB down) the feed is paused:
silence is not judged, and when it resumes every online device counts as heard from then.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from hub.core.contract import Transport
from hub.services.presence.tracker import PresenceTracker, Transition

#: A flush of the feeding service (its write, its publishes) longer than this held up the signs
#: of every device: silence is not judged meanwhile, and counts again from its end. Shorter ones
#: are normal (a write takes milliseconds) and do not matter against 3 intervals of silence.
STALL_S = 0.3


class SignsFeed:
    """Thread-safe: fed by the telemetry thread (or presence's own consumer), read by presence."""

    def __init__(self, tracker: PresenceTracker) -> None:
        self.tracker = tracker
        self._transitions: deque[Transition] = deque()
        self._paused = threading.Event()
        #: Monotonic time since when the feeding service has been busy elsewhere (0: it is not).
        self._held_since = 0.0

    def sign(self, device: str, site: str, kind: str, protocol: Transport, device_ts: int, at_ms: int) -> None:
        transition = self.tracker.on_telemetry(device, site, kind, protocol, device_ts, at_ms)
        if transition is not None:
            self._transitions.append(transition)

    def take(self) -> list[Transition]:
        """The transitions found since the last call, for presence to write."""
        taken = []
        while self._transitions:
            taken.append(self._transitions.popleft())
        return taken

    def hold(self) -> None:
        """The feeding service stops reading for a while (a flush): signs wait behind it."""
        self._held_since = time.monotonic()

    def release(self, now: int) -> None:
        """It reads again; a long hold was no silence of the devices."""
        held_since, self._held_since = self._held_since, 0.0
        if held_since and time.monotonic() - held_since > STALL_S:
            self.tracker.heard_from_all(now)

    def pause(self) -> None:
        self._paused.set()

    def resume(self, now: int) -> None:
        if self._paused.is_set():
            self.tracker.heard_from_all(now)
            self._paused.clear()

    @property
    def paused(self) -> bool:
        """True while silence cannot be judged: the feed is paused, or held up longer than `STALL_S`."""
        held_since = self._held_since
        return self._paused.is_set() or (held_since > 0 and time.monotonic() - held_since > STALL_S)
