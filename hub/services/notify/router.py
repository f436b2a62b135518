"""The notify service's router: a handler over `hub.notify` (every alarm transition, and the
escalation timers when they are due).

For each transition it queues one delivery per channel its routes name (`hub.notify.<channel>`,
through the default exchange, mandatory and confirmed before the transition is acked), and
starts the escalations it matches: a timer message into `hub.notify.escalate.<ms>`, which the
broker moves back into `hub.notify` when its delay is over.

Whether an escalation still waits when its timer comes back is known from the transition that
started it: the router holds that delivery unacked until the timer fires or an `acked` or
`cleared` transition of the alarm cancels it. Nothing to store elsewhere, and it survives a
restart or a standby taking over: the broker hands the held transitions to the next router
first (a quorum queue delivers returned messages before the rest), so the plan is rebuilt
before any timer that came due meanwhile is read. Their deliveries are sent again then, with
the same idempotency keys.
"""

from __future__ import annotations

import msgspec
from pika.spec import BasicProperties

from hub.core.errors import InvalidMessage
from hub.runtime.delivery import Delivery
from hub.runtime.handler import NOTHING, Effects, Event, Publish
from hub.runtime.topology import Declaration
from hub.services.notify.config import NotifyConfig
from hub.services.notify.message import decode_transition, encode_notification
from hub.services.notify.plan import Decision, NotifyPlan
from hub.services.notify.queues import ROUTER, channel_queue, escalation_queue

SERVICE = "notify"
#: Header of a timer message (its value: `escalation`); the rest of `hub.notify` are transitions.
TIMER_HEADER = "x-iot-timer"
TIMER_ESCALATION = "escalation"
#: Header of a channel delivery: the notification's idempotency key, and the attempt it is on.
KEY_HEADER = "x-iot-key"
ATTEMPT_HEADER = "x-iot-attempt"
CONTENT_TYPE = "application/json"


class Timer(msgspec.Struct, frozen=True):
    alarm_id: str
    escalation: str


def delivery_properties(key: str, attempt: int, last_answer: str | None = None) -> BasicProperties:
    headers: dict[str, object] = {KEY_HEADER: key, ATTEMPT_HEADER: attempt}
    if last_answer is not None:
        headers["x-iot-last-answer"] = last_answer
    return BasicProperties(delivery_mode=2, content_type=CONTENT_TYPE, headers=headers)


class NotifyRouter:
    """What every transition causes: deliveries, escalation timers, held transitions released."""

    def __init__(self, config: NotifyConfig) -> None:
        self.name = SERVICE
        self.plan = NotifyPlan(config)
        delays = sorted({escalation.after_ms for escalation in config.escalate})
        self.declaration = Declaration(
            queues=(ROUTER,),
            declare_also=(
                *(channel_queue(channel) for channel in config.channels),
                *(escalation_queue(delay) for delay in delays),
            ),
        )

    def handle(self, delivery: Delivery) -> Effects:
        headers = delivery.properties.headers or {}
        if headers.get(TIMER_HEADER) == TIMER_ESCALATION:
            try:
                timer = msgspec.json.decode(delivery.body, type=Timer)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise InvalidMessage("schema", f"escalation timer: {exc}") from None
            decision = self.plan.on_due(timer.alarm_id, timer.escalation)
            outcome = "fired" if decision.sends else "cancelled"
            return self._effects(decision, [("escalation", outcome)])
        message = decode_transition(delivery.body, delivery.routing_key)
        decision = self.plan.on_transition(message, delivery.routing_key, delivery.tag)
        publishes = [
            Publish(
                "",
                escalation_queue(escalation.after_ms).name,
                msgspec.json.encode(Timer(message.alarm_id, escalation.id)),
                BasicProperties(delivery_mode=2, content_type=CONTENT_TYPE, headers={TIMER_HEADER: TIMER_ESCALATION}),
                True,
            )
            for escalation in decision.timers
        ]
        events: list[Event] = [("escalation", "started")] * len(decision.timers)
        return self._effects(decision, events, publishes)

    def _effects(self, decision: Decision, events: list[Event], publishes: list[Publish] | None = None) -> Effects:
        publishes = list(publishes or ())
        for send in decision.sends:
            body = encode_notification(send.notification)
            queue = channel_queue(send.channel).name
            publishes.append(Publish("", queue, body, delivery_properties(send.notification.key, 1), True))
            events.append(("notification", send.channel, "routed"))
        return Effects(publishes=publishes, events=events, hold=decision.hold, release=decision.release)

    def tick(self, now_ms: int, role: str) -> Effects:
        return NOTHING

    def on_consuming(self, now_ms: int) -> None:
        self.plan.forget()
