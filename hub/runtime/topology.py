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

Telemetry is partitioned: `iot` passes `telemetry.#` to exchange `iot.telemetry` (type
`x-consistent-hash`, plugin rabbitmq_consistent_hash_exchange), which puts each reading in one of
IOT_PARTITIONS queues `hub.telemetry.<p>` by a hash of its routing key
`telemetry.<site>.<kind>.<device>`: every reading of a device in one partition, in order. Each
partition is single-active-consumer, so its rule state lives in one process, and is routed to
once: the broker's fan-out and the hub's per-delivery cost are paid once per reading. A broker
still holding queues this hub no longer consumes (`hub.store`/`hub.rules` of an older hub, or
partitions above IOT_PARTITIONS) keeps filling them: `refuse_leftovers` stops the hub then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from hub.core.contract import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EXCHANGE
from hub.core.errors import QueueOutdated
from hub.runtime.batch import BATCH_MAX_POINTS

#: Redeliveries a quorum queue allows before it dead-letters a message by itself.
DELIVERY_LIMIT = 20
#: AMQP reply code of a declare whose arguments differ from the existing queue's.
PRECONDITION_FAILED = 406
#: The command that replaces an outdated queue (see `QueueOutdated`).
MIGRATE_COMMAND = "python -m hub stack migrate"
#: AMQP reply code of a passive declare of a queue that does not exist.
NOT_FOUND = 404

#: The exchange that spreads readings over the partitions, and what `iot` passes to it.
TELEMETRY_EXCHANGE = "iot.telemetry"
TELEMETRY_EXCHANGE_TYPE = "x-consistent-hash"
TELEMETRY_PATTERN = "telemetry.#"
#: A partition's binding key on `iot.telemetry`: its weight in the hash ring (equal for all).
PARTITION_WEIGHT = "1"
PARTITION_PREFIX = "hub.telemetry."
#: Per partition: two full batches, so a process consuming one partition keeps receiving while
#: a full batch is written (as `hub.store` did with 10,000); P partitions on one channel hold at
#: most P times this, a few MB of bodies, and it bounds what a standby takes over per partition.
PARTITION_PREFETCH = 2 * BATCH_MAX_POINTS
#: The queues of hubs before partitioning: bound to `telemetry.#`, consumed by nobody now.
LEGACY_QUEUES = ("hub.store", "hub.rules")


@dataclass(frozen=True)
class HubQueue:
    name: str
    bindings: tuple[str, ...]
    #: Unacked deliveries the broker may send ahead to one consumer of this queue.
    prefetch: int
    #: One consumer at a time (the broker's single-active-consumer): for services with state.
    single_active: bool = False
    #: The exchange the bindings are on.
    exchange: str = EXCHANGE
    #: A delay queue nobody consumes (see `delay_queue`): classic, its arguments are all in `arguments`.
    classic: bool = False
    #: Arguments of its own, over the defaults (`queue_arguments`).
    arguments: tuple[tuple[str, Any], ...] = ()


def delay_queue(name: str, delay_ms: int, then_to: str) -> HubQueue:
    """A queue that holds each message `delay_ms`, then moves it into queue `then_to` (the broker
    dead-letters it on expiry, through the default exchange): a delay through the broker, not a
    sleep in a process, surviving restarts of both. Classic and durable: on RabbitMQ 3.10 a quorum
    queue dead-letters expired messages at most once as well, and a classic one expires them from
    its head in order, which a queue of equal delays keeps."""
    return HubQueue(
        name,
        (),
        prefetch=0,
        classic=True,
        arguments=(
            ("x-message-ttl", delay_ms),
            ("x-dead-letter-exchange", ""),
            ("x-dead-letter-routing-key", then_to),
        ),
    )


@dataclass(frozen=True)
class SideQueue:
    """A queue of one hub process alone, beside a service's hub queues: exclusive (gone with its
    connection), non-durable, consumed without acks. For copies of messages only a recent one of
    which matters (presence's signs of life), never for anything that must not be lost."""

    name: str
    bindings: tuple[str, ...]
    arguments: tuple[tuple[str, Any], ...] = ()
    exchange: str = EXCHANGE


@dataclass(frozen=True)
class Declaration:
    """What a service's runner declares and consumes on each connect, in this order.

    `partitions`: the number of telemetry partitions (IOT_PARTITIONS) a service that consumes some
    of them expects: leftover telemetry queues beyond it stop the hub (`refuse_leftovers`).
    `declare_also`: queues declared but not consumed here (every partition, so the hash ring is
    whole whichever process starts first). `queues`: consumed with acks, each with its prefetch.
    `side`: side queues, consumed without acks on a channel of their own.
    """

    queues: tuple[HubQueue, ...]
    side: tuple[SideQueue, ...] = ()
    declare_also: tuple[HubQueue, ...] = ()
    partitions: int | None = None

    @property
    def queue_names(self) -> tuple[str, ...]:
        return tuple(queue.name for queue in self.queues)


def partition(p: int) -> HubQueue:
    """Telemetry partition `p`: a share of the devices, all their readings, one consumer at a time."""
    return HubQueue(
        f"{PARTITION_PREFIX}{p}",
        (PARTITION_WEIGHT,),
        prefetch=PARTITION_PREFETCH,
        single_active=True,
        exchange=TELEMETRY_EXCHANGE,
    )


def partitions(count: int) -> tuple[HubQueue, ...]:
    return tuple(partition(p) for p in range(count))


PRESENCE = HubQueue("hub.presence", ("status.#",), prefetch=1_000, single_active=True)
#: Pending commands stay unacked until their outcome is recorded, so this window bounds them.
COMMANDS = HubQueue("hub.commands", ("commands.#", "acks.#"), prefetch=20_000, single_active=True)
#: Devices' log lines: a queue and a runner of their own, so a flood of them never stalls telemetry.
LOGS = HubQueue("hub.logs", ("logs.#",), prefetch=5_000, single_active=True)
#: Desired changes and waiting commands (`twin.#`, published by the CLI), and what tells the twins
#: a device's state and presence: its statuses and its acks (copies; presence and commands have theirs).
TWIN = HubQueue("hub.twin", ("twin.#", "status.#", "acks.#"), prefetch=1_000, single_active=True)
#: The services' queues but telemetry's, whose number is a setting (`partitions`).
QUEUES = {"presence": PRESENCE, "commands": COMMANDS, "logs": LOGS, "twin": TWIN}


def service_queues(service: str, partition_ids: tuple[int, ...]) -> tuple[HubQueue, ...]:
    """The queues `service` consumes in a process that takes `partition_ids` of the telemetry."""
    if service == "telemetry":
        return tuple(partition(p) for p in partition_ids)
    return (QUEUES[service],)


def queue_arguments(queue: HubQueue) -> dict[str, Any]:
    if queue.classic:
        return dict(queue.arguments)
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    }
    if queue.single_active:
        arguments["x-single-active-consumer"] = True
    arguments.update(queue.arguments)
    return arguments


def declare_exchanges(channel: BlockingChannel) -> None:
    """Exchange `iot`, the dead-letter exchange and the dead-letter queue."""
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE)


def declare_telemetry_exchange(channel: BlockingChannel) -> None:
    """`iot.telemetry`, bound from `iot` with `telemetry.#` (an exchange-to-exchange binding)."""
    channel.exchange_declare(TELEMETRY_EXCHANGE, exchange_type=TELEMETRY_EXCHANGE_TYPE, durable=True)
    channel.exchange_bind(TELEMETRY_EXCHANGE, EXCHANGE, routing_key=TELEMETRY_PATTERN)


def declare(channel: BlockingChannel, queue: HubQueue) -> None:
    """Declare exchange `iot`, the dead-letter exchange and queue, and `queue` with its bindings.

    Raises `QueueOutdated` when `queue` exists with other arguments (the broker closes the channel).
    """
    declare_exchanges(channel)
    if queue.exchange == TELEMETRY_EXCHANGE:
        declare_telemetry_exchange(channel)
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
        channel.queue_bind(queue.name, queue.exchange, routing_key=pattern)


def queue_exists(connection: pika.BlockingConnection, name: str) -> bool:
    """A passive declare on a channel of its own (a missing queue closes the channel)."""
    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != NOT_FOUND:
            raise
        return False
    channel.close()
    return True


def surplus_partitions(connection: pika.BlockingConnection, count: int) -> list[str]:
    """Partition queues numbered `count` and up that exist (IOT_PARTITIONS was lowered)."""
    found: list[str] = []
    while queue_exists(connection, f"{PARTITION_PREFIX}{count + len(found)}"):
        found.append(f"{PARTITION_PREFIX}{count + len(found)}")
    return found


def refuse_leftovers(connection: pika.BlockingConnection, count: int) -> None:
    """Raise `QueueOutdated` when the broker holds telemetry queues nobody consumes any more.

    They are bound, so they keep filling: `hub.store`/`hub.rules` of a hub before partitions, or
    `hub.telemetry.<count>` and up after IOT_PARTITIONS was lowered. `stack migrate` moves
    their messages back through the exchange and deletes them.
    """
    legacy = [name for name in LEGACY_QUEUES if queue_exists(connection, name)]
    surplus = surplus_partitions(connection, count)
    if legacy:
        raise QueueOutdated(
            f"queues {', '.join(legacy)} of a hub before telemetry partitions still exist and keep filling with"
            f" readings nobody consumes. Stop every hub, then run `{MIGRATE_COMMAND}`: it moves their readings"
            " into the partitions, none lost, and deletes them"
        )
    if surplus:
        raise QueueOutdated(
            f"{', '.join(surplus)} exist but IOT_PARTITIONS is {count}: they keep filling with readings nobody"
            f" consumes. Stop every hub, then run `{MIGRATE_COMMAND}` (with IOT_PARTITIONS={count}): it moves"
            " their readings to the other partitions, none lost, and deletes them"
        )
