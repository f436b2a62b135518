"""Cross-cutting behaviour of every service, as hooks (in the spirit of dramatiq's middleware).

The runner emits each signal once, at the point a hook names, to every middleware; a middleware
never changes what happens, it only watches: Prometheus metrics, the `hub_stats` counts, logs.
No decision core counts anything itself: what a handler wants counted travels as `Event`s in
its effects and reaches `after_settle` with the batch that made them durable.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hub.core.points import Point
from hub.runtime.delivery import Delivery, protocol_of
from hub.runtime.metrics import (
    BATCH_LATENCY,
    BATCH_SIZE,
    CONNECTED,
    DEAD_LETTERED,
    EVENT_COUNTERS,
    READING_AGE,
    READING_AGE_AT_STORAGE,
    RECEIVED,
    STORED,
    WRITE_RETRIES,
    ServiceStats,
)

log = logging.getLogger("hub.runtime")

#: Write failures are logged the 1st, 10th and every this many attempts (the rest are counted).
RETRY_LOG_EVERY = 50


@dataclass(frozen=True)
class BatchReport:
    """One settled batch, as the runner reports it to the middleware."""

    #: The deliveries it settled (acked; dead-lettered ones included).
    deliveries: Sequence[Delivery]
    #: Points written to the outputs, and how many of them every output took.
    points: int
    stored: int
    #: The deliveries' own points (readings) the outputs took, each tagged with its `protocol`.
    records: Sequence[Point]
    #: What the handler's effects of this batch count.
    events: Sequence[tuple[str, ...]]
    #: From the start of the write to the ack, retries included.
    latency_s: float
    #: Hub clock (ms) at the ack.
    settled_at_ms: int


class Middleware:
    """Every hook does nothing; a middleware overrides the ones it needs."""

    def after_connect(self, service: str) -> None: ...

    def after_disconnect(self, service: str) -> None: ...

    def after_settle(self, service: str, report: BatchReport) -> None: ...

    def after_dead_letter(self, service: str, reason: str) -> None: ...

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None: ...


class Prometheus(Middleware):
    """The hub's Prometheus series (`hub.runtime.metrics`), from the runner's signals alone."""

    def __init__(self) -> None:
        self._unknown_events: set[str] = set()

    def after_connect(self, service: str) -> None:
        CONNECTED.labels(service).set(1)

    def after_disconnect(self, service: str) -> None:
        CONNECTED.labels(service).set(0)

    def after_settle(self, service: str, report: BatchReport) -> None:
        if report.points:
            BATCH_SIZE.labels(service).observe(report.points)
            BATCH_LATENCY.labels(service).observe(report.latency_s)
        for protocol, count in Counter(protocol_of(d.properties) for d in report.deliveries).items():
            RECEIVED.labels(service, protocol).inc(count)
        if report.records:
            now = report.settled_at_ms
            for tag, count in Counter(point.tags["protocol"] for point in report.records).items():
                STORED.labels(tag).inc(count)
            READING_AGE_AT_STORAGE.observe_many(max(0.0, (now - point.ts_ms) / 1000) for point in report.records)
            newest = max(point.ts_ms for point in report.records)
            READING_AGE.labels(service).set(max(0.0, (now - newest) / 1000))
        for (name, *labels), count in Counter(report.events).items():
            counter = EVENT_COUNTERS.get(name)
            if counter is not None:
                counter.labels(*labels).inc(count)
            elif name not in self._unknown_events:
                self._unknown_events.add(name)
                log.error("service=%s event=unknown_event name=%s (not in EVENT_COUNTERS)", service, name)

    def after_dead_letter(self, service: str, reason: str) -> None:
        DEAD_LETTERED.labels(service, reason).inc()

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None:
        WRITE_RETRIES.labels(service).inc()


class Stats(Middleware):
    """The cumulative counts of every service that the monitor writes as `hub_stats` points."""

    def __init__(self) -> None:
        self._by_service: dict[str, ServiceStats] = {}
        self._lock = threading.Lock()

    def of(self, service: str) -> ServiceStats:
        """The counts of `service` (zero until it reports)."""
        with self._lock:
            stats = self._by_service.get(service)
            if stats is None:
                stats = self._by_service[service] = ServiceStats(service)
            return stats

    def all(self) -> list[ServiceStats]:
        with self._lock:
            return list(self._by_service.values())

    def after_settle(self, service: str, report: BatchReport) -> None:
        stats = self.of(service)
        with stats.lock:
            stats.received += len(report.deliveries)
            stats.stored += report.stored
        if report.points:
            stats.add_batch(report.latency_s)

    def after_dead_letter(self, service: str, reason: str) -> None:
        stats = self.of(service)
        with stats.lock:
            stats.dead_lettered += 1

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None:
        stats = self.of(service)
        with stats.lock:
            stats.write_retries += 1


class WriteFailureLog(Middleware):
    """One log line for the 1st, 10th and every RETRY_LOG_EVERY-th failed attempt of a write."""

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None:
        if attempt in (1, 10) or attempt % RETRY_LOG_EVERY == 0:
            log.warning(
                "service=%s event=write_failed output=%s attempt=%d points_kept=%d error=%r",
                service,
                output,
                attempt,
                points,
                error,
            )


def default_middleware(stats: Stats | None = None) -> list[Middleware]:
    """Prometheus, the `hub_stats` counts (`stats`, or a table of its own) and the write-failure log."""
    return [Prometheus(), stats if stats is not None else Stats(), WriteFailureLog()]
