"""Output `influxdb_v2`: the v2 write API through influxdb-client (token, org, bucket); and its
reader: Flux on the v2 query API, so reading back needs no database/retention-policy mapping.

Serves InfluxDB 2.x and 3.x, and 1.8+ through its v2 compatibility endpoint (the bucket is
IOT_INFLUX_DB, or `db/rp`; a user and password make the 1.8 token form `user:password`).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hub.clients.influx import REQUEST_TIMEOUT_S, Series
from hub.core.config import InfluxAccount, Settings
from hub.core.contract import LOG_LEVELS, require_identifier
from hub.core.errors import ConfigError, PointsRejected, StorageUnavailable
from hub.core.measurements import (
    ALARMS_MEASUREMENT,
    ALERTS_MEASUREMENT,
    COMMANDS_MEASUREMENT,
    HUB_MEASUREMENTS,
    LOGS_MEASUREMENT,
    ROLLOUTS_MEASUREMENT,
    STATUS_MEASUREMENT,
    TWINS_MEASUREMENT,
)
from hub.core.points import Point
from hub.outputs.base import ALARM_ROWS_PER_DEVICE, MAX_COMMAND_ROWS, MAX_LOG_ROWS
from hub.outputs.lineprotocol import lines_payload

#: Columns of a Flux record that are not the point's own (the query's bookkeeping).
FLUX_COLUMNS = frozenset({"result", "table", "_start", "_stop", "_time", "_measurement"})


def _client(settings: Settings, account: InfluxAccount) -> Any:
    from influxdb_client.client.influxdb_client import InfluxDBClient

    if not account.token and not account.user:
        raise ConfigError("InfluxDB 2.x/3.x needs IOT_INFLUX_TOKEN (and IOT_INFLUX_ORG)")
    token = account.token
    if token is None and account.user:
        token = f"{account.user}:{account.password or ''}"
    return InfluxDBClient(
        url=settings.influx_url, token=token or "", org=_org(settings), timeout=int(REQUEST_TIMEOUT_S * 1000)
    )


def _org(settings: Settings) -> str:
    return settings.influx_org or "-"


def _bucket(settings: Settings) -> str:
    return settings.influx_db + (f"/{settings.influx_rp}" if settings.influx_rp else "")


class InfluxV2Output:
    #: The dead-letter reason of a point it refuses is `rejected_by_<family>`.
    family = "influxdb"
    name = "influxdb_v2"

    def __init__(self, settings: Settings) -> None:
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.bucket = _bucket(settings)
        self.org = _org(settings)
        self.client = _client(settings, settings.influx_writer)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, points: Sequence[Point]) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self.api.write(
                bucket=self.bucket,
                org=self.org,
                record=lines_payload(points).decode(),
                write_precision=WritePrecision.MS,
            )
        except ApiException as exc:
            status = exc.status or 0
            if 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
                raise PointsRejected(f"InfluxDB refused the points ({status}): {exc.body}") from exc
            raise StorageUnavailable(f"InfluxDB answered {status}: {exc.body}") from exc
        except Exception as exc:  # urllib3 connection errors have no common base worth naming
            raise StorageUnavailable(f"InfluxDB at {self.client.url}: {exc}") from exc

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()


# --- the reader: Flux, built and parsed by pure functions ----------------------------------------


def flux_string(value: str) -> str:
    """A Flux string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flux_newest_per_device(bucket: str, measurement_filter: str) -> str:
    """The newest row of each device in each measurement the filter keeps, its fields as columns."""
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        "  |> range(start: 0)\n"
        f"  |> filter(fn: (r) => {measurement_filter})\n"
        "  |> last()\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        '  |> group(columns: ["_measurement", "device"])\n'
        '  |> sort(columns: ["_time"], desc: true)\n'
        "  |> limit(n: 1)"
    )


def flux_device_states(bucket: str) -> str:
    return flux_newest_per_device(bucket, f"r._measurement == {flux_string(STATUS_MEASUREMENT)}")


def flux_twins(bucket: str) -> str:
    return flux_newest_per_device(bucket, f"r._measurement == {flux_string(TWINS_MEASUREMENT)}")


def flux_rollouts(bucket: str) -> str:
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        "  |> range(start: 0)\n"
        f"  |> filter(fn: (r) => r._measurement == {flux_string(ROLLOUTS_MEASUREMENT)})\n"
        "  |> last()\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        '  |> group(columns: ["rollout"])'
    )


def flux_newest_readings(bucket: str) -> str:
    not_hub = " and ".join(f"r._measurement != {flux_string(name)}" for name in sorted(HUB_MEASUREMENTS))
    return flux_newest_per_device(bucket, f'{not_hub} and exists r.device and r.device != ""')


def flux_recent_readings(bucket: str, since_s: int, per_device: int) -> str:
    not_hub = " and ".join(f"r._measurement != {flux_string(name)}" for name in sorted(HUB_MEASUREMENTS))
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: -{int(since_s)}s)\n"
        f'  |> filter(fn: (r) => {not_hub} and exists r.device and r.device != "")\n'
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        '  |> group(columns: ["_measurement", "device"])\n'
        '  |> sort(columns: ["_time"], desc: true)\n'
        f"  |> limit(n: {int(per_device)})"
    )


def flux_alarm_rows(bucket: str, since_s: int | None) -> str:
    newest = (
        '  |> group(columns: ["type", "device"])\n  |> sort(columns: ["_time"], desc: true)\n'
        f"  |> limit(n: {ALARM_ROWS_PER_DEVICE})"
        if since_s is None
        else '  |> group()\n  |> sort(columns: ["_time"])'
    )
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: {'0' if since_s is None else f'-{int(since_s)}s'})\n"
        f"  |> filter(fn: (r) => r._measurement == {flux_string(ALARMS_MEASUREMENT)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        f"{newest}"
    )


def flux_last_alerts(bucket: str, since_s: int) -> str:
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: -{int(since_s)}s)\n"
        f'  |> filter(fn: (r) => r._measurement == {flux_string(ALERTS_MEASUREMENT)} and r._field == "value")\n'
        '  |> group(columns: ["rule", "device"])\n'
        "  |> last()"
    )


def flux_commands(bucket: str, since_s: int, device: str | None, outcomes_only: bool, limit: int) -> str:
    conditions = [f"r._measurement == {flux_string(COMMANDS_MEASUREMENT)}"]
    if device is not None:
        conditions.append(f"r.device == {flux_string(require_identifier(device, 'device'))}")
    if outcomes_only:
        conditions.append('r.status != "sent"')
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: -{int(since_s)}s)\n"
        f"  |> filter(fn: (r) => {' and '.join(conditions)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> group()\n"
        '  |> sort(columns: ["_time"], desc: true)\n'
        f"  |> limit(n: {int(limit)})"
    )


def flux_device_logs(
    bucket: str, since_s: int, devices: Sequence[str] | None, levels: Sequence[str] | None, limit: int
) -> str:
    conditions = [f"r._measurement == {flux_string(LOGS_MEASUREMENT)}"]
    if devices is not None:
        names = ", ".join(flux_string(require_identifier(device, "device")) for device in devices)
        conditions.append(f"contains(value: r.device, set: [{names}])")
    if levels is not None:
        unknown = [level for level in levels if level not in LOG_LEVELS]
        if unknown:
            raise ValueError(f"not log levels: {unknown}")
        conditions.append(f"contains(value: r.level, set: [{', '.join(map(flux_string, levels))}])")
    return (
        f"from(bucket: {flux_string(bucket)})\n"
        f"  |> range(start: -{int(since_s)}s)\n"
        f"  |> filter(fn: (r) => {' and '.join(conditions)})\n"
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        "  |> group()\n"
        '  |> sort(columns: ["_time"], desc: true)\n'
        f"  |> limit(n: {int(limit)})"
    )


def row_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """A Flux record's values as an InfluxQL-like row: `time` in epoch ms, tags and fields as columns."""
    row = {name: value for name, value in values.items() if name not in FLUX_COLUMNS}
    at = values.get("_time")
    row["time"] = round(at.timestamp() * 1000) if isinstance(at, datetime.datetime) else at
    return row


def series_by_device(records: Iterable[Mapping[str, Any]]) -> list[Series]:
    """One series per measurement and device, its rows in the order they came."""
    series: dict[tuple[str, str], Series] = {}
    for values in records:
        measurement, device = str(values.get("_measurement", "")), str(values.get("device") or "")
        key = (measurement, device)
        if key not in series:
            series[key] = Series(measurement, {"device": device})
        series[key].rows.append(row_of(values))
    return list(series.values())


class InfluxV2Reader:
    """Flux reads as the reader's token (IOT_INFLUX_TOKEN); opens no connection until asked."""

    name = "influxdb_v2"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = _bucket(settings)
        self._client: Any = None

    def device_states(self) -> list[Series]:
        return series_by_device(self._query(flux_device_states(self.bucket)))

    def twins(self) -> list[Series]:
        return series_by_device(self._query(flux_twins(self.bucket)))

    def rollouts(self) -> list[Series]:
        return [
            Series(ROLLOUTS_MEASUREMENT, {"rollout": str(values.get("rollout") or "")}, [row_of(values)])
            for values in self._query(flux_rollouts(self.bucket))
        ]

    def newest_readings(self) -> list[Series]:
        return series_by_device(self._query(flux_newest_readings(self.bucket)))

    def commands(
        self, since_s: int, *, device: str | None = None, outcomes_only: bool = False, limit: int = MAX_COMMAND_ROWS
    ) -> list[dict[str, Any]]:
        flux = flux_commands(self.bucket, since_s, device, outcomes_only, limit)
        return [row_of(values) for values in self._query(flux)]

    def device_logs(
        self,
        since_s: int,
        *,
        devices: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        limit: int = MAX_LOG_ROWS,
    ) -> list[dict[str, Any]]:
        bucket = f"{self.settings.influx_db}/{self.settings.log_rp}" if self.settings.log_rp else self.bucket
        flux = flux_device_logs(bucket, since_s, devices, levels, limit)
        return [row_of(values) for values in self._query(flux)]

    def alarm_rows(self, since_s: int | None = None) -> list[dict[str, Any]]:
        return [row_of(values) for values in self._query(flux_alarm_rows(self.bucket, since_s))]

    def recent_readings(self, since_s: int, per_device: int) -> list[Series]:
        return series_by_device(self._query(flux_recent_readings(self.bucket, since_s, per_device)))

    def last_alerts(self, since_s: int) -> list[dict[str, Any]]:
        rows = [row_of(values) for values in self._query(flux_last_alerts(self.bucket, since_s))]
        return [{"rule": row.get("rule"), "device": row.get("device"), "time": row["time"]} for row in rows]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _query(self, flux: str) -> list[Mapping[str, Any]]:
        from influxdb_client.rest import ApiException

        if self._client is None:
            self._client = _client(self.settings, self.settings.influx_reader)
        try:
            tables = self._client.query_api().query(flux, org=_org(self.settings))
        except ApiException as exc:
            url = self.settings.influx_url
            raise StorageUnavailable(f"InfluxDB at {url} answered {exc.status}: {exc.body}") from exc
        except Exception as exc:  # urllib3 connection errors have no common base worth naming
            raise StorageUnavailable(f"InfluxDB at {self.settings.influx_url}: {exc}") from exc
        return [record.values for table in tables for record in table.records]
