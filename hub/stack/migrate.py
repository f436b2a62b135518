"""`python -m hub stack migrate`: replace hub queues an older hub declared with other arguments.

A queue's arguments cannot change once it exists, so an outdated queue (e.g. `hub.rules`
without `x-single-active-consumer`) is replaced, its messages moved, none lost:

1. a holding queue `<queue>.migrating` is bound like the queue, so new messages wait there;
2. the old queue is unbound, its messages moved to the holding queue (each acked only once
   the broker confirmed its copy), and deleted once empty;
3. the queue is declared anew, as this hub declares it, and bound;
4. the holding queue is unbound, its messages moved back, and deleted.

Between steps 1 and 2 (and 3 and 4) a new message is routed to both queues for a moment, so it
may be handled twice; the hub's effects are idempotent. Every hub must be stopped first: the
migration refuses a queue that has consumers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from hub.clients.amqp import connect
from hub.core.config import Settings
from hub.core.contract import EXCHANGE
from hub.core.errors import QueueOutdated, StackError
from hub.runtime import topology

#: The holding queue of `queue` during its migration.
HOLDING_SUFFIX = ".migrating"
#: Deliveries in flight while moving messages between queues.
MOVE_PREFETCH = 100
#: A queue being moved is empty once nothing arrived for this long.
MOVE_IDLE_S = 1.0


@dataclass(frozen=True)
class Migrated:
    queue: str
    #: "up to date", "replaced", or "resumed" (an interrupted migration finished).
    outcome: str
    #: Messages moved out of the old queue (or the holding queue, when resumed).
    moved: int = 0


def move(channel: BlockingChannel, source: str, target: str) -> int:
    """Every message of `source` into `target` (default exchange, confirmed, then acked).

    Consumed, not fetched: a single-active-consumer quorum queue refuses basic.get.
    """
    moved = 0
    channel.basic_qos(prefetch_count=MOVE_PREFETCH)
    for method, properties, body in channel.consume(source, inactivity_timeout=MOVE_IDLE_S):
        if method is None:
            break
        channel.basic_publish("", target, body, properties, mandatory=True)  # confirmed: returns once held
        channel.basic_ack(method.delivery_tag)
        moved += 1
    channel.cancel()
    return moved


def delete_empty(channel: BlockingChannel, queue: str) -> None:
    """Delete `queue` if it holds nothing (quorum queues refuse `if_empty`: checked here instead)."""
    left = channel.queue_declare(queue, passive=True).method.message_count
    if left:
        raise StackError(f"{queue} still holds {left} messages (published during the move?): run the migration again")
    channel.queue_delete(queue)


def _consumers(channel: BlockingChannel, queue: str) -> int | None:
    """Consumers of `queue`, or None when it does not exist (the channel survives either way)."""
    try:
        return int(channel.queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return None


def migrate_queue(connection: pika.BlockingConnection, queue: topology.HubQueue) -> Migrated:
    probe = connection.channel()
    try:
        topology.declare(probe, queue)
    except QueueOutdated:
        return _replace(connection, queue)
    probe.close()
    # A holding queue left by an interrupted migration still holds messages: back with them.
    channel = connection.channel()
    if _consumers(channel, queue.name + HOLDING_SUFFIX) is None:
        return Migrated(queue.name, "up to date")
    channel.confirm_delivery()
    return Migrated(queue.name, "resumed", _empty_holding(channel, queue))


def _empty_holding(channel: BlockingChannel, queue: topology.HubQueue) -> int:
    holding = queue.name + HOLDING_SUFFIX
    for pattern in queue.bindings:
        channel.queue_unbind(holding, EXCHANGE, routing_key=pattern)
    moved = move(channel, holding, queue.name)
    delete_empty(channel, holding)
    return moved


def _replace(connection: pika.BlockingConnection, queue: topology.HubQueue) -> Migrated:
    channel = connection.channel()
    consumers = _consumers(channel, queue.name) or 0
    if consumers:
        raise StackError(f"{queue.name} has {consumers} consumers: stop every hub before `{topology.MIGRATE_COMMAND}`")
    channel.confirm_delivery()
    holding = queue.name + HOLDING_SUFFIX
    channel.queue_declare(holding, durable=True, arguments=topology.queue_arguments(queue))
    for pattern in queue.bindings:
        channel.queue_bind(holding, EXCHANGE, routing_key=pattern)
    for pattern in queue.bindings:
        channel.queue_unbind(queue.name, EXCHANGE, routing_key=pattern)
    moved = move(channel, queue.name, holding)
    delete_empty(channel, queue.name)
    topology.declare(channel, queue)
    _empty_holding(channel, queue)
    return Migrated(queue.name, "replaced", moved)


def migrate(settings: Settings, progress: Callable[[Migrated], None] = lambda _m: None) -> list[Migrated]:
    """Bring every hub queue to the arguments this hub declares (see the module's docstring)."""
    connection = connect(settings, "hub-migrate")
    try:
        done = []
        for queue in topology.QUEUES.values():
            done.append(migrate_queue(connection, queue))
            progress(done[-1])
        return done
    finally:
        if connection.is_open:
            connection.close()
