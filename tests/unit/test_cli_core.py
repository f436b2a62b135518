"""The plain-Python core of the CLI, without I/O: argument parsing, exit codes, which devices
listen, the fleet view, tail's lines, the readings rate and the demo's command plan."""

from __future__ import annotations

import pytest

from hub.clients.influx import Series
from hub.clients.management import (
    consumer_activity,
    consumer_count,
    hub_consumers,
    memory_breakdown,
    published_counts,
    subscribed_devices,
)
from hub.control.args import parse_command_args
from hub.control.fleet_view import FRESH_READING_MS, build_fleet, kinds_from_measurements, select
from hub.control.send import Outcome, build_command, overall_exit_code
from hub.control.tail import describe, require_pattern
from hub.core.contract import Ack, Alert, Command, Presence, Reading, encode
from hub.core.errors import ConfigError, InvalidIdentifier
from hub.core.exit_codes import ExitCode
from hub.demo.activity import RateWindow
from hub.demo.scenario import plan_commands

NOW = 1_800_000_000_000


def test_key_value_arguments_become_json_scalars_or_text() -> None:
    assert parse_command_args(["ms=5000", "value=21.5", "on=true", "mode=eco", 'name="42"']) == {
        "ms": 5000,
        "value": 21.5,
        "on": True,
        "mode": "eco",
        "name": "42",
    }


@pytest.mark.parametrize("word", ["ms", "Ms=1", "ms=null", "ms=[1]", "ms=NaN", "1x=2"])
def test_malformed_arguments_are_usage_errors(word: str) -> None:
    with pytest.raises(ConfigError):
        parse_command_args([word])


def test_a_repeated_argument_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_command_args(["ms=1", "ms=2"])


def test_a_command_expires_when_the_sender_stops_waiting() -> None:
    command = build_command("set_interval", {"ms": 5000}, timeout_s=2.5, at_ms=NOW)
    assert (command.ts, command.expires, command.args) == (NOW, NOW + 2500, {"ms": 5000})


def test_a_command_name_that_cannot_be_a_routing_word_is_refused() -> None:
    with pytest.raises(InvalidIdentifier):
        build_command("set.interval", {}, timeout_s=1)
    with pytest.raises(ConfigError, match="--timeout"):
        build_command("ping", {}, timeout_s=0)


def test_the_exit_code_of_many_outcomes_is_the_worst() -> None:
    def outcome(status: str) -> Outcome:
        return Outcome("d", "ping", "id", status)  # type: ignore[arg-type]

    assert overall_exit_code([outcome("ok"), outcome("ok")]) == ExitCode.OK
    assert overall_exit_code([outcome("ok"), outcome("unsupported")]) == ExitCode.DEVICE_REFUSED
    assert overall_exit_code([outcome("error"), outcome("timeout")]) == ExitCode.TIMEOUT
    assert overall_exit_code([outcome("timeout"), outcome("unknown_device")]) == ExitCode.UNKNOWN_DEVICE


def test_exit_codes_agree_with_the_error_hierarchy() -> None:
    from hub.core.errors import BrokerUnavailable, ConfigError, StorageUnavailable

    assert ConfigError.exit_code == ExitCode.USAGE
    assert BrokerUnavailable.exit_code == ExitCode.BROKER_UNREACHABLE
    assert StorageUnavailable.exit_code == ExitCode.INFLUX_UNREACHABLE


def test_only_exact_command_bindings_of_non_hub_queues_mean_a_listening_device() -> None:
    bindings = [
        {
            "destination_type": "queue",
            "destination": "mqtt-subscription-env-0001qos1",
            "routing_key": "commands.env-0001",
        },
        {"destination_type": "queue", "destination": "amq.gen-x", "routing_key": "commands.th-0001"},
        {"destination_type": "queue", "destination": "hub.commands", "routing_key": "commands.#"},
        {"destination_type": "queue", "destination": "hub.other", "routing_key": "commands.pm-0001"},
        {"destination_type": "queue", "destination": "amq.gen-tail", "routing_key": "#"},
        {"destination_type": "queue", "destination": "amq.gen-tail", "routing_key": "commands.*"},
        {"destination_type": "exchange", "destination": "x", "routing_key": "commands.aq-0001"},
    ]
    assert subscribed_devices(bindings) == {"env-0001", "th-0001"}


@pytest.mark.parametrize(
    ("answer", "count"),
    [
        ({"name": "hub.telemetry.0", "consumers": 2, "messages": 0}, 2),
        ({"name": "hub.telemetry.0", "consumers": 0}, 0),
        ({"name": "hub.telemetry.0"}, None),  # a queue the management API has no statistics for yet
        ({"consumers": "1"}, None),
        ({"consumers": True}, None),
        ([{"consumers": 1}], None),
        (None, None),  # the management API could not be asked
    ],
)
def test_a_queues_consumer_count_is_read_from_its_management_document(answer: object, count: int | None) -> None:
    assert consumer_count(answer) == count


def test_the_messages_published_into_each_queue_are_read_from_the_queue_list() -> None:
    queues = [
        {"name": "hub.a", "message_stats": {"publish": 120}},
        {"name": "hub.b", "message_stats": {}},  # nothing published yet
        {"name": "hub.c"},  # no statistics yet
        {"name": "hub.d", "message_stats": {"publish": True}},
        "not a queue",
    ]
    assert published_counts(queues) == {"hub.a": 120}
    assert published_counts(None) == {}


def test_a_nodes_memory_breakdown_is_read_as_bytes_by_category_with_its_totals() -> None:
    document = {
        "memory": {
            "connection_other": 100,
            "binary": 3,
            "strategy": "rss",
            "total": {"erlang": 123, "rss": 9000, "allocated": 12123},
        }
    }
    assert memory_breakdown(document) == {
        "connection_other": 100,
        "binary": 3,
        "total.erlang": 123,
        "total.rss": 9000,
        "total.allocated": 12123,
    }
    assert memory_breakdown({"memory": "not_available"}) == {}
    assert memory_breakdown(None) == {}


def _status(device: str, at: int, online: bool, reason: str = "status") -> Series:
    row = {
        "time": at,
        "kind": "thermostat",
        "site": "plant-a",
        "protocol": "stomp",
        "online": online,
        "state": "online" if online else "offline",
        "reason": reason,
        "interval_ms": 1000,
        "fw": "1.0",
    }
    return Series("device_status", {"device": device}, [row])


def _reading(measurement: str, device: str, at: int, **values: float | bool) -> Series:
    row = {"time": at, "site": "plant-a", "protocol": "mqtt", "seq": 7, **values}
    return Series(measurement, {"device": device}, [row])


def test_the_fleet_view_merges_presence_and_latest_readings() -> None:
    fleet = build_fleet(
        [_status("th-1", NOW - 5000, True), _status("th-2", NOW - 9000, False, "last_will")],
        [_reading("thermostat", "th-1", NOW - 1000, temperature=21.5, heating=True, humidity=None)],  # type: ignore[arg-type]
        at_ms=NOW,
    )
    first, second = fleet
    assert (first.device, first.online, first.last_seen, first.protocol) == ("th-1", True, NOW - 1000, "stomp")
    assert first.readings == {"heating": True, "temperature": 21.5}
    assert (second.device, second.online, second.reason, second.last_seen) == ("th-2", False, "last_will", NOW - 9000)
    assert [v.device for v in select(fleet, state="offline")] == ["th-2"]
    assert select(fleet, site="elsewhere") == []


def test_an_online_device_silent_for_long_is_shown_as_stale() -> None:
    fresh, silent = build_fleet(
        [_status("th-1", NOW - 5_000, True), _status("th-2", NOW - 16 * 60_000, True)], [], at_ms=NOW
    )
    assert (fresh.online, fresh.stale) == (True, False)
    assert (silent.online, silent.stale) == (True, True)


def test_a_device_without_status_is_online_while_its_readings_are_fresh() -> None:
    fresh, stale = build_fleet(
        [],
        [
            _reading("environment", "env-1", NOW - 1000, temperature=20.0),
            _reading("environment", "env-2", NOW - FRESH_READING_MS - 1, temperature=20.0),
        ],
        at_ms=NOW,
    )
    assert (fresh.kind, fresh.site, fresh.protocol, fresh.online) == ("environment", "plant-a", "mqtt", True)
    assert stale.online is False


def test_only_kind_measurements_hold_readings() -> None:
    names = ["alerts", "commands", "device_status", "environment", "hub_stats", "thermostat", "Bad Name"]
    assert kinds_from_measurements(names) == ["environment", "thermostat"]


def test_tail_lines_say_what_each_message_is() -> None:
    reading = Reading(device="env-1", site="a", kind="environment", seq=3, ts=NOW, readings={"temperature": 21.5})
    line = describe("telemetry.a.environment.env-1", encode(reading))
    assert line.text == "temperature=21.5°C  seq=3" and line.style == "green"
    presence = Presence(
        device="env-1", state="offline", protocol="mqtt", kind="environment", site="a", interval_ms=1000, ts=NOW
    )
    assert describe("status.env-1", encode(presence)).text.startswith("offline mqtt environment@a")
    command = Command(id="abcdef1234", command="set_relay", args={"on": False}, ts=NOW, expires=NOW + 1)
    assert describe("commands.pm-1", encode(command), "cli").text == "set_relay on=off  id=abcdef12 from cli"
    ack = Ack(id="abcdef1234", device="pm-1", status="unsupported", detail="no such command", ts=NOW)
    assert describe("acks.pm-1", encode(ack)).style == "red"
    alert = Alert(
        id="a1", rule="hot", severity="critical", device="th-1", site="a", kind="thermostat",
        sensor="temperature", value=41.0, message="too hot", ts=NOW,
    )  # fmt: skip
    assert describe("alerts.critical.a.th-1", encode(alert)).text == "critical hot: too hot (temperature=41)"
    broken = describe("telemetry.a.environment.env-1", b"{not json")
    assert broken.text.startswith("invalid (bad_json)") and broken.style == "bold red"


@pytest.mark.parametrize("pattern", ["#", "telemetry.plant-a.#", "alerts.*.*.th-1", "status.*"])
def test_tail_accepts_routing_patterns(pattern: str) -> None:
    assert require_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["telemetry/plant-a/#", "", "a..b", "Telemetry.#", "a.b c"])
def test_tail_refuses_what_is_not_a_routing_pattern(pattern: str) -> None:
    with pytest.raises(ConfigError):
        require_pattern(pattern)


def test_the_readings_rate_is_the_slope_over_the_recent_window() -> None:
    rates = RateWindow(window_s=5)
    assert rates.add(0.0, 0) == 0.0
    assert rates.add(1.0, 50) == 50.0
    for second in range(2, 11):
        rate = rates.add(float(second), 50 * second)
    assert rate == pytest.approx(50.0)
    assert rates.add(11.0, 500) < 50.0  # a pause in storing shows at once


def test_the_demo_plans_a_command_for_each_actuator_kind_there_is() -> None:
    plan = plan_commands(
        {"environment": ["env-0002", "env-0001"], "thermostat": ["th-0001"], "power_meter": ["pm-0001"]}
    )
    shown = [command.shown for command in plan]
    assert shown == [
        "iot-hub send env-0001 ping",
        "iot-hub send env-0001 set_interval ms=5000",
        "iot-hub send env-0001 self_destruct",
        "iot-hub send th-0001 set_setpoint value=26.5",
        "iot-hub send pm-0001 set_relay on=false",
        "iot-hub send --all ping",
    ]
    assert plan_commands({}) == []


def test_hub_consumers_name_each_hub_by_its_connection_and_say_which_is_active() -> None:
    consumers = [
        {
            "queue": {"name": "hub.telemetry.1"},
            "channel_details": {"connection_name": "10.0.0.2:1 -> b"},
            "activity_status": "waiting",
        },
        {
            "queue": {"name": "hub.telemetry.1"},
            "channel_details": {"connection_name": "10.0.0.1:1 -> b"},
            "activity_status": "single_active",
        },
        {
            "queue": {"name": "mqtt-subscription-x"},
            "channel_details": {"connection_name": "d"},
            "activity_status": "up",
        },
        # A consumer whose channel is closing: the API lists `[]` for the details it no longer has.
        {"queue": {"name": "hub.telemetry.0"}, "channel_details": [], "activity_status": "waiting"},
        {"queue": [], "channel_details": [], "activity_status": "waiting"},
    ]
    connections = [
        {"name": "10.0.0.1:1 -> b", "user_provided_name": "iot-hub hub-telemetry a-1"},
        {"name": "10.0.0.2:1 -> b"},
    ]
    assert hub_consumers(consumers, connections) == [
        ("hub.telemetry.0", "?", "waiting"),
        ("hub.telemetry.1", "10.0.0.2:1 -> b", "waiting"),
        ("hub.telemetry.1", "iot-hub hub-telemetry a-1", "single_active"),
    ]


def test_consumer_activity_is_read_by_consumer_tag() -> None:
    consumers = [
        {"consumer_tag": "ctag1.a", "activity_status": "waiting"},
        {"consumer_tag": "ctag1.b", "activity_status": "single_active"},
        {"activity_status": "up"},
    ]
    assert consumer_activity(consumers) == {"ctag1.a": "waiting", "ctag1.b": "single_active"}
    assert consumer_activity({"error": "not_authorised"}) == {}
