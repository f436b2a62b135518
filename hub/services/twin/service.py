"""The twin service's handler: queue `hub.twin` (desired changes, waiting commands, statuses, acks)
and the readings -> the twins in `twins`, and the commands that converge them.

The book decides; the handler turns what it decided into effects: each twin that changed is a
point of `twins`, written before the delivery that changed it is acked, so a change survives a
restart; a command is published (confirmed before that ack). Readings come from the telemetry
handler of this process when it consumes every partition (a `ReadingsFeed`, taken at every tick
and delivery), else from a side queue of this process (`hub.twin.readings.<host>-<pid>`:
exclusive, capped, no acks) because only the newest state and a sign of life matter, never a backlog.

It starts from the stored twins (through the outputs' reader) at its first connect and when a
standby becomes active. A standby sends nothing: the active hub converges.
"""

from __future__ import annotations

import logging
import os
import socket

from pika import DeliveryMode
from pika.spec import BasicProperties

from hub.core.config import Settings
from hub.core.contract import (
    EXCHANGE,
    Ack,
    Deferred,
    Desired,
    Presence,
    Rollout,
    command_key,
    decode,
    decode_reading,
    encode,
    is_identifier,
    now_ms,
)
from hub.core.errors import ConfigError, InvalidMessage, StorageUnavailable
from hub.core.models import DeviceModels, load_models
from hub.outputs.base import Reader
from hub.outputs.registry import open_reader
from hub.runtime import topology
from hub.runtime.delivery import Delivery
from hub.runtime.handler import NOTHING, ROLE_ACTIVE, ROLE_STANDBY, Effects, Publish
from hub.services.twin.book import Out, TwinBook
from hub.services.twin.feed import ReadingsFeed
from hub.services.twin.stored import recorded_rollouts, recorded_twins, rollout_point, twin_point

#: How often every twin is looked at (retries, expiries, silence).
CONVERGE_CHECK_S = 1.0
#: Readings kept waiting at most in the side queue; older ones are dropped first.
READINGS_MAX_LENGTH = 10_000
#: A process whose twins were read longer ago than this reads them again when the broker first
#: hands it `hub.twin` (it may have been a standby the monitor never saw: another hub stored since).
RESEED_AFTER_MS = 5_000
#: The dead-letter reason of a desired change the device's kind cannot take.
BAD_DESIRED_REASON = "twin_property"


log = logging.getLogger(__name__)


def readings_queue() -> topology.SideQueue:
    return topology.SideQueue(
        f"hub.twin.readings.{socket.gethostname()}-{os.getpid()}",
        ("telemetry.#",),
        (("x-queue-type", "classic"), ("x-max-length", READINGS_MAX_LENGTH), ("x-overflow", "drop-head")),
    )


class TwinHandler:
    name = "twin"

    def __init__(self, book: TwinBook, reader: Reader, feed: ReadingsFeed | None = None) -> None:
        """`feed`: readings come from the telemetry handler of this process, else from a side queue."""
        self.book = book
        self.reader = reader
        self.feed = feed
        side = () if feed is not None else (readings_queue(),)
        self.declaration = topology.Declaration((topology.TWIN,), side=side)
        self._side_queue = side[0].name if side else ""
        self.seeded = False
        self.was_standby = False
        self.next_check = 0
        #: Hub clock of the last read of the stored twins.
        self.seeded_at_ms = 0
        #: The role the monitor found for this process on `hub.twin` (from `tick`).
        self.role = ""
        #: Deliveries from `hub.twin` since the last connect: a hub that gets them is the active one,
        #: even while the monitor cannot tell its role yet.
        self.delivered = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, models: DeviceModels | None = None, feed: ReadingsFeed | None = None
    ) -> TwinHandler:
        """With `feed`, readings come from the telemetry of this process; else from a side queue."""
        return cls(TwinBook(models or load_models(settings.models_file)), open_reader(settings), feed)

    def on_consuming(self, now_ms: int) -> None:
        if not self.seeded:
            self._reseed(now_ms)
            self.seeded = True
        self.book.heard_from_all(now_ms)
        self.delivered = 0

    def _reseed(self, now_ms: int) -> None:
        """Start from the stored twins and rollouts (raises `StorageUnavailable` when they cannot be read)."""
        twins, rollouts = recorded_twins(self.reader), recorded_rollouts(self.reader)
        self.book.twins.clear()
        self.book.seed(twins, now_ms)
        self.book.rollouts.clear()
        self.book.seed_rollouts(rollouts)
        self.seeded_at_ms = now_ms

    def _first_delivery(self, now_ms: int) -> None:
        """The broker hands `hub.twin` to this process: if it may have waited as a standby the monitor
        did not see (no role yet), what the active hub stored since is read first. A failed read is
        logged, not raised (the delivery would be dead-lettered): it goes on from what it has."""
        if self.role == ROLE_ACTIVE or now_ms - self.seeded_at_ms < RESEED_AFTER_MS:
            return
        try:
            self._reseed(now_ms)
        except StorageUnavailable as exc:
            log.warning("service=twin event=not_reseeded error=%r", exc)

    @property
    def active(self) -> bool:
        """The broker delivers `hub.twin` to this process (the monitor says so, or deliveries do)."""
        return self.role == ROLE_ACTIVE or (self.delivered > 0 and self.role != ROLE_STANDBY)

    def handle(self, delivery: Delivery) -> Effects:
        now = now_ms()
        book = self.book
        if delivery.queue == self._side_queue:
            try:
                reading = decode_reading(delivery.body, delivery.routing_key)
            except InvalidMessage:
                return NOTHING  # telemetry refuses it; it proves nothing here
            book.on_reading(reading.device, reading.site, reading.kind, reading.readings, reading.ts, now)
            if not self.active:  # a standby stores and sends nothing; the active hub does
                return NOTHING
            return self._effects(book.take(now))
        if not self.delivered:
            self._first_delivery(now)
        self.delivered += 1
        self._take_readings()  # the readings telemetry read before this delivery come first
        key = delivery.routing_key
        prefix, _, device = key.rpartition(".")
        if not is_identifier(device):
            raise InvalidMessage("routing_key", f"{key!r} names no device")
        if prefix == "twin.desired":
            change = decode(delivery.body, Desired)
            _check_routing(change.device, device, key)
            try:
                book.on_desired(change, now)
            except ConfigError as exc:
                raise InvalidMessage(BAD_DESIRED_REASON, str(exc)) from None
        elif prefix == "twin.rollout":
            rollout = decode(delivery.body, Rollout)
            if rollout.id != device:
                raise InvalidMessage("routing_mismatch", f"body names rollout {rollout.id}, routed as {key}")
            try:
                book.on_rollout(rollout, now)
            except ConfigError as exc:
                raise InvalidMessage(BAD_DESIRED_REASON, str(exc)) from None
        elif prefix == "twin.command":
            deferred = decode(delivery.body, Deferred)
            _check_routing(deferred.device, device, key)
            book.on_deferred(deferred, now)
        elif prefix == "status":
            status = decode(delivery.body, Presence)
            _check_routing(status.device, device, key)
            book.on_status(status, now)
        elif prefix == "acks":
            ack = decode(delivery.body, Ack)
            _check_routing(ack.device, device, key)
            book.on_ack(ack, now)
        else:
            raise InvalidMessage("routing_key", f"{key!r} is no message for the twins")
        return self._effects(book.take(now))

    def tick(self, now_ms: int, role: str) -> Effects:
        self.role = role
        if role == ROLE_STANDBY:
            self.was_standby = True
            self._take_readings()
            self.book.take(now_ms, converge=False)  # what a standby saw is not for it to store
            return NOTHING
        if self.was_standby:  # the broker made this standby active: go on from what the other stored
            self.was_standby = False
            self._reseed(now_ms)
        self._take_readings()
        if not self.active:
            return NOTHING
        if now_ms >= self.next_check:
            self.next_check = now_ms + round(CONVERGE_CHECK_S * 1000)
            if self.feed is not None:  # no reading comes while telemetry does not read: not silence
                self.book.heard_from_all(self.feed.silence_from(now_ms))
            self.book.due(now_ms)
        return self._effects(self.book.take(now_ms))

    def _take_readings(self) -> None:
        """The readings the telemetry of this process handed over since, into the book (their
        effects are taken with the next `book.take`, as a side-queue reading's are)."""
        if self.feed is not None:
            self.feed.take(self.book)

    @staticmethod
    def _effects(out: Out) -> Effects:
        if not (out.twins or out.rollouts or out.sends or out.points or out.events):
            return NOTHING
        publishes = [
            Publish(
                EXCHANGE,
                command_key(send.device),
                encode(send.command),
                BasicProperties(
                    content_type="application/json",
                    delivery_mode=DeliveryMode.Persistent,
                    app_id=send.origin,
                    message_id=send.command.id,
                    timestamp=send.command.ts // 1000,
                ),
                True,
            )
            for send in out.sends
        ]
        points = [*out.points, *map(twin_point, out.twins), *map(rollout_point, out.rollouts)]
        return Effects(points=points, publishes=publishes, events=out.events)


def _check_routing(body_device: str, routed: str, key: str) -> None:
    if body_device != routed:
        raise InvalidMessage("routing_mismatch", f"body names {body_device}, routed as {key}")
