"""What one reading causes, decided without I/O: the point it is stored as, the rules' decisions
and the alert points they add. The store's judge refuses a reading before the rules see it, so a
dead-lettered reading fires no rule and leaves no trace in the rules' statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.core.contract import Reading, Transport
from hub.core.errors import InvalidMessage
from hub.core.points import Point
from hub.services.rules.alerts import alert_point
from hub.services.rules.engine import Decision, Engine
from hub.services.store.judge import ReadingJudge
from hub.services.store.readings import reading_point

#: The alert points of a reading no rule fired on (nearly every one).
NO_POINTS: tuple[Point, ...] = ()


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


class TelemetryStage:
    """The store's judgement and the rules engine, one reading at a time (the engine keeps state)."""

    def __init__(self, judge: ReadingJudge, engine: Engine) -> None:
        self.judge = judge
        self.engine = engine

    def process(self, reading: Reading, protocol: Transport, now_ms: int) -> Outcome:
        """Raises `InvalidMessage` for a reading the store refuses (then nothing else happened)."""
        verdict = self.judge.verdict(reading)
        decisions = self.engine.evaluate(reading, now_ms)
        return Outcome(
            reading_point(reading, protocol, verdict.out_of_range),
            decisions,
            [alert_point(decision.alert) for decision in decisions] if decisions else NO_POINTS,
            verdict.flags,
        )

    def process_batch(self, readings: Sequence[Reading], protocol: Transport, now_ms: int) -> list[Outcome]:
        """A batch's readings (oldest first): every one judged before the rules see any, so one the
        store refuses refuses the whole batch (`InvalidMessage`, naming its entry) and no rule state moved."""
        verdicts = []
        for index, reading in enumerate(readings):
            try:
                verdicts.append(self.judge.verdict(reading))
            except InvalidMessage as exc:
                raise InvalidMessage(
                    exc.reason, f"batch entry seq {reading.seq} (ts order {index}): {exc.detail}"
                ) from None
        outcomes = []
        for reading, verdict in zip(readings, verdicts, strict=True):
            decisions = self.engine.evaluate(reading, now_ms)
            outcomes.append(
                Outcome(
                    reading_point(reading, protocol, verdict.out_of_range),
                    decisions,
                    [alert_point(decision.alert) for decision in decisions] if decisions else NO_POINTS,
                    verdict.flags,
                )
            )
        return outcomes
