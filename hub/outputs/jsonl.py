"""Output `jsonl`: each point as one JSON object a line, appended to IOT_JSONL_PATH.

For archiving, replaying into another system, or reading what the hub would store without a
database. A batch is flushed and fsynced before `write` returns, so an acked reading is on disk.
It cannot be queried: its reader says so (`Unreadable`) to whatever asks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from hub.clients.influx import Series
from hub.core.config import Settings
from hub.core.errors import StorageUnavailable, Unreadable
from hub.core.points import Point
from hub.outputs.base import MAX_COMMAND_ROWS, MAX_LOG_ROWS

_encoder = msgspec.json.Encoder()


def point_json(point: Point) -> bytes:
    return _encoder.encode(
        {"measurement": point.measurement, "tags": point.tags, "fields": point.fields, "ts": point.ts_ms}
    )


class JsonLinesOutput:
    #: The dead-letter reason of a point it refuses is `rejected_by_<family>`.
    family = "jsonl"
    name = "jsonl"

    def __init__(self, settings: Settings) -> None:
        self.path = Path(settings.jsonl_path)

    def write(self, points: Sequence[Point]) -> None:
        payload = b"".join(point_json(p) + b"\n" for p in points)
        try:
            with open(self.path, "ab") as file:
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            raise StorageUnavailable(f"cannot append to {self.path}: {exc.strerror or exc}") from exc

    def ping(self) -> bool:
        directory = self.path.parent
        return directory.is_dir() and os.access(directory, os.W_OK)

    def close(self) -> None:
        pass


class JsonLinesReader:
    """A file of points is no database: every read is `Unreadable`, naming what to configure."""

    name = "jsonl"

    def __init__(self, settings: Settings) -> None:
        self.path = Path(settings.jsonl_path)

    def device_states(self) -> list[Series]:
        self._unreadable("the devices' recorded states")

    def twins(self) -> list[Series]:
        self._unreadable("the device twins")

    def rollouts(self) -> list[Series]:
        self._unreadable("the rollouts")

    def newest_readings(self) -> list[Series]:
        self._unreadable("the fleet")

    def commands(
        self, since_s: int, *, device: str | None = None, outcomes_only: bool = False, limit: int = MAX_COMMAND_ROWS
    ) -> list[dict[str, Any]]:
        self._unreadable("the command history")

    def device_logs(
        self,
        since_s: int,
        *,
        devices: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        limit: int = MAX_LOG_ROWS,
    ) -> list[dict[str, Any]]:
        self._unreadable("the devices' logs")

    def alarm_rows(self, since_s: int | None = None) -> list[dict[str, Any]]:
        self._unreadable("the alarms")

    def recent_readings(self, since_s: int, per_device: int) -> list[Series]:
        self._unreadable("the recent readings")

    def last_alerts(self, since_s: int) -> list[dict[str, Any]]:
        self._unreadable("the alerts")

    def close(self) -> None:
        pass

    def _unreadable(self, what: str) -> NoReturn:
        raise Unreadable(
            f"{what} cannot be read back from the jsonl output ({self.path}): it keeps points but answers no"
            " query; add influxdb to IOT_OUTPUTS (e.g. IOT_OUTPUTS=influxdb,jsonl) to read them"
        )
