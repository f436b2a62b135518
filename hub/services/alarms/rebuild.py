"""A telemetry handler's rule and alarm state, rebuilt from what was stored (after a restart, and
when a partition moves to this process): no state of its own is persisted.

Why rebuild rather than persist: everything a reading changed is stored with it, in the batch
that acks it (its point, its alerts, its alarms' rows), so the store already holds the state's
sources, and a rebuilt state is exactly as fresh as what was acked; persisting windows would add
a write per reading. What is read back, each bounded:

- the newest `alarms` rows of each type and device: the alarms, whole (count, acked, severity),
  each as its last transition (`version`) left it;
- the newest readings of each device (as many as the longest window, stuck run or `clear_after`
  needs), replayed through a fresh engine in order: windows, runs, the last evaluated time of
  each sensor (so a redelivered reading that was stored is recognised), and the progress of
  each active alarm towards clearing;
- the newest alert of each rule and device: the cooldowns (an alert before its alarm cleared
  holds nothing off: a clear ends its rules' cooldowns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.clients.influx import Series
from hub.core.alarms import AlarmRecord, current_per_device, newest_per_alarm
from hub.core.contract import Reading, is_identifier
from hub.services.rules.engine import Engine
from hub.services.store.readings import OUT_OF_RANGE_FIELD

#: Readings older than this are not read back (a hub away longer starts its windows afresh).
READINGS_LOOKBACK_S = 24 * 3600
#: Columns of a stored reading that are not its sensors.
NOT_SENSORS = frozenset({"time", "device", "site", "protocol", "seq", OUT_OF_RANGE_FIELD})


@dataclass(frozen=True)
class Stored:
    """What the store holds that the state is rebuilt from (see the module's docstring)."""

    alarms: list[AlarmRecord]
    readings: list[Reading]
    #: (rule, device, reading time of its newest alert)
    alerts: list[tuple[str, str, int]]

    @classmethod
    def from_rows(
        cls, alarm_rows: Iterable[Mapping[str, Any]], readings: Iterable[Series], alerts: Iterable[Mapping[str, Any]]
    ) -> Stored:
        records = current_per_device(newest_per_alarm(alarm_rows))
        fired = [
            (str(row["rule"]), str(row["device"]), int(row["time"]))
            for row in alerts
            if is_identifier(str(row.get("rule"))) and is_identifier(str(row.get("device")))
        ]
        return cls(records, sorted(readings_of(readings), key=lambda r: r.ts), fired)


def readings_of(series: Iterable[Series]) -> list[Reading]:
    """Stored rows as readings again (only what the rules look at: numbers and booleans)."""
    readings = []
    for one in series:
        device = one.tags.get("device", "")
        for row in one.rows:
            values = {
                name: value
                for name, value in row.items()
                if name not in NOT_SENSORS and isinstance(value, int | float) and value is not None
            }
            site = str(row.get("site") or "")
            if not values or not is_identifier(device) or not is_identifier(site) or not is_identifier(one.name):
                continue
            seq, ts = int(row.get("seq") or 0), int(row["time"])
            readings.append(Reading(device=device, site=site, kind=one.name, seq=seq, ts=ts, readings=values))
    return readings


def cooldowns_to_restore(stored: Stored, engine: Engine) -> list[tuple[str, str, int]]:
    """The newest alerts that still hold their rule off: not before a clear of their alarm."""
    types = {rule.name: rule.alarm_type for rule in engine.rules}
    cleared = {(a.type, a.device): a.cleared_at or 0 for a in stored.alarms if not a.active}
    return [
        (rule, device, ts)
        for rule, device, ts in stored.alerts
        if rule in types and ts > cleared.get((types[rule], device), -1)
    ]
