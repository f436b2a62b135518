"""The presence service's handler: the one writer of `device_status`, from the devices' own evidence.

Status messages and MQTT last wills come from the durable quorum queue `hub.presence`, acked
once their transitions are written. Signs of life (readings) come through a `SignsFeed`: from
the telemetry service when it runs in the same process on every partition, else from a side
queue of presence's own (`hub.presence.signs.<host>-<pid>`): exclusive, non-durable, capped and
consumed without acks, because only a recent sign of life matters, never a backlog of them. So
presence is right whether it runs alone (`hub run --only presence`) or beside the other services.

The handler keeps the tracker; its runner writes the transitions it returns. When it first
consumes, it starts from what `device_status` last recorded (through the outputs' reader), and
silence counts only from a grace after each (re)connect: the time the hub (or the broker) was
away is not the devices' silence. A standby (the broker keeps `hub.presence` for another hub)
records nothing; when it becomes active it takes over from what the active hub recorded.
"""

from __future__ import annotations

import logging
import os
import socket

import msgspec

from hub.core.config import Settings
from hub.core.contract import Presence, decode, is_identifier, now_ms
from hub.core.errors import InvalidMessage
from hub.outputs.base import Reader
from hub.outputs.registry import open_reader
from hub.runtime import topology
from hub.runtime.delivery import Delivery, protocol_of
from hub.runtime.handler import NOTHING, ROLE_STANDBY, Effects, Event
from hub.services.presence.recorded import recorded_states
from hub.services.presence.signs import SignsFeed
from hub.services.presence.tracker import PresenceTracker, Transition

log = logging.getLogger(__name__)

#: How often the presence service looks for silent devices.
SILENCE_CHECK_S = 1.0

#: After the hub (re)starts consuming, silence is counted only from this much later: the time
#: devices need to reconnect to a broker that was away (every one within 5 s, `DEVICE_RECONNECT`)
#: and for what they buffered meanwhile to pass through the hub (`python -m bench.chaos`: 100
#: devices at 500 readings/s took up to 6 s to be back, and seconds more for their backlog).
RECONNECT_GRACE_S = 10.0
#: Signs of life kept waiting at most in presence's own side queue; older ones are dropped first.
SIGNS_MAX_LENGTH = 10_000


class _Stamp(msgspec.Struct):
    """The one field of a telemetry body a sign of life needs: the device's own timestamp."""

    ts: int


_stamp_decoder = msgspec.json.Decoder(_Stamp)


def signs_queue() -> topology.SideQueue:
    """Presence's own copy of the readings' routing keys and stamps, when telemetry is not beside it."""
    return topology.SideQueue(
        f"hub.presence.signs.{socket.gethostname()}-{os.getpid()}",
        ("telemetry.#",),
        (("x-queue-type", "classic"), ("x-max-length", SIGNS_MAX_LENGTH), ("x-overflow", "drop-head")),
    )


class PresenceHandler:
    name = "presence"

    def __init__(self, feed: SignsFeed, reader: Reader, own_signs: bool) -> None:
        """`own_signs`: signs of life come from a side queue of presence's own, else from the
        telemetry handler of this process through `feed`."""
        self.feed = feed
        self.tracker = feed.tracker
        self.reader = reader
        side = (signs_queue(),) if own_signs else ()
        self.declaration = topology.Declaration((topology.PRESENCE,), side=side)
        self._side_queue = side[0].name if side else ""
        self.next_check = 0
        #: The broker kept this process standby: on becoming active it takes over (`_take_over`).
        self.was_standby = False
        self.seeded = False
        #: Transitions found while handling a status (signs taken first), written at the next tick.
        self._pending: list[Transition] = []

    @classmethod
    def from_settings(cls, settings: Settings, feed: SignsFeed | None = None) -> PresenceHandler:
        """With `feed`, signs of life come from the telemetry of this process; else from a side queue."""
        return cls(feed or SignsFeed(PresenceTracker()), open_reader(settings), own_signs=feed is None)

    def on_consuming(self, now_ms: int) -> None:
        if not self.seeded:  # before any sign is taken: one still streaming is not recorded online twice
            self.tracker.seed(recorded_states(self.reader))
            self.seeded = True
        # The time the hub was away (or the broker) is not the devices' silence.
        self.tracker.heard_from_all(now_ms + round(RECONNECT_GRACE_S * 1000))

    def handle(self, delivery: Delivery) -> Effects:
        if delivery.queue == self._side_queue:
            return self._sign_of_life(delivery)
        # The signs read before this status come first (a last will is told by what preceded it).
        self._pending.extend(self.feed.take())
        status = decode(delivery.body, Presence)
        if delivery.routing_key != status.routing_key:
            raise InvalidMessage(
                "routing_mismatch", f"body says {status.routing_key}, routed as {delivery.routing_key}"
            )
        transition = self.tracker.on_status(status, now_ms())
        if transition is None:
            return NOTHING
        return Effects(points=(transition.point(),), events=(_event(transition),))

    def _sign_of_life(self, delivery: Delivery) -> Effects:
        """A reading proves its device alive; one that breaks the contract proves nothing (telemetry refuses it)."""
        parts = delivery.routing_key.split(".")
        if len(parts) != 4 or not all(map(is_identifier, parts[1:])):
            return NOTHING
        try:
            device_ts = _stamp_decoder.decode(delivery.body).ts
        except msgspec.MsgspecError:
            return NOTHING
        _prefix, site, kind, device = parts
        self.feed.sign(device, site, kind, protocol_of(delivery.properties), device_ts, now_ms())
        return NOTHING

    def tick(self, now_ms: int, role: str) -> Effects:
        taken, self._pending = [*self._pending, *self.feed.take()], []
        if role == ROLE_STANDBY:
            # The active hub writes `device_status`: a standby that judged silence from the few
            # signs it sees (none, beside a standby telemetry) would record devices offline.
            self.was_standby = True
            return NOTHING
        if self.was_standby:
            self._take_over(now_ms)
            taken = []
        if now_ms >= self.next_check and not self.feed.stalled():
            self.next_check = now_ms + round(SILENCE_CHECK_S * 1000)
            taken.extend(self.tracker.silent(now_ms))
        if not taken:
            return NOTHING
        return Effects(points=[t.point() for t in taken], events=[_event(t) for t in taken])

    def _take_over(self, now_ms: int) -> None:
        """The broker made this standby active: start from what the active hub recorded, and
        count silence only from a grace period after now (the handover is not the devices' silence)."""
        self.was_standby = False
        self.tracker.adopt(recorded_states(self.reader))
        self.tracker.heard_from_all(now_ms + round(RECONNECT_GRACE_S * 1000))
        log.info("service=presence event=took_over devices=%d", len(self.tracker.devices))


def _event(transition: Transition) -> Event:
    return ("transition", "online" if transition.online else "offline", transition.reason)
