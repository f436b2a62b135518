"""A delivery worker of the notify service: a handler over one channel's queue `hub.notify.<channel>`.

It is the one handler that does I/O of its own: the send, through its channel's adapter (a
webhook POST, an SMTP session), with a timeout. That is its whole job, and the runner still does
the rest: the worker returns what follows from the answer, and the runner publishes it, awaits the
confirm and only then acks the delivery. Several workers compete for the queue (in one process,
`IOT_NOTIFY_WORKERS`, and across processes), each with one delivery at a time (prefetch 1), so a
slow receiver holds up a worker, not the router nor the other channels.

- delivered (the receiver said yes): settled;
- failed, attempts left: the same body, attempt + 1, published into the retry queue of the next
  delay (`hub.notify.<channel>.retry.<ms>`), which the broker moves back into the channel's
  queue when the delay is over; then settled;
- failed for good (the last attempt, or an answer that cannot change, e.g. HTTP 400):
  dead-lettered to `iot.dlx` with reason `notify_failed` (or `notify_refused`), and the
  attempts and the receiver's last answer in `x-iot-detail`.
"""

from __future__ import annotations

from hub.core.errors import InvalidMessage
from hub.runtime.delivery import Delivery
from hub.runtime.handler import NOTHING, Effects, Publish
from hub.runtime.topology import Declaration
from hub.services.notify.message import decode_notification
from hub.services.notify.plan import RetrySchedule
from hub.services.notify.queues import channel_queue, retry_queue
from hub.services.notify.router import ATTEMPT_HEADER, SERVICE, delivery_properties
from hub.services.notify.senders import Sender

#: Dead-letter reasons: every attempt failed; the receiver refused it in a way retrying cannot change.
FAILED_REASON = "notify_failed"
REFUSED_REASON = "notify_refused"


class DeliveryWorker:
    def __init__(self, channel: str, sender: Sender, retries: RetrySchedule, number: int = 1) -> None:
        self.name = f"{SERVICE}.{channel}.{number}"
        self.channel = channel
        self.sender = sender
        self.retries = retries
        self.declaration = Declaration(
            queues=(channel_queue(channel),),
            declare_also=tuple(retry_queue(channel, delay) for delay in sorted(set(retries.delays_ms))),
        )

    def handle(self, delivery: Delivery) -> Effects:
        notification = decode_notification(delivery.body)
        headers = delivery.properties.headers or {}
        attempt = _attempt(headers.get(ATTEMPT_HEADER))
        answer = self.sender.send(notification)
        if answer.ok:
            return Effects(events=[("notification", self.channel, "delivered")])
        tried = f"{self.channel}: attempt {attempt} of {self.retries.attempts}; last answer: {answer.text}"
        if answer.permanent:
            raise InvalidMessage(REFUSED_REASON, tried)
        delay = self.retries.after_failure(attempt)
        if delay is None:
            raise InvalidMessage(FAILED_REASON, tried)
        retry = Publish(
            "",
            retry_queue(self.channel, delay).name,
            delivery.body,
            delivery_properties(notification.key, attempt + 1, answer.text[:500]),
            True,
        )
        return Effects(publishes=[retry], events=[("notification", self.channel, "retried")])

    def tick(self, now_ms: int, role: str) -> Effects:
        return NOTHING

    def on_consuming(self, now_ms: int) -> None:
        return None


def _attempt(value: object) -> int:
    return value if isinstance(value, int) and value >= 1 else 1
