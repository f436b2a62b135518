"""The presence service: queue `hub.presence` (status messages, last wills) -> `device_status`."""

from __future__ import annotations

from pika.spec import Basic, BasicProperties

from hub.core.contract import Presence, decode, now_ms
from hub.core.errors import InvalidMessage
from hub.runtime import topology
from hub.runtime.consumer import AmqpService
from hub.services.presence.tracker import PresenceTracker

#: How often the presence service looks for silent devices.
SILENCE_CHECK_S = 1.0


class PresenceService(AmqpService):
    name = "presence"
    queue = topology.PRESENCE

    def __init__(self, *args: object, tracker: PresenceTracker, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tracker = tracker
        self.next_check = 0.0

    def on_message(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        try:
            status = decode(body, Presence)
            if method.routing_key != status.routing_key:
                raise InvalidMessage(
                    "routing_mismatch", f"body says {status.routing_key}, routed as {method.routing_key}"
                )
        except InvalidMessage as exc:
            self.dead_letter(method, properties, body, exc.reason, exc.detail)
            self.outbox.add(method.delivery_tag, None)
            return
        transition = self.tracker.on_status(status, now_ms())
        self.outbox.add(method.delivery_tag, transition.line() if transition else None)

    def tick(self) -> None:
        now = now_ms()
        if now >= self.next_check:
            self.next_check = now + SILENCE_CHECK_S * 1000
            for transition in self.tracker.silent(now):
                self.outbox.add(0, transition.line())
        super().tick()
