"""The fleet view: every device the hub has heard of, its presence and its latest readings.

Read back from what the hub's outputs stored (through their reader, `hub.outputs.base.Reader`):
the newest `device_status` point per device (its presence transitions) and the newest point per
device in each kind's measurement (its readings). `build_fleet` is the plain-Python core;
`read_fleet` only fetches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hub.clients.influx import Series
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.measurements import is_kind_measurement
from hub.outputs.registry import open_reader

#: Columns of a reading point that are not readings.
NON_READING_COLUMNS = frozenset({"time", "seq", "device", "site", "protocol", "kind"})
#: A device that never sent a status message counts as online while its readings are this fresh.
FRESH_READING_MS = 60_000
#: An "online" device with no news for this many intervals (and at least STALE_MIN_MS) is shown as
#: stale: the hub normally marks silent devices offline, so this means the hub itself is not running.
STALE_AFTER_INTERVALS = 10
STALE_MIN_MS = 60_000

StateFilter = Literal["online", "offline", "all"]


@dataclass(frozen=True)
class DeviceView:
    device: str
    kind: str
    site: str
    protocol: str
    online: bool
    #: Epoch ms of the newest status or reading, whichever is later.
    last_seen: int
    reason: str = ""
    interval_ms: int | None = None
    fw: str = ""
    readings: dict[str, float | bool] = field(default_factory=dict)
    readings_at: int | None = None
    #: Online by the last word of the hub, but silent for long since (see STALE_AFTER_INTERVALS).
    stale: bool = False

    @property
    def state(self) -> str:
        return "online" if self.online else "offline"

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "kind": self.kind,
            "site": self.site,
            "protocol": self.protocol,
            "online": self.online,
            "state": self.state,
            "last_seen": self.last_seen,
            "reason": self.reason,
            "interval_ms": self.interval_ms,
            "fw": self.fw,
            "readings": self.readings,
            "readings_at": self.readings_at,
            "stale": self.stale,
        }


def _newest(rows_by_device: dict[str, tuple[str, dict[str, Any]]], series: Iterable[Series]) -> None:
    for one in series:
        device = one.tags.get("device")
        if not device or not one.rows:
            continue
        row = one.rows[0]
        known = rows_by_device.get(device)
        if known is None or int(row.get("time") or 0) > int(known[1].get("time") or 0):
            rows_by_device[device] = (one.name, row)


def build_fleet(status: Iterable[Series], readings: Iterable[Series], at_ms: int | None = None) -> list[DeviceView]:
    """One `DeviceView` per device from the newest status and reading rows, sorted by device."""
    now = now_ms() if at_ms is None else at_ms
    statuses: dict[str, tuple[str, dict[str, Any]]] = {}
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    _newest(statuses, status)
    _newest(latest, readings)
    fleet = []
    for device in sorted(statuses.keys() | latest.keys()):
        _, state = statuses.get(device, ("", {}))
        kind_name, reading = latest.get(device, ("", {}))
        status_at = int(state["time"]) if state.get("time") is not None else None
        reading_at = int(reading["time"]) if reading.get("time") is not None else None
        last_seen = max(t for t in (status_at, reading_at, 0) if t is not None)
        if state:
            online = bool(state.get("online", state.get("state") == "online"))
        else:
            online = reading_at is not None and now - reading_at <= FRESH_READING_MS
        interval = state.get("interval_ms")
        interval_ms = int(interval) if isinstance(interval, int | float) else None
        stale_after = max(STALE_MIN_MS, STALE_AFTER_INTERVALS * (interval_ms or 0))
        fleet.append(
            DeviceView(
                device=device,
                kind=str(state.get("kind") or kind_name or "?"),
                site=str(state.get("site") or reading.get("site") or "?"),
                protocol=str(state.get("protocol") or reading.get("protocol") or "?"),
                online=online,
                last_seen=last_seen,
                reason=str(state.get("reason") or ""),
                interval_ms=interval_ms,
                fw=str(state.get("fw") or ""),
                readings={
                    name: value
                    for name, value in sorted(reading.items())
                    if name not in NON_READING_COLUMNS and isinstance(value, int | float | bool)
                },
                readings_at=reading_at,
                stale=online and now - last_seen > stale_after,
            )
        )
    return fleet


def select(
    fleet: Sequence[DeviceView], site: str | None = None, kind: str | None = None, state: StateFilter = "all"
) -> list[DeviceView]:
    return [
        view
        for view in fleet
        if (site is None or view.site == site)
        and (kind is None or view.kind == kind)
        and (state == "all" or view.state == state)
    ]


def kinds_from_measurements(names: Iterable[str]) -> list[str]:
    """The measurements that hold a device kind's readings."""
    return sorted(name for name in names if is_kind_measurement(name))


def read_fleet(settings: Settings) -> list[DeviceView]:
    """The fleet as the outputs' store knows it now (`StorageUnavailable` if it cannot be asked,
    `Unreadable` if it cannot be queried at all)."""
    reader = open_reader(settings)
    try:
        return build_fleet(reader.device_states(), reader.newest_readings())
    finally:
        reader.close()
