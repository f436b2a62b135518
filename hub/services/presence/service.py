"""The presence service: the one writer of `device_status`, from the devices' own evidence.

Status messages and MQTT last wills come from the durable quorum queue `hub.presence`, acked
once their transitions are written. Signs of life (readings) come through a `SignsFeed`: from
the telemetry service when it runs in the same process on every partition, else from a queue of presence's own
(`hub.presence.signs.<host>-<pid>`): exclusive, non-durable, capped and consumed without acks,
because only a recent sign of life matters, never a backlog of them. So presence is right
whether it runs alone (`hub run --only presence`) or beside the other services.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import msgspec
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from hub.core.contract import EXCHANGE, Presence, decode, is_identifier, now_ms
from hub.core.errors import InvalidMessage
from hub.outputs.registry import open_reader
from hub.runtime import topology
from hub.runtime.legacy_consumer import Consumer, Delivery, protocol_of
from hub.runtime.service import ROLE_STANDBY, Service
from hub.services.presence.recorded import recorded_states
from hub.services.presence.signs import SignsFeed
from hub.services.presence.tracker import PresenceTracker

log = logging.getLogger(__name__)

#: How often the presence service looks for silent devices.
SILENCE_CHECK_S = 1.0

#: After the hub (re)starts consuming, silence is counted only from this much later: the time
#: devices need to reconnect to a broker that was away (every one within 5 s, `DEVICE_RECONNECT`)
#: and for what they buffered meanwhile to pass through the hub (`python -m bench.chaos`: 100
#: devices at 500 readings/s took up to 6 s to be back, and seconds more for their backlog).
RECONNECT_GRACE_S = 10.0
#: Signs of life kept waiting at most; older ones are dropped first (only the newest matter).
SIGNS_MAX_LENGTH = 10_000


class _Stamp(msgspec.Struct):
    """The one field of a telemetry body a sign of life needs: the device's own timestamp."""

    ts: int


_stamp_decoder = msgspec.json.Decoder(_Stamp)


def signs_queue_name() -> str:
    return f"hub.presence.signs.{socket.gethostname()}-{os.getpid()}"


def signs_queue_arguments() -> dict[str, Any]:
    return {"x-queue-type": "classic", "x-max-length": SIGNS_MAX_LENGTH, "x-overflow": "drop-head"}


class PresenceService(Service):
    name = "presence"
    queue = topology.PRESENCE

    def __init__(self, *args: Any, feed: SignsFeed | None = None, **kwargs: Any) -> None:
        """With `feed`, signs of life come from another service of this process; else from a queue of its own."""
        super().__init__(*args, **kwargs)
        self.own_signs = feed is None
        self.feed = feed or SignsFeed(PresenceTracker())
        self.tracker = self.feed.tracker
        self.next_check = 0.0
        #: The monitor found this process standby: on becoming active it takes over (`_take_over`).
        self.was_standby = False
        # Before any service thread runs: a sign of life fed by telemetry must find the recorded state.
        self.reader = open_reader(self.settings)
        self.tracker.seed(recorded_states(self.reader))

    def on_start(self, consumer: Consumer) -> None:
        super().on_start(consumer)
        # The time the hub was away (or the broker) is not the devices' silence.
        self.tracker.heard_from_all(now_ms() + round(RECONNECT_GRACE_S * 1000))
        if not self.own_signs:
            return
        assert consumer.connection is not None
        signs = consumer.connection.channel()
        queue = signs_queue_name()
        signs.queue_declare(queue, exclusive=True, auto_delete=True, arguments=signs_queue_arguments())
        signs.queue_bind(queue, EXCHANGE, routing_key="telemetry.#")
        # Without acks: nothing is held for a write, so signs keep flowing while a write of this
        # service is retried (InfluxDB down), and a storage outage never looks like silence.
        signs.basic_consume(queue, self._sign_of_life, auto_ack=True)

    def handle(self, delivery: Delivery) -> None:
        status = decode(delivery.body, Presence)
        if delivery.routing_key != status.routing_key:
            raise InvalidMessage(
                "routing_mismatch", f"body says {status.routing_key}, routed as {delivery.routing_key}"
            )
        transition = self.tracker.on_status(status, now_ms())
        self.outbox.add(delivery.tag, transition.point() if transition else None)

    def _take_over(self) -> None:
        """The broker made this standby active: start from what the active hub recorded, and
        count silence only from a grace period after now (the handover is not the devices' silence)."""
        self.was_standby = False
        self.tracker.adopt(recorded_states(self.reader))
        self.tracker.heard_from_all(now_ms() + round(RECONNECT_GRACE_S * 1000))
        log.info("service=presence event=took_over devices=%d", len(self.tracker.devices))

    def _sign_of_life(
        self, _channel: BlockingChannel, method: Basic.Deliver, properties: BasicProperties, body: bytes
    ) -> None:
        """A reading proves its device alive; one that breaks the contract proves nothing (telemetry refuses it)."""
        parts = str(method.routing_key).split(".")
        if len(parts) != 4 or not all(map(is_identifier, parts[1:])):
            return
        try:
            device_ts = _stamp_decoder.decode(body).ts
        except msgspec.MsgspecError:
            return
        _prefix, site, kind, device = parts
        self.feed.sign(device, site, kind, protocol_of(properties), device_ts, now_ms())

    def tick(self, idle: bool = False) -> None:
        taken = self.feed.take()
        if self.role == ROLE_STANDBY:
            # The active hub writes `device_status`: a standby that judged silence from the few
            # signs it sees (none, beside a standby telemetry) would record devices offline.
            self.was_standby = True
            super().tick(idle)
            return
        if self.was_standby:
            self._take_over()
            taken = []
        for transition in taken:
            self.outbox.add(0, transition.point())
        now = now_ms()
        if now >= self.next_check and not self.feed.stalled():
            self.next_check = now + SILENCE_CHECK_S * 1000
            for transition in self.tracker.silent(now):
                self.outbox.add(0, transition.point())
        super().tick(idle)
