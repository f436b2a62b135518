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

#: Rows one read of the command history returns at most (two per command: `sent` and its outcome).
MAX_COMMAND_ROWS = 10_000


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

    def close(self) -> None: ...
