"""Command outcomes: every command and ack on exchange `iot` becomes its lifecycle in `commands`.

Queue `hub.commands` sees `commands.#` (what the CLI and rules send: `sent`, origin from the
AMQP app_id) and `acks.#` (the device's answer: ok/error/unsupported/expired, with the round
trip from the command's `ts` to the ack reaching the hub). A command with no ack by its
`expires` (plus `TIMEOUT_GRACE_MS`) is recorded as `timeout`. `CommandLedger` is the pure part.

An ack can reach the queue before its own command: the command goes through the quorum
queue's consensus while a device's classic subscription queue hands it over at once. Such an
early ack is held (its delivery unacked) for `ORPHAN_ACK_GRACE_MS`; when the command arrives
both are recorded with the command's name, origin and round trip, and only then is the ack's
delivery acked. An ack still unmatched after the grace is recorded as command `unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hub.core.contract import Ack, Command
from hub.core.points import FieldValue, Point
from hub.runtime import topology
from hub.runtime.metrics import COMMAND_OUTCOMES

#: Acks may arrive this long after `expires` and still count (device clocks, broker queues).
TIMEOUT_GRACE_MS = 2_000
#: How often the ledger looks for commands past their expiry and early acks past their grace.
TIMEOUT_CHECK_S = 1.0
ORIGINS = ("cli", "rule")
#: Pending commands kept at most (older ones are dropped first); bounds memory under floods.
MAX_PENDING = 100_000
#: An ack whose command has not been seen yet waits this long for it before it counts as `unknown`.
ORPHAN_ACK_GRACE_MS = 5_000
#: Early acks held at most (the oldest is recorded as `unknown` first). Held deliveries stay
#: unacked and count against the queue's prefetch, so this stays well below it.
MAX_EARLY_ACKS = topology.COMMANDS.prefetch // 2
#: Ids of acks already recorded as `unknown`, remembered so their late command never times out.
MAX_ANSWERED = 10_000
#: Command name and origin recorded for an ack whose command the hub never saw.
UNKNOWN_COMMAND = "unknown"
UNKNOWN_ORIGIN = "cli"


@dataclass(frozen=True)
class Sent:
    device: str
    command: Command
    origin: str


@dataclass(frozen=True)
class EarlyAck:
    ack: Ack
    at_ms: int
    #: Opaque to the ledger: the caller's handle on the delivery (its tag), released with the point.
    token: int


@dataclass
class Recorded:
    """The points one event produces, and the held tokens those points now account for."""

    points: list[Point] = field(default_factory=list)
    #: Tokens of acks whose point is in `points`: settle them once `points` are written.
    released: list[int] = field(default_factory=list)

    def extend(self, other: Recorded) -> None:
        self.points.extend(other.points)
        self.released.extend(other.released)


def outcome_point(
    device: str,
    command: str,
    status: str,
    origin: str,
    command_id: str,
    ts: int,
    detail: str = "",
    rtt_ms: float | None = None,
) -> Point:
    fields: dict[str, FieldValue] = {"id": command_id, "detail": detail}
    if rtt_ms is not None:
        fields["rtt_ms"] = float(rtt_ms)
    return Point("commands", {"device": device, "command": command, "status": status, "origin": origin}, fields, ts)


class CommandLedger:
    """Commands waiting for their ack, acks waiting for their command, and the points each event produces."""

    def __init__(self, max_early_acks: int = MAX_EARLY_ACKS) -> None:
        self.pending: dict[str, Sent] = {}
        self.early: dict[str, EarlyAck] = {}
        self.answered: dict[str, None] = {}
        self.max_early_acks = max_early_acks

    def on_command(self, device: str, command: Command, origin: str, at_ms: int) -> Recorded:
        COMMAND_OUTCOMES.labels("sent").inc()
        early = self.early.pop(command.id, None)
        if early is not None:  # its ack came first: the whole lifecycle at once, sent stamped first
            sent = Sent(device, command, origin)
            return Recorded(
                [
                    outcome_point(device, command.command, "sent", origin, command.id, min(at_ms, early.at_ms)),
                    self._outcome(sent, early.ack, early.at_ms),
                ],
                [early.token],
            )
        sent_point = outcome_point(device, command.command, "sent", origin, command.id, at_ms)
        if command.id in self.answered:  # its ack was recorded as unknown already: it must not time out
            del self.answered[command.id]
            return Recorded([sent_point])
        if len(self.pending) >= MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))
        self.pending[command.id] = Sent(device, command, origin)
        return Recorded([sent_point])

    def on_ack(self, ack: Ack, at_ms: int, token: int = 0) -> Recorded:
        """Record the ack, or hold it (nothing recorded, `token` not released) until its command comes."""
        COMMAND_OUTCOMES.labels(ack.status).inc()
        sent = self.pending.pop(ack.id, None)
        if sent is not None:
            return Recorded([self._outcome(sent, ack, at_ms)], [token])
        if ack.id in self.early:  # a second ack for the same command: no command to wait for twice
            return self._unknown(EarlyAck(ack, at_ms, token))
        recorded = Recorded()
        if len(self.early) >= self.max_early_acks:
            recorded.extend(self._unknown(self.early.pop(next(iter(self.early)))))
        self.early[ack.id] = EarlyAck(ack, at_ms, token)
        return recorded

    def timed_out(self, now: int) -> Recorded:
        """Commands past their expiry (`timeout`) and early acks past their grace (`unknown`)."""
        recorded = Recorded()
        late = [s for s in self.pending.values() if now > s.command.expires + TIMEOUT_GRACE_MS]
        for sent in late:
            del self.pending[sent.command.id]
            COMMAND_OUTCOMES.labels("timeout").inc()
            recorded.points.append(
                outcome_point(
                    sent.device, sent.command.command, "timeout", sent.origin, sent.command.id, now, "no ack by expires"
                )
            )
        orphans = [e for e in self.early.values() if now > e.at_ms + ORPHAN_ACK_GRACE_MS]
        for early in orphans:
            del self.early[early.ack.id]
            recorded.extend(self._unknown(early))
        return recorded

    def held_tokens(self) -> list[int]:
        return [early.token for early in self.early.values()]

    def forget_held(self) -> None:
        """Drop the early acks (their deliveries were not acked: the broker sends them again)."""
        self.early.clear()

    def _outcome(self, sent: Sent, ack: Ack, at_ms: int) -> Point:
        rtt = max(0, at_ms - sent.command.ts)
        return outcome_point(ack.device, sent.command.command, ack.status, sent.origin, ack.id, at_ms, ack.detail, rtt)

    def _unknown(self, early: EarlyAck) -> Recorded:
        """Sent before this hub started, already timed out, or never seen within the grace."""
        ack = early.ack
        if len(self.answered) >= MAX_ANSWERED:
            self.answered.pop(next(iter(self.answered)))
        self.answered[ack.id] = None
        unknown = outcome_point(
            ack.device, UNKNOWN_COMMAND, ack.status, UNKNOWN_ORIGIN, ack.id, early.at_ms, ack.detail
        )
        return Recorded([unknown], [early.token])
