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
SIGKILLed) loses no pending command: the broker hands it over again, before its ack. That
queue is the hub's durable record of what was sent and is still open: a hub restarted between
a command and its ack sees the command again and records the ack. A command the hub first sees
after its expiry (it was away) still waits `LATE_COMMAND_GRACE_MS` for its ack to come through
the backlog before it counts as a timeout.

Only the truth is recorded. A command is known by its id and the device it was sent to, and an
ack answers the command of its own id and device only: an ack for an id the hub never saw
sent, or for a command sent to another device, is refused (dead-lettered, reason
`unknown_command`), never recorded. An ack can reach the queue before its own command (the
command goes through the quorum queue's consensus while a device's classic subscription queue
hands it over at once), so an ack whose command is unknown is held (its delivery unacked) for
`ORPHAN_ACK_GRACE_MS`: when the command arrives both are recorded and only then are both
deliveries acked; still unknown after the grace, the ack is refused. Settled commands
(answered, timed out, or let go) are remembered, newest `MAX_SETTLED`, so a repeated or late
ack is settled without a second outcome. The service seeds that memory from what `commands`
recorded (`recorded.py`) whenever it (re)connects and when it takes over from another hub, so a
restart or a failover does not turn a repeated ack into a refused one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hub.core.contract import Ack, Command
from hub.core.points import FieldValue, Point
from hub.runtime import topology

#: Acks may arrive this long after `expires` and still count (device clocks, broker queues).
TIMEOUT_GRACE_MS = 2_000
#: How often the ledger looks for commands past their expiry and early acks past their grace.
TIMEOUT_CHECK_S = 1.0
ORIGINS = ("cli", "rule", "twin")
#: A command first seen after its expiry (the hub was away) waits this long for its ack.
LATE_COMMAND_GRACE_MS = 5_000
#: Pending commands held at most (their deliveries stay unacked and count against the queue's
#: prefetch); beyond it the oldest is let go: it no longer times out, and its ack, if it comes,
#: is still recorded (while the id is remembered among the settled).
MAX_PENDING = topology.COMMANDS.prefetch // 2
#: An ack whose command has not been seen yet waits this long for it before it is refused.
ORPHAN_ACK_GRACE_MS = 5_000
#: Early acks held at most (the oldest id's are refused first). Held deliveries stay unacked and
#: count against the queue's prefetch, so this stays well below it.
MAX_EARLY_ACKS = topology.COMMANDS.prefetch // 4
#: Settled command ids remembered (with their device), newest first kept: a repeated or late ack
#: of one of them is settled without a second outcome.
MAX_SETTLED = 10_000
#: The detail of a `timeout`.
NO_ACK = "no ack by expires"
#: The dead-letter reason of an ack that answers no command sent to its device.
UNKNOWN_COMMAND_REASON = "unknown_command"


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


#: A command as the ledger knows it: its id and the device it was sent to. An ack answers the
#: command of its own id and device only, so another device cannot answer it.
Key = tuple[str, str]


@dataclass(frozen=True)
class Settled:
    """A command the ledger is done with."""

    #: A command let go before its outcome (`MAX_PENDING`): its ack is still recorded, once.
    let_go: Sent | None = None


@dataclass(frozen=True)
class EarlyAck:
    ack: Ack
    at_ms: int
    #: Opaque to the ledger: the caller's handle on the delivery (its tag), released with the point.
    token: int


@dataclass(frozen=True)
class Refused:
    """An ack delivery to dead-letter instead of recording: it answers no command sent to its device."""

    token: int
    reason: str
    detail: str


@dataclass
class Recorded:
    """The points one event produces, the held tokens those points now account for, and the refused ones."""

    points: list[Point] = field(default_factory=list)
    #: Tokens of acks whose point is in `points`: settle them once `points` are written.
    released: list[int] = field(default_factory=list)
    #: Ack deliveries to dead-letter (then settle), each with its reason.
    refused: list[Refused] = field(default_factory=list)
    #: The statuses first recorded by this event (`sent`, an answer's, `timeout`), for the metrics:
    #: the ledger counts nothing itself.
    outcomes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.released = [token for token in self.released if token]

    def release(self, token: int) -> None:
        if token:
            self.released.append(token)

    def extend(self, other: Recorded) -> None:
        self.points.extend(other.points)
        self.released.extend(other.released)
        self.refused.extend(other.refused)
        self.outcomes.extend(other.outcomes)


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
    """Commands waiting for their ack, acks waiting for their command, and what each event produces."""

    def __init__(self, max_early_acks: int = MAX_EARLY_ACKS, max_settled: int = MAX_SETTLED) -> None:
        self.pending: dict[Key, Sent] = {}
        #: Acks whose command has not been seen yet, in the order they came (repeats of one together).
        self.early: dict[Key, list[EarlyAck]] = {}
        self.early_count = 0
        #: Commands whose outcome is recorded, that timed out, or were let go.
        self.settled: dict[Key, Settled] = {}
        self.max_early_acks = max_early_acks
        self.max_settled = max_settled

    def seed(self, settled: list[Key]) -> None:
        """Remember commands another hub (or this one before a restart) settled, so their repeated or
        late acks are settled, not refused; early acks of them are released when their grace ends."""
        for key in settled:
            self._settle(key, Settled())

    def on_command(self, device: str, command: Command, origin: str, at_ms: int, token: int = 0) -> Recorded:
        """Record `sent`; the command's delivery (`token`) is held until its outcome is recorded."""
        key = (command.id, device)
        recorded = Recorded([outcome_point(device, command.command, "sent", origin, command.id, command.ts)])
        early = self.early.pop(key, [])
        self.early_count -= len(early)
        if key in self.settled:  # again after its outcome (a redelivery): nothing more to wait for
            recorded.release(token)
            for repeated in early:
                recorded.release(repeated.token)
            return recorded
        sent = Sent(device, command, origin, token, at_ms)
        if early:  # its ack came first: the whole lifecycle at once
            recorded.outcomes.append("sent")
            recorded.extend(self._answer(sent, early[0]))
            for repeated in early[1:]:
                recorded.release(repeated.token)
            return recorded
        previous = self.pending.pop(key, None)
        if previous is not None:  # the same command twice: one lifecycle, when it was first seen
            sent = Sent(device, command, origin, token, previous.seen_at_ms)
            recorded.release(previous.token)
        elif len(self.pending) >= MAX_PENDING:
            oldest_key, oldest = next(iter(self.pending.items()))
            del self.pending[oldest_key]
            recorded.release(oldest.token)
            self._settle(oldest_key, Settled(let_go=Sent(oldest.device, oldest.command, oldest.origin)))
        if previous is None:
            recorded.outcomes.append("sent")
        self.pending[key] = sent
        return recorded

    def on_ack(self, ack: Ack, at_ms: int, token: int = 0) -> Recorded:
        """Record the ack, or hold it (nothing returned, `token` not released) until its command comes.

        An ack for another device's command, or for none the hub saw, is refused once the grace is over.
        """
        key = (ack.id, ack.device)
        early = EarlyAck(ack, at_ms, token)
        sent = self.pending.pop(key, None)
        if sent is not None:
            return self._answer(sent, early)
        settled = self.settled.get(key)
        if settled is not None:
            if settled.let_go is not None:  # let go before its outcome: this is it
                return self._answer(settled.let_go, early)
            return Recorded(released=[token])  # repeated, or after its timeout: one lifecycle per command
        recorded = Recorded()
        if self.early_count >= self.max_early_acks:
            recorded.extend(self._orphaned(next(iter(self.early)), f"more than {self.max_early_acks} acks wait"))
        self.early.setdefault(key, []).append(early)
        self.early_count += 1
        return recorded

    def timed_out(self, now: int) -> Recorded:
        """Commands past their expiry (`timeout`) and early acks past their grace (refused)."""
        recorded = Recorded()
        late = [(key, s) for key, s in self.pending.items() if now > s.deadline_ms]
        for key, sent in late:
            del self.pending[key]
            recorded.outcomes.append("timeout")
            command = sent.command
            recorded.points.append(
                outcome_point(sent.device, command.command, "timeout", sent.origin, command.id, command.expires, NO_ACK)
            )
            recorded.release(sent.token)
            self._settle(key, Settled())
        grace = f"none seen within {ORPHAN_ACK_GRACE_MS / 1000:g} s"
        for key in [key for key, acks in self.early.items() if now > acks[0].at_ms + ORPHAN_ACK_GRACE_MS]:
            if key in self.settled:  # settled by another hub, learnt since (`seed`): a repeat, not a forgery
                acks = self.early.pop(key)
                self.early_count -= len(acks)
                recorded.released.extend(e.token for e in acks if e.token)
            else:
                recorded.extend(self._orphaned(key, grace))
        return recorded

    def held_tokens(self) -> list[int]:
        """Deliveries held unacked: early acks and pending commands."""
        held = [e.token for acks in self.early.values() for e in acks if e.token]
        return held + [s.token for s in self.pending.values() if s.token]

    def forget_held(self) -> None:
        """Drop what was held (its deliveries were not acked: the broker sends them all again)."""
        self.early.clear()
        self.early_count = 0
        self.pending.clear()

    def _answer(self, sent: Sent, early: EarlyAck) -> Recorded:
        """The outcome of `sent`, stamped with the ack's time (never before `sent`); rtt: ack.ts - command.ts."""
        ack, command = early.ack, sent.command
        rtt = max(0, ack.ts - command.ts)
        ts = max(ack.ts, command.ts)
        point = outcome_point(ack.device, command.command, ack.status, sent.origin, ack.id, ts, ack.detail, rtt)
        self._settle((command.id, sent.device), Settled())
        return Recorded([point], [sent.token, early.token], outcomes=[ack.status])

    def _orphaned(self, key: Key, why: str) -> Recorded:
        """Refuse every ack held for `key`: no such command was seen sent to that device."""
        acks = self.early.pop(key)
        self.early_count -= len(acks)
        command_id, device = key
        detail = f"no command {command_id} was sent to {device} ({why})"
        return Recorded(refused=[Refused(e.token, UNKNOWN_COMMAND_REASON, detail) for e in acks])

    def _settle(self, key: Key, settled: Settled) -> None:
        self.settled.pop(key, None)
        if len(self.settled) >= self.max_settled:
            del self.settled[next(iter(self.settled))]
        self.settled[key] = settled
