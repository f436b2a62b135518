"""Cross-cutting behaviour of every service, as hooks (in the spirit of dramatiq's middleware).

The framework calls each hook of every middleware at the point it names; a middleware never
changes what happens, it only watches: Prometheus metrics, the `hub_stats` counts, logs.
"""

from __future__ import annotations

import logging

from hub.runtime.metrics import (
    BATCH_LATENCY,
    BATCH_SIZE,
    CONNECTED,
    DEAD_LETTERED,
    WRITE_RETRIES,
    ServiceStats,
)

log = logging.getLogger("hub.runtime")

#: Write failures are logged the 1st, 10th and every this many attempts (the rest are counted).
RETRY_LOG_EVERY = 50


class Middleware:
    """Every hook does nothing; a middleware overrides the ones it needs."""

    def after_connect(self, service: str) -> None: ...

    def after_disconnect(self, service: str) -> None: ...

    def after_batch(self, service: str, deliveries: int, points: int, latency_s: float) -> None: ...

    def after_dead_letter(self, service: str, reason: str) -> None: ...

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None: ...


class Prometheus(Middleware):
    """The framework's Prometheus series (the services add their own domain counters)."""

    def after_connect(self, service: str) -> None:
        CONNECTED.labels(service).set(1)

    def after_disconnect(self, service: str) -> None:
        CONNECTED.labels(service).set(0)

    def after_batch(self, service: str, deliveries: int, points: int, latency_s: float) -> None:
        if points:
            BATCH_SIZE.labels(service).observe(points)
            BATCH_LATENCY.labels(service).observe(latency_s)

    def after_dead_letter(self, service: str, reason: str) -> None:
        DEAD_LETTERED.labels(service, reason).inc()

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None:
        WRITE_RETRIES.labels(service).inc()


class Stats(Middleware):
    """The cumulative counts of one service that the monitor writes as `hub_stats` points."""

    def __init__(self, stats: ServiceStats) -> None:
        self.stats = stats

    def after_batch(self, service: str, deliveries: int, points: int, latency_s: float) -> None:
        with self.stats.lock:
            self.stats.received += deliveries
            self.stats.stored += points
        if points:
            self.stats.add_batch(latency_s)

    def after_dead_letter(self, service: str, reason: str) -> None:
        with self.stats.lock:
            self.stats.dead_lettered += 1

    def after_write_failure(self, service: str, output: str, attempt: int, error: Exception, points: int) -> None:
        with self.stats.lock:
            self.stats.write_retries += 1


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


def default_middleware(stats: ServiceStats) -> list[Middleware]:
    return [Prometheus(), Stats(stats), WriteFailureLog()]
