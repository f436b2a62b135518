"""A delivery: one message a queue handed to the hub, as pika gives it, with the queue it came from."""

from __future__ import annotations

from typing import NamedTuple

from pika.spec import Basic, BasicProperties

from hub.core.contract import Transport

#: Header RabbitMQ's MQTT plugin (3.10) puts on every message it publishes; STOMP ones never have it.
MQTT_HEADER = "x-mqtt-publish-qos"
#: Header every STOMP SEND frame of stomp.py (and most STOMP clients) carries, kept by the STOMP plugin.
STOMP_HEADER = "content-length"


class Delivery(NamedTuple):
    method: Basic.Deliver
    properties: BasicProperties
    body: bytes
    #: The queue it came from (the `x-iot-queue` of its dead-lettered copy).
    queue: str = ""

    @property
    def tag(self) -> int:
        """Its delivery tag: counted up from 1 on each channel, so only valid on the connection it came on."""
        return int(self.method.delivery_tag)

    @property
    def routing_key(self) -> str:
        return str(self.method.routing_key)

    @property
    def redelivered(self) -> bool:
        """The broker delivered it before (to this hub before a reconnect, or to another that died)."""
        return bool(self.method.redelivered)


def protocol_of(properties: BasicProperties) -> Transport:
    """How a delivery reached the exchange: the MQTT plugin sets `x-mqtt-publish-qos` on everything
    it publishes, a STOMP frame carries its `content-length` into the headers, AMQP neither."""
    headers = properties.headers
    if headers is None:
        return "amqp"
    if MQTT_HEADER in headers:
        return "mqtt"
    return "stomp" if STOMP_HEADER in headers else "amqp"
