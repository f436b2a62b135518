"""The commands service: queue `hub.commands` (`commands.#`, `acks.#`) -> the `commands` lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field

from pika.spec import Basic, BasicProperties

from hub.core.contract import Ack, Command, decode, now_ms, require_identifier
from hub.core.errors import InvalidIdentifier, InvalidMessage
from hub.runtime import topology
from hub.runtime.batch import Batch
from hub.runtime.consumer import AmqpService
from hub.services.commands.ledger import ORIGINS, TIMEOUT_CHECK_S, CommandLedger, Recorded


@dataclass
class TaggedBatch(Batch):
    """A batch that also keeps each delivery tag it covers, for acking around held deliveries."""

    tags: list[int] = field(default_factory=list)

    def add(self, tag: int, line: str | None, now: float | None = None) -> None:
        super().add(tag, line, now)
        if tag:
            self.tags.append(tag)

    def reset(self) -> None:
        super().reset()
        self.tags = []


class CommandsService(AmqpService):
    name = "commands"
    queue = topology.COMMANDS

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ledger = CommandLedger()
        self.next_check = 0

    def new_outbox(self) -> Batch:
        return TaggedBatch()

    def on_message(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        now = now_ms()
        try:
            prefix, _, device = method.routing_key.partition(".")
            require_identifier(device, "device")
            if prefix == "commands":
                origin = properties.app_id if properties.app_id in ORIGINS else "cli"
                recorded = self.ledger.on_command(device, decode(body, Command), origin, now)
                recorded.released.append(method.delivery_tag)
            else:
                ack = decode(body, Ack)
                if ack.device != device:
                    raise InvalidMessage("routing_mismatch", f"ack from {ack.device} routed as {method.routing_key}")
                recorded = self.ledger.on_ack(ack, now, token=method.delivery_tag)
        except InvalidIdentifier as exc:
            self.dead_letter(method, properties, body, "routing_key", str(exc))
            self.outbox.add(method.delivery_tag, None)
            return
        except InvalidMessage as exc:
            self.dead_letter(method, properties, body, exc.reason, exc.detail)
            self.outbox.add(method.delivery_tag, None)
            return
        self._add(recorded)

    def _add(self, recorded: Recorded) -> None:
        """Lines first (tag 0: they settle nothing by themselves), then each released delivery once."""
        for line in recorded.lines:
            self.outbox.add(0, line)
        for tag in recorded.released:
            self.outbox.add(tag, None)

    def settle(self, batch: Batch) -> None:
        """Ack what `batch` covers, but never a held early ack or a delivery of the next batch.

        One `multiple` ack covers the batch's tags below every still-unsettled tag (held early
        acks, and acks released into the outbox that is open now); the few above it are acked
        one by one.
        """
        assert isinstance(batch, TaggedBatch) and isinstance(self.outbox, TaggedBatch)
        assert self.channel is not None
        floor = min([*self.ledger.held_tokens(), *self.outbox.tags], default=None)
        below = [tag for tag in batch.tags if floor is None or tag < floor]
        if below:
            self.channel.basic_ack(delivery_tag=max(below), multiple=True)
        for tag in batch.tags:
            if floor is not None and tag > floor:
                self.channel.basic_ack(delivery_tag=tag, multiple=False)

    def on_connection_lost(self) -> None:
        super().on_connection_lost()
        self.ledger.forget_held()

    def tick(self) -> None:
        now = now_ms()
        if now >= self.next_check:
            self.next_check = now + int(TIMEOUT_CHECK_S * 1000)
            self._add(self.ledger.timed_out(now))
        super().tick()
