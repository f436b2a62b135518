"""An MQTT device connection (paho-mqtt) driven by the fleet's one event loop instead of a thread.

paho supports an external loop: its socket callbacks tell us when a socket opens, closes or
has bytes to write, and we call `loop_read` / `loop_write` / `loop_misc` when the selector
says so. So a thousand clients cost a thousand sockets, not a thousand threads.

paho would do a TLS handshake inside `connect()`, holding the loop for each device in turn;
given a pool, the link makes the TLS connection there and hands paho the finished socket on
the loop's thread.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from devices.links import LinkDown, LinkEvents
from hub.core.config import Settings
from hub.core.contract import command_key, mqtt_topic, status_key
from hub.core.tls import DeviceCert, device_context, settings_context

#: Seconds between keep-alive pings; the broker fires the last will after 1.5 times this of silence.
MQTT_KEEPALIVE_S = 30
QOS_AT_LEAST_ONCE = 1
#: Seconds a TCP connect may take before the attempt counts as failed.
CONNECT_TIMEOUT_S = 5.0
#: CONNACK reasons that mean "this login is no good" (MQTT 3.1.1 codes 4 and 5, as paho 2 reports them).
REFUSED_LOGIN = frozenset({134, 135})


class _HandedSocketClient(mqtt.Client):
    """A paho client that takes the socket its next connect uses, already connected, instead of making one."""

    handed: Any = None

    def _create_socket(self) -> Any:
        sock, self.handed = self.handed, None
        return sock if sock is not None else super()._create_socket()


class MqttLink:
    protocol = "mqtt"

    def __init__(
        self,
        device_id: str,
        settings: Settings,
        selector: selectors.BaseSelector,
        events: LinkEvents,
        will: bytes,
        window: int,
        dirty: Callable[[MqttLink], None],
        password: str = "",
        cert: DeviceCert | None = None,
        pool: Executor | None = None,
        call_soon: Callable[[Callable[[], None]], None] | None = None,
        address: tuple[str, int] | None = None,
    ) -> None:
        """`cert`: log in with this client certificate (the broker takes its CN as the user), no password.

        `pool` and `call_soon` (the loop's): make TLS connections on the pool, not on the loop.
        `address`: the broker node to connect to (default: the first of IOT_MQTT_ADDRESSES / IOT_MQTT_HOST).
        """
        self.device_id, self._settings, self._selector, self._events = device_id, settings, selector, events
        self.address = address or settings.mqtt_brokers[0]
        self._pool, self._call_soon = pool, call_soon
        self._context: ssl.SSLContext | None = None
        self._dirty = dirty
        self._closing = False
        self._down = False
        self.refused = False
        client = _HandedSocketClient(CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=True)
        if cert is None:
            # Its own account: the username is the device id, like the client id.
            client.username_pw_set(device_id, password)
        # With a certificate no username at all: RabbitMQ takes the CN only from a CONNECT without one.
        client.will_set(mqtt_topic(status_key(device_id)), will, qos=QOS_AT_LEAST_ONCE, retain=False)
        if settings.mqtt_tls:
            # Verifies the broker's certificate and host name.
            self._context = settings_context(settings) if cert is None else device_context(settings, cert)
            client.tls_set_context(self._context)
        client.max_inflight_messages_set(window)
        client.max_queued_messages_set(0)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self.client = client
        self._sock: Any = None
        self._watching_writes = False

    # --- driven by the event loop -------------------------------------------------------------

    def open(self) -> None:
        if self._context is None or self._pool is None or self._call_soon is None:
            self._connect()
        else:
            self._pool.submit(self._connect_tls, self._context, self._call_soon)

    def _connect(self) -> None:
        host, port = self.address
        self.client.connect(host, port, keepalive=MQTT_KEEPALIVE_S)

    def _connect_tls(self, context: ssl.SSLContext, call_soon: Callable[[Callable[[], None]], None]) -> None:
        """On the pool: TCP connect and TLS handshake (verifying the broker), then paho's CONNECT on the loop."""
        host, port = self.address
        try:
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
            try:
                sock = context.wrap_socket(raw, server_hostname=host)
            except BaseException:
                raw.close()
                raise
        except OSError as exc:  # ssl.SSLError included: one more failed attempt, retried with backoff
            reason = f"connect failed: {exc}"
            call_soon(lambda: self._went_down(reason))
            return
        call_soon(lambda: self._connect_over(sock))

    def _connect_over(self, sock: ssl.SSLSocket) -> None:
        if self._closing or self._down:
            # Closed (or given up) while the handshake ran: nothing was said yet, so nothing is owed.
            sock.close()
            self._went_down("closed")
            return
        self.client.handed = sock
        try:
            self._connect()
        except (OSError, ValueError) as exc:
            self._went_down(f"connect failed: {exc}")

    def on_ready(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self.client.loop_read(max_packets=100)
            # TLS may hold decrypted bytes the selector cannot see: read them before waiting again.
            while isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
                self.client.loop_read(max_packets=100)
        if mask & selectors.EVENT_WRITE and self._sock is not None:
            self.client.loop_write()

    def flush(self) -> None:
        """Write what publishes queued (called once per loop turn, not once per message)."""
        if self._sock is not None and self.client.want_write():
            self.client.loop_write()
            if self.client.want_write():
                self.want_write_events()

    def tick(self) -> None:
        if self._sock is not None:
            self.client.loop_misc()

    def publish(self, routing_key: str, body: bytes, token: Hashable | None = None) -> Hashable:
        if self._down or self._closing:
            raise LinkDown(self.device_id)
        info = self.client.publish(mqtt_topic(routing_key), body, qos=QOS_AT_LEAST_ONCE)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkDown(f"{self.device_id}: {mqtt.error_string(info.rc)}")
        return info.mid

    def close(self, last_words: bytes) -> None:
        if self._down:
            return
        self._closing = True
        # The broker handles a connection's packets in order: the status is routed before the DISCONNECT.
        self.client.publish(mqtt_topic(status_key(self.device_id)), last_words, qos=QOS_AT_LEAST_ONCE)
        self.client.disconnect()
        # Written by the loop's next flush: never from here, which may be inside a paho callback,
        # where writing the DISCONNECT would re-enter paho's callback lock and hang the loop.
        self._dirty(self)

    def cut(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    # --- paho callbacks (all on the loop's thread) ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            self.refused = reason.value in REFUSED_LOGIN
            self._went_down(f"broker refused the connection: {reason}")
            client.disconnect()
            return
        client.subscribe(mqtt_topic(command_key(self.device_id)), qos=QOS_AT_LEAST_ONCE)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        if any(reason.is_failure for reason in reasons):
            self._went_down("broker refused the command subscription")
            self.client.disconnect()
            return
        # Online only once commands can reach the device, so whoever waits for "online" may send one.
        self._events.link_up(self)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self._went_down("closed" if self._closing else f"connection lost ({reason})")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _reason: ReasonCode, _p: Any) -> None:
        self._events.link_confirmed(self, mid)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._events.link_command(self, bytes(message.payload))

    def _on_socket_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._sock = sock
        self._selector.register(sock, selectors.EVENT_READ, self)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._sock = None
        self._watching_writes = False
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _on_register_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._dirty(self)

    def _on_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        if self._sock is not None and self._watching_writes:
            self._watching_writes = False
            self._selector.modify(sock, selectors.EVENT_READ, self)

    def want_write_events(self) -> None:
        """Some bytes did not fit in the socket: wait for it to be writable."""
        if self._sock is not None and not self._watching_writes:
            self._watching_writes = True
            self._selector.modify(self._sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def _went_down(self, reason: str) -> None:
        if not self._down:
            self._down = True
            self._events.link_down(self, reason)
