"""Output `influxdb_v1`: line protocol to InfluxDB's 1.x `/write` (user and password, or a token)."""

from __future__ import annotations

from collections.abc import Sequence

from hub.clients.influx import InfluxHttp
from hub.core.config import Settings
from hub.core.points import Point
from hub.outputs.lineprotocol import lines_payload


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
