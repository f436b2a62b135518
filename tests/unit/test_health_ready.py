"""/health/ready's verdict from measured facts: `ready_report` alone, no servers."""

from __future__ import annotations

from hub.core.config import Settings
from hub.runtime.health import QueueFacts, ReadyFacts, ready_report, service_role

SETTINGS = Settings(amqp_url="amqp://hub:pw@broker:5672/iot", influx_url="http://influx:8086")
P0, P1 = "hub.telemetry.0", "hub.telemetry.1"


def facts(**changes: object) -> ReadyFacts:
    values: dict[str, object] = {
        "broker_reachable": True,
        "influx_version": "1.8.10",
        "queues": {P0: QueueFacts(ready=0, held=0), P1: QueueFacts(ready=3, held=2)},
        "store_queues": (P0, P1),
        "store_idle_s": 500.0,
    }
    values.update(changes)
    return ReadyFacts(**values)  # type: ignore[arg-type]


def judge(f: ReadyFacts, max_backlog: int = 100, max_age_s: float = 60.0) -> tuple[bool, dict[str, object]]:
    return ready_report(f, SETTINGS, max_backlog, max_age_s)


def test_all_well_is_ok_and_a_quiet_fleet_is_not_stuck() -> None:
    ok, report = judge(facts(store_idle_s=10.0))  # readings wait in P1, but the store stores
    assert ok
    assert report["status"] == "ok" and report["reasons"] == []
    assert report["queues"] == {
        P0: {"ready": 0, "held": 0, "backlog": 0, "max_backlog": 100},
        P1: {"ready": 3, "held": 2, "backlog": 5, "max_backlog": 100},
    }
    assert report["store"] == {"queues": [P0, P1], "idle_s": 10.0, "max_idle_s": 60.0}
    quiet = {P0: QueueFacts(ready=0, held=0), P1: QueueFacts(ready=0, held=0)}
    assert judge(facts(queues=quiet))[0], "idle for 500 s, but nothing waits"


def test_unreachable_dependencies_are_named() -> None:
    ok, report = judge(facts(broker_reachable=False, influx_version=None, store_idle_s=0.0))
    assert not ok and report["status"] == "degraded"
    assert report["reasons"] == [
        "rabbitmq: unreachable at amqp://broker:5672",
        "influxdb: unreachable at http://influx:8086",
    ]
    assert report["rabbitmq"]["reachable"] is False and report["influxdb"]["version"] is None  # type: ignore[index]


def test_an_unreachable_cluster_names_every_node() -> None:
    cluster = Settings(amqp_url="amqp://hub:pw@n0:5672/iot,amqps://hub:pw@n1:5671/iot")
    ok, report = ready_report(facts(broker_reachable=False, store_idle_s=0.0), cluster, 100, 60.0)
    assert not ok
    assert report["reasons"] == ["rabbitmq: unreachable at amqp://n0:5672, amqps://n1:5671"]


def test_backlog_counts_ready_and_held_messages_above_the_limit_only() -> None:
    at_limit = {P0: QueueFacts(ready=60, held=40)}
    assert judge(facts(queues=at_limit, store_idle_s=0.0))[0]
    above = {P0: QueueFacts(ready=None, held=101)}  # ready unknown: what it holds still counts
    ok, report = judge(facts(queues=above, store_idle_s=0.0))
    assert not ok
    assert report["reasons"] == [f"backlog: {P0} holds 101 messages, more than 100"]


def test_store_with_waiting_readings_and_nothing_stored_is_stuck() -> None:
    waiting = {P0: QueueFacts(ready=0, held=0), P1: QueueFacts(ready=1, held=4)}
    ok, report = judge(facts(queues=waiting, store_idle_s=75.0))
    assert not ok
    assert report["reasons"] == [
        f"stuck: the store has stored nothing for 75 s while {P1} hold 5 messages (limit 60 s)"
    ]
    assert judge(facts(queues=waiting, store_idle_s=30.0))[0]  # still storing recently: fine


def test_a_standby_partitions_backlog_is_not_this_hubs_stuck_store() -> None:
    waiting = {P0: QueueFacts(ready=0, held=0), P1: QueueFacts(ready=50, held=0)}
    ok, report = judge(facts(queues=waiting, store_idle_s=75.0, roles={P0: "active", P1: "standby"}))
    assert ok, report["reasons"]


def test_stuck_is_judged_only_where_the_store_runs() -> None:
    waiting = {"hub.presence": QueueFacts(ready=50, held=0)}
    ok, report = judge(facts(queues=waiting, store_queues=(), store_idle_s=None))
    assert ok and "store" not in report


def test_a_standby_says_so_and_the_active_hubs_backlog_does_not_make_it_unready() -> None:
    queues = {P1: QueueFacts(ready=500, held=0), "hub.commands": QueueFacts(ready=500, held=0)}
    ok, report = judge(facts(queues=queues, store_queues=(), roles={P1: "standby", "hub.commands": "active"}))
    assert not ok
    assert report["reasons"] == ["backlog: hub.commands holds 500 messages, more than 100"]
    assert report["queues"][P1]["role"] == "standby"  # type: ignore[index]
    assert report["queues"]["hub.commands"]["role"] == "active"  # type: ignore[index]


def test_a_service_of_several_partitions_is_active_on_any_and_standby_only_on_all() -> None:
    assert service_role({P0: "standby", P1: "active"}) == "active"
    assert service_role({P0: "standby", P1: "standby"}) == "standby"
    assert service_role({P0: "standby", P1: "unknown"}) == "unknown"
    assert service_role({}) == "unknown"
