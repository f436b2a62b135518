"""What the hub says about itself: /metrics and /health over HTTP, and `hub_stats` points.

`Monitor` runs in its own thread with its own broker connection: every `STATS_INTERVAL_S` it
reads the depth of each service's queue (consumer lag) and writes one `hub_stats` point per
service; `/health` answers 200 when both RabbitMQ and InfluxDB are reachable, else 503.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pika.exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.clients.amqp import connect
from hub.clients.influx import server_version
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.errors import BrokerUnavailable, HubError
from hub.core.points import Point
from hub.outputs.fanout import OutputSet
from hub.runtime import topology
from hub.runtime.metrics import QUEUE_DEPTH, ServiceStats

log = logging.getLogger(__name__)

#: How often `hub_stats` points are written and queue depths read.
STATS_INTERVAL_S = 10.0
#: How long /health waits for each dependency.
PROBE_TIMEOUT_S = 2.0


def instance_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def stats_points(instance: str, stats: Sequence[ServiceStats], depths: dict[str, int], ts_ms: int) -> list[Point]:
    """One `hub_stats` point per service (pure: the monitor supplies the numbers)."""
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
        queue = topology.QUEUES[s.service].name
        if queue in depths:
            fields["queue_depth"] = depths[queue]
        points.append(Point("hub_stats", {"instance": instance, "service": s.service}, fields, ts_ms))
    return points


def broker_reachable(settings: Settings) -> bool:
    try:
        with socket.create_connection((settings.amqp.host, settings.amqp.port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def health_report(settings: Settings) -> tuple[bool, dict[str, Any]]:
    broker = broker_reachable(settings)
    influx_version = server_version(settings.influx_url)
    report = {
        "status": "ok" if broker and influx_version is not None else "unavailable",
        "rabbitmq": {"reachable": broker, "url": f"amqp://{settings.amqp.host}:{settings.amqp.port}"},
        "influxdb": {"reachable": influx_version is not None, "url": settings.influx_url, "version": influx_version},
    }
    return broker and influx_version is not None, report


class Monitor:
    def __init__(self, settings: Settings, stats: Sequence[ServiceStats], stop: threading.Event) -> None:
        self.settings = settings
        self.stats = stats
        self.stop = stop
        self.instance = instance_name()
        self.server: ThreadingHTTPServer | None = None

    def queue_depths(self) -> dict[str, int]:
        depths: dict[str, int] = {}
        try:
            connection = connect(self.settings, "monitor")
        except BrokerUnavailable:
            return depths
        try:
            for s in self.stats:
                queue = topology.QUEUES[s.service].name
                channel = connection.channel()
                try:
                    depths[queue] = channel.queue_declare(queue, passive=True).method.message_count
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    continue  # not declared yet
                QUEUE_DEPTH.labels(queue).set(depths[queue])
        finally:
            connection.close()
        return depths

    def run(self) -> None:
        outputs = OutputSet(self.settings)
        try:
            while not self.stop.wait(STATS_INTERVAL_S):
                try:
                    outputs.write_once(stats_points(self.instance, self.stats, self.queue_depths(), now_ms()))
                except HubError as exc:
                    log.warning("service=monitor event=stats_not_written error=%r", exc)
                except Exception:
                    log.exception("service=monitor event=stats_failed")
        finally:
            outputs.close()

    def serve_http(self, port: int) -> None:
        """Serve /metrics and /health on `port` in a daemon thread."""
        settings = self.settings

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, status, kind = generate_latest(), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/health"):
                    ok, report = health_report(settings)
                    body, status, kind = json.dumps(report).encode(), 200 if ok else 503, "application/json"
                else:
                    body, status, kind = b"try /metrics or /health\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()
        log.info("service=monitor event=http_listening port=%d paths=/metrics,/health", port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
