"""The commands service's handler: queue `hub.commands` (`commands.#`, `acks.#`) -> the `commands` lifecycle.

The ledger decides; the handler turns what it decided into effects: points to write, deliveries
held until their outcome is recorded (`hold`), released once it is, and the acks the ledger
refuses dead-lettered (`unknown_command`), including those it held a while. At every (re)connect
the ledger forgets what it held (the broker hands it all over again) and learns, through the
outputs' reader, what was settled meanwhile, by this hub or another; so does a standby that
becomes active.
"""

from __future__ import annotations

from hub.core.config import Settings
from hub.core.contract import Ack, Command, decode, now_ms, require_identifier
from hub.core.errors import InvalidIdentifier, InvalidMessage
from hub.outputs.base import Reader
from hub.outputs.registry import open_reader
from hub.runtime import topology
from hub.runtime.delivery import Delivery
from hub.runtime.handler import NOTHING, ROLE_STANDBY, Effects, Refusal
from hub.services.commands.ledger import ORIGINS, TIMEOUT_CHECK_S, CommandLedger, Recorded
from hub.services.commands.recorded import settled_commands


class CommandsHandler:
    name = "commands"
    declaration = topology.Declaration((topology.COMMANDS,))

    def __init__(self, ledger: CommandLedger, reader: Reader) -> None:
        self.ledger = ledger
        self.reader = reader
        #: The broker kept this process standby: on becoming active it learns what the other settled.
        self.was_standby = False
        self.next_check = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> CommandsHandler:
        return cls(CommandLedger(), open_reader(settings))

    def on_consuming(self, now_ms: int) -> None:
        # What was held is handed over again; what was settled meanwhile, by this hub or another, is learnt.
        self.ledger.forget_held()
        self.ledger.seed(settled_commands(self.reader))

    def handle(self, delivery: Delivery) -> Effects:
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
            recorded = self.ledger.on_ack(ack, now, token=delivery.tag)
        # Held until the ledger releases it (perhaps at once, in `recorded`).
        return _effects(recorded, hold=True, counted_sent=not delivery.redelivered)

    def tick(self, now_ms: int, role: str) -> Effects:
        if role == ROLE_STANDBY:
            self.was_standby = True
        elif self.was_standby:  # the broker made this standby active: learn what the active hub settled
            self.was_standby = False
            self.ledger.seed(settled_commands(self.reader))
        if now_ms < self.next_check:
            return NOTHING
        self.next_check = now_ms + int(TIMEOUT_CHECK_S * 1000)
        recorded = self.ledger.timed_out(now_ms)
        if not (recorded.points or recorded.released or recorded.refused):
            return NOTHING
        return _effects(recorded)


def _effects(recorded: Recorded, hold: bool = False, counted_sent: bool = True) -> Effects:
    """`counted_sent`: a redelivered command was counted as sent when it first came."""
    events = [("command_outcome", status) for status in recorded.outcomes if counted_sent or status != "sent"]
    refuse = [Refusal(r.token, r.reason, r.detail) for r in recorded.refused]
    return Effects(points=recorded.points, events=events, hold=hold, release=recorded.released, refuse=refuse)
