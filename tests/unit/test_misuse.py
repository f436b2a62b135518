"""Misuses get one clear line naming the variable, file or flag, before anything is done."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hub.core.config import load_settings, unknown_variables
from hub.core.credentials import check_writable, merge_credentials, read_credentials
from hub.core.errors import ConfigError
from hub.services.rules.loader import load_rules, parse_rules

PORT_VARIABLES = [
    "IOT_MQTT_PORT",
    "IOT_STOMP_PORT",
    "IOT_AMQPS_PORT",
    "IOT_MQTTS_PORT",
    "IOT_STOMPS_PORT",
    "IOT_MANAGEMENT_PORT",
    "IOT_RABBITMQ_PROMETHEUS_PORT",
]


def one_line_error(**env: str) -> str:
    """The message of the ConfigError `load_settings` raises with `env` set; it must be one line."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with pytest.raises(ConfigError) as refused:
            load_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    message = str(refused.value)
    assert "\n" not in message
    return message


# --- settings ----------------------------------------------------------------------------------


def test_an_iot_variable_that_is_no_setting_is_named_with_the_nearest_setting() -> None:
    environ = {"IOT_MQTT_PROT": "1", "IOT_MQTT_PORT": "1", "iot_influx_ulr": "x", "IOT_ZZZZZZZZ": "1", "PATH": "/bin"}
    assert unknown_variables(environ) == [
        ("IOT_MQTT_PROT", "IOT_MQTT_PORT"),
        ("IOT_ZZZZZZZZ", None),
        ("iot_influx_ulr", "IOT_INFLUX_URL"),
    ]


def test_an_unknown_iot_variable_is_a_warning_once_per_process_not_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IOT_RULES_FLIE", "my.yaml")
    with caplog.at_level(logging.WARNING):
        load_settings()
        load_settings()
    warnings = [r.getMessage() for r in caplog.records if "IOT_RULES_FLIE" in r.getMessage()]
    assert warnings == ["IOT_RULES_FLIE is not a setting and is ignored; did you mean IOT_RULES_FILE?"]


@pytest.mark.parametrize("variable", PORT_VARIABLES)
@pytest.mark.parametrize("value", ["0", "65536", "-1"])
def test_a_port_out_of_range_is_an_error_naming_its_variable(variable: str, value: str) -> None:
    assert f"{variable}: " in one_line_error(**{variable: value})
    assert "from 1 to 65535" in one_line_error(**{variable: value})


@pytest.mark.parametrize(
    "url", ["amqp://hub:s3cret@localhost:56x72/iot", "amqp://hub:s3cret@localhost:99999/iot", "amqp://hub:s3cret@h:0"]
)
def test_an_amqp_url_whose_port_is_not_a_port_is_an_error_that_does_not_repeat_the_password(url: str) -> None:
    message = one_line_error(IOT_AMQP_URL=url)
    assert "IOT_AMQP_URL: " in message and "from 1 to 65535" in message
    assert "s3cret" not in message


def test_an_influx_url_whose_port_is_not_a_number_is_an_error() -> None:
    assert "IOT_INFLUX_URL: " in one_line_error(IOT_INFLUX_URL="http://localhost:80eighty")


@pytest.mark.parametrize(("value", "port"), [("9108", 9108), ("0", 0), ("off", None), ("OFF", None)])
def test_the_metrics_port_is_a_port_zero_for_any_free_one_or_off(value: str, port: int | None) -> None:
    assert load_settings(metrics_port=value).metrics_port == port


@pytest.mark.parametrize("value", ["65536", "-1", "none"])
def test_a_metrics_port_that_is_none_of_those_is_an_error_naming_its_variable(value: str) -> None:
    assert "IOT_METRICS_PORT: " in one_line_error(IOT_METRICS_PORT=value)


# --- rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "place"),
    [
        ("{name: r, type: threshold, sensor: t, above: .nan}", "$.above"),
        ("{name: r, type: threshold, sensor: t, below: -.inf}", "$.below"),
        ("{name: r, type: zscore, sensor: t, threshold: .inf}", "$.threshold"),
        ("{name: r, type: rate_of_change, sensor: t, max_per_s: .NaN}", "$.max_per_s"),
        ("{name: r, type: threshold, sensor: t, above: 1, cooldown_s: .inf}", "$.cooldown_s"),
        ("{name: r, type: threshold, sensor: t, above: 1, action: {command: c, args: {v: .inf}}}", "$.action.args.v"),
    ],
)
def test_nan_and_infinity_are_refused_in_rules_naming_the_file_the_rule_and_the_field(rule: str, place: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_rules(f"rules: [{rule}]", "my-rules.yaml")
    assert str(refused.value).startswith(f"my-rules.yaml: rule 'r': {place} must be a finite number, not ")


def test_a_rules_file_that_is_not_utf8_is_an_error_naming_the_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_bytes("rules:\n  - name: r\n    message: trop chaud à 30 °C\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"rules file {rules}: not UTF-8 text"):
        load_rules(rules)


# --- provision --out ---------------------------------------------------------------------------


def test_a_credentials_file_that_can_be_written_passes_the_check_and_keeps_nothing_of_it(tmp_path: Path) -> None:
    out = tmp_path / "new" / "fleet.json"
    check_writable(out)
    assert list(out.parent.iterdir()) == [], "the probe leaves no file behind"
    merge_credentials(out, {})
    check_writable(out)
    assert read_credentials(out) == {}


def test_a_credentials_file_that_is_not_one_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    malformed = tmp_path / "fleet.json"
    malformed.write_text('{"env-0001": "no password here"}')
    with pytest.raises(ConfigError, match="is not a credentials file"):
        check_writable(malformed)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        check_writable(tmp_path / "broken.json")


def test_a_credentials_file_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_writable(a_file / "fleet.json")
    with pytest.raises(ConfigError, match=r"the credentials file .*/deeper/fleet\.json: Not a directory"):
        check_writable(a_file / "deeper" / "fleet.json")
    with pytest.raises(ConfigError, match="it is a folder"):
        check_writable(tmp_path)
