"""Notifications delivered per second to a local webhook: `python -m bench.notify_delivery`.

    python -m bench.notify_delivery [--transitions 2000] [--workers 1,2,4]

Starts its own stack (RabbitMQ and influxd on free ports in a temporary directory), a local
webhook receiver (HTTP/1.0, answers 200 at once), and per phase the notify service in this
process, as `hub run` builds it: the router and N delivery workers of the one channel. It
publishes `--transitions` alarm transitions (each its own alarm, routed to the channel) as the
alarms side does, confirmed, and measures from the first publish to the last notification the
receiver accepted: notifications/s, and the duplicates it saw (expected 0). The machine is shared:
the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
from rich.console import Console
from rich.table import Table

from bench.harness import bench_stack
from bench.load import amqp
from hub.core.config import Settings
from hub.core.contract import EXCHANGE, now_ms
from hub.core.signals import interrupt_on_stop_signals
from hub.runtime.middleware import default_middleware
from hub.services import build_services

console = Console()
#: How long a phase may take before it is reported as unfinished.
PHASE_TIMEOUT_S = 600.0


class Receiver:
    """Counts the Idempotency-Keys it accepted (and the ones it saw twice)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.duplicates = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers["Idempotency-Key"]
                with receiver.lock:
                    if key in receiver.keys:
                        receiver.duplicates += 1
                    receiver.keys.add(key)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def transition(alarm: str) -> bytes:
    ts = now_ms()
    return json.dumps(
        {
            "v": 1,
            "key": f"{alarm}/raised",
            "alarm_id": alarm,
            "transition": "raised",
            "type": "storm",
            "rule": "storm",
            "device": "env-0001",
            "site": "bench",
            "kind": "environment",
            "severity": "warning",
            "sensor": "temperature",
            "value": 99.0,
            "ts": ts,
            "raised_at": ts,
            "count": 1,
            "acked": False,
            "acked_by": None,
            "note": None,
        }
    ).encode()


def phase(
    settings: Settings, notify_file: Path, receiver: Receiver, workers: int, count: int
) -> tuple[float, int, int]:
    """(seconds, accepted, duplicates) of `count` transitions through the router and `workers` workers."""
    configured = settings.model_copy(update={"notify_file": notify_file, "notify_workers": workers})
    stop = threading.Event()
    runners = build_services(configured, ("notify",), stop, default_middleware())
    threads = [threading.Thread(target=r.run, name=r.name, daemon=True) for r in runners]
    for thread in threads:
        thread.start()
    try:
        while not all(r.snapshot.connected for r in runners):
            time.sleep(0.1)
        with receiver.lock:
            receiver.keys.clear()
            receiver.duplicates = 0
        prefix = f"storm:{workers}:{time.time_ns()}"
        connection = amqp(settings)
        channel = connection.channel()
        channel.confirm_delivery()
        started = time.monotonic()
        properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        for n in range(count):
            channel.basic_publish(
                EXCHANGE, "alarms.warning.bench.environment.env-0001", transition(f"{prefix}:{n}"), properties
            )
        connection.close()
        deadline = started + PHASE_TIMEOUT_S
        while len(receiver.keys) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        return elapsed, len(receiver.keys), receiver.duplicates
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def main() -> None:
    interrupt_on_stop_signals()  # SIGTERM or Ctrl-C run the `finally` below: the stack stops with the bench
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=2000, help="alarm transitions per phase")
    parser.add_argument("--workers", default="1,2,4", help="delivery workers of the channel, one phase each")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    receiver = Receiver()
    rows: list[tuple[int, float, int, int]] = []
    with bench_stack("notify-bench-", console.print) as bench:
        notify_file = bench.root / "notify.yaml"
        notify_file.write_text(
            f'channels:\n  bench-hook: {{type: webhook, url: "{receiver.url}", secret: "bench-only"}}\n'
            'routes:\n  - match: "alarms.#"\n    to: [bench-hook]\n'
        )
        for workers in worker_counts:
            console.print(f"[bold]{workers} worker(s): {args.transitions} transitions[/]")
            elapsed, accepted, duplicates = phase(bench.settings, notify_file, receiver, workers, args.transitions)
            rows.append((workers, elapsed, accepted, duplicates))
    table = Table(title=f"notifications to a local webhook ({args.transitions} transitions per phase, signed)")
    for column in ("workers", "delivered", "seconds", "notifications/s", "duplicates"):
        table.add_column(column, justify="right")
    for workers, elapsed, accepted, duplicates in rows:
        table.add_row(str(workers), str(accepted), f"{elapsed:.1f}", f"{accepted / elapsed:,.0f}", str(duplicates))
    console.print(table)
    console.print(f"load average at the end (1/5/15 min): {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
