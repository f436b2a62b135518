"""The runtime's plain parts without servers: connection parameters, outputs and their retries, points."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hub.clients.amqp import connection_parameters
from hub.core.backoff import Backoff, BackoffPolicy
from hub.core.config import load_settings
from hub.core.contract import VHOST, Reading
from hub.core.errors import ConfigError, InvalidMessage, StorageUnavailable
from hub.core.models import default_models
from hub.core.points import Point
from hub.outputs.fanout import OutputSet
from hub.outputs.lineprotocol import point, point_line
from hub.outputs.registry import output_names
from hub.runtime.deadletter import dead_letter_properties, internal_detail
from hub.runtime.metrics import BatchHistogram
from hub.services.store.judge import ReadingJudge
from hub.services.store.readings import reading_point


def test_every_process_reaches_the_same_vhost_from_the_same_url() -> None:
    """A URL without a vhost means the contract's vhost for the hub and the CLI alike."""
    without = load_settings(amqp_url="amqp://u:p@broker:5672")
    assert without.amqp.vhost == VHOST
    assert connection_parameters(without, "hub-store").virtual_host == VHOST
    explicit_default = load_settings(amqp_url="amqp://u:p@broker:5672/%2F")
    assert connection_parameters(explicit_default, "tail").virtual_host == "/"
    named = connection_parameters(load_settings(amqp_url="amqp://u:p@broker:5672/other"), "send", port=5673)
    assert (named.virtual_host, named.port, named.client_properties["connection_name"]) == (
        "other",
        5673,
        "iot-hub send",
    )


def test_outputs_are_chosen_by_name_and_an_unknown_name_is_a_config_error() -> None:
    assert output_names(load_settings(outputs="influxdb, jsonl,influxdb")) == ["influxdb", "jsonl"]
    with pytest.raises(ConfigError, match="unknown output kafka"):
        output_names(load_settings(outputs="influxdb,kafka"))
    with pytest.raises(ConfigError, match="names no output"):
        output_names(load_settings(outputs=" , "))


def test_a_failing_output_keeps_the_batch_and_retries_with_its_own_backoff_until_it_takes_it(tmp_path: Path) -> None:
    archive = tmp_path / "later" / "points.jsonl"
    outputs = OutputSet(load_settings(outputs="jsonl", jsonl_path=archive))
    failures: list[tuple[str, int]] = []
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            archive.parent.mkdir()

    points = [Point("environment", {"device": "d-1"}, {"temperature": 21.5, "seq": n}, 1000 + n) for n in range(3)]
    refused = outputs.write(
        points, threading.Event(), sleep, lambda name, attempt, _exc: failures.append((name, attempt))
    )
    assert refused == {}
    assert failures == [("jsonl", 1), ("jsonl", 2), ("jsonl", 3)]
    assert waits[0] <= waits[2], "the delay grows"
    stored = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [p["fields"]["seq"] for p in stored] == [0, 1, 2]
    assert stored[0] == {
        "measurement": "environment",
        "tags": {"device": "d-1"},
        "fields": {"temperature": 21.5, "seq": 0},
        "ts": 1000,
    }


def test_a_stop_ends_the_retries_with_the_batch_unwritten(tmp_path: Path) -> None:
    outputs = OutputSet(load_settings(outputs="jsonl", jsonl_path=tmp_path / "missing" / "points.jsonl"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(StorageUnavailable, match="jsonl"):
        outputs.write([Point("m", {}, {"x": 1}, 1)], stop, lambda _s: None, lambda *_args: None)


def test_a_trusted_point_is_written_like_the_general_escaping_path_would() -> None:
    fields: dict[str, bool | int | float | str] = {"rms": 1e-05, "on": False, "seq": 7, "out_of_range": "rms"}
    trusted = Point("vibration", {"device": "v_1-x", "site": "s-1"}, fields, 12, True)
    assert point_line(trusted) == point("vibration", {"device": "v_1-x", "site": "s-1"}, fields, 12)
    assert point_line(trusted._replace(trusted=False)) == point_line(trusted)


def test_a_dead_letter_carries_the_reason_the_detail_and_the_queue_and_keeps_the_original_headers() -> None:
    from pika.spec import BasicProperties

    original = BasicProperties(headers={"x-mqtt-publish-qos": 1}, content_type="application/json", app_id="cli")
    copy = dead_letter_properties(original, "internal", internal_detail(KeyError("seq")) * 100, "hub.telemetry.2")
    assert copy.headers["x-iot-reason"] == "internal" and copy.headers["x-iot-queue"] == "hub.telemetry.2"
    assert copy.headers["x-iot-detail"].startswith("KeyError: 'seq'") and len(copy.headers["x-iot-detail"]) == 500
    assert copy.headers["x-mqtt-publish-qos"] == 1 and copy.delivery_mode == 2 and copy.app_id == "cli"


def test_the_reconnect_policy_starts_fast_and_is_capped() -> None:
    backoff = Backoff(BackoffPolicy(first_s=0.1, max_s=1.0))
    delays = [backoff.next_delay_s() for _ in range(10)]
    assert delays[0] <= 0.1 and max(delays) <= 1.0 and min(delays[5:]) >= 0.5


def test_the_protocol_tag_says_how_a_message_reached_the_exchange() -> None:
    from pika.spec import BasicProperties

    from hub.runtime.consumer import protocol_of

    assert protocol_of(BasicProperties(headers={"x-mqtt-publish-qos": 1, "x-mqtt-dup": False})) == "mqtt"
    assert protocol_of(BasicProperties(headers={"content-length": "7", "receipt": "r-1"})) == "stomp"
    assert protocol_of(BasicProperties(delivery_mode=2)) == "amqp"
    assert protocol_of(BasicProperties(headers={"gateway": "lora-1"})) == "amqp"


def _reading(kind: str, **values: float | bool) -> Reading:
    return Reading(device="d-1", site="s-1", kind=kind, seq=1, ts=1, readings=values)


def test_the_store_stores_undeclared_sensors_and_kinds_by_default_and_logs_each_pair_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    judge = ReadingJudge(default_models())
    assert judge.out_of_range(_reading("environment", temperature=21.5)) == ()
    with caplog.at_level("WARNING"):
        assert judge.out_of_range(_reading("environment", temperature=21.5, rms=1.0)) == ()
        assert judge.out_of_range(_reading("environment", temperature=21.6, rms=1.1)) == ()
        assert judge.out_of_range(_reading("gearbox", torque=3.0)) == ()
    undeclared = [r.getMessage() for r in caplog.records if "event=undeclared" in r.getMessage()]
    assert len(undeclared) == 2, undeclared
    assert "kind=environment sensor=rms action=stored" in undeclared[0]
    assert "reason=unknown_kind kind=gearbox" in undeclared[1]


def test_a_value_outside_its_plausible_range_is_stored_and_flagged() -> None:
    judge = ReadingJudge(default_models())
    reading = _reading("environment", temperature=150.0, humidity=40.0, pressure=-5.0)
    flagged = judge.out_of_range(reading)
    assert flagged == ("temperature", "pressure")
    line = point_line(reading_point(reading, "mqtt", flagged))
    assert line.endswith(',seq=1i,out_of_range="temperature,pressure" 1')
    assert "temperature=150.0" in line, "the value itself is stored as it came"


def test_a_sensor_of_the_wrong_type_is_refused_and_strict_mode_refuses_undeclared_ones() -> None:
    with pytest.raises(InvalidMessage) as wrong:
        ReadingJudge(default_models()).out_of_range(_reading("thermostat", temperature=True))
    assert wrong.value.reason == "sensor_type"
    strict = ReadingJudge(default_models(), "dead_letter")
    with pytest.raises(InvalidMessage) as sensor:
        strict.out_of_range(_reading("environment", temperature=21.5, rms=1.0))
    assert sensor.value.reason == "unknown_sensor" and "rms" in sensor.value.detail
    with pytest.raises(InvalidMessage) as kind:
        strict.out_of_range(_reading("gearbox", torque=3.0))
    assert kind.value.reason == "unknown_kind"
    assert strict.out_of_range(_reading("vibration", rms=2.0, peak=5.0)) == (), "a kind declared only in YAML"


def test_the_command_history_joins_sent_and_outcome_by_id_newest_first() -> None:
    from hub.control.history import build_history

    rows = [
        {"time": 5030, "id": "b", "device": "th-1", "command": "set_setpoint", "origin": "cli", "status": "ok",
         "rtt_ms": 30.0, "detail": ""},
        {"time": 5000, "id": "b", "device": "th-1", "command": "set_setpoint", "origin": "cli", "status": "sent"},
        {"time": 4000, "id": "c", "device": "pm-1", "command": "set_relay", "origin": "rule", "status": "sent"},
        {"time": 1000, "id": "a", "device": "th-1", "command": "ping", "origin": "cli", "status": "sent"},
        {"time": 13000, "id": "a", "device": "th-1", "command": "ping", "origin": "cli", "status": "timeout",
         "detail": "no ack by expires"},
    ]  # fmt: skip
    history = build_history(rows, limit=10)
    assert [(r.id, r.sent_at, r.status) for r in history] == [
        ("b", 5000, "ok"),
        ("c", 4000, "sent"),
        ("a", 1000, "timeout"),
    ]
    assert history[0].rtt_ms == 30.0 and history[2].detail == "no ack by expires"
    assert [r.id for r in build_history(rows, limit=1)] == ["b"]


def test_a_batch_histogram_counts_each_value_in_the_first_bucket_it_fits_like_prometheus() -> None:
    registry = CollectorRegistry()
    ages = BatchHistogram("age_seconds", "ages", buckets=(0.005, 0.1, 1), registry=registry)
    ages.observe_many([0.001, 0.005, 0.05])
    ages.observe_many([0.5, 7.0])
    text = generate_latest(registry).decode()
    assert 'age_seconds_bucket{le="0.005"} 2.0' in text, "a value equal to a bound belongs to it"
    assert 'age_seconds_bucket{le="0.1"} 3.0' in text
    assert 'age_seconds_bucket{le="1.0"} 4.0' in text
    assert 'age_seconds_bucket{le="+Inf"} 5.0' in text
    assert "age_seconds_count 5.0" in text
    assert "age_seconds_sum 7.556" in text
