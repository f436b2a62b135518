"""An alarm as the hub keeps and stores it: one per alarm type and device, `active` (acked or
not) until its condition has been false for its rule's `clear_after`, then `cleared`.

Each transition is a row of measurement `alarms` holding the whole state after it, so the newest
row of an alarm is the alarm: the telemetry service rebuilds its alarms from them after a
restart or a handover, `python -m hub alarms` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hub.core.contract import Severity, is_identifier

AlarmState = Literal["active", "cleared"]
#: Severities from the least to the most severe: an alarm escalates up this list, never down.
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
#: The stored row's transitions: the published ones, and `updated` (a trip while active).
STORED_TRANSITIONS = ("raised", "escalated", "updated", "acked", "cleared")


@dataclass(frozen=True)
class AlarmRecord:
    id: str
    type: str
    device: str
    site: str
    kind: str
    #: The last rule that tripped.
    rule: str
    severity: Severity
    sensor: str
    state: AlarmState
    acked: bool
    acked_by: str
    note: str
    #: Trips so far (the alerts its rules raised while it was active).
    count: int
    #: The last value that tripped.
    value: float | None
    raised_at: int
    #: The reading time of the last trip.
    last_ts: int
    cleared_at: int | None
    #: The time of its newest transition.
    updated_at: int
    #: Its transitions so far (1 when raised): orders its rows, whose times mix the devices'
    #: clocks (trips, clears) and the hub's (acks).
    version: int = 1

    @property
    def active(self) -> bool:
        return self.state == "active"

    def as_json(self) -> dict[str, Any]:
        """What `python -m hub alarms --json` prints of it."""
        return {
            "id": self.id,
            "type": self.type,
            "rule": self.rule,
            "device": self.device,
            "site": self.site,
            "kind": self.kind,
            "severity": self.severity,
            "state": self.state,
            "acked": self.acked,
            "acked_by": self.acked_by or None,
            "note": self.note or None,
            "count": self.count,
            "raised_at": self.raised_at,
            "cleared_at": self.cleared_at,
            "last_value": self.value,
            "last_ts": self.last_ts,
            "sensor": self.sensor,
        }


def record_of(row: Mapping[str, Any]) -> AlarmRecord | None:
    """The alarm a stored `alarms` row holds, or None for a row that is not one (hand-written, older)."""
    try:
        severity = str(row["severity"])
        state = str(row["state"])
        identifiers = [str(row[name]) for name in ("type", "device", "site", "kind", "rule")]
        if severity not in SEVERITY_RANK or state not in ("active", "cleared"):
            return None
        if not all(map(is_identifier, identifiers)):
            return None
        value = row.get("value")
        cleared_at = int(row.get("cleared_at") or 0)
        return AlarmRecord(
            id=str(row["id"]),
            type=identifiers[0],
            device=identifiers[1],
            site=identifiers[2],
            kind=identifiers[3],
            rule=identifiers[4],
            severity=severity,  # type: ignore[arg-type]
            sensor=str(row.get("sensor") or ""),
            state=state,  # type: ignore[arg-type]
            acked=bool(row.get("acked")),
            acked_by=str(row.get("acked_by") or ""),
            note=str(row.get("note") or ""),
            count=int(row.get("count") or 0),
            value=float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,
            raised_at=int(row["raised_at"]),
            last_ts=int(row.get("last_ts") or 0),
            cleared_at=cleared_at or None,
            updated_at=int(row["time"]),
            version=int(row.get("version") or 1),
        )
    except (KeyError, TypeError, ValueError):
        return None


def newest_per_alarm(rows: Iterable[Mapping[str, Any]]) -> list[AlarmRecord]:
    """Each alarm once, as its last transition left it (by `version`, not by time), oldest raised first."""
    newest: dict[str, AlarmRecord] = {}
    for row in rows:
        record = record_of(row)
        if record is None:
            continue
        known = newest.get(record.id)
        if known is None or record.version > known.version:
            newest[record.id] = record
    return sorted(newest.values(), key=lambda r: (r.raised_at, r.id))


def current_per_device(alarms: Iterable[AlarmRecord]) -> list[AlarmRecord]:
    """The current alarm of each type and device: the one raised last."""
    current: dict[tuple[str, str], AlarmRecord] = {}
    for alarm in alarms:
        key = (alarm.type, alarm.device)
        if key not in current or alarm.raised_at > current[key].raised_at:
            current[key] = alarm
    return list(current.values())
