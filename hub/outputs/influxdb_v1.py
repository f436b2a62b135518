"""Output `influxdb_v1`: line protocol to InfluxDB's 1.x `/write` (user and password, or a token);
and its reader: InfluxQL on `/query` as the reader account (InfluxDB 1.x, and 2.x/3.x with a
database/retention-policy mapping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.clients.influx import InfluxHttp, Series
from hub.core.config import Settings
from hub.core.contract import require_identifier
from hub.core.measurements import (
    COMMANDS_MEASUREMENT,
    ROLLOUTS_MEASUREMENT,
    STATUS_MEASUREMENT,
    TWINS_MEASUREMENT,
    is_kind_measurement,
)
from hub.core.points import Point
from hub.outputs.base import MAX_COMMAND_ROWS
from hub.outputs.lineprotocol import lines_payload

#: The newest row of each device, per measurement.
NEWEST_PER_DEVICE = 'GROUP BY "device" ORDER BY time DESC LIMIT 1'


class InfluxV1Output:
    #: The dead-letter reason of a point it refuses is `rejected_by_<family>`.
    family = "influxdb"
    name = "influxdb_v1"

    def __init__(self, settings: Settings) -> None:
        self.client = InfluxHttp.from_settings(settings, settings.influx_writer)
        self.client.create_database(if_permitted=True)

    def write(self, points: Sequence[Point]) -> None:
        self.client.write(lines_payload(points))

    def ping(self) -> bool:
        return self.client.version() is not None

    def close(self) -> None:
        self.client.close()


class InfluxV1Reader:
    """InfluxQL reads as IOT_INFLUX_READER_USER (or the writer); opens no connection until asked."""

    name = "influxdb_v1"

    def __init__(self, settings: Settings) -> None:
        self.client = InfluxHttp.from_settings(settings, settings.influx_reader)

    def device_states(self) -> list[Series]:
        [series] = self.client.query(f'SELECT * FROM "{STATUS_MEASUREMENT}" {NEWEST_PER_DEVICE}')
        return series

    def twins(self) -> list[Series]:
        [series] = self.client.query(f'SELECT * FROM "{TWINS_MEASUREMENT}" {NEWEST_PER_DEVICE}')
        return series

    def rollouts(self) -> list[Series]:
        [series] = self.client.query(
            f'SELECT * FROM "{ROLLOUTS_MEASUREMENT}" GROUP BY "rollout" ORDER BY time DESC LIMIT 1'
        )
        return series

    def newest_readings(self) -> list[Series]:
        [measurements] = self.client.query("SHOW MEASUREMENTS")
        kinds = sorted(
            name for name in (str(row["name"]) for one in measurements for row in one.rows) if is_kind_measurement(name)
        )
        if not kinds:
            return []
        quoted = ",".join(f'"{kind}"' for kind in kinds)
        [series] = self.client.query(f"SELECT * FROM {quoted} {NEWEST_PER_DEVICE}")
        return series

    def commands(
        self, since_s: int, *, device: str | None = None, outcomes_only: bool = False, limit: int = MAX_COMMAND_ROWS
    ) -> list[dict[str, Any]]:
        where = [f"time > now() - {int(since_s)}s"]
        if device is not None:
            where.append(f"\"device\" = '{require_identifier(device, 'device')}'")
        if outcomes_only:
            where.append("\"status\" != 'sent'")
        [series] = self.client.query(
            f'SELECT * FROM "{COMMANDS_MEASUREMENT}" WHERE {" AND ".join(where)} ORDER BY time DESC LIMIT {int(limit)}'
        )
        return [row for one in series for row in one.rows]

    def close(self) -> None:
        self.client.close()
