"""Outputs by name: IOT_OUTPUTS picks them, several at once.

`influxdb` is the default: the v1 or v2 output as IOT_INFLUX_API says (`auto`: v2 when
IOT_INFLUX_TOKEN is set, else by the version the server reports on /ping). A new output is a
module in this package with a class like those below, registered in `OUTPUTS`.
"""

from __future__ import annotations

from collections.abc import Callable

from hub.clients.influx import server_version
from hub.core.config import Settings
from hub.core.errors import ConfigError, StorageUnavailable
from hub.outputs.base import Output
from hub.outputs.influxdb_v1 import InfluxV1Output
from hub.outputs.influxdb_v2 import InfluxV2Output
from hub.outputs.jsonl import JsonLinesOutput


def open_influxdb(settings: Settings) -> Output:
    api = settings.influx_api
    if api == "auto":
        if settings.influx_token:
            api = "v2"
        else:
            version = server_version(settings.influx_url)
            if version is None:
                raise StorageUnavailable(f"InfluxDB at {settings.influx_url} does not answer /ping")
            api = "v1" if version.startswith("1.") or version == "" else "v2"
    return InfluxV2Output(settings) if api == "v2" else InfluxV1Output(settings)


OUTPUTS: dict[str, Callable[[Settings], Output]] = {
    "influxdb": open_influxdb,
    "influxdb_v1": InfluxV1Output,
    "influxdb_v2": InfluxV2Output,
    "jsonl": JsonLinesOutput,
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
