"""The page and its JSON endpoints, on the standard library's threading HTTP server.

GET /                      the page (static/index.html, app.js, style.css)
GET /api/overview?range=   fleet overview
GET /api/devices           every device with its last presence state (the device picker)
GET /api/device?device=&range=   one device: readings, on/off states, alerts, commands
GET /api/alarms            the active alarms, most severe first (as `python -m hub alarms --json`)

Bad parameters answer 400 and an unreachable InfluxDB 503, each with {"error": "..."}, so
the page can say what is wrong; the server itself never stops on a bad request.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hub.clients.influx import query
from hub.control.alarms import AlarmFilter, read_alarms
from hub.core.alarms import SEVERITY_RANK
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.errors import HubError, InvalidIdentifier, StorageUnavailable
from hub.core.models import load_models
from hub.core.printable import printable_values
from hub.dashboard import queries

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
#: Only this origin's own files and endpoints: no CDN, no inline script.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"


class Dashboard:
    """What the endpoints answer, given settings (usable without HTTP)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = load_models(settings.models_file)

    def overview(self, range_name: str | None) -> dict[str, Any]:
        w = queries.window(range_name, self.settings.retention)
        return queries.overview(w, query(self.settings, *queries.overview_statements(w)), now_ms())

    def devices(self) -> list[dict[str, str]]:
        [presence] = query(self.settings, queries.presence_statement())
        return queries.devices(presence)

    def alarms(self) -> list[dict[str, Any]]:
        active = AlarmFilter("active").select(read_alarms(self.settings))
        active.sort(key=lambda alarm: (-SEVERITY_RANK[alarm.severity], -alarm.raised_at))
        return [alarm.as_json() for alarm in active]

    def device(self, device: str | None, range_name: str | None) -> dict[str, Any]:
        w = queries.window(range_name, self.settings.retention)
        if not device:
            raise InvalidIdentifier("a device is required: /api/device?device=<name>")
        [presence] = query(self.settings, queries.device_presence_statement(device))
        if not presence:
            raise LookupError(f"no device {device!r} in {self.settings.influx_db!r} (it never reported presence)")
        tags = presence[0].tags
        identity = {
            "device": device,
            "site": tags.get("site", ""),
            "kind": tags.get("kind", ""),
            "protocol": tags.get("protocol", ""),
            "state": str(presence[0].rows[0].get("state", "")) if presence[0].rows else "",
        }
        results = query(self.settings, *queries.device_statements(device, identity["kind"], w, self.models))
        [twin] = query(self.settings, queries.twin_statement(device))
        return {**queries.device_detail(w, identity, results, now_ms(), self.models), "twin": queries.twin_rows(twin)}


class Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "iot-hub-dashboard"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path in PAGES:
            self._static(PAGES[url.path])
            return
        try:
            if url.path == "/api/overview":
                body: Any = self.dashboard.overview(params.get("range"))
            elif url.path == "/api/devices":
                body = self.dashboard.devices()
            elif url.path == "/api/alarms":
                body = self.dashboard.alarms()
            elif url.path == "/api/device":
                body = self.dashboard.device(params.get("device"), params.get("range"))
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})
                return
        except (queries.UnknownRange, InvalidIdentifier) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except LookupError as exc:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(exc.args[0])})
        except StorageUnavailable as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except HubError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        except Exception:
            # One bad answer must not take the page down: say so, keep serving.
            log.exception("dashboard request failed: %s", url.path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the dashboard's log"})
        else:
            # The page shows strings as text (never as HTML); control characters and bidi
            # overrides a device wrote are escaped here, as in the terminal.
            self._json(HTTPStatus.OK, printable_values(body))

    def _static(self, name: str) -> None:
        data = (STATIC / name).read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", mimetypes.guess_type(name)[0] or "application/octet-stream")
        self._common_headers(len(data))
        self.wfile.write(data)

    def _json(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self._common_headers(len(data))
        self.wfile.write(data)

    def _common_headers(self, length: int) -> None:
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


def make_server(settings: Settings, host: str, port: int) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0 = any free port); call serve_forever() on it."""
    handler = type("BoundHandler", (Handler,), {"dashboard": Dashboard(settings)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
