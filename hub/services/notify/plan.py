"""The notification decisions, without I/O: where a transition goes, which escalations it starts
or cancels, when a failed delivery is tried again.

`NotifyPlan` is the router's core. It keeps the escalations pending per alarm, each with the
delivery tag of the transition that started it: the router holds that delivery unacked until
the escalation fires or an `acked`/`cleared` transition cancels it, so after a restart the broker
hands the held transitions over again and the plan is rebuilt from them (see `router`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hub.services.notify.config import Escalation, NotifyConfig
from hub.services.notify.message import AlarmTransition, Notification, notification
from hub.services.notify.topic import matches

#: Transitions that end what an escalation waits for: someone saw it, or it is over.
SETTLING = frozenset({"acked", "cleared"})


@dataclass(frozen=True)
class Send:
    """One notification to one channel."""

    channel: str
    notification: Notification


@dataclass(frozen=True)
class Decision:
    sends: tuple[Send, ...] = ()
    #: Escalations to start a timer for (their delay through the broker).
    timers: tuple[Escalation, ...] = ()
    #: Keep the delivery unacked: an escalation waits on it.
    hold: bool = False
    #: Held deliveries nothing waits on any more.
    release: tuple[int, ...] = ()


def channels_for(config: NotifyConfig, routing_key: str) -> list[str]:
    """Every channel of every route matching `routing_key`, each once, in the file's order."""
    found: dict[str, None] = {}
    for route in config.routes:
        if matches(route.match, routing_key):
            found.update(dict.fromkeys(route.to))
    return list(found)


@dataclass
class _Pending:
    tag: int
    message: AlarmTransition
    escalation: Escalation


@dataclass
class NotifyPlan:
    config: NotifyConfig
    #: alarm id -> escalation id -> what waits.
    pending: dict[str, dict[str, _Pending]] = field(default_factory=dict)

    def on_transition(self, message: AlarmTransition, routing_key: str, tag: int) -> Decision:
        sends = tuple(Send(channel, notification(message)) for channel in channels_for(self.config, routing_key))
        if message.transition in SETTLING:
            return Decision(sends, release=self._drop(message.alarm_id))
        if message.acked:
            return Decision(sends)
        waiting = self.pending.setdefault(message.alarm_id, {})
        started = []
        for escalation in self.config.escalate:
            if escalation.id not in waiting and matches(escalation.match, routing_key):
                waiting[escalation.id] = _Pending(tag, message, escalation)
                started.append(escalation)
        if not waiting:
            del self.pending[message.alarm_id]
        return Decision(sends, timers=tuple(started), hold=bool(started))

    def on_due(self, alarm_id: str, escalation_id: str) -> Decision:
        """An escalation's delay is over: if it still waits, its channels get the `unacked` notice."""
        waiting = self.pending.get(alarm_id, {})
        due = waiting.pop(escalation_id, None)
        if due is None:  # acked or cleared meanwhile (or before a restart): cancelled
            return Decision()
        if not waiting:
            del self.pending[alarm_id]
        notice = notification(due.message, "unacked", due.escalation.after_ms)
        sends = tuple(Send(channel, notice) for channel in due.escalation.to)
        still_held = {p.tag for w in self.pending.values() for p in w.values()}
        return Decision(sends, release=() if due.tag in still_held else (due.tag,))

    def forget(self) -> None:
        """The connection is new: what was held comes again."""
        self.pending.clear()

    def _drop(self, alarm_id: str) -> tuple[int, ...]:
        dropped = self.pending.pop(alarm_id, {})
        return tuple(sorted({p.tag for p in dropped.values()}))


@dataclass(frozen=True)
class RetrySchedule:
    """A delivery's attempts: the first at once, then one after each delay, in order."""

    delays_ms: tuple[int, ...]

    @property
    def attempts(self) -> int:
        return len(self.delays_ms) + 1

    def after_failure(self, attempt: int) -> int | None:
        """The delay before attempt `attempt + 1`, or None when `attempt` was the last."""
        return self.delays_ms[attempt - 1] if 1 <= attempt <= len(self.delays_ms) else None
