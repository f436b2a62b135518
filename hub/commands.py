"""Command outcomes: every command and ack on exchange `iot` becomes its lifecycle in `commands`.

Queue `hub.commands` sees `commands.#` (what the CLI and rules send: `sent`, origin from the
AMQP app_id) and `acks.#` (the device's answer: ok/error/unsupported/expired, with the round
trip from the command's `ts` to the ack reaching the hub). A command with no ack by its
`expires` (plus `TIMEOUT_GRACE_MS`) is recorded as `timeout`. `CommandLedger` is the pure part.
"""

from __future__ import annotations

from dataclasses import dataclass

from pika.spec import Basic, BasicProperties

from hub import topology
from hub.consumer import AmqpService
from hub.contract import Ack, Command, decode, now_ms, require_identifier
from hub.errors import InvalidIdentifier, InvalidMessage
from hub.metrics import COMMAND_OUTCOMES
from hub.store.lineprotocol import FieldValue, point

#: Acks may arrive this long after `expires` and still count (device clocks, broker queues).
TIMEOUT_GRACE_MS = 2_000
#: How often the ledger looks for commands past their expiry.
TIMEOUT_CHECK_S = 1.0
ORIGINS = ("cli", "rule")
#: Pending commands kept at most (older ones are dropped first); bounds memory under floods.
MAX_PENDING = 100_000


@dataclass(frozen=True)
class Sent:
    device: str
    command: Command
    origin: str


def outcome_line(
    device: str,
    command: str,
    status: str,
    origin: str,
    command_id: str,
    ts: int,
    detail: str = "",
    rtt_ms: float | None = None,
) -> str:
    fields: dict[str, FieldValue] = {"id": command_id, "detail": detail}
    if rtt_ms is not None:
        fields["rtt_ms"] = float(rtt_ms)
    return point("commands", {"device": device, "command": command, "status": status, "origin": origin}, fields, ts)


class CommandLedger:
    """Commands waiting for their ack, and the points each event produces."""

    def __init__(self) -> None:
        self.pending: dict[str, Sent] = {}

    def on_command(self, device: str, command: Command, origin: str, at_ms: int) -> str:
        if len(self.pending) >= MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
        self.pending[command.id] = Sent(device, command, origin)
        COMMAND_OUTCOMES.labels("sent").inc()
        return outcome_line(device, command.command, "sent", origin, command.id, at_ms)

    def on_ack(self, ack: Ack, at_ms: int) -> str:
        sent = self.pending.pop(ack.id, None)
        COMMAND_OUTCOMES.labels(ack.status).inc()
        if sent is None:  # sent before this hub started, or already timed out
            return outcome_line(ack.device, "unknown", ack.status, "cli", ack.id, at_ms, ack.detail)
        rtt = max(0, at_ms - sent.command.ts)
        return outcome_line(ack.device, sent.command.command, ack.status, sent.origin, ack.id, at_ms, ack.detail, rtt)

    def timed_out(self, now: int) -> list[str]:
        late = [s for s in self.pending.values() if now > s.command.expires + TIMEOUT_GRACE_MS]
        lines = []
        for sent in late:
            del self.pending[sent.command.id]
            COMMAND_OUTCOMES.labels("timeout").inc()
            lines.append(
                outcome_line(
                    sent.device, sent.command.command, "timeout", sent.origin, sent.command.id, now, "no ack by expires"
                )
            )
        return lines


class CommandsService(AmqpService):
    name = "commands"
    queue = topology.COMMANDS

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.ledger = CommandLedger()
        self.next_check = 0

    def on_message(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        now = now_ms()
        try:
            prefix, _, device = method.routing_key.partition(".")
            require_identifier(device, "device")
            if prefix == "commands":
                origin = properties.app_id if properties.app_id in ORIGINS else "cli"
                line = self.ledger.on_command(device, decode(body, Command), origin, now)
            else:
                ack = decode(body, Ack)
                if ack.device != device:
                    raise InvalidMessage("routing_mismatch", f"ack from {ack.device} routed as {method.routing_key}")
                line = self.ledger.on_ack(ack, now)
        except InvalidIdentifier as exc:
            self.dead_letter(method, properties, body, "routing_key", str(exc))
            self.outbox.add(method.delivery_tag, None)
            return
        except InvalidMessage as exc:
            self.dead_letter(method, properties, body, exc.reason, exc.detail)
            self.outbox.add(method.delivery_tag, None)
            return
        self.outbox.add(method.delivery_tag, line)

    def tick(self) -> None:
        now = now_ms()
        if now >= self.next_check:
            self.next_check = now + int(TIMEOUT_CHECK_S * 1000)
            for line in self.ledger.timed_out(now):
                self.outbox.add(0, line)
        super().tick()
