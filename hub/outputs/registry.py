"""Outputs by name, and their readers: IOT_OUTPUTS picks them, several at once.

`influxdb` is the default: the v1 or v2 output as IOT_INFLUX_API says (`auto`: v2 when
IOT_INFLUX_TOKEN is set, else by the version the server reports on /ping). A new output is a
module in this package with a class like those below, registered in `OUTPUTS`, and its reader
in `READERS` (one that cannot be queried raises `Unreadable`, as `jsonl`'s does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hub.clients.influx import UNREACHABLE_HINT, Series, server_version
from hub.core.config import Settings
from hub.core.errors import ConfigError, StorageUnavailable
from hub.outputs.base import MAX_COMMAND_ROWS, MAX_LOG_ROWS, Output, Reader
from hub.outputs.influxdb_v1 import InfluxV1Output, InfluxV1Reader
from hub.outputs.influxdb_v2 import InfluxV2Output, InfluxV2Reader
from hub.outputs.jsonl import JsonLinesOutput, JsonLinesReader


def influx_api(settings: Settings) -> str:
    """`v1` or `v2` as IOT_INFLUX_API says; `auto`: v2 with a token, else as the server's /ping version says."""
    api = settings.influx_api
    if api == "auto":
        if settings.influx_token:
            return "v2"
        version = server_version(settings.influx_url)
        if version is None:
            raise StorageUnavailable(
                f"cannot reach InfluxDB at {settings.influx_url} (no answer to /ping): {UNREACHABLE_HINT}"
            )
        return "v1" if version.startswith("1.") or version == "" else "v2"
    return api


def open_influxdb(settings: Settings) -> Output:
    return InfluxV2Output(settings) if influx_api(settings) == "v2" else InfluxV1Output(settings)


class InfluxReader:
    """The `influxdb` output's reader: v1 or v2 as `influx_api` decides, on the first read (no I/O before)."""

    name = "influxdb"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reader: Reader | None = None

    def device_states(self) -> list[Series]:
        return self._resolved().device_states()

    def twins(self) -> list[Series]:
        return self._resolved().twins()

    def rollouts(self) -> list[Series]:
        return self._resolved().rollouts()

    def newest_readings(self) -> list[Series]:
        return self._resolved().newest_readings()

    def commands(
        self, since_s: int, *, device: str | None = None, outcomes_only: bool = False, limit: int = MAX_COMMAND_ROWS
    ) -> list[dict[str, Any]]:
        return self._resolved().commands(since_s, device=device, outcomes_only=outcomes_only, limit=limit)

    def device_logs(
        self,
        since_s: int,
        *,
        devices: Sequence[str] | None = None,
        levels: Sequence[str] | None = None,
        limit: int = MAX_LOG_ROWS,
    ) -> list[dict[str, Any]]:
        return self._resolved().device_logs(since_s, devices=devices, levels=levels, limit=limit)

    def alarm_rows(self, since_s: int | None = None) -> list[dict[str, Any]]:
        return self._resolved().alarm_rows(since_s)

    def recent_readings(self, since_s: int, per_device: int) -> list[Series]:
        return self._resolved().recent_readings(since_s, per_device)

    def last_alerts(self, since_s: int) -> list[dict[str, Any]]:
        return self._resolved().last_alerts(since_s)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def _resolved(self) -> Reader:
        if self._reader is None:
            v2 = influx_api(self.settings) == "v2"
            self._reader = InfluxV2Reader(self.settings) if v2 else InfluxV1Reader(self.settings)
        return self._reader


OUTPUTS: dict[str, Callable[[Settings], Output]] = {
    "influxdb": open_influxdb,
    "influxdb_v1": InfluxV1Output,
    "influxdb_v2": InfluxV2Output,
    "jsonl": JsonLinesOutput,
}


#: The reader of each output's points (the read side, beside `OUTPUTS`).
READERS: dict[str, Callable[[Settings], Reader]] = {
    "influxdb": InfluxReader,
    "influxdb_v1": InfluxV1Reader,
    "influxdb_v2": InfluxV2Reader,
    "jsonl": JsonLinesReader,
}


def output_names(settings: Settings) -> list[str]:
    """The configured output names, checked: unknown or missing names are a `ConfigError`."""
    names = [name.strip() for name in settings.outputs.split(",") if name.strip()]
    if not names:
        raise ConfigError("IOT_OUTPUTS names no output; choose from " + ", ".join(OUTPUTS))
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown:
        raise ConfigError(f"IOT_OUTPUTS: unknown output {', '.join(unknown)}; choose from {', '.join(OUTPUTS)}")
    return list(dict.fromkeys(names))


def open_output(settings: Settings, name: str) -> Output:
    return OUTPUTS[name](settings)


def open_reader(settings: Settings) -> Reader:
    """The reader of what the configured outputs stored: an InfluxDB output's when there is one
    (any other cannot be queried), else the first output's (whose reads may be `Unreadable`).
    Opening it does no I/O."""
    names = output_names(settings)
    name = next((name for name in names if name.startswith("influxdb")), names[0])
    return READERS[name](settings)
