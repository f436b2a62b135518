"""What the hub says about itself: /metrics and /health over HTTP, and `hub_stats` points.

`Monitor` runs in its own thread: every `DEPTH_INTERVAL_S` it reads the depth of each service's
queue (consumer lag, `hub_queue_depth`) over its own short broker connection, and every
`STATS_INTERVAL_S` it writes one `hub_stats` point per service.

- `/health` answers 200 when both RabbitMQ and InfluxDB are reachable, else 503.
- `/health/live` answers 200 whenever the process serves HTTP.
- `/health/ready` answers 200 or 503 with the reasons `ready_report` finds in the measured facts:
  a dependency unreachable, a queue's backlog above `IOT_READY_MAX_BACKLOG`, or the store stuck
  (its partition queues have a backlog and nothing was stored for `IOT_READY_MAX_READING_AGE_S`).
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pika.exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.clients.amqp import close_quietly, connect
from hub.clients.influx import server_version
from hub.clients.management import read_consumer_activity
from hub.core.config import AmqpParts, Settings
from hub.core.contract import now_ms
from hub.core.errors import BrokerUnavailable, ConfigError, HubError
from hub.core.points import Point
from hub.outputs.fanout import OutputSet
from hub.runtime.consumer import instance_name
from hub.runtime.handler import ROLE_ACTIVE, ROLE_STANDBY, ROLE_UNKNOWN
from hub.runtime.metrics import OLDEST_UNSTORED_AGE, QUEUE_DEPTH, QUEUE_HELD, ServiceStats
from hub.runtime.middleware import Stats
from hub.runtime.runner import Runner
from hub.runtime.topology import PARTITION_PREFIX

log = logging.getLogger(__name__)

#: How often `hub_stats` points are written.
STATS_INTERVAL_S = 10.0
#: How often the monitor reads queue depths (`hub_queue_depth`).
DEPTH_INTERVAL_S = 2.0
#: How long /health/ready reuses depths already read.
DEPTH_CACHE_S = 1.0
#: How long /health waits for each dependency.
PROBE_TIMEOUT_S = 2.0
#: Connections the monitor tries for one reading of the depths: the kept one, then a new one.
DEPTH_READ_ATTEMPTS = 2
#: A service's role by its consumer's `activity_status` in the management API (not listed: unknown).
ROLE_BY_ACTIVITY = {"single_active": ROLE_ACTIVE, "up": ROLE_ACTIVE, "waiting": ROLE_STANDBY}


def service_role(queue_roles: dict[str, str]) -> str:
    """A service with several queues: active if the broker delivers any of them to it, standby if
    it keeps it waiting on every one, unknown otherwise (or with none)."""
    roles = set(queue_roles.values())
    if ROLE_ACTIVE in roles:
        return ROLE_ACTIVE
    return ROLE_STANDBY if roles == {ROLE_STANDBY} else ROLE_UNKNOWN


def stats_points(instance: str, stats: Sequence[ServiceStats], depths: dict[str, int], ts_ms: int) -> list[Point]:
    """One `hub_stats` point per service (pure: the monitor supplies the numbers).

    `depths`: messages ready per service, over all the queues it consumes here."""
    points = []
    for s in stats:
        with s.lock:
            fields: dict[str, int | float] = {
                "received": s.received,
                "stored": s.stored,
                "dead_lettered": s.dead_lettered,
                "write_retries": s.write_retries,
                "batches": s.batches,
            }
        fields["batch_latency_ms"] = s.take_mean_latency_ms()
        if s.service in depths:
            fields["queue_depth"] = depths[s.service]
        points.append(Point("hub_stats", {"instance": instance, "service": s.service}, fields, ts_ms))
    return points


def broker_nodes(settings: Settings) -> str:
    """Every node of IOT_AMQP_URL as the reports name them: `amqp://host:port`, comma-separated."""
    nodes = [AmqpParts.parse(url) for url in settings.amqp_urls]
    return ", ".join(f"{'amqps' if n.tls else 'amqp'}://{n.host}:{n.port}" for n in nodes)


def broker_reachable(settings: Settings) -> bool:
    """Whether a node of IOT_AMQP_URL accepts a connection: a cluster is reachable while one of its nodes is."""
    for url in settings.amqp_urls:
        node = AmqpParts.parse(url)
        try:
            with socket.create_connection((node.host, node.port), timeout=PROBE_TIMEOUT_S):
                return True
        except OSError:
            continue
    return False


def health_report(settings: Settings) -> tuple[bool, dict[str, Any]]:
    broker = broker_reachable(settings)
    influx_version = server_version(settings.influx_url)
    report = {
        "status": "ok" if broker and influx_version is not None else "unavailable",
        "rabbitmq": {"reachable": broker, "url": broker_nodes(settings)},
        "influxdb": {"reachable": influx_version is not None, "url": settings.influx_url, "version": influx_version},
    }
    return broker and influx_version is not None, report


@dataclass(frozen=True)
class QueueFacts:
    """One hub queue this process consumes, as measured."""

    #: Messages ready in RabbitMQ (None: not read, the broker is unreachable).
    ready: int | None
    #: Deliveries this process has taken from the queue and not yet acked.
    held: int

    @property
    def backlog(self) -> int:
        return (self.ready or 0) + self.held


@dataclass(frozen=True)
class ReadyFacts:
    """What /health/ready judges, measured by the monitor (or made up by a test)."""

    broker_reachable: bool
    influx_version: str | None
    queues: dict[str, QueueFacts]
    #: The queues whose readings are stored, when telemetry runs in this process.
    store_queues: tuple[str, ...] = ()
    #: Seconds since the store last stored a reading (or started), when it runs here.
    store_idle_s: float | None = None
    #: Queue -> "active", "standby" or "unknown", for single-active-consumer queues consumed here.
    roles: dict[str, str] = field(default_factory=dict)


def ready_report(
    facts: ReadyFacts, settings: Settings, max_backlog: int, max_reading_age_s: float
) -> tuple[bool, dict[str, Any]]:
    """The /health/ready verdict: (ready, JSON report with one reason per problem). Pure."""
    reasons: list[str] = []
    broker_url = broker_nodes(settings)
    if not facts.broker_reachable:
        reasons.append(f"rabbitmq: unreachable at {broker_url}")
    if facts.influx_version is None:
        reasons.append(f"influxdb: unreachable at {settings.influx_url}")
    for queue, q in sorted(facts.queues.items()):
        # A standby holds nothing: the queue's backlog is the active hub's to judge.
        if q.backlog > max_backlog and facts.roles.get(queue) != ROLE_STANDBY:
            reasons.append(f"backlog: {queue} holds {q.backlog} messages, more than {max_backlog}")
    store: dict[str, Any] | None = None
    if facts.store_queues and facts.store_idle_s is not None:
        # A standby's partitions wait for the active hub, not for this one.
        mine = [q for q in facts.store_queues if q in facts.queues and facts.roles.get(q) != ROLE_STANDBY]
        waiting = sum(facts.queues[q].backlog for q in mine)
        store = {
            "queues": list(facts.store_queues),
            "idle_s": round(facts.store_idle_s, 1),
            "max_idle_s": max_reading_age_s,
        }
        # A quiet fleet stores nothing and is fine; readings waiting while nothing is stored are not.
        if waiting > 0 and facts.store_idle_s > max_reading_age_s:
            reasons.append(
                f"stuck: the store has stored nothing for {facts.store_idle_s:.0f} s"
                f" while {', '.join(q for q in mine if facts.queues[q].backlog)} hold {waiting} messages"
                f" (limit {max_reading_age_s:g} s)"
            )
    report: dict[str, Any] = {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "rabbitmq": {"reachable": facts.broker_reachable, "url": broker_url},
        "influxdb": {
            "reachable": facts.influx_version is not None,
            "url": settings.influx_url,
            "version": facts.influx_version,
        },
        "queues": {
            queue: {"ready": q.ready, "held": q.held, "backlog": q.backlog, "max_backlog": max_backlog}
            | ({"role": facts.roles[queue]} if queue in facts.roles else {})
            for queue, q in sorted(facts.queues.items())
        },
    }
    if store is not None:
        report["store"] = store
    return not reasons, report


class Monitor:
    """Reads what the runners publish (`Snapshot`s) and the `hub_stats` counts (the `Stats`
    middleware), never a runner's own state; measures the broker and the outputs itself."""

    def __init__(self, settings: Settings, services: Sequence[Runner], stats: Stats, stop: threading.Event) -> None:
        self.settings = settings
        self.services = services
        self.stats = stats
        self.stop = stop
        self.instance = instance_name()
        self.server: ThreadingHTTPServer | None = None
        self._depths: dict[str, int] = {}
        self._depths_at = float("-inf")
        self._depths_lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        #: Queue -> role of this process's consumer on it (single-active-consumer queues only).
        self.roles: dict[str, str] = {}
        OLDEST_UNSTORED_AGE.set_function(self.oldest_unstored_age_s)

    def oldest_unstored_age_s(self) -> float:
        """Age of the oldest reading waiting in an open batch or a retried write; 0 when none waits."""
        waiting = [s.snapshot.unstored_since_ms for s in self.services if s.snapshot.unstored_since_ms]
        return max(0.0, (now_ms() - min(waiting)) / 1000) if waiting else 0.0

    def read_roles(self) -> dict[str, str]:
        """Whether the broker delivers each single-active-consumer queue to this process
        ("active") or keeps it waiting ("standby"); logs every change and tells each runner its
        role. Pika has no callback for it, the management API lists it per consumer tag (which
        each runner's snapshot carries). Unchanged when the API cannot say."""
        watched = [s for s in self.services if any(q.single_active for q in s.queues)]
        activity = read_consumer_activity(self.settings) if watched else None
        if activity is None:
            return self.roles
        roles: dict[str, str] = {}
        for s in watched:
            tags = s.snapshot.consumer_tags
            mine = {}
            for queue in (q for q in s.queues if q.single_active):
                mine[queue.name] = ROLE_BY_ACTIVITY.get(activity.get(tags.get(queue.name, ""), ""), ROLE_UNKNOWN)
            role = service_role(mine)
            active = [q for q, r in mine.items() if r == ROLE_ACTIVE]
            before = {q: self.roles.get(q, ROLE_UNKNOWN) for q in mine}
            if role != ROLE_UNKNOWN and (mine != before):
                log.info("service=%s event=%s queues=%s", s.name, role, ",".join(active) if active else ",".join(mine))
            roles.update(mine)
            s.role = role
        self.roles = roles
        return roles

    def queue_depths(self, max_age_s: float = 0.0) -> dict[str, int]:
        """Messages ready in each queue of this process's services ({} when the broker is unreachable).

        Depths read less than `max_age_s` ago are reused: /health/ready may be polled often.
        """
        with self._depths_lock:
            if time.monotonic() - self._depths_at < max_age_s:
                return self._depths
            self._depths = self._read_depths()
            self._depths_at = time.monotonic()
            return self._depths

    def _read_depths(self) -> dict[str, int]:
        """Passive declares on one kept connection (reopened after a failure): read every
        DEPTH_INTERVAL_S, a connection each time would be broker churn. Called under `_depths_lock`.

        A kept connection that fails (its cluster node went away) is replaced at once by one to
        another node (`connect` skips a node that does not answer), and the depths read again."""
        for _attempt in range(DEPTH_READ_ATTEMPTS):
            depths: dict[str, int] = {}
            try:
                if self._connection is None or not self._connection.is_open:
                    self._connection = connect(self.settings, "monitor")
                for name in (q.name for s in self.services for q in s.queues):
                    channel = self._connection.channel()
                    try:
                        depths[name] = channel.queue_declare(name, passive=True).method.message_count
                        channel.close()
                    except pika.exceptions.ChannelClosedByBroker:
                        continue  # not declared yet
                    QUEUE_DEPTH.labels(name).set(depths[name])
                break
            except (BrokerUnavailable, pika.exceptions.AMQPError, OSError):
                close_quietly(self._connection)
                self._connection = None
        else:
            return depths
        for s in self.services:
            held = s.snapshot.held
            for queue in s.queues:
                QUEUE_HELD.labels(queue.name).set(held.get(queue.name, 0))
        return depths

    def service_depths(self, depths: dict[str, int]) -> dict[str, int]:
        """Messages ready per service, over the queues it consumes here (`hub_stats` queue_depth)."""
        return {
            s.name: sum(depths[q.name] for q in s.queues if q.name in depths)
            for s in self.services
            if any(q.name in depths for q in s.queues)
        }

    def ready_facts(self) -> ReadyFacts:
        broker = broker_reachable(self.settings)
        influx_version = server_version(self.settings.influx_url)
        depths = self.queue_depths(DEPTH_CACHE_S) if broker else {}
        queues = {}
        for s in self.services:
            held = s.snapshot.held
            for queue in s.queues:
                queues[queue.name] = QueueFacts(depths.get(queue.name), held.get(queue.name, 0))
        # The store: the runner of the telemetry partitions, if one runs here.
        store = next((s for s in self.services if any(q.name.startswith(PARTITION_PREFIX) for q in s.queues)), None)
        idle = time.monotonic() - store.snapshot.progressed_at if store is not None else None
        store_queues = tuple(q.name for q in store.queues) if store is not None else ()
        return ReadyFacts(broker, influx_version, queues, store_queues, idle, dict(self.roles))

    def ready(self) -> tuple[bool, dict[str, Any]]:
        settings = self.settings
        return ready_report(self.ready_facts(), settings, settings.ready_max_backlog, settings.ready_max_reading_age_s)

    def run(self) -> None:
        outputs = OutputSet(self.settings)
        next_stats = time.monotonic() + STATS_INTERVAL_S
        try:
            while not self.stop.wait(DEPTH_INTERVAL_S):
                try:
                    depths = self.queue_depths(DEPTH_CACHE_S)
                    self.read_roles()
                    if time.monotonic() >= next_stats:
                        next_stats += STATS_INTERVAL_S
                        counts = [self.stats.of(s.name) for s in self.services]
                        points = stats_points(self.instance, counts, self.service_depths(depths), now_ms())
                        outputs.write_once(points)
                except HubError as exc:
                    log.warning("service=monitor event=stats_not_written error=%r", exc)
                except Exception:
                    log.exception("service=monitor event=stats_failed")
        finally:
            outputs.close()

    def serve_http(self, port: int) -> None:
        """Serve /metrics, /health, /health/live and /health/ready on `port` (0: any free one) in a daemon thread.

        A port another program holds (a second hub on this machine) is a `ConfigError` naming it.
        """
        settings = self.settings
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                if path.startswith("/metrics"):
                    body, status, kind = generate_latest(), 200, CONTENT_TYPE_LATEST
                elif path == "/health/live":
                    body, status, kind = json.dumps({"status": "live"}).encode(), 200, "application/json"
                elif path == "/health/ready":
                    ok, report = monitor.ready()
                    body, status, kind = json.dumps(report).encode(), 200 if ok else 503, "application/json"
                elif path.startswith("/health"):
                    ok, report = health_report(settings)
                    body, status, kind = json.dumps(report).encode(), 200 if ok else 503, "application/json"
                else:
                    body, status, kind = b"try /metrics, /health, /health/live or /health/ready\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} for /metrics and /health is taken (another hub on this machine?): give this hub"
                    " another with --metrics-port or IOT_METRICS_PORT, 0 for any free port, or off"
                ) from None
            raise ConfigError(
                f"cannot listen on port {port} for /metrics and /health ({exc.strerror}): see --metrics-port"
                " or IOT_METRICS_PORT"
            ) from None
        threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()
        log.info(
            "service=monitor event=http_listening port=%d paths=/metrics,/health,/health/live,/health/ready",
            self.server.server_address[1],
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        with self._depths_lock:
            close_quietly(self._connection)
            self._connection = None
