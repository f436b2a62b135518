"""What a device log line costs the logs service's handler, in CPU per line, without a server.

Two cases, from one device: a line the token bucket admits (charged, validated, a point, an event)
and a line above the device's rate (charged and dropped unread, the flood case). The runner's and
pika's cost per delivery come on top of both (`bench.hub_throughput` measures those).

    python -m bench.logs_cost [--lines 200000]
"""

from __future__ import annotations

import argparse
import time

import msgspec
from pika.spec import Basic, BasicProperties

from hub.core.contract import LogLine, log_key
from hub.core.signals import interrupt_on_stop_signals
from hub.runtime.delivery import Delivery
from hub.services.logs.limiter import LogLimiter
from hub.services.logs.service import LogsHandler

DEVICE = "env-0001"
#: A bucket that never runs dry, and one that always is.
UNLIMITED = (1e12, 10**12)
EXHAUSTED = (1e-9, 1)


def per_line_us(rate: float, burst: int, lines: int) -> float:
    body = msgspec.json.encode(
        LogLine(device=DEVICE, ts=1, level="error", message="sensor timeout after 3 attempts", fields={"attempt": 3})
    )
    delivery = Delivery(Basic.Deliver(delivery_tag=1, routing_key=log_key(DEVICE, "error")), BasicProperties(), body)
    handler = LogsHandler(LogLimiter(rate, burst, 60_000))
    handler.handle(delivery)  # the bucket exists, and an exhausted one is empty
    started = time.process_time()
    for _ in range(lines):
        handler.handle(delivery)
    return (time.process_time() - started) / lines * 1e6


def main() -> None:
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000, help="lines handled per case")
    args = parser.parse_args()
    print(f"admitted (validated, stored as a point): {per_line_us(*UNLIMITED, args.lines):.2f} µs CPU per line")
    print(f"dropped over the device's rate (unread): {per_line_us(*EXHAUSTED, args.lines):.2f} µs CPU per line")


if __name__ == "__main__":
    main()
