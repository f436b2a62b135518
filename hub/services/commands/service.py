"""The commands service: queue `hub.commands` (`commands.#`, `acks.#`) -> the `commands` lifecycle.

The ledger decides; this service carries it out: points into the outbox, deliveries settled once
their points are written, and the acks the ledger refuses dead-lettered (`unknown_command`),
including those it held a while, whose deliveries it keeps until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.core.contract import Ack, Command, decode, now_ms, require_identifier
from hub.core.errors import InvalidIdentifier, InvalidMessage
from hub.core.points import Point
from hub.outputs.registry import open_reader
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.legacy_consumer import Consumer, Delivery
from hub.runtime.service import ROLE_STANDBY, Service
from hub.services.commands.ledger import ORIGINS, TIMEOUT_CHECK_S, CommandLedger, Recorded
from hub.services.commands.recorded import settled_commands


@dataclass
class TaggedBatch(Batch):
    """A batch that also keeps each delivery tag it covers, for acking around held deliveries."""

    tags: list[int] = field(default_factory=list)

    def add(self, tag: int, point: Point | None = None, now: float | None = None, source: Any = None) -> None:
        super().add(tag, point, now, source)
        if tag:
            self.tags.append(tag)

    def reset(self) -> None:
        super().reset()
        self.tags = []


class CommandsService(Service):
    name = "commands"
    queue = topology.COMMANDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ledger = CommandLedger()
        #: The monitor found this process standby: on becoming active it learns what the other settled.
        self.was_standby = False
        #: Ack deliveries handed to the ledger and not yet settled by it, by tag: a held one may be refused later.
        self.acks: dict[int, Delivery] = {}
        self.next_check = 0
        self.reader = open_reader(self.settings)

    def on_start(self, consumer: Consumer) -> None:
        super().on_start(consumer)
        # At every (re)connect: what was settled, by this hub or another, while it was not consuming.
        self.ledger.seed(settled_commands(self.reader))

    def new_outbox(self) -> Batch:
        return TaggedBatch()

    def handle(self, delivery: Delivery) -> None:
        now = now_ms()
        prefix, _, device = delivery.routing_key.partition(".")
        try:
            require_identifier(device, "device")
        except InvalidIdentifier as exc:
            raise InvalidMessage("routing_key", str(exc)) from None
        properties = delivery.properties
        if prefix == "commands":
            origin = properties.app_id if properties.app_id in ORIGINS else "cli"
            recorded = self.ledger.on_command(device, decode(delivery.body, Command), origin, now, delivery.tag)
        else:
            ack = decode(delivery.body, Ack)
            if ack.device != device:
                raise InvalidMessage("routing_mismatch", f"ack from {ack.device} routed as {delivery.routing_key}")
            self.acks[delivery.tag] = delivery
            recorded = self.ledger.on_ack(ack, now, token=delivery.tag)
        self._add(recorded)

    def _add(self, recorded: Recorded) -> None:
        """Points first (tag 0: they settle nothing by themselves), then each released delivery once,
        then each refused one, dead-lettered (its confirm awaited before the batch's ack)."""
        for point in recorded.points:
            self.outbox.add(0, point)
        for tag in recorded.released:
            self.acks.pop(tag, None)
            self.outbox.add(tag)
        for refused in recorded.refused:
            delivery = self.acks.pop(refused.token, None)
            if delivery is not None:
                self.dead_letter(delivery, refused.reason, refused.detail)
                self.outbox.add(delivery.tag)

    def settle(self, batch: Batch) -> None:
        """Ack what `batch` covers, but never a held early ack or a delivery of the next batch.

        One `multiple` ack covers the batch's tags below every still-unsettled tag (held early
        acks, and acks released into the outbox that is open now); the few above it are acked
        one by one.
        """
        assert isinstance(batch, TaggedBatch) and isinstance(self.outbox, TaggedBatch)
        floor = min([*self.ledger.held_tokens(), *self.outbox.tags], default=None)
        below = [tag for tag in batch.tags if floor is None or tag < floor]
        if below:
            self.consumer.ack_through(max(below))
        for tag in batch.tags:
            if floor is not None and tag > floor:
                self.consumer.ack(tag)

    def on_connection_lost(self) -> None:
        super().on_connection_lost()
        self.ledger.forget_held()
        self.acks.clear()

    def tick(self, idle: bool = False) -> None:
        if self.role == ROLE_STANDBY:
            self.was_standby = True
        elif self.was_standby:  # the broker made this standby active: learn what the active hub settled
            self.was_standby = False
            self.ledger.seed(settled_commands(self.reader))
        now = now_ms()
        if now >= self.next_check:
            self.next_check = now + int(TIMEOUT_CHECK_S * 1000)
            self._add(self.ledger.timed_out(now))
        super().tick(idle)
