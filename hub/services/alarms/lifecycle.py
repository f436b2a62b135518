"""The alarm lifecycle as a pure state machine: no clock, no I/O; times are the readings' own
(an ack's time is the ack's), so a replay makes the same decisions.

- a trip (an alert of one of the type's rules) raises the alarm, or updates the active one
  (count, last value, last ts; `escalated` when its severity is higher);
- each reading that a rule of the type looked at says whether any of its conditions held; an
  active alarm clears once they did not for the rule's `clear_after` (readings or seconds);
- an ack marks an active alarm acked, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from hub.core.alarms import SEVERITY_RANK, AlarmRecord
from hub.core.contract import AlarmAck, Alert, alarm_id
from hub.services.rules.model import ClearPolicy

ChangeName = Literal["raised", "escalated", "updated", "acked", "cleared"]


@dataclass(frozen=True)
class Change:
    """An alarm after one of its transitions (`updated`: a trip of an active alarm, stored, not published)."""

    transition: ChangeName
    alarm: AlarmRecord
    #: When it happened: the reading's time, or the ack's.
    ts: int

    @property
    def published(self) -> bool:
        return self.transition != "updated"

    @property
    def key(self) -> str:
        """Its idempotency key: the same change replayed has the same key."""
        if self.transition == "escalated":
            return f"{self.alarm.id}/escalated-{self.alarm.severity}"
        if self.transition == "updated":
            return f"{self.alarm.id}/updated-{self.alarm.count}"
        return f"{self.alarm.id}/{self.transition}"


@dataclass
class _Progress:
    """Towards clearing: the last reading time the condition held, and readings without it since."""

    held_at: int
    clean: int = 0


class AlarmBook:
    """The alarms of the devices one telemetry handler owns, by (alarm type, device)."""

    def __init__(self) -> None:
        self.alarms: dict[tuple[str, str], AlarmRecord] = {}
        self._progress: dict[tuple[str, str], _Progress] = {}

    def seed(self, records: Iterable[AlarmRecord]) -> None:
        """Start from stored alarms (the newest of each type and device), forgetting any other."""
        self.alarms = {}
        self._progress = {}
        for record in records:
            key = (record.type, record.device)
            known = self.alarms.get(key)
            if known is None or record.raised_at >= known.raised_at:
                self.alarms[key] = record
                if record.active:
                    self._progress[key] = _Progress(record.last_ts)
                else:
                    self._progress.pop(key, None)

    def active(self) -> list[AlarmRecord]:
        return [alarm for alarm in self.alarms.values() if alarm.active]

    def trip(self, alert: Alert, alarm_type: str) -> Change:
        """A rule of `alarm_type` fired on `alert.device` (its alert): raise, escalate or update."""
        key = (alarm_type, alert.device)
        alarm = self.alarms.get(key)
        self._progress[key] = _Progress(alert.ts)
        if alarm is None or not alarm.active:
            raised = AlarmRecord(
                id=alarm_id(alarm_type, alert.device, alert.ts),
                type=alarm_type,
                device=alert.device,
                site=alert.site,
                kind=alert.kind,
                rule=alert.rule,
                severity=alert.severity,
                sensor=alert.sensor,
                state="active",
                acked=False,
                acked_by="",
                note="",
                count=1,
                value=alert.value,
                raised_at=alert.ts,
                last_ts=alert.ts,
                cleared_at=None,
                updated_at=alert.ts,
            )
            self.alarms[key] = raised
            return Change("raised", raised, alert.ts)
        escalates = SEVERITY_RANK[alert.severity] > SEVERITY_RANK[alarm.severity]
        updated = replace(
            alarm,
            rule=alert.rule,
            severity=alert.severity if escalates else alarm.severity,
            sensor=alert.sensor,
            count=alarm.count + 1,
            value=alert.value,
            last_ts=alert.ts,
            updated_at=alert.ts,
            version=alarm.version + 1,
        )
        self.alarms[key] = updated
        return Change("escalated" if escalates else "updated", updated, alert.ts)

    def condition(self, alarm_type: str, device: str, held: bool, ts: int, policy: ClearPolicy) -> Change | None:
        """A reading at `ts` the type's rules looked at: `held` if any of their conditions did."""
        key = (alarm_type, device)
        progress = self._progress.get(key)
        if progress is None:
            return None
        if held:
            progress.held_at, progress.clean = max(progress.held_at, ts), 0
            return None
        progress.clean += 1
        by_readings = policy.readings > 0 and progress.clean >= policy.readings
        by_time = policy.seconds > 0 and ts - progress.held_at >= policy.seconds * 1000
        if not (by_readings or by_time):
            return None
        del self._progress[key]
        alarm = self.alarms[key]
        cleared = replace(alarm, state="cleared", cleared_at=ts, updated_at=ts, version=alarm.version + 1)
        self.alarms[key] = cleared
        return Change("cleared", cleared, ts)

    def ack(self, ack: AlarmAck) -> Change | None:
        """Acknowledge `ack.alarm_id`: None if it is not this book's active alarm, or acked already."""
        for key, alarm in self.alarms.items():
            if alarm.id == ack.alarm_id:
                if not alarm.active or alarm.acked:
                    return None
                acked = replace(
                    alarm, acked=True, acked_by=ack.by, note=ack.note, updated_at=ack.ts, version=alarm.version + 1
                )
                self.alarms[key] = acked
                return Change("acked", acked, ack.ts)
        return None

    def policy_rule(self, alarm_type: str, device: str) -> str | None:
        """The rule whose `clear_after` applies: the last that tripped the active alarm."""
        alarm = self.alarms.get((alarm_type, device))
        return alarm.rule if alarm is not None and alarm.active else None

    def carry_over(self, other: AlarmBook, devices: frozenset[str]) -> None:
        """Take `other`'s alarms (and their progress) of `devices` as they are."""
        for key, alarm in other.alarms.items():
            if key[1] in devices:
                self.alarms[key] = alarm
                if key in other._progress:
                    self._progress[key] = other._progress[key]
