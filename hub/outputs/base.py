"""What an output is, and what reads back what it stored.

`Output.write` returns only once the points are stored; it raises `StorageUnavailable` when that
may pass (server down, 5xx, 429: the batch is kept and retried) and `PointsRejected` when the
server refuses the points themselves (retrying the same points cannot help).

`Reader` is the read side, beside it: the hub reads back the last recorded state of each device
(presence after a restart or a failover), the fleet (`hub devices`) and the command history
(`hub commands`, the commands service's memory of settled commands) through it, whatever the
backend. A backend that cannot answer raises `Unreadable` (a configuration error, one line);
one that does not answer now raises `StorageUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from hub.clients.influx import Series
from hub.core.points import Point

#: `alarms` rows read per alarm type and device for its current alarm: its last transition is
#: among them unless that many later-dated rows of older occurrences exist (an ack is dated by
#: the hub's clock, the other transitions by the device's).
ALARM_ROWS_PER_DEVICE = 50
#: Rows one read of the command history returns at most (two per command: `sent` and its outcome).
MAX_COMMAND_ROWS = 10_000
#: Log lines one read of `device_logs` returns at most.
MAX_LOG_ROWS = 10_000


class Output(Protocol):
    #: The name it is registered and configured by (IOT_OUTPUTS).
    name: str
    #: What it stores into ("influxdb" for both APIs): a refused point is dead-lettered `rejected_by_<family>`.
    family: str

    def write(self, points: Sequence[Point]) -> None: ...

    def ping(self) -> bool:
        """True if the output's server answers."""
        ...

    def close(self) -> None: ...


class Reader(Protocol):
    #: The output whose points it reads (IOT_OUTPUTS).
    name: str

    def device_states(self) -> list[Series]:
        """The newest `device_status` row of each device: one series per device (tag `device`),
        rows with `time` (epoch ms), the tags `site`, `kind`, `protocol` and every field."""
        ...

    def twins(self) -> list[Series]:
        """The newest `twins` row of each device: one series per device (tag `device`), rows with
        `time` (epoch ms), the tags `site` and `kind`, and the fields (`doc`: the twin as JSON)."""
        ...

    def rollouts(self) -> list[Series]:
        """The newest `rollouts` row of each rollout: one series per rollout (tag `rollout`), rows with
        `time` and the fields (`doc`: the rollout as JSON)."""
        ...

    def newest_readings(self) -> list[Series]:
        """The newest row of each device in each kind's measurement: one series per measurement
        (its name) and device (tag `device`), rows with `time`, the other tags and the readings."""
        ...

    def commands(
        self, since_s: int, *, device: str | None = None, outcomes_only: bool = False, limit: int = MAX_COMMAND_ROWS
    ) -> list[dict[str, Any]]:
        """`commands` rows of the last `since_s` seconds, newest first, at most `limit`: `time`
        (epoch ms), `id`, `device`, `command`, `status`, `origin`, `detail`, `rtt_ms`. With
        `outcomes_only`, no `sent` row. `device` is an identifier (checked by the caller)."""
        ...

    def device_logs(
        self,
        since_s: int,
        *,
        devices: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        limit: int = MAX_LOG_ROWS,
    ) -> list[dict[str, Any]]:
        """`device_logs` rows of the last `since_s` seconds, newest first, at most `limit`: `time`
        (epoch ms), `device`, `level`, `message`, and `fields` (JSON text), `source`, `dropped` where
        present. `devices`: only theirs (identifiers, checked by the caller); `levels`: only these
        (levels of the contract); None: any."""
        ...

    def alarm_rows(self, since_s: int | None = None) -> list[dict[str, Any]]:
        """`alarms` rows (every field and tag, `time` in epoch ms): with `since_s`, every row of
        the last `since_s` seconds; without, the newest `ALARM_ROWS_PER_DEVICE` rows of each
        alarm type and device (by time: enough to hold the current alarm's last transition)."""
        ...

    def recent_readings(self, since_s: int, per_device: int) -> list[Series]:
        """The newest `per_device` rows of each device in each kind's measurement, of the last
        `since_s` seconds: one series per measurement and device (tag `device`), rows newest first."""
        ...

    def last_alerts(self, since_s: int) -> list[dict[str, Any]]:
        """The newest `alerts` row of each rule and device of the last `since_s` seconds: `rule`,
        `device`, `time` (the reading's time it fired at)."""
        ...

    def close(self) -> None: ...
