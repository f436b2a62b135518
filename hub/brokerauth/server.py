"""The HTTP face of `policy`: RabbitMQ's `rabbitmq_auth_backend_http` POSTs a form per check.

The broker asks about ten questions per device login (user, vhost, then one per queue, exchange
and topic it uses), one after another, over the two keep-alive connections its HTTP client keeps
per host: the answer's latency is the login's. So the server is one asyncio loop reading HTTP/1.1
by hand (a request line, headers, a Content-Length body; nothing else is ever sent), not a thread
per connection: `bench.connect_auth` measured `http.server` at 0.41x the connect rate without the
check, and this at 0.67x (500 devices, the same run). `GET /health` answers with the counts so far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Collection
from urllib.parse import parse_qsl, urlsplit

from hub.brokerauth.policy import HEALTH_PATH, decide

log = logging.getLogger("hub.brokerauth")

#: A request head or form larger than this is no question of RabbitMQ's: refused, and the connection closed.
MAX_HEAD_BYTES = 8_192
MAX_FORM_BYTES = 16_384
#: Refusals are summed up in one log line at most this often (a flood of impostors must not flood the log).
REFUSALS_LOG_EVERY_S = 60.0
#: An idle connection is closed after this long (the broker's HTTP client reopens one when it needs it).
IDLE_TIMEOUT_S = 300.0


class Tally:
    """Answers by outcome; refusals also by reason and account, logged in summaries."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at = float("-inf")

    def add(self, allowed: bool, reason: str, username: str) -> None:
        self.counts["allowed" if allowed else f"refused:{reason}"] += 1
        if allowed:
            return
        self._unlogged[f"{reason}:{username}"] += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSALS_LOG_EVERY_S:
            summary, self._unlogged, self._logged_at = self._unlogged, Counter(), now
            log.warning("event=refused %s", " ".join(f"{key}={n}" for key, n in sorted(summary.items())))


class AuthService:
    """What the server answers, as plain values: (status, body, content type) for a method, target and body."""

    def __init__(self, operators: Collection[str]) -> None:
        self.operators = frozenset(operators)
        self.tally = Tally()

    def answer(self, method: str, target: str, body: bytes) -> tuple[int, bytes, str]:
        path = urlsplit(target).path
        if method == "GET" and path == HEALTH_PATH:
            return 200, json.dumps(dict(self.tally.counts)).encode(), "application/json"
        if method != "POST":
            return 405, b"deny", "text/plain"
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        decision = decide(path, form, self.operators)
        self.tally.add(decision.allow, decision.reason, form.get("username", ""))
        return 200, decision.body, "text/plain"


STATUS_TEXT = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 413: "Content Too Large"}


def response(status: int, body: bytes, content_type: str, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {STATUS_TEXT.get(status, '')}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: requests answered in order as their bytes complete."""

    def __init__(self, service: AuthService) -> None:
        self.service = service
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._touch()
        while self.transport is not None and not self.transport.is_closing():
            request = self._next_request()
            if request is None:
                return
            method, target, body, close = request
            self.transport.write(response(*self.service.answer(method, target, body), close=close))
            if close:
                self.transport.close()

    def _next_request(self) -> tuple[str, str, bytes, bool] | None:
        """The next complete request in the buffer (taken out of it), or None while it is incomplete."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._refuse(413)
            return None
        try:
            request_line, *header_lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            fields = (line.partition(":") for line in header_lines)
            headers = {name.strip().lower(): value.strip() for name, _, value in fields}
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._refuse(400)
            return None
        if not 0 <= length <= MAX_FORM_BYTES:
            self._refuse(413)
            return None
        if len(self.buffer) < end + 4 + length:
            return None
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        return method, target, body, headers.get("connection", "").lower() == "close"

    def _refuse(self, status: int) -> None:
        assert self.transport is not None
        self.transport.write(response(status, b"deny", "text/plain", close=True))
        self.transport.close()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.transport is not None:
            self.idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self.transport.close)


async def serve(host: str, port: int, service: AuthService, stop: asyncio.Event) -> None:
    """Answer on host:port until `stop` is set."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(service), host, port, reuse_address=True)
    async with server:
        await stop.wait()
