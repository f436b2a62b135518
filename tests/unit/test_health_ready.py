"""/health/ready's verdict from measured facts: `ready_report` alone, no servers."""

from __future__ import annotations

from hub.core.config import Settings
from hub.runtime.health import QueueFacts, ReadyFacts, ready_report

SETTINGS = Settings(amqp_url="amqp://hub:pw@broker:5672/iot", influx_url="http://influx:8086")


def facts(**changes: object) -> ReadyFacts:
    values: dict[str, object] = {
        "broker_reachable": True,
        "influx_version": "1.8.10",
        "queues": {"hub.store": QueueFacts(ready=0, held=0), "hub.rules": QueueFacts(ready=3, held=2)},
        "store_queue": "hub.store",
        "store_idle_s": 500.0,
    }
    values.update(changes)
    return ReadyFacts(**values)  # type: ignore[arg-type]


def judge(f: ReadyFacts, max_backlog: int = 100, max_age_s: float = 60.0) -> tuple[bool, dict[str, object]]:
    return ready_report(f, SETTINGS, max_backlog, max_age_s)


def test_all_well_is_ok_and_a_quiet_fleet_is_not_stuck() -> None:
    ok, report = judge(facts())  # idle for 500 s, but nothing waits
    assert ok
    assert report["status"] == "ok" and report["reasons"] == []
    assert report["queues"] == {
        "hub.rules": {"ready": 3, "held": 2, "backlog": 5, "max_backlog": 100},
        "hub.store": {"ready": 0, "held": 0, "backlog": 0, "max_backlog": 100},
    }
    assert report["store"] == {"queue": "hub.store", "idle_s": 500.0, "max_idle_s": 60.0}


def test_unreachable_dependencies_are_named() -> None:
    ok, report = judge(facts(broker_reachable=False, influx_version=None))
    assert not ok and report["status"] == "degraded"
    assert report["reasons"] == [
        "rabbitmq: unreachable at amqp://broker:5672",
        "influxdb: unreachable at http://influx:8086",
    ]
    assert report["rabbitmq"]["reachable"] is False and report["influxdb"]["version"] is None  # type: ignore[index]


def test_backlog_counts_ready_and_held_messages_above_the_limit_only() -> None:
    at_limit = {"hub.store": QueueFacts(ready=60, held=40)}
    assert judge(facts(queues=at_limit, store_idle_s=0.0))[0]
    above = {"hub.store": QueueFacts(ready=None, held=101)}  # ready unknown: what it holds still counts
    ok, report = judge(facts(queues=above, store_idle_s=0.0))
    assert not ok
    assert report["reasons"] == ["backlog: hub.store holds 101 messages, more than 100"]


def test_store_with_waiting_readings_and_nothing_stored_is_stuck() -> None:
    waiting = {"hub.store": QueueFacts(ready=1, held=4)}
    ok, report = judge(facts(queues=waiting, store_idle_s=75.0))
    assert not ok
    assert report["reasons"] == [
        "stuck: the store has stored nothing for 75 s while hub.store holds 5 messages (limit 60 s)"
    ]
    assert judge(facts(queues=waiting, store_idle_s=30.0))[0]  # still storing recently: fine


def test_stuck_is_judged_only_where_the_store_runs() -> None:
    waiting = {"hub.rules": QueueFacts(ready=50, held=0)}
    ok, report = judge(facts(queues=waiting, store_queue=None, store_idle_s=None))
    assert ok and "store" not in report


def test_a_standby_says_so_and_the_active_hubs_backlog_does_not_make_it_unready() -> None:
    queues = {"hub.rules": QueueFacts(ready=500, held=0), "hub.commands": QueueFacts(ready=500, held=0)}
    ok, report = judge(facts(queues=queues, store_queue=None, roles={"hub.rules": "standby", "hub.commands": "active"}))
    assert not ok
    assert report["reasons"] == ["backlog: hub.commands holds 500 messages, more than 100"]
    assert report["queues"]["hub.rules"]["role"] == "standby"  # type: ignore[index]
    assert report["queues"]["hub.commands"]["role"] == "active"  # type: ignore[index]
