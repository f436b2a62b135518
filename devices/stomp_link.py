"""A STOMP device connection (stomp.py): CONNECT with vhost `iot` and heart-beats, receipts for what must not be lost.

stomp.py gives every connection a receiver thread (and a heart-beat thread); those threads
only hand events to the fleet's event loop (`call_soon`), which owns all device state.
Connecting and disconnecting block on the broker's answer, so they run on a small shared
thread pool rather than on the event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Any

import stomp
import stomp.exception

from devices.links import LinkDown, LinkEvents
from hub.core.config import Settings
from hub.core.contract import VHOST, command_key, status_key, stomp_destination
from hub.core.tls import DeviceCert

#: Heart-beats both ways (ms): a dead broker or device is noticed within about twice this.
STOMP_HEARTBEAT_MS = 10_000
#: Seconds a connect (TCP + CONNECTED frame + subscription receipt) may take.
CONNECT_TIMEOUT_S = 10.0
#: Seconds a clean disconnect waits for the broker's receipt.
DISCONNECT_TIMEOUT_S = 5.0
COMMANDS_SUBSCRIPTION_ID = "commands"
#: The `message` of RabbitMQ's ERROR frame to a CONNECT whose login is refused.
REFUSED_CONNECT = "Bad CONNECT"
JSON = "application/json"

CallSoon = Callable[[Callable[[], None]], None]


class StompLink(stomp.ConnectionListener):  # type: ignore[misc]
    protocol = "stomp"

    def __init__(
        self,
        device_id: str,
        settings: Settings,
        events: LinkEvents,
        call_soon: CallSoon,
        pool: Executor,
        password: str = "",
        cert: DeviceCert | None = None,
        address: tuple[str, int] | None = None,
    ) -> None:
        """`cert`: log in with this client certificate (the broker takes its CN as the user), no password.

        `address`: the broker node to connect to (default: the first of IOT_STOMP_ADDRESSES / IOT_STOMP_HOST).
        """
        self.device_id, self._settings, self._events = device_id, settings, events
        self.address = address or settings.stomp_brokers[0]
        self._password = password
        self._cert = cert
        self.refused = False
        self._call_soon, self._pool = call_soon, pool
        self._receipt_ids = itertools.count(1)
        self._subscribed = threading.Event()
        self._subscribe_receipt = f"{device_id}-subscribed"
        self._up = False
        self._down = False
        self._closing = False
        broker = self.address
        self.connection = stomp.Connection12(
            [broker],
            heartbeats=(STOMP_HEARTBEAT_MS, STOMP_HEARTBEAT_MS),
            vhost=VHOST,
            reconnect_attempts_max=1,
            timeout=CONNECT_TIMEOUT_S,
        )
        if settings.stomp_tls:
            # stomp.py builds a verifying context (certificate and host name) from the CA file.
            ca = settings.tls_ca_file
            self.connection.set_ssl(
                for_hosts=[broker],
                ca_certs=str(ca) if ca is not None else None,
                cert_file=str(cert.cert_file) if cert is not None else None,
                key_file=str(cert.key_file) if cert is not None else None,
            )
        self.connection.set_listener("device", self)

    # --- driven by the event loop -------------------------------------------------------------

    def open(self) -> None:
        self._pool.submit(self._connect)

    def publish(self, routing_key: str, body: bytes, token: Hashable | None = None) -> Hashable:
        if not self._up or self._down or self._closing:
            raise LinkDown(self.device_id)
        receipt = str(token) if token is not None else f"m-{next(self._receipt_ids)}"
        try:
            self.connection.send(stomp_destination(routing_key), body, content_type=JSON, headers={"receipt": receipt})
        except (stomp.exception.StompException, OSError) as exc:
            self._cut_quietly()
            raise LinkDown(f"{self.device_id}: {exc!r}") from None
        return receipt

    def close(self, last_words: bytes) -> None:
        if self._down or self._closing:
            return
        self._closing = True
        self._pool.submit(self._disconnect, last_words)

    def cut(self) -> None:
        self._cut_quietly()

    def tick(self) -> None:
        """stomp.py's own heart-beat thread keeps the connection alive."""

    # --- on the pool ---------------------------------------------------------------------------

    def _connect(self) -> None:
        try:
            if self._cert is None:
                # Its own account: the login is the device id.
                self.connection.connect(self.device_id, self._password, wait=True)
            else:
                # No login header: RabbitMQ logs a CONNECT without one in as the certificate's CN.
                self.connection.connect(wait=True)
            self.connection.subscribe(
                stomp_destination(command_key(self.device_id)),
                id=COMMANDS_SUBSCRIPTION_ID,
                ack="auto",
                headers={"receipt": self._subscribe_receipt},
            )
            if not self._subscribed.wait(CONNECT_TIMEOUT_S):
                raise stomp.exception.ConnectFailedException("no receipt for the command subscription")
        except Exception as exc:  # any failure to connect is one more failed attempt, retried with backoff
            self._cut_quietly()
            reason = f"connect failed: {exc!r}"
            self._call_soon(lambda: self._went_down(reason))
            return
        self._call_soon(self._came_up)

    def _disconnect(self, last_words: bytes) -> None:
        try:
            self.connection.send(
                stomp_destination(status_key(self.device_id)), last_words, content_type=JSON, headers={"receipt": "bye"}
            )
            # DISCONNECT with a receipt: the broker answers after everything sent before it.
            self.connection.disconnect(receipt=f"{self.device_id}-disconnect")
        except Exception:  # already gone: nothing more to say
            self._cut_quietly()
        self._call_soon(lambda: self._went_down("closed"))

    # --- stomp.py listener (receiver thread) ---------------------------------------------------

    def on_receipt(self, frame: Any) -> None:
        receipt = frame.headers.get("receipt-id", "")
        if receipt == self._subscribe_receipt:
            self._subscribed.set()
        else:
            self._call_soon(lambda: self._events.link_confirmed(self, receipt))

    def on_message(self, frame: Any) -> None:
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        self._call_soon(lambda: self._events.link_command(self, body))

    def on_disconnected(self) -> None:
        self._call_soon(lambda: self._went_down("closed" if self._closing else "connection lost"))

    def on_heartbeat_timeout(self) -> None:
        self._call_soon(lambda: self._went_down("heart-beat timeout"))

    def on_error(self, frame: Any) -> None:
        message = frame.headers.get("message", "")
        if not self._up and message == REFUSED_CONNECT:
            self.refused = True
        self._call_soon(lambda: self._went_down(f"broker error: {message}"))

    # --- helpers -------------------------------------------------------------------------------

    def _came_up(self) -> None:
        if not self._down:
            self._up = True
            self._events.link_up(self)

    def _went_down(self, reason: str) -> None:
        if not self._down:
            self._down = True
            self._up = False
            self._cut_quietly()
            self._events.link_down(self, reason)

    def _cut_quietly(self) -> None:
        sock = getattr(self.connection.transport, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
