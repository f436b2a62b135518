"""What one reading causes, decided without I/O: the point it is stored as, the rules' decisions
and the alert points they add, and the changes of its device's alarms. The store's judge refuses
a reading before the rules see it, so a dead-lettered reading fires no rule and leaves no trace
in the rules' statistics nor in the alarms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.core.alarms import SEVERITY_RANK
from hub.core.contract import AlarmAck, Reading, Transport
from hub.core.errors import InvalidMessage
from hub.core.points import Point
from hub.services.alarms.lifecycle import AlarmBook, Change
from hub.services.alarms.rebuild import Stored, cooldowns_to_restore
from hub.services.rules.alerts import alert_point
from hub.services.rules.engine import Decision, Engine
from hub.services.rules.model import ClearPolicy, clear_policy
from hub.services.store.judge import ReadingJudge, Verdict
from hub.services.store.readings import reading_point

#: The alert points of a reading no rule fired on (nearly every one).
NO_POINTS: tuple[Point, ...] = ()
NO_CHANGES: tuple[Change, ...] = ()
#: The clear policy of an alarm whose last rule is no longer in the rules file.
FALLBACK_POLICY = ClearPolicy(readings=3)


@dataclass(frozen=True)
class Outcome:
    #: The reading as stored.
    point: Point
    #: Alerts (and rule commands) to publish, in the rules' order.
    decisions: list[Decision]
    #: One `alerts` point per decision, written in the reading's batch.
    alert_points: Sequence[Point]
    #: Why the reading is flagged, if it is (`Verdict.flags`): counted, stored all the same.
    flags: tuple[str, ...] = ()
    #: What the reading did to its device's alarms (raised, escalated, updated, cleared).
    changes: Sequence[Change] = NO_CHANGES


@dataclass(frozen=True)
class Rebuilt:
    alarms: int
    active: int
    readings: int
    cooldowns: int


class TelemetryStage:
    """The store's judgement, the rules engine and the alarm book, one reading at a time."""

    def __init__(self, judge: ReadingJudge, engine: Engine, book: AlarmBook | None = None) -> None:
        self.judge = judge
        self.engine = engine
        self.book = book or AlarmBook()
        self.policies = {rule.name: clear_policy(rule) for rule in engine.rules}

    @property
    def history_needed(self) -> int:
        """Readings per device a rebuild replays: the engine's windows and runs, and the longest `clear_after`."""
        return max([self.engine.history_needed, *(p.readings for p in self.policies.values())]) + 1

    def process(self, reading: Reading, protocol: Transport, now_ms: int) -> Outcome:
        """Raises `InvalidMessage` for a reading the store refuses (then nothing else happened)."""
        return self._outcome(reading, self.judge.verdict(reading), protocol, now_ms)

    def process_batch(self, readings: Sequence[Reading], protocol: Transport, now_ms: int) -> list[Outcome]:
        """A batch's readings (oldest first): every one judged before the rules see any, so one the
        store refuses refuses the whole batch (`InvalidMessage`, naming its entry) and no rule state
        or alarm moved."""
        verdicts = []
        for index, reading in enumerate(readings):
            try:
                verdicts.append(self.judge.verdict(reading))
            except InvalidMessage as exc:
                raise InvalidMessage(
                    exc.reason, f"batch entry seq {reading.seq} (ts order {index}): {exc.detail}"
                ) from None
        return [
            self._outcome(reading, verdict, protocol, now_ms)
            for reading, verdict in zip(readings, verdicts, strict=True)
        ]

    def _outcome(self, reading: Reading, verdict: Verdict, protocol: Transport, now_ms: int) -> Outcome:
        evaluation = self.engine.evaluate(reading, now_ms)
        decisions = evaluation.decisions
        changes = self._alarms(reading, evaluation.conditions, decisions) if evaluation.conditions else NO_CHANGES
        return Outcome(
            reading_point(reading, protocol, verdict.out_of_range),
            decisions,
            [alert_point(decision.alert) for decision in decisions] if decisions else NO_POINTS,
            verdict.flags,
            changes,
        )

    def _alarms(self, reading: Reading, conditions: dict[str, bool], decisions: list[Decision]) -> list[Change]:
        # One trip per alarm type and reading: its most severe rule's (a warning and a critical
        # rule crossed by one value raise one critical alarm).
        trips: dict[str, Decision] = {}
        for decision in decisions:
            alarm_type = decision.rule.alarm_type
            known = trips.get(alarm_type)
            if known is None or SEVERITY_RANK[decision.alert.severity] > SEVERITY_RANK[known.alert.severity]:
                trips[alarm_type] = decision
        changes = [self.book.trip(decision.alert, alarm_type) for alarm_type, decision in trips.items()]
        for alarm_type, held in conditions.items():
            change = self._condition(alarm_type, reading, held)
            if change is not None:
                changes.append(change)
        return changes

    def _condition(self, alarm_type: str, reading: Reading, held: bool) -> Change | None:
        rule = self.book.policy_rule(alarm_type, reading.device)
        if rule is None:
            return None
        change = self.book.condition(
            alarm_type, reading.device, held, reading.ts, self.policies.get(rule, FALLBACK_POLICY)
        )
        if change is not None:
            self.engine.alarm_cleared(alarm_type, reading.device)
        return change

    def ack(self, ack: AlarmAck) -> Change | None:
        """An ack for one of this stage's active alarms, once; None otherwise."""
        return self.book.ack(ack)

    def rebuild(self, stored: Stored, keep: frozenset[str] = frozenset()) -> Rebuilt:
        """Start again from what was stored, except for the devices in `keep` (those this process
        is evaluating right now on another partition: its memory of them is newer than the store)."""
        engine = Engine(self.engine.rules)
        book = AlarmBook()
        book.seed(alarm for alarm in stored.alarms if alarm.device not in keep)
        replayed = 0
        for reading in stored.readings:
            if reading.device in keep:
                continue
            replayed += 1
            evaluation = engine.evaluate(reading, reading.ts)
            for alarm_type, held in evaluation.conditions.items():
                alarm = book.alarms.get((alarm_type, reading.device))
                if alarm is None or not alarm.active or reading.ts <= alarm.last_ts:
                    continue  # the stored alarm holds every trip up to its last one
                book.condition(
                    alarm_type, reading.device, held, reading.ts, self.policies.get(alarm.rule, FALLBACK_POLICY)
                )
        engine.fired_at = {}
        restored = cooldowns_to_restore(stored, engine)
        for rule, device, ts in restored:
            if device not in keep:
                engine.restore_cooldown(rule, device, ts)
        for device in keep:  # carried over as they are
            for key, rolling in self.engine.stats.items():
                if key[0] == device:
                    engine.stats[key] = rolling
            for fired_key, ts in self.engine.fired_at.items():
                if fired_key[1] == device:
                    engine.fired_at[fired_key] = ts
        book.carry_over(self.book, keep)
        self.engine, self.book = engine, book
        return Rebuilt(len(book.alarms), len(book.active()), replayed, len(engine.fired_at))
