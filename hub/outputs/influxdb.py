"""Two ways to write line protocol to InfluxDB behind one small interface.

- `HttpV1Writer`: the InfluxDB 1.x API, `POST /write?db=&rp=&precision=ms` (user/password);
- `ClientV2Writer`: the v2 API through influxdb-client (token/org/bucket: 2.x, 3.x and 1.8+).

Both raise `StorageUnavailable` for what may pass (server down, 5xx, 429: retry the batch) and
`PointsRejected` when the server refuses the points themselves (4xx: retrying cannot help).
"""

from __future__ import annotations

import base64
import http.client
import urllib.parse
from typing import Protocol

from hub.core.config import Settings
from hub.core.errors import ConfigError, HubError, StorageUnavailable

#: How long one write may take before it counts as failed.
WRITE_TIMEOUT_S = 10.0
#: How long the version probe (/ping) may take.
PING_TIMEOUT_S = 3.0


class PointsRejected(HubError):
    """InfluxDB refused the points themselves (e.g. a field type conflict); retrying cannot help."""


class Writer(Protocol):
    def write(self, payload: bytes) -> None:
        """Write newline-separated line protocol points (ms precision)."""

    def ping(self) -> bool:
        """True if the server answers."""

    def close(self) -> None: ...


def _http(url: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname or "localhost", parts.port, timeout=timeout_s)


def server_version(url: str) -> str | None:
    """The X-Influxdb-Version the server reports on /ping, or None if it does not answer."""
    connection = _http(url, PING_TIMEOUT_S)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        response.read()
        return response.getheader("X-Influxdb-Version") or ""
    except OSError:
        return None
    finally:
        connection.close()


class HttpV1Writer:
    """InfluxDB 1.x `/write` over one kept-alive HTTP connection."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.influx_url
        query = {"db": settings.influx_db, "precision": "ms"}
        if settings.influx_rp:
            query["rp"] = settings.influx_rp
        self.path = (
            urllib.parse.urlsplit(settings.influx_url).path.rstrip("/") + "/write?" + urllib.parse.urlencode(query)
        )
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.influx_user:
            credentials = f"{settings.influx_user}:{settings.influx_password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        self.settings = settings
        self._connection: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self._connection is None:
            self._connection = _http(self.url, WRITE_TIMEOUT_S)
        try:
            self._connection.request(method, path, body=body, headers=self.headers)
            response = self._connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise StorageUnavailable(f"InfluxDB at {self.url}: {exc}") from exc

    def write(self, payload: bytes) -> None:
        status, body = self._request("POST", self.path, payload)
        if status == 204:
            return
        detail = body.decode(errors="replace").strip()[:500]
        if status == 404:
            raise StorageUnavailable(f"InfluxDB: database {self.settings.influx_db!r} not found ({detail})")
        if status in (401, 403):  # a credentials problem, not the points': keep them until it is fixed
            raise StorageUnavailable(f"InfluxDB refused the credentials ({status}): check IOT_INFLUX_USER/PASSWORD")
        if 400 <= status < 500 and status not in (408, 429):
            raise PointsRejected(f"InfluxDB refused the points ({status}): {detail}")
        raise StorageUnavailable(f"InfluxDB answered {status}: {detail}")

    def ensure_database(self) -> None:
        """CREATE DATABASE is idempotent on 1.x; a user without the right simply gets its own error."""
        query = urllib.parse.urlencode({"q": f'CREATE DATABASE "{self.settings.influx_db}"'})
        self._request("POST", "/query?" + query)

    def ping(self) -> bool:
        return server_version(self.url) is not None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class ClientV2Writer:
    """The v2 write API through influxdb-client; the bucket is IOT_INFLUX_DB (`db/rp` on 1.8+)."""

    def __init__(self, settings: Settings) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        bucket = settings.influx_db + (f"/{settings.influx_rp}" if settings.influx_rp else "")
        token = settings.influx_token
        if token is None and settings.influx_user:
            token = f"{settings.influx_user}:{settings.influx_password or ''}"  # 1.8+ compatibility form
        self.bucket = bucket
        self.org = settings.influx_org or "-"
        self.client = InfluxDBClient(
            url=settings.influx_url, token=token or "", org=self.org, timeout=int(WRITE_TIMEOUT_S * 1000)
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, payload: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self.api.write(
                bucket=self.bucket,
                org=self.org,
                record=payload.decode(),
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


def open_writer(settings: Settings) -> Writer:
    """The writer the settings ask for; with IOT_INFLUX_API=auto, the token or the server decides."""
    api = settings.influx_api
    if api == "auto":
        if settings.influx_token:
            api = "v2"
        else:
            version = server_version(settings.influx_url)
            if version is None:
                raise StorageUnavailable(f"InfluxDB at {settings.influx_url} does not answer /ping")
            api = "v1" if version.startswith("1.") or version == "" else "v2"
    if api == "v2":
        if not settings.influx_token and not settings.influx_user:
            raise ConfigError("InfluxDB 2.x/3.x needs IOT_INFLUX_TOKEN (and IOT_INFLUX_ORG)")
        return ClientV2Writer(settings)
    writer = HttpV1Writer(settings)
    writer.ensure_database()
    return writer
