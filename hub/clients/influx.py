"""The one InfluxDB HTTP client: ping, writes, InfluxQL queries and CREATE DATABASE.

The v1 output writes through it (the writer account), the CLI's fleet view, the demo and the
dashboard query through it (the reader account), the monitor and the stack ping through it,
the stack creates the database and the accounts through it (the admin): auth (a token, or a user and password),
timeouts and the mapping of failures to `StorageUnavailable` (may pass: keep the data, retry)
and `PointsRejected` (the points themselves are refused) are decided here once. InfluxDB 1.x
speaks this API natively; 2.x and 3.x through their v1 compatibility endpoints.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from hub.core.config import InfluxAccount, Settings
from hub.core.errors import NotPermitted, PointsRejected, StorageUnavailable

#: How long one write or query may take before it counts as failed.
REQUEST_TIMEOUT_S = 10.0
#: How long /ping may take (health checks, version probes).
PING_TIMEOUT_S = 3.0
DETAIL_MAX_CHARS = 500
#: What to do about an InfluxDB that does not answer (the end of the error's line).
UNREACHABLE_HINT = (
    "start the stack with `python -m hub stack up`, or point IOT_INFLUX_URL / --influx-url at your InfluxDB"
)


@dataclass(frozen=True)
class Series:
    """One series of a result: its measurement, its GROUP BY tags and its rows as dicts."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def parse_response(payload: dict[str, Any]) -> list[list[Series]]:
    """The series of each statement's result; an error in any statement raises."""
    results = []
    for result in payload.get("results", []):
        if "error" in result:
            raise StorageUnavailable(f"InfluxDB refused the query: {result['error']}")
        statement = []
        for series in result.get("series", []):
            columns = series.get("columns", [])
            rows = [dict(zip(columns, values, strict=False)) for values in series.get("values", [])]
            statement.append(Series(series.get("name", ""), dict(series.get("tags") or {}), rows))
        results.append(statement)
    if "error" in payload:
        raise StorageUnavailable(f"InfluxDB refused the query: {payload['error']}")
    return results


class InfluxHttp:
    """One kept-alive HTTP connection to an InfluxDB, safe to share between threads."""

    def __init__(
        self,
        url: str,
        db: str,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        rp: str = "",
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.url, self.db, self.rp, self.timeout_s = url.rstrip("/"), db, rp, timeout_s
        parts = urllib.parse.urlsplit(self.url)
        self._host, self._port = parts.hostname or "localhost", parts.port
        self._https, self._base = parts.scheme == "https", parts.path.rstrip("/")
        self._headers: dict[str, str] = {}
        self._user = None if token else user
        if token:
            self._headers["Authorization"] = f"Token {token}"
        elif user:
            self._headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, account: InfluxAccount, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> InfluxHttp:
        """IOT_INFLUX_URL's database, logged in as `account` (`settings.influx_writer`, `.influx_reader`...)."""
        return cls(
            settings.influx_url,
            settings.influx_db,
            user=account.user,
            password=account.password,
            token=account.token,
            rp=settings.influx_rp,
            timeout_s=timeout_s,
        )

    # --- the API -------------------------------------------------------------------------------

    def version(self) -> str | None:
        """The X-Influxdb-Version the server reports on /ping ("" if none), or None if it does not answer."""
        try:
            status, _body, headers = self._request("GET", "/ping", timeout_s=PING_TIMEOUT_S)
        except StorageUnavailable:
            return None
        return headers.get("X-Influxdb-Version", "") if status < 500 else None

    def write(self, payload: bytes) -> None:
        """Write newline-separated line protocol (ms precision) to the database."""
        params = {"db": self.db, "precision": "ms"}
        if self.rp:
            params["rp"] = self.rp
        status, body, _headers = self._request("POST", "/write", params, payload)
        if status == 204:
            return
        detail = body.decode(errors="replace").strip()[:DETAIL_MAX_CHARS]
        if status == 404:
            raise StorageUnavailable(f"InfluxDB at {self.url}: database {self.db!r} not found ({detail})")
        if status in (401, 403):  # a credentials problem, not the points': keep them until it is fixed
            raise self._credentials_refused(status)
        if 400 <= status < 500 and status not in (408, 429):
            raise PointsRejected(f"InfluxDB refused the points ({status}): {detail}")
        raise StorageUnavailable(f"InfluxDB at {self.url} answered {status}: {detail}")

    def query(self, *statements: str) -> list[list[Series]]:
        """Run the statements (joined with ';') in the database, times in epoch ms."""
        params = {"db": self.db, "q": ";".join(statements), "epoch": "ms"}
        status, body, _headers = self._request("GET", "/query", params)
        if status in (401, 403):
            raise self._credentials_refused(status)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if status != 200 and not (isinstance(payload, dict) and "results" in payload):
            detail = body.decode(errors="replace").strip()[:200]
            raise StorageUnavailable(f"InfluxDB at {self.url} answered {status}: {detail}")
        if not isinstance(payload, dict):
            raise StorageUnavailable(f"InfluxDB at {self.url} gave an answer that is not JSON to {statements[0]!r}")
        try:
            results = parse_response(payload)
        except StorageUnavailable as exc:
            if "database not found" in str(exc):
                raise StorageUnavailable(
                    f"InfluxDB at {self.url} has no database {self.db!r} (IOT_INFLUX_DB): "
                    "`python -m hub stack up` creates it, and the hub writes to it"
                ) from None
            raise
        if not results:
            raise StorageUnavailable(f"InfluxDB at {self.url} gave an empty answer to {statements[0]!r}")
        return results

    def create_database(self, if_permitted: bool = False) -> None:
        """CREATE DATABASE is idempotent on 1.x; a user without the right gets its own error, or with
        `if_permitted` nothing: the database is its admin's to make (the stack's makes it)."""
        try:
            self.administer(f'CREATE DATABASE "{self.db}"')
        except NotPermitted:
            if not if_permitted:
                raise

    def administer(self, statement: str) -> list[list[Series]]:
        """One InfluxQL statement that changes the server (a database, a user, a grant), POSTed as 1.x wants it."""
        status, body, _headers = self._request("POST", "/query", {"q": statement})
        # A password in the statement stays out of every message.
        shown = re.sub(r"'(?:[^'\\]|\\.)*'", "'…'", statement)
        if status == 403:
            raise NotPermitted(f"InfluxDB at {self.url}: user {self._user!r} may not {shown}")
        if status == 401:
            raise self._credentials_refused(status)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if status != 200 or not isinstance(payload, dict):
            detail = body.decode(errors="replace").strip()[:200]
            raise StorageUnavailable(f"InfluxDB at {self.url}: {shown} answered {status}: {detail}")
        return parse_response(payload)

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- plumbing ------------------------------------------------------------------------------

    def _credentials_refused(self, status: int) -> StorageUnavailable:
        who = f"user {self._user!r}" if self._user else "a client without credentials"
        return StorageUnavailable(
            f"InfluxDB at {self.url} refused {who} ({status}): check IOT_INFLUX_TOKEN or IOT_INFLUX_USER/"
            "IOT_INFLUX_PASSWORD (IOT_INFLUX_READER_* to read); unset, they are the stack's (its secrets.json)"
        )

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes, http.client.HTTPMessage]:
        target = self._base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        with self._lock:
            if self._connection is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                self._connection = cls(self._host, self._port, timeout=self.timeout_s)
            self._connection.timeout = timeout_s or self.timeout_s
            try:
                self._connection.request(method, target, body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.read(), response.headers
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
                raise StorageUnavailable(f"cannot reach InfluxDB at {self.url} ({reason}): {UNREACHABLE_HINT}") from exc

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def query(settings: Settings, *statements: str) -> list[list[Series]]:
    """One round of InfluxQL statements against IOT_INFLUX_URL/IOT_INFLUX_DB as the reader, on a short-lived
    connection."""
    client = InfluxHttp.from_settings(settings, settings.influx_reader)
    try:
        return client.query(*statements)
    finally:
        client.close()


def server_version(url: str) -> str | None:
    """The version an InfluxDB at `url` reports on /ping, or None if it does not answer."""
    client = InfluxHttp(url, "")
    try:
        return client.version()
    finally:
        client.close()
