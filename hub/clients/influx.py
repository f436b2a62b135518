"""InfluxQL queries over HTTP (`/query`): InfluxDB 1.x, and 2.x/3.x through their v1 API."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from hub.core.config import Settings
from hub.core.errors import StorageUnavailable

#: A fleet query reads one point per series; anything slower than this is a sick server.
QUERY_TIMEOUT_S = 10.0
_HINT = "start the stack with `python -m hub stack up`, or point IOT_INFLUX_URL / --influx-url at your InfluxDB"


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


def query(settings: Settings, *statements: str) -> list[list[Series]]:
    """Run the statements (joined with ';') in database `settings.influx_db`, times in epoch ms."""
    params: dict[str, str] = {"db": settings.influx_db, "q": ";".join(statements), "epoch": "ms"}
    if settings.influx_user:
        params["u"] = settings.influx_user
        params["p"] = settings.influx_password or ""
    request = urllib.request.Request(f"{settings.influx_url.rstrip('/')}/query?{urllib.parse.urlencode(params)}")
    if settings.influx_token:
        request.add_header("Authorization", f"Token {settings.influx_token}")
    try:
        with urllib.request.urlopen(request, timeout=QUERY_TIMEOUT_S) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()[:200]
        if exc.code in (401, 403):
            raise StorageUnavailable(
                f"InfluxDB at {settings.influx_url} refused the credentials ({exc.code}): "
                "check IOT_INFLUX_TOKEN or IOT_INFLUX_USER/IOT_INFLUX_PASSWORD"
            ) from None
        raise StorageUnavailable(f"InfluxDB at {settings.influx_url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StorageUnavailable(f"cannot reach InfluxDB at {settings.influx_url} ({reason}): {_HINT}") from None
    try:
        results = parse_response(payload)
    except StorageUnavailable as exc:
        if "database not found" in str(exc):
            raise StorageUnavailable(
                f"InfluxDB at {settings.influx_url} has no database {settings.influx_db!r} (IOT_INFLUX_DB): "
                "`python -m hub stack up` creates it, and the hub writes to it"
            ) from None
        raise
    if not results:
        raise StorageUnavailable(f"InfluxDB at {settings.influx_url} gave an empty answer to {statements[0]!r}")
    return results
