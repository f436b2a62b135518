"""Output `influxdb_v1`: line protocol to InfluxDB's 1.x `/write` (user and password, or a token);
and its reader: InfluxQL on `/query` as the reader account (InfluxDB 1.x, and 2.x/3.x with a
database/retention-policy mapping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.clients.influx import InfluxHttp, Series
from hub.core.config import Settings
from hub.core.contract import LOG_LEVELS, require_identifier
from hub.core.measurements import (
    ALARMS_MEASUREMENT,
    ALERTS_MEASUREMENT,
    COMMANDS_MEASUREMENT,
    LOGS_MEASUREMENT,
    ROLLOUTS_MEASUREMENT,
    STATUS_MEASUREMENT,
    TWINS_MEASUREMENT,
    is_kind_measurement,
)
from hub.core.points import Point
from hub.outputs.base import ALARM_ROWS_PER_DEVICE, MAX_COMMAND_ROWS, MAX_LOG_ROWS
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


def influxql_device_logs(
    since_s: int, devices: Sequence[str] | None, levels: Sequence[str] | None, limit: int, rp: str = ""
) -> str:
    """The newest `device_logs` rows (in retention policy `rp`, else the default), as asked; every
    name checked before it goes into the query."""
    where = [f"time > now() - {int(since_s)}s"]
    if devices is not None:
        names = "|".join(require_identifier(device, "device") for device in devices) or "(?!)"
        where.append(f'"device" =~ /^({names})$/')
    if levels is not None:
        unknown = [level for level in levels if level not in LOG_LEVELS]
        if unknown:
            raise ValueError(f"not log levels: {unknown}")
        where.append(f'"level" =~ /^({"|".join(levels) or "(?!)"})$/')
    source = f'"{require_identifier(rp, "retention policy")}"."{LOGS_MEASUREMENT}"' if rp else f'"{LOGS_MEASUREMENT}"'
    return f"SELECT * FROM {source} WHERE {' AND '.join(where)} ORDER BY time DESC LIMIT {int(limit)}"


class InfluxV1Reader:
    """InfluxQL reads as IOT_INFLUX_READER_USER (or the writer); opens no connection until asked."""

    name = "influxdb_v1"

    def __init__(self, settings: Settings) -> None:
        self.client = InfluxHttp.from_settings(settings, settings.influx_reader)
        self.log_rp = settings.log_rp

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
        quoted = self._kinds()
        if not quoted:
            return []
        [series] = self.client.query(f"SELECT * FROM {quoted} {NEWEST_PER_DEVICE}")
        return series

    def recent_readings(self, since_s: int, per_device: int) -> list[Series]:
        quoted = self._kinds()
        if not quoted:
            return []
        [series] = self.client.query(
            f"SELECT * FROM {quoted} WHERE time > now() - {int(since_s)}s"
            f' GROUP BY "device" ORDER BY time DESC LIMIT {int(per_device)}'
        )
        return series

    def alarm_rows(self, since_s: int | None = None) -> list[dict[str, Any]]:
        if since_s is None:
            query = (
                f'SELECT * FROM "{ALARMS_MEASUREMENT}" GROUP BY "type", "device"'
                f" ORDER BY time DESC LIMIT {ALARM_ROWS_PER_DEVICE}"
            )
        else:
            query = f'SELECT * FROM "{ALARMS_MEASUREMENT}" WHERE time > now() - {int(since_s)}s'
        [series] = self.client.query(query)
        return [{**one.tags, **row} for one in series for row in one.rows]

    def last_alerts(self, since_s: int) -> list[dict[str, Any]]:
        [series] = self.client.query(
            f'SELECT last("value") FROM "{ALERTS_MEASUREMENT}" WHERE time > now() - {int(since_s)}s'
            ' GROUP BY "rule", "device"'
        )
        return [{**one.tags, "time": row["time"]} for one in series for row in one.rows]

    def _kinds(self) -> str:
        """The kinds' measurements, quoted and joined for a FROM clause ("" if none)."""
        [measurements] = self.client.query("SHOW MEASUREMENTS")
        kinds = sorted(
            name for name in (str(row["name"]) for one in measurements for row in one.rows) if is_kind_measurement(name)
        )
        return ",".join(f'"{kind}"' for kind in kinds)

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

    def device_logs(
        self,
        since_s: int,
        *,
        devices: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        limit: int = MAX_LOG_ROWS,
    ) -> list[dict[str, Any]]:
        [series] = self.client.query(influxql_device_logs(since_s, devices, levels, limit, self.log_rp))
        return [row for one in series for row in one.rows]

    def close(self) -> None:
        self.client.close()
