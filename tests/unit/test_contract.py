"""The wire contract as code: identifiers, routing keys and body validation."""

from __future__ import annotations

import pytest

from hub.core.config import load_settings
from hub.core.contract import (
    Ack,
    Command,
    Reading,
    alert_key,
    command_key,
    decode,
    decode_reading,
    encode,
    mqtt_topic,
    require_identifier,
    stomp_destination,
    telemetry_key,
)
from hub.core.errors import ConfigError, InvalidIdentifier, InvalidMessage

GOOD = (
    b'{"v":1,"device":"env-0007","site":"plant-a","kind":"environment","seq":1842,"ts":1763823456123,'
    b'"readings":{"temperature":21.7,"humidity":43.1}}'
)


def test_the_contract_example_reading_is_accepted() -> None:
    reading = decode_reading(GOOD, "telemetry.plant-a.environment.env-0007")
    assert reading.readings == {"temperature": 21.7, "humidity": 43.1}
    assert decode_reading(encode(reading)) == reading


@pytest.mark.parametrize(
    "bad",
    ["", "Env", "a.b", "a/b", "a+b", "a#", "a b", "a'b", 'a"b', "-a", "x" * 65, "a,b", "a=b", "é"],
)
def test_hostile_identifiers_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdentifier):
        require_identifier(bad, "device")
    with pytest.raises(InvalidIdentifier):
        command_key(bad)


def test_routing_keys_topics_and_destinations() -> None:
    assert telemetry_key("plant-a", "environment", "env-1") == "telemetry.plant-a.environment.env-1"
    assert mqtt_topic(command_key("env-1")) == "commands/env-1"
    assert stomp_destination("acks.env-1") == "/exchange/iot/acks.env-1"
    assert alert_key("critical", "plant-a", "th-1") == "alerts.critical.plant-a.th-1"
    with pytest.raises(InvalidIdentifier):
        alert_key("panic", "plant-a", "th-1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "bad_json"),
        (GOOD.replace(b"21.7", b"NaN"), "bad_json"),
        (GOOD.replace(b"21.7", b"Infinity"), "bad_json"),
        (GOOD.replace(b"21.7", b"1e999"), "schema"),
        (GOOD.replace(b"21.7", b'"21.7"'), "schema"),
        (GOOD.replace(b'"seq":1842,', b""), "schema"),
        (GOOD.replace(b"env-0007", b"env.0007"), "schema"),
        (GOOD.replace(b"temperature", b"seq"), "schema"),
        (GOOD.replace(b"temperature", b"Temperature"), "schema"),
        (GOOD.replace(b"temperature", b"flux-capacitor"), "schema"),
        (GOOD.replace(b'"v":1', b'"v":2'), "schema"),
        (b" " * 70_000, "oversize"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_reading(body)
    assert caught.value.reason == reason


def test_a_sensor_no_model_declares_is_still_a_valid_reading() -> None:
    """Which sensors a kind has is the device models' business; the wire only checks the name's shape."""
    reading = decode_reading(GOOD.replace(b"temperature", b"flux_capacitor"))
    assert reading.readings == {"flux_capacitor": 21.7, "humidity": 43.1}


def test_a_body_routed_under_another_device_is_refused() -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_reading(GOOD, "telemetry.plant-a.environment.env-0008")
    assert caught.value.reason == "routing_mismatch"


def test_commands_expire_and_acks_carry_state() -> None:
    command = Command(id="c1", command="set_interval", args={"ms": 5000}, ts=1_000, expires=2_000)
    assert not command.expired(at_ms=2_000) and command.expired(at_ms=2_001)
    assert decode(encode(command), Command) == command
    ack = decode(b'{"v":1,"id":"c1","device":"env-1","status":"ok","state":{"interval_ms":5000},"ts":3}', Ack)
    assert ack.state == {"interval_ms": 5000}
    with pytest.raises(InvalidMessage):
        decode(b'{"v":1,"id":"c1","device":"env-1","status":"maybe","ts":3}', Ack)


def test_a_reading_built_in_code_is_validated_too() -> None:
    with pytest.raises(ValueError):
        Reading(device="d", site="s", kind="k", seq=1, ts=1, readings={"temperature": float("nan")})


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_MQTT_PORT", "11883")
    assert load_settings().mqtt_port == 11883
    assert load_settings(mqtt_port=21883).mqtt_port == 21883
    monkeypatch.setenv("IOT_MQTT_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="IOT_MQTT_PORT"):
        load_settings()
    monkeypatch.delenv("IOT_MQTT_PORT")
    with pytest.raises(ConfigError, match="IOT_AMQP_URL"):
        load_settings(amqp_url="http://x")
