"""Command outcomes: every command and ack on exchange `iot` becomes its lifecycle in `commands`.

Queue `hub.commands` sees `commands.#` (what the CLI and rules send: `sent`, origin from the
AMQP app_id) and `acks.#` (the device's answer: ok/error/unsupported/expired). Every command
gets exactly one lifecycle: `sent`, stamped with the command's own `ts`, then one outcome,
stamped with the device's ack `ts`, its round trip measured between those two times (not from
when the hub got round to reading them), or `timeout`, stamped at `expires`, when no ack came.
Stamped by the exchange's own times, a record written twice (after a redelivery) is the same
point, and records of different commands never share a timestamp because the hub read them in
one burst. `CommandLedger` is the pure part.

A command's delivery stays unacked until its outcome is recorded, so a hub that stops (even
SIGKILLed) loses no pending command: the broker hands it over again, before its ack. A command
the hub first sees after its expiry (it was away) still waits `LATE_COMMAND_GRACE_MS` for its
ack to come through the backlog before it counts as a timeout.

An ack can reach the queue before its own command: the command goes through the quorum
queue's consensus while a device's classic subscription queue hands it over at once. Such an
early ack is held (its delivery unacked) for `ORPHAN_ACK_GRACE_MS`; when the command arrives
both are recorded, and only then are both deliveries acked. An ack still unmatched after the
grace is recorded as command `unknown`.
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
#: A command first seen after its expiry (the hub was away) waits this long for its ack.
LATE_COMMAND_GRACE_MS = 5_000
#: Pending commands held at most (their deliveries stay unacked and count against the queue's
#: prefetch); beyond it the oldest is let go and its ack, if it ever comes, counts as `unknown`.
MAX_PENDING = topology.COMMANDS.prefetch // 2
#: An ack whose command has not been seen yet waits this long for it before it counts as `unknown`.
ORPHAN_ACK_GRACE_MS = 5_000
#: Early acks held at most (the oldest is recorded as `unknown` first). Held deliveries stay
#: unacked and count against the queue's prefetch, so this stays well below it.
MAX_EARLY_ACKS = topology.COMMANDS.prefetch // 4
#: Ids of acks already recorded as `unknown`, remembered so their late command never times out.
MAX_ANSWERED = 10_000
#: The detail of a `timeout`.
NO_ACK = "no ack by expires"
#: Command name and origin recorded for an ack whose command the hub never saw.
UNKNOWN_COMMAND = "unknown"
UNKNOWN_ORIGIN = "cli"


@dataclass(frozen=True)
class Sent:
    device: str
    command: Command
    origin: str
    #: The command's delivery, released with its outcome.
    token: int = 0
    #: Hub clock when the hub first saw it.
    seen_at_ms: int = 0

    @property
    def deadline_ms(self) -> int:
        """When it times out: its expiry (plus grace), later if the hub only saw it after that."""
        return max(self.command.expires, self.seen_at_ms + LATE_COMMAND_GRACE_MS) + TIMEOUT_GRACE_MS


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

    def __post_init__(self) -> None:
        self.released = [token for token in self.released if token]

    def release(self, token: int) -> None:
        if token:
            self.released.append(token)

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
        #: Ids of commands recorded as `timeout`: an ack that comes later is settled, not recorded again.
        self.given_up: dict[str, None] = {}
        self.max_early_acks = max_early_acks

    def on_command(self, device: str, command: Command, origin: str, at_ms: int, token: int = 0) -> Recorded:
        """Record `sent`; the command's delivery (`token`) is held until its outcome is recorded."""
        COMMAND_OUTCOMES.labels("sent").inc()
        sent = Sent(device, command, origin, token, at_ms)
        sent_point = outcome_point(device, command.command, "sent", origin, command.id, command.ts)
        early = self.early.pop(command.id, None)
        if early is not None:  # its ack came first: the whole lifecycle at once
            return Recorded([sent_point, self._outcome(sent, early.ack)], [early.token, token])
        if command.id in self.answered:  # its ack was recorded as unknown already: it must not time out
            del self.answered[command.id]
            return Recorded([sent_point], [token])
        recorded = Recorded([sent_point])
        previous = self.pending.pop(command.id, None)
        if previous is not None:  # the same command twice: one lifecycle, when it was first seen
            sent = Sent(device, command, origin, token, previous.seen_at_ms)
            recorded.release(previous.token)
        elif len(self.pending) >= MAX_PENDING:
            recorded.release(self.pending.pop(next(iter(self.pending))).token)
        self.pending[command.id] = sent
        return recorded

    def on_ack(self, ack: Ack, at_ms: int, token: int = 0) -> Recorded:
        """Record the ack, or hold it (nothing recorded, `token` not released) until its command comes."""
        COMMAND_OUTCOMES.labels(ack.status).inc()
        sent = self.pending.pop(ack.id, None)
        if sent is not None:
            return Recorded([self._outcome(sent, ack)], [sent.token, token])
        if ack.id in self.given_up:  # its outcome is `timeout` already: one lifecycle per command
            return Recorded([], [token])
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
        late = [s for s in self.pending.values() if now > s.deadline_ms]
        for sent in late:
            del self.pending[sent.command.id]
            COMMAND_OUTCOMES.labels("timeout").inc()
            command = sent.command
            recorded.points.append(
                outcome_point(sent.device, command.command, "timeout", sent.origin, command.id, command.expires, NO_ACK)
            )
            recorded.release(sent.token)
            if len(self.given_up) >= MAX_ANSWERED:
                self.given_up.pop(next(iter(self.given_up)))
            self.given_up[command.id] = None
        orphans = [e for e in self.early.values() if now > e.at_ms + ORPHAN_ACK_GRACE_MS]
        for early in orphans:
            del self.early[early.ack.id]
            recorded.extend(self._unknown(early))
        return recorded

    def held_tokens(self) -> list[int]:
        """Deliveries held unacked: early acks and pending commands."""
        return [e.token for e in self.early.values() if e.token] + [s.token for s in self.pending.values() if s.token]

    def forget_held(self) -> None:
        """Drop what was held (its deliveries were not acked: the broker sends them all again)."""
        self.early.clear()
        self.pending.clear()

    def _outcome(self, sent: Sent, ack: Ack) -> Point:
        """Stamped with the device's ack time (never before `sent`); the round trip is ack.ts - command.ts."""
        command = sent.command
        rtt = max(0, ack.ts - command.ts)
        ts = max(ack.ts, command.ts)
        return outcome_point(ack.device, command.command, ack.status, sent.origin, ack.id, ts, ack.detail, rtt)

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
