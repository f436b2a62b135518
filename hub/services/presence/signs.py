"""Where presence gets its signs of life (readings) from, and when silence can be judged.

Presence is the one writer of `device_status`, and it must be right however the services are
laid out. So it takes readings from one of two sources, chosen when the hub starts:

- **beside the rules service, in one process**: rules already reads every reading of every
  device (its queue is single-instance), and hands each one to this feed: no extra copy of the
  telemetry in the broker or the hub;
- **without rules in its process** (`hub run --only presence`, or rules elsewhere): presence
  consumes a queue of its own bound to `telemetry.#` (see `service.py`).

Transitions found here are written by presence, never by the feeding service. While the feeding
service cannot take deliveries (its write is being retried: InfluxDB down) the feed is paused:
silence is not judged, and when it resumes every online device counts as heard from then.
"""

from __future__ import annotations

import threading
from collections import deque

from hub.core.contract import Transport
from hub.services.presence.tracker import PresenceTracker, Transition


class SignsFeed:
    """Thread-safe: fed by the rules thread (or presence's own consumer), read by presence."""

    def __init__(self, tracker: PresenceTracker) -> None:
        self.tracker = tracker
        self._transitions: deque[Transition] = deque()
        self._paused = threading.Event()

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

    def pause(self) -> None:
        self._paused.set()

    def resume(self, now: int) -> None:
        if self._paused.is_set():
            self.tracker.heard_from_all(now)
            self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()
