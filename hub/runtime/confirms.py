"""Publish many messages with publisher confirms and wait for them once: dead-lettering a burst.

pika's `BlockingChannel.basic_publish` waits for each message's confirm before it returns: one
broker round trip (and, for a quorum queue, one replicated commit) per message, while nothing
else moves. A `ConfirmBatch` publishes through the channel's asynchronous side (pika's own
`Channel`, which `BlockingChannel` wraps) so a publish only queues the frames; the broker's acks
and nacks (often one `multiple` ack for many) are counted as they come, and `wait()` serves the
connection until every message published before it is confirmed. A caller acks its inputs only
after `wait()` returned: each output is durable before its input is settled.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pika
from pika.channel import Channel
from pika.frame import Method
from pika.spec import Basic, BasicProperties

from hub.core.errors import BrokerUnavailable

#: How long `wait()` waits for the broker's confirms before it calls the broker unavailable.
CONFIRM_TIMEOUT_S = 30.0
#: The connection is served in slices of this length while waiting (it returns early on any frame).
WAIT_SLICE_S = 0.05


class ConfirmBatch:
    """A channel in confirm mode on `connection`; `publish` never blocks, `wait` waits for all."""

    def __init__(self, connection: pika.BlockingConnection, on_returned: Callable[[str, str], None]) -> None:
        self._connection = connection
        self._on_returned = on_returned
        # The asynchronous channel under the blocking one: its publish only queues frames.
        self._channel: Channel = connection.channel()._impl
        #: Publish sequence numbers (1, 2, ... on this channel) not yet acked or nacked by the broker.
        self._unconfirmed: set[int] = set()
        self._published = 0
        self._nacked = 0
        selected: list[bool] = []
        self._channel.add_on_return_callback(self._returned)
        self._channel.confirm_delivery(self._confirmed, callback=lambda _frame: selected.append(True))
        self._serve_until(lambda: bool(selected))

    @property
    def pending(self) -> int:
        """Messages published and not yet confirmed."""
        return len(self._unconfirmed)

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: BasicProperties, *, mandatory: bool
    ) -> None:
        """Queue one message; `wait()` says when the broker holds it (a mandatory one it cannot route
        is reported to `on_returned`, then confirmed)."""
        self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        self._published += 1
        self._unconfirmed.add(self._published)

    def wait(self) -> None:
        """Return once every message published so far is confirmed; raise if the broker nacked one.

        Deliveries that arrive meanwhile are dispatched as usual; what they publish is not waited for.
        """
        if not self._unconfirmed:
            return
        through = self._published
        self._serve_until(lambda: not self._unconfirmed or min(self._unconfirmed) > through)
        if self._nacked:
            nacked, self._nacked = self._nacked, 0
            raise BrokerUnavailable(f"the broker refused {nacked} published message(s) (basic.nack)")

    def _serve_until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while not done():
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no publisher confirm within {CONFIRM_TIMEOUT_S:.0f} s")
            self._connection.process_data_events(time_limit=WAIT_SLICE_S)

    def _confirmed(self, frame: Method[Basic.Ack | Basic.Nack]) -> None:
        method = frame.method
        tag = int(method.delivery_tag)
        settled = {seq for seq in self._unconfirmed if seq <= tag} if method.multiple else {tag}
        self._unconfirmed -= settled
        if isinstance(method, Basic.Nack):
            self._nacked += len(settled)

    def _returned(self, _channel: Channel, method: Basic.Return, _properties: BasicProperties, _body: bytes) -> None:
        self._on_returned(str(method.exchange), str(method.routing_key))
