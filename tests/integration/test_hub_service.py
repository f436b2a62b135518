"""`python -m hub run` as a service: SIGTERM writes the batch in hand and exits within 5 s, and
with InfluxDB unreachable it still exits within 5 s, leaving the readings in the queue."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.runtime.topology import partitions
from hub.stack.processes import free_port, stop
from tests.integration.test_hub_e2e import count_stored, hub_log, publish_mqtt, publish_stomp
from tests.support import amqp_connection, hub_process, influx_query, start_influxd, wait_until

#: The product's promise: `hub run` exits this soon after SIGTERM, whatever its outputs do.
SIGTERM_BOUND_S = 5.0


def sigterm_and_time(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM `process`; its exit code and how long it took to exit (waiting at most 30 s)."""
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(30)
    return code, time.monotonic() - sent


def store_queue_depth(settings: Settings) -> int:
    """Readings waiting over every telemetry partition."""
    connection = amqp_connection(settings)
    try:
        channel = connection.channel()
        return sum(
            int(channel.queue_declare(queue.name, passive=True).method.message_count)
            for queue in partitions(settings.partitions)
        )
    finally:
        connection.close()


def assert_once_each(settings: Settings, device: str) -> None:
    [series] = influx_query(settings, f"SELECT seq FROM environment WHERE device = '{device}'")
    seqs = [row[1] for row in series["values"]]
    assert len(seqs) == len(set(seqs)), "each (device, seq) is stored once"


def test_sigterm_mid_flow_exits_0_within_5_s_and_every_reading_is_stored_exactly_once(
    stack: Settings, tmp_path: Path
) -> None:
    count = 3000
    base_ts = now_ms() - 30_000_000
    publishers = [
        threading.Thread(target=publish_mqtt, args=(stack, "term-m", count, base_ts, 50)),
        threading.Thread(target=publish_stomp, args=(stack, "term-s", count, base_ts, 50)),
    ]
    with hub_process(stack, tmp_path, "--only", "telemetry") as hub:
        for thread in publishers:
            thread.start()
        wait_until(lambda: count_stored(stack, "environment", "term-m") > count // 4, 30)
        code, took = sigterm_and_time(hub)  # mid-flow: a batch open, more on the way
    assert code == 0, hub_log(tmp_path)
    assert took < SIGTERM_BOUND_S, f"exited {took:.2f} s after SIGTERM"
    assert "event=stopped" in hub_log(tmp_path)
    for thread in publishers:
        thread.join(60)
    with hub_process(stack, tmp_path, "--only", "telemetry"):  # drains what was published after (or redelivered)
        wait_until(lambda: count_stored(stack, "environment", "term-m") == count, 60)
        wait_until(lambda: count_stored(stack, "environment", "term-s") == count + 1, 60)
    for device in ("term-m", "term-s"):
        assert_once_each(stack, device)


def test_sigterm_while_influxdb_is_unreachable_exits_within_5_s_and_loses_nothing(
    stack: Settings, tmp_path: Path
) -> None:
    home = tmp_path / "influxdb"
    port, rpc = free_port(), free_port()
    node, pid = start_influxd(stack, home, port, rpc)
    own = stack.model_copy(update={"influx_url": node.url})
    count = 500
    base_ts = now_ms() - 40_000_000
    try:
        with hub_process(own, tmp_path, "--only", "telemetry") as hub:
            assert stop(pid, str(home))  # InfluxDB's port is closed from now on
            publish_mqtt(stack, "term-down", count, base_ts)
            # the hub holds a batch and retries its write (backoff up to 10 s) when SIGTERM comes
            wait_until(lambda: "event=write_failed" in hub_log(tmp_path) or hub.poll() is not None, 30)
            time.sleep(4)  # a few failed attempts: the backoff between them has grown to seconds
            assert hub.poll() is None, "the hub keeps running while InfluxDB is down"
            code, took = sigterm_and_time(hub)
        assert code == 0, hub_log(tmp_path)
        assert took < SIGTERM_BOUND_S, f"exited {took:.2f} s after SIGTERM"
        assert store_queue_depth(stack) >= count, "every unwritten reading is back in the queue"
    finally:
        stop(pid, str(home))
    # a hub with a reachable InfluxDB stores all of them, once each
    with hub_process(stack, tmp_path, "--only", "telemetry"):
        wait_until(lambda: count_stored(stack, "environment", "term-down") == count, 60)
    assert_once_each(stack, "term-down")
