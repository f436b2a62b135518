"""The logs service's handler: `hub.logs` (`logs.#`) -> `device_logs`, each device within its rate.

Its own queue and runner (thread, connection, batches), so a flood of log lines never stalls
telemetry. Each delivery is first charged to its device's token bucket (`LogLimiter`), by the
routing key's device word (the broker lets a device publish only its own): over the rate, the
line is acked and dropped unread, counted (`hub_log_lines{outcome="dropped"}`). That comes
before parsing on purpose: a device flooding its log costs the hub a dictionary look-up per line
above its rate. An admitted line is validated (a bad one is dead-lettered with its reason),
stored as a point of `device_logs`, and shown to the log rules (`rules.py`). Every
`IOT_LOG_SUMMARY_S` a device that lost lines gets one summary line in `device_logs` (tag
`source=hub`) and in the hub's log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from hub.core.config import Settings
from hub.core.contract import LOG_LEVELS, decode_log_line, is_identifier, now_ms
from hub.core.errors import InvalidMessage
from hub.core.points import Point
from hub.runtime import topology
from hub.runtime.delivery import Delivery
from hub.runtime.handler import NOTHING, Effects, Event
from hub.services.logs.limiter import LogLimiter
from hub.services.logs.rules import LogRule, LogRuleHit, observe_all
from hub.services.logs.stored import line_point, summary_point

log = logging.getLogger(__name__)

#: How often the handler asks the limiter for the summaries that are due.
SUMMARY_CHECK_MS = 1_000
_DROPPED: Effects = Effects(events=(("log_line", "dropped"),))
_STORED: Event = ("log_line", "stored")


def device_of(routing_key: str) -> str:
    """The device of `logs.<device>.<level>`; `InvalidMessage("routing_key")` for any other key."""
    parts = routing_key.split(".")
    if len(parts) != 3 or parts[0] != "logs" or not is_identifier(parts[1]) or parts[2] not in LOG_LEVELS:
        raise InvalidMessage("routing_key", f"{routing_key!r} is not logs.<device>.<level>")
    return parts[1]


class LogsHandler:
    name = "logs"

    def __init__(self, limiter: LogLimiter, rules: Sequence[LogRule] = (), clock: Callable[[], int] = now_ms) -> None:
        """`clock`: the hub's clock in epoch ms, which the limiter runs on (the lines' `ts` is the devices')."""
        self.limiter = limiter
        self.rules = tuple(rules)
        self.clock = clock
        self.declaration = topology.Declaration((topology.LOGS,))
        self.next_check_ms = 0

    @classmethod
    def from_settings(cls, settings: Settings, rules: Sequence[LogRule] = ()) -> LogsHandler:
        limiter = LogLimiter(settings.log_rate, settings.log_burst, round(settings.log_summary_s * 1000))
        return cls(limiter, rules)

    def on_consuming(self, now_ms: int) -> None:
        """Nothing to forget: the buckets hold no delivery, and a reconnect does not refill them."""

    def handle(self, delivery: Delivery) -> Effects:
        device = device_of(delivery.routing_key)
        if not self.limiter.admit(device, self.clock()):
            return _DROPPED
        line = decode_log_line(delivery.body, delivery.routing_key)
        if not self.rules:
            return Effects(points=(line_point(line),), events=(_STORED,))
        hits = observe_all(self.rules, line)
        return Effects(points=(line_point(line),), events=(_STORED, *self._hits(hits)))

    def _hits(self, hits: Sequence[LogRuleHit]) -> list[Event]:
        """Where a log rule's hit takes effect: counted and logged today; the alarms' raise goes here."""
        for hit in hits:
            log.warning(
                "service=logs event=log_rule rule=%s device=%s level=%s count=%d window_s=%g",
                hit.rule,
                hit.device,
                hit.level,
                hit.count,
                hit.window_ms / 1000,
            )
        return [("log_rule", hit.rule) for hit in hits]

    def tick(self, now_ms: int, role: str) -> Effects:
        if now_ms < self.next_check_ms:
            return NOTHING
        self.next_check_ms = now_ms + SUMMARY_CHECK_MS
        summaries = self.limiter.summaries(now_ms)
        if not summaries:
            return NOTHING
        points: list[Point] = []
        for summary in summaries:
            log.warning(
                "service=logs event=rate_limited device=%s dropped=%d since_ms=%d rate=%g",
                summary.device,
                summary.dropped,
                summary.since_ms,
                self.limiter.rate,
            )
            points.append(summary_point(summary, self.limiter.rate))
        return Effects(points=points)
