"""The HTTP face of `policy`: RabbitMQ's `rabbitmq_auth_backend_http` POSTs a form per check.

Keep-alive HTTP/1.1 and one thread per connection: the broker keeps a few connections open and
asks a handful of questions per device login (user, vhost, then one per queue and topic it uses;
the broker caches those per connection). `GET /health` answers with the counts so far.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from hub.brokerauth.policy import HEALTH_PATH, decide

log = logging.getLogger("hub.brokerauth")

#: A form larger than this is no question of RabbitMQ's: refused unread.
MAX_FORM_BYTES = 16_384
#: Refusals are summed up in one log line at most this often (a flood of impostors must not flood the log).
REFUSALS_LOG_EVERY_S = 60.0


class Tally:
    """Answers by outcome, thread-safe; refusals also by reason and logged in summaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at = 0.0

    def add(self, allowed: bool, reason: str, username: str) -> None:
        with self._lock:
            self.counts["allowed" if allowed else f"refused:{reason}"] += 1
            if allowed:
                return
            self._unlogged[f"{reason}:{username}"] += 1
            now = time.monotonic()
            if now - self._logged_at < REFUSALS_LOG_EVERY_S:
                return
            summary, self._unlogged, self._logged_at = dict(self._unlogged), Counter(), now
        log.warning("event=refused %s", " ".join(f"{key}={n}" for key, n in sorted(summary.items())))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class AuthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], operators: Collection[str]) -> None:
        super().__init__(address, _Handler)
        self.operators = frozenset(operators)
        self.tally = Tally()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AuthServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM_BYTES:
            self._answer(413, b"deny")
            self.close_connection = True
            return
        form = dict(parse_qsl(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True))
        decision = decide(urlsplit(self.path).path, form, self.server.operators)
        self.server.tally.add(decision.allow, decision.reason, form.get("username", ""))
        self._answer(200, decision.body)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == HEALTH_PATH:
            self._answer(200, json.dumps(self.server.tally.snapshot()).encode(), "application/json")
        else:
            self._answer(404, b"deny")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: one line per check would be one line per device login and topic."""
