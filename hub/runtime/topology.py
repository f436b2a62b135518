"""The hub's queues on exchange `iot`, declared the same way by every process that uses them.

Quorum queues survive a broker restart and count redeliveries: a message redelivered more
than `DELIVERY_LIMIT` times (a consumer that keeps dying on it) goes to `iot.dlx` instead of
looping forever. rabbitmq/definitions.json declares the same queues with the same arguments,
so readings are kept even before the hub has ever started.

Rules, presence and commands keep state in the process (per-device rule state, last signs of
life, pending commands), so their queues are single-active-consumer: several `hub run`
processes may consume them, the broker delivers to one and hands the queue to the next
(with whatever was unacked) when that one's connection goes. The others are hot standbys.
A queue's arguments cannot change once it exists: a queue declared by an older hub without
`x-single-active-consumer` is refused by the broker (PRECONDITION_FAILED), which `declare`
turns into `QueueOutdated`; `python -m hub stack migrate` replaces it, moving its messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EXCHANGE
from hub.core.errors import QueueOutdated

#: Redeliveries a quorum queue allows before it dead-letters a message by itself.
DELIVERY_LIMIT = 20
#: AMQP reply code of a declare whose arguments differ from the existing queue's.
PRECONDITION_FAILED = 406
#: The command that replaces an outdated queue (see `QueueOutdated`).
MIGRATE_COMMAND = "python -m hub stack migrate"


@dataclass(frozen=True)
class HubQueue:
    name: str
    bindings: tuple[str, ...]
    #: Unacked deliveries the broker may send ahead to one consumer of this queue.
    prefetch: int
    #: One consumer at a time (the broker's single-active-consumer): for services with state.
    single_active: bool = False


STORE = HubQueue("hub.store", ("telemetry.#",), prefetch=10_000)
RULES = HubQueue("hub.rules", ("telemetry.#",), prefetch=5_000, single_active=True)
PRESENCE = HubQueue("hub.presence", ("status.#",), prefetch=1_000, single_active=True)
#: Pending commands stay unacked until their outcome is recorded, so this window bounds them.
COMMANDS = HubQueue("hub.commands", ("commands.#", "acks.#"), prefetch=20_000, single_active=True)
QUEUES = {"store": STORE, "rules": RULES, "presence": PRESENCE, "commands": COMMANDS}


def queue_arguments(queue: HubQueue) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    }
    if queue.single_active:
        arguments["x-single-active-consumer"] = True
    return arguments


def declare_exchanges(channel: BlockingChannel) -> None:
    """Exchange `iot`, the dead-letter exchange and the dead-letter queue."""
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)


def declare(channel: BlockingChannel, queue: HubQueue) -> None:
    """Declare exchange `iot`, the dead-letter exchange and queue, and `queue` with its bindings.

    Raises `QueueOutdated` when `queue` exists with other arguments (the broker closes the channel).
    """
    declare_exchanges(channel)
    try:
        channel.queue_declare(queue.name, durable=True, arguments=queue_arguments(queue))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        raise QueueOutdated(
            f"queue {queue.name} exists with other arguments than this hub declares ({exc.reply_text});"
            f" it was made by an older hub. Stop every hub, then run `{MIGRATE_COMMAND}`:"
            " it replaces the queue and moves the messages it holds, none lost"
        ) from exc
    for pattern in queue.bindings:
        channel.queue_bind(queue.name, EXCHANGE, routing_key=pattern)
