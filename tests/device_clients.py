"""Device clients for the identity tests: a paho and a stomp.py connection that record what the broker does to them.

Each logs in as its own account, with a password or, given a `DeviceCert`, with its client
certificate and no username at all (over TLS, which `settings` turns on).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import stomp
import stomp.exception
from paho.mqtt.enums import CallbackAPIVersion

from hub.core.config import Settings
from hub.core.contract import VHOST, mqtt_topic, stomp_destination
from hub.core.tls import DeviceCert, device_context, settings_context

#: Seconds to wait for the broker's answer to a CONNECT.
ANSWER_WITHIN_S = 10


class MqttDevice:
    """A paho client logged in as `user`, recording its CONNACK, SUBACKs, messages and disconnection."""

    def __init__(
        self,
        settings: Settings,
        user: str,
        password: str = "",
        client_id: str | None = None,
        cert: DeviceCert | None = None,
        clean_session: bool = True,
    ) -> None:
        self.connack: Any = None
        self.subacks: list[Any] = []
        self.messages: list[str] = []
        self.disconnected_at: float | None = None
        #: Every disconnection it saw (paho's loop reconnects by itself after each).
        self.disconnects = 0
        self.answered = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or user, clean_session=clean_session)
        if cert is None:
            self.client.username_pw_set(user, password)
        if settings.mqtt_tls:
            self.client.tls_set_context(settings_context(settings) if cert is None else device_context(settings, cert))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda _c, _u, _mid, reasons, _p: self.subacks.append(reasons)
        self.client.on_message = lambda _c, _u, message: self.messages.append(message.topic)
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(settings.mqtt_host, settings.mqtt_connect_port, keepalive=30)
        self.client.loop_start()
        # A certificate the broker does not trust ends the connection after the client's handshake: no CONNACK.
        assert self.answered.wait(ANSWER_WITHIN_S), "neither CONNACK nor disconnection"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self.answered.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnected_at = time.monotonic()
        self.disconnects += 1
        self.answered.set()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, routing_key: str) -> None:
        self.client.subscribe(mqtt_topic(routing_key), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class StompDevice(stomp.ConnectionListener):  # type: ignore[misc]
    """A stomp.py connection logged in as `user`, recording messages, ERROR frames and disconnection."""

    def __init__(self, settings: Settings, user: str, password: str = "", cert: DeviceCert | None = None) -> None:
        self.messages: list[str] = []
        self.errors: list[str] = []
        self.disconnected_at: float | None = None
        broker = (settings.stomp_host, settings.stomp_connect_port)
        self.connection = stomp.Connection12([broker], vhost=VHOST)
        if settings.stomp_tls:
            self.connection.set_ssl(
                for_hosts=[broker],
                ca_certs=str(settings.tls_ca_file),
                cert_file=str(cert.cert_file) if cert is not None else None,
                key_file=str(cert.key_file) if cert is not None else None,
            )
        self.connection.set_listener("device", self)
        if cert is None:
            self.connection.connect(user, password, wait=False)
        else:
            self.connection.connect(wait=False)
        self._wait_connected()

    def _wait_connected(self) -> None:
        """stomp.py's own wait (`connect(wait=True)`) has no deadline, and a TLS handshake the broker
        refuses can leave its reader spinning without ever reporting the error: give up after
        ANSWER_WITHIN_S, as a refusal."""
        transport = self.connection.transport
        deadline = time.monotonic() + ANSWER_WITHIN_S
        while not transport.is_connected():
            if transport.connection_error or not transport.running or time.monotonic() > deadline:
                with contextlib.suppress(Exception):  # whatever state the socket is in, it goes
                    transport.disconnect_socket()
                raise stomp.exception.ConnectFailedException()
            time.sleep(0.01)

    def on_message(self, frame: Any) -> None:
        self.messages.append(frame.headers.get("destination", ""))

    def on_error(self, frame: Any) -> None:
        self.errors.append(f"{frame.headers.get('message', '')} {frame.body}")

    def on_disconnected(self) -> None:
        self.disconnected_at = time.monotonic()

    def subscribe(self, routing_key: str) -> None:
        self.connection.subscribe(stomp_destination(routing_key), id=routing_key, ack="auto")

    def close(self) -> None:
        if self.connection.is_connected():
            self.connection.disconnect()


AnyDevice = MqttDevice | StompDevice


def connect_device(
    settings: Settings, protocol: str, user: str, password: str = "", cert: DeviceCert | None = None
) -> AnyDevice:
    """A device logged in, or an AssertionError saying the broker refused it."""
    if protocol == "mqtt":
        device = MqttDevice(settings, user, password, cert=cert)
        assert device.accepted, device.connack
        return device
    return StompDevice(settings, user, password, cert=cert)


def refused(settings: Settings, protocol: str, user: str, password: str = "", cert: DeviceCert | None = None) -> bool:
    """True when the broker refuses this login."""
    if protocol == "mqtt":
        device = MqttDevice(settings, user, password, cert=cert)
        device.close()
        return not device.accepted
    try:
        StompDevice(settings, user, password, cert=cert).close()
    except stomp.exception.ConnectFailedException:
        return True
    return False


def publish(device: AnyDevice, routing_key: str, body: bytes) -> None:
    if isinstance(device, MqttDevice):
        device.client.publish(mqtt_topic(routing_key), body, qos=1)
    else:
        device.connection.send(stomp_destination(routing_key), body, content_type="application/json")


def gone(device: AnyDevice) -> bool:
    return device.disconnected_at is not None
