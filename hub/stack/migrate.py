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

It also retires telemetry queues nobody consumes any more (the hub refuses to start beside them):

- `hub.store` and `hub.rules` of a hub before partitions: both are unbound first, then
  `hub.store`'s readings are republished to `iot` with their routing keys (each acked once
  confirmed), so they reach the partitions, and both are deleted. `hub.rules` held copies of
  the same readings (each reading went to both), so its messages are counted and dropped:
  republished, they would be stored twice;
- partitions at or above IOT_PARTITIONS (it was lowered): unbound, their readings republished to
  `iot.telemetry` (the hash puts each in a partition that stays), and deleted.
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
    #: What else a person should know (e.g. messages dropped as copies).
    note: str = ""


def move(channel: BlockingChannel, source: str, target: str | None, exchange: str = "") -> int:
    """Every message of `source` into queue `target` (default exchange), or, with `target` None,
    into `exchange` with its own routing key; each confirmed, then acked.

    Consumed, not fetched: a single-active-consumer quorum queue refuses basic.get.
    """
    moved = 0
    channel.basic_qos(prefetch_count=MOVE_PREFETCH)
    for method, properties, body in channel.consume(source, inactivity_timeout=MOVE_IDLE_S):
        if method is None:
            break
        routing_key = target if target is not None else str(method.routing_key)
        # Mandatory and confirmed: returns once held, raises if nothing is bound to take it.
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
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
        channel.queue_unbind(holding, queue.exchange, routing_key=pattern)
    moved = move(channel, holding, queue.name)
    delete_empty(channel, holding)
    return moved


def _replace(connection: pika.BlockingConnection, queue: topology.HubQueue) -> Migrated:
    channel = connection.channel()
    _refuse_consumed(channel, queue.name)
    channel.confirm_delivery()
    holding = queue.name + HOLDING_SUFFIX
    channel.queue_declare(holding, durable=True, arguments=topology.queue_arguments(queue))
    for pattern in queue.bindings:
        channel.queue_bind(holding, queue.exchange, routing_key=pattern)
    for pattern in queue.bindings:
        channel.queue_unbind(queue.name, queue.exchange, routing_key=pattern)
    moved = move(channel, queue.name, holding)
    delete_empty(channel, queue.name)
    topology.declare(channel, queue)
    _empty_holding(channel, queue)
    return Migrated(queue.name, "replaced", moved)


def _refuse_consumed(channel: BlockingChannel, queue: str) -> None:
    consumers = _consumers(channel, queue) or 0
    if consumers:
        raise StackError(f"{queue} has {consumers} consumers: stop every hub before `{topology.MIGRATE_COMMAND}`")


def _detach(connection: pika.BlockingConnection, queues: list[str], exchange: str, key: str) -> BlockingChannel:
    """Unbind `queues` (none may have a consumer) so no new message reaches them; a channel with confirms."""
    channel = connection.channel()
    for name in queues:
        _refuse_consumed(channel, name)
    channel.confirm_delivery()
    for name in queues:
        channel.queue_unbind(name, exchange, routing_key=key)
    return channel


def retire_legacy(connection: pika.BlockingConnection) -> list[Migrated]:
    """Move `hub.store`'s readings into the partitions, drop `hub.rules`' copies, delete both."""
    present = [name for name in topology.LEGACY_QUEUES if topology.queue_exists(connection, name)]
    if not present:
        return []
    channel = _detach(connection, present, EXCHANGE, topology.TELEMETRY_PATTERN)
    store, rules = topology.LEGACY_QUEUES
    done = []
    if store in present:
        moved = move(channel, store, None, EXCHANGE)
        delete_empty(channel, store)
        done.append(Migrated(store, "retired", moved, "readings republished to iot, so into the partitions"))
    if rules in present:
        copies = int(channel.queue_declare(rules, passive=True).method.message_count)
        channel.queue_delete(rules)
        note = (
            f"{copies} messages dropped: copies of the readings hub.store held (each reading went to both),"
            " judged by the rules from the partitions instead"
        )
        done.append(Migrated(rules, "retired", 0, note))
    return done


def retire_surplus(connection: pika.BlockingConnection, count: int) -> list[Migrated]:
    """Partitions `count` and up (IOT_PARTITIONS was lowered): their readings back through
    `iot.telemetry` into the partitions that stay, then deleted."""
    surplus = topology.surplus_partitions(connection, count)
    if not surplus:
        return []
    # Out of the hash ring first: what arrives meanwhile goes to the partitions that stay.
    channel = _detach(connection, surplus, topology.TELEMETRY_EXCHANGE, topology.PARTITION_WEIGHT)
    done = []
    for name in surplus:
        moved = move(channel, name, None, topology.TELEMETRY_EXCHANGE)
        delete_empty(channel, name)
        done.append(Migrated(name, "retired", moved, f"above IOT_PARTITIONS={count}: readings rehashed"))
    return done


def migrate(settings: Settings, progress: Callable[[Migrated], None] = lambda _m: None) -> list[Migrated]:
    """Bring every hub queue to the arguments this hub declares, and retire the telemetry queues
    it no longer consumes (see the module's docstring)."""
    connection = connect(settings, "hub-migrate")
    try:
        done = []
        # The partitions first: the readings of retired queues are republished into them.
        for queue in (*topology.partitions(settings.partitions), *topology.QUEUES.values()):
            done.append(migrate_queue(connection, queue))
            progress(done[-1])
        for retired in (*retire_legacy(connection), *retire_surplus(connection, settings.partitions)):
            done.append(retired)
            progress(retired)
        return done
    finally:
        if connection.is_open:
            connection.close()
