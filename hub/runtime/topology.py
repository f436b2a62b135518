"""The hub's queues on exchange `iot`, declared the same way by every process that uses them.

Quorum queues survive a broker restart and count redeliveries: a message redelivered more
than `DELIVERY_LIMIT` times (a consumer that keeps dying on it) goes to `iot.dlx` instead of
looping forever. rabbitmq/definitions.json declares the same queues with the same arguments,
so readings are kept even before the hub has ever started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EXCHANGE

#: Redeliveries a quorum queue allows before it dead-letters a message by itself.
DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class HubQueue:
    name: str
    bindings: tuple[str, ...]
    #: Unacked deliveries the broker may send ahead to one consumer of this queue.
    prefetch: int


STORE = HubQueue("hub.store", ("telemetry.#",), prefetch=10_000)
RULES = HubQueue("hub.rules", ("telemetry.#",), prefetch=5_000)
PRESENCE = HubQueue("hub.presence", ("status.#",), prefetch=1_000)
#: Pending commands stay unacked until their outcome is recorded, so this window bounds them.
COMMANDS = HubQueue("hub.commands", ("commands.#", "acks.#"), prefetch=20_000)
QUEUES = {"store": STORE, "rules": RULES, "presence": PRESENCE, "commands": COMMANDS}


def queue_arguments() -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    }


def declare(channel: BlockingChannel, queue: HubQueue) -> None:
    """Declare exchange `iot`, the dead-letter exchange and queue, and `queue` with its bindings."""
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)
    channel.queue_declare(queue.name, durable=True, arguments=queue_arguments())
    for pattern in queue.bindings:
        channel.queue_bind(queue.name, EXCHANGE, routing_key=pattern)
