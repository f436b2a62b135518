"""Telemetry partitions: which ones a process consumes, and what one reading causes there. No servers."""

from __future__ import annotations

import pytest

from hub.core.config import load_settings
from hub.core.contract import Reading
from hub.core.errors import ConfigError, InvalidMessage
from hub.core.models import default_models
from hub.core.partitions import format_partitions, parse_partitions
from hub.runtime import topology
from hub.services import DEFAULT_SERVICES, SERVICES, service_names
from hub.services.rules.engine import Engine
from hub.services.rules.model import Action, Threshold
from hub.services.store.judge import ReadingJudge
from hub.services.store.readings import reading_point
from hub.services.telemetry.stage import TelemetryStage

# --- the partition spec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("", 4, (0, 1, 2, 3)),
        ("all", 2, (0, 1)),
        ("0-1,3", 4, (0, 1, 3)),
        (" 3 , 0-1 ,1", 4, (0, 1, 3)),  # spaces, order and repeats do not matter
        ("2", 3, (2,)),
        ("0-7", 8, tuple(range(8))),
    ],
)
def test_a_partition_spec_names_sorted_distinct_partitions(spec: str, count: int, expected: tuple[int, ...]) -> None:
    assert parse_partitions(spec, count) == expected


@pytest.mark.parametrize(
    ("spec", "count", "says"),
    [
        ("4", 4, "4 is not a partition (IOT_PARTITIONS=4: 0-3)"),
        ("0-9", 4, "9 is not a partition"),
        ("3-1", 4, "runs backwards"),
        ("a", 4, "'a' is not a number nor a range"),
        ("1,,2", 4, "'' is not a number"),
        ("-1", 4, "not a number"),
        ("0", 0, "IOT_PARTITIONS must be between 1 and 256"),
    ],
)
def test_a_wrong_partition_spec_is_a_config_error_that_says_why(spec: str, count: int, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_partitions(spec, count)
    assert says in str(error.value)


def test_the_settings_refuse_a_partition_the_hub_does_not_have_and_default_to_all() -> None:
    assert load_settings().hub_partition_ids == (0,)
    assert load_settings(partitions=4).hub_partition_ids == (0, 1, 2, 3)
    assert load_settings(partitions=8, hub_partitions="4-7").hub_partition_ids == (4, 5, 6, 7)
    with pytest.raises(ConfigError, match="5 is not a partition"):
        load_settings(partitions=4, hub_partitions="5")
    with pytest.raises(ConfigError, match=r"IOT_PARTITIONS: .*between 1 and 256"):
        load_settings(partitions=0)


def test_partitions_are_written_back_with_runs_as_ranges() -> None:
    assert format_partitions((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert parse_partitions(format_partitions((0, 1, 3)), 4) == (0, 1, 3)


def test_each_partition_is_a_single_active_quorum_queue_bound_with_weight_1_on_the_hash_exchange() -> None:
    queue = topology.partition(2)
    assert (queue.name, queue.bindings, queue.exchange) == ("hub.telemetry.2", ("1",), "iot.telemetry")
    assert topology.queue_arguments(queue)["x-single-active-consumer"] is True
    assert topology.queue_arguments(queue)["x-queue-type"] == "quorum"
    assert [q.name for q in topology.service_queues("telemetry", (0, 3))] == ["hub.telemetry.0", "hub.telemetry.3"]


def test_store_and_rules_are_names_of_telemetry_kept_for_those_who_use_them(caplog: pytest.LogCaptureFixture) -> None:
    assert SERVICES == ("telemetry", "presence", "commands", "logs", "twin", "notify")
    with caplog.at_level("WARNING"):
        assert service_names(("store", "rules", "presence")) == ("telemetry", "presence")
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("event=deprecated services=rules,store use=telemetry")
    assert service_names(()) == DEFAULT_SERVICES


# --- one reading through the stage ----------------------------------------------------------------

HOT = Threshold(
    name="hot", sensor="temperature", kind="thermostat", above=26.0, cooldown_s=60,
    action=Action(command="set_setpoint", args={"value": 20.0}),
)  # fmt: skip


def _stage() -> TelemetryStage:
    return TelemetryStage(ReadingJudge(default_models()), Engine([HOT]))


def _reading(seq: int, device: str = "th-1", **values: float | bool) -> Reading:
    return Reading(device=device, site="plant-a", kind="thermostat", seq=seq, ts=1000 + seq, readings=values)


def test_a_reading_becomes_its_stored_point_and_the_rules_alerts_with_their_points() -> None:
    stage = _stage()
    hot = _reading(1, temperature=29.0, setpoint=22.0)
    outcome = stage.process(hot, "mqtt", now_ms=5_000)
    assert outcome.point == reading_point(hot, "mqtt"), "stored as the store always stored it"
    [decision] = outcome.decisions
    assert decision.alert.rule == "hot" and decision.command is not None
    [alert] = outcome.alert_points
    assert alert.measurement == "alerts" and alert.tags["device"] == "th-1" and alert.fields["value"] == 29.0
    calm = stage.process(_reading(2, temperature=21.0, setpoint=22.0), "mqtt", now_ms=6_000)
    assert calm.decisions == [] and list(calm.alert_points) == []


def test_a_reading_the_store_refuses_fires_no_rule_and_leaves_the_rules_state_untouched() -> None:
    stage = _stage()
    wrong_type = _reading(1, temperature=True, setpoint=22.0)  # a boolean where a number is declared
    with pytest.raises(InvalidMessage) as refused:
        stage.process(wrong_type, "stomp", now_ms=1_000)
    assert refused.value.reason == "sensor_type"
    assert stage.engine.stats == {} and stage.engine.fired_at == {}


def test_out_of_range_values_are_flagged_on_the_point_and_still_judged_by_the_rules() -> None:
    outcome = _stage().process(_reading(1, temperature=99.0, setpoint=22.0), "amqp", now_ms=1_000)
    assert outcome.point.fields["out_of_range"] == "temperature"
    assert [d.alert.rule for d in outcome.decisions] == ["hot"]
