"""Output `influxdb_v2`: the v2 write API through influxdb-client (token, org, bucket).

Serves InfluxDB 2.x and 3.x, and 1.8+ through its v2 compatibility endpoint (the bucket is
IOT_INFLUX_DB, or `db/rp`; a user and password make the 1.8 token form `user:password`).
"""

from __future__ import annotations

from collections.abc import Sequence

from hub.clients.influx import REQUEST_TIMEOUT_S
from hub.core.config import Settings
from hub.core.errors import ConfigError, PointsRejected, StorageUnavailable
from hub.core.points import Point
from hub.outputs.lineprotocol import lines_payload


class InfluxV2Output:
    #: The dead-letter reason of a point it refuses is `rejected_by_<family>`.
    family = "influxdb"
    name = "influxdb_v2"

    def __init__(self, settings: Settings) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        writer = settings.influx_writer
        if not writer.token and not writer.user:
            raise ConfigError("InfluxDB 2.x/3.x needs IOT_INFLUX_TOKEN (and IOT_INFLUX_ORG)")
        token = writer.token
        if token is None and writer.user:
            token = f"{writer.user}:{writer.password or ''}"
        self.bucket = settings.influx_db + (f"/{settings.influx_rp}" if settings.influx_rp else "")
        self.org = settings.influx_org or "-"
        self.client = InfluxDBClient(
            url=settings.influx_url, token=token or "", org=self.org, timeout=int(REQUEST_TIMEOUT_S * 1000)
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, points: Sequence[Point]) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self.api.write(
                bucket=self.bucket,
                org=self.org,
                record=lines_payload(points).decode(),
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
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
        self.client.close()  # type: ignore[no-untyped-call]
