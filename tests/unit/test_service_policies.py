"""The hub as a service: the systemd unit's essentials and the reconnect policies' bounds."""

from __future__ import annotations

import configparser
import json
import random
import re
import threading
import time
from pathlib import Path

from hub.core.backoff import DEVICE_RECONNECT, HUB_RECONNECT, Backoff
from hub.core.config import load_settings, with_stack_secrets
from hub.core.secrets import generate_secrets
from hub.runtime import topology
from hub.runtime.consumer import SLEEP_SLICE_S, Consumer
from hub.stack.rabbitmq import render_definitions

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "iot-hub.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_systemd_unit_runs_the_hub_restarts_on_failure_and_holds_no_secret() -> None:
    service = _unit()["Service"]
    assert re.search(r"/python3? -m hub run\b", service["ExecStart"])
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "2"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "10"
    assert service["EnvironmentFile"] and service["WorkingDirectory"]
    assert service["User"] not in ("", "root")
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"
    settings = "\n".join(line for line in UNIT.read_text().lower().splitlines() if not line.startswith("#"))
    assert "password" not in settings and "amqp://" not in settings and "token" not in settings
    assert "IOT_" not in "".join(service.values()), "settings come from the EnvironmentFile"


def _delays(policy_draws: int, backoff: Backoff) -> list[float]:
    return [backoff.next_delay_s() for _ in range(policy_draws)]


def test_a_hub_never_waits_more_than_a_second_between_reconnects_and_retries_fast_first() -> None:
    """A second at most, so a hub consumes within 2 s of the broker answering even while it boots slowly."""
    for seed in range(200):
        delays = _delays(40, Backoff(HUB_RECONNECT, random.Random(seed)))
        assert delays[0] <= 0.25
        assert max(delays) <= 1.0
        assert min(delays) > 0.0


def test_a_device_never_waits_more_than_five_seconds_and_its_first_retry_is_small() -> None:
    for seed in range(200):
        delays = _delays(40, Backoff(DEVICE_RECONNECT, random.Random(seed)))
        assert delays[0] <= 0.5
        assert max(delays) <= 5.0


def test_jitter_spreads_a_thousand_devices_first_retries_over_at_least_half_the_interval() -> None:
    rng = random.Random(7)
    firsts = sorted(Backoff(DEVICE_RECONNECT, rng).next_delay_s() for _ in range(1000))
    assert firsts[-1] - firsts[0] >= DEVICE_RECONNECT.first_s / 2
    # and at the cap (after a long outage): spread over at least half of it, no crowd in one slot
    capped = []
    for _ in range(1000):
        backoff = Backoff(DEVICE_RECONNECT, rng)
        capped.append(_delays(10, backoff)[-1])
    assert max(capped) - min(capped) >= DEVICE_RECONNECT.max_s / 2
    slots = [0] * 10
    for delay in capped:
        slots[min(9, int(delay / DEVICE_RECONNECT.max_s * 10))] += 1
    assert max(slots) < 300, "no tenth of the interval takes more than 30 % of the fleet"


def test_a_retry_wait_ends_soon_after_the_stop_event_is_set() -> None:
    stop = threading.Event()
    consumer = Consumer(load_settings(), "telemetry", stop)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    consumer.sleep(10.0)  # not connected: waits on the stop event itself
    assert time.monotonic() - started < 10.0
    assert stop.is_set()
    assert SLEEP_SLICE_S <= 0.5


def test_definitions_declare_every_hub_queue_with_the_arguments_the_hub_declares() -> None:
    definitions = json.loads((Path(__file__).resolve().parents[2] / "rabbitmq" / "definitions.json").read_text())
    declared = {queue["name"]: queue["arguments"] for queue in definitions["queues"]}
    default_partitions = topology.partitions(load_settings().partitions)
    for queue in (*topology.QUEUES.values(), *default_partitions):
        assert declared[queue.name] == topology.queue_arguments(queue), queue.name
    assert not set(declared) & set(topology.LEGACY_QUEUES)
    [exchange] = [e for e in definitions["exchanges"] if e["name"] == topology.TELEMETRY_EXCHANGE]
    assert exchange["type"] == topology.TELEMETRY_EXCHANGE_TYPE and exchange["durable"]
    bindings = {
        (b["source"], b["destination"], b["destination_type"], b["routing_key"]) for b in definitions["bindings"]
    }
    assert ("iot", topology.TELEMETRY_EXCHANGE, "exchange", topology.TELEMETRY_PATTERN) in bindings
    for queue in default_partitions:
        assert (topology.TELEMETRY_EXCHANGE, queue.name, "queue", topology.PARTITION_WEIGHT) in bindings


def test_every_hub_queue_has_one_active_consumer_and_standbys() -> None:
    """Telemetry too: each partition's devices have their rule state in one process."""
    for queue in (*topology.QUEUES.values(), *topology.partitions(4)):
        assert topology.queue_arguments(queue).get("x-single-active-consumer") is True, queue.name


def test_the_native_node_gets_as_many_partitions_as_iot_partitions_says(tmp_path: Path) -> None:
    settings = with_stack_secrets(load_settings(stack_dir=tmp_path), generate_secrets())
    for count in (1, 4, 7):
        definitions = render_definitions(settings.model_copy(update={"partitions": count}))
        partitions = [q["name"] for q in definitions["queues"] if q["name"].startswith(topology.PARTITION_PREFIX)]
        bound = [b["destination"] for b in definitions["bindings"] if b["source"] == topology.TELEMETRY_EXCHANGE]
        assert partitions == bound == [q.name for q in topology.partitions(count)]
        assert {"hub.presence", "hub.commands", "iot.dead-letter"} <= {q["name"] for q in definitions["queues"]}
