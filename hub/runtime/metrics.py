"""The hub's counters: Prometheus metrics for scraping, `ServiceStats` for the `hub_stats` points.

Hot paths update these once per batch, not once per message.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily

RECEIVED = Counter("hub_messages_received", "Messages taken from a hub queue", ["service", "protocol"])
STORED = Counter("hub_readings_stored", "Readings written to the outputs and acked", ["protocol"])
READINGS_FLAGGED = Counter(
    "hub_readings_flagged",
    "Readings stored although their kind's model does not expect them (undeclared kind or sensor, out of range)",
    ["reason"],
)
DEAD_LETTERED = Counter("hub_messages_dead_lettered", "Messages refused and sent to iot.dlx", ["service", "reason"])
ALERTS = Counter("hub_alerts", "Alerts raised by rules", ["severity", "rule"])
ALARM_TRANSITIONS = Counter(
    "hub_alarm_transitions",
    "Alarm transitions published (raised, escalated, acked, cleared)",
    ["transition", "severity"],
)
RULE_COMMANDS = Counter("hub_rule_commands", "Commands sent by rule actions", ["command"])
COMMAND_OUTCOMES = Counter("hub_command_outcomes", "Command lifecycle events recorded", ["status"])
PRESENCE_TRANSITIONS = Counter("hub_presence_transitions", "Device online/offline transitions", ["state", "reason"])
NOTIFICATIONS = Counter(
    "hub_notifications",
    "Notifications by channel and outcome: routed (queued for the channel), delivered, retried",
    ["channel", "outcome"],
)
ESCALATIONS = Counter(
    "hub_notify_escalations",
    "Escalation timers: started, fired (still unacked), cancelled (acked or cleared)",
    ["outcome"],
)
LOG_LINES = Counter(
    "hub_log_lines", "Device log lines: stored, or dropped over the device's rate (IOT_LOG_RATE)", ["outcome"]
)
LOG_RULE_HITS = Counter("hub_log_rule_hits", "Log rules that matched a device's lines", ["rule"])
WRITE_RETRIES = Counter("hub_write_retries", "Output writes that failed and were retried", ["service"])
BATCH_SIZE = Histogram(
    "hub_batch_points",
    "Points per batch written to the outputs",
    ["service"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_LATENCY = Histogram(
    "hub_batch_write_seconds",
    "Time to write one batch to every output, retries included",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("hub_queue_depth", "Messages ready in a hub queue (consumer lag)", ["queue"])
QUEUE_HELD = Gauge(
    "hub_queue_held", "Deliveries of a hub queue this process holds unacked (batching, writing, pending)", ["queue"]
)
OLDEST_UNSTORED_AGE = Gauge(
    "hub_oldest_unstored_reading_age_seconds",
    "Age of the oldest reading the store holds in its open batch or is retrying (0 when none waits)",
)
READING_AGE = Gauge("hub_reading_age_seconds", "Age of the newest reading in the last stored batch", ["service"])
CONNECTED = Gauge("hub_broker_connected", "1 while the service holds a broker connection", ["service"])


TWIN_COMMANDS = Counter("hub_twin_commands_total", "Commands the twins sent to converge a property", ["property"])
TWIN_FAILED = Counter(
    "hub_twin_failed_total", "Twin properties left failed (refused by the device, or no answer)", ["property"]
)


#: The counters a handler's events feed (`hub.runtime.handler.Event`: a name, then its label values).
EVENT_COUNTERS: dict[str, Counter] = {
    "alert": ALERTS,
    "alarm": ALARM_TRANSITIONS,
    "rule_command": RULE_COMMANDS,
    "flagged": READINGS_FLAGGED,
    "transition": PRESENCE_TRANSITIONS,
    "command_outcome": COMMAND_OUTCOMES,
    "notification": NOTIFICATIONS,
    "escalation": ESCALATIONS,
    "log_line": LOG_LINES,
    "log_rule": LOG_RULE_HITS,
    "twin_command": TWIN_COMMANDS,
    "twin_failed": TWIN_FAILED,
}


class BatchHistogram:
    """A Prometheus histogram fed a batch of values at a time.

    prometheus_client's `Histogram.observe` takes a lock and walks the buckets per value; a
    reading's age is observed for every reading, so here a batch is counted with `bisect` into
    plain integers and added under one lock, and the collector reports the cumulative buckets.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        counts = [0] * len(self._counts)
        total = 0.0
        bounds = self._bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # a value equal to a bound belongs to it ("le")
            total += value
        with self._lock:
            self._counts = [mine + new for mine, new in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = list(accumulate(counts))
        buckets = [(str(float(bound)), count) for bound, count in zip(self._bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


READING_AGE_AT_STORAGE = BatchHistogram(
    "hub_reading_age_at_storage_seconds",
    "Age of each stored reading (now minus its own ts) once its batch is written and acked",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


@dataclass
class ServiceStats:
    """Cumulative counts of one service, read by the `hub_stats` writer every 10 s."""

    service: str
    received: int = 0
    stored: int = 0
    dead_lettered: int = 0
    write_retries: int = 0
    batches: int = 0
    _latency_sum_s: float = 0.0
    _latency_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_batch(self, latency_s: float) -> None:
        with self.lock:
            self.batches += 1
            self._latency_sum_s += latency_s
            self._latency_count += 1

    def take_mean_latency_ms(self) -> float:
        """Mean batch latency since the last call, in ms (0 when there was no batch)."""
        with self.lock:
            mean = self._latency_sum_s / self._latency_count * 1000 if self._latency_count else 0.0
            self._latency_sum_s, self._latency_count = 0.0, 0
        return mean
