"""`hub audit`'s verdicts over what it observed: listeners, endpoints, secrets, modes, permissions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.control.security_audit import (
    KNOWN_CREDENTIALS,
    Listener,
    configured_secret_rows,
    endpoint_rows,
    listener_rows,
    mode_rows,
    permission_rows,
)
from hub.core.config import load_settings
from hub.core.contract import VHOST
from hub.core.permissions import topic_permissions, vhost_permissions

TLS_PORTS = {5671: "AMQPS", 8883: "MQTTS", 61614: "STOMPS"}
OPERATORS = ("hub", "admin")


def test_tls_listeners_beyond_loopback_pass_and_a_plain_one_is_a_finding() -> None:
    rows = listener_rows(
        [
            Listener("::", 5671, "beam.smp"),
            Listener("0.0.0.0", 8883, "beam.smp"),
            Listener("127.0.0.1", 5672, "beam.smp"),
            Listener("::1", 15672, "beam.smp"),
            Listener("::ffff:127.0.0.1", 4369, "epmd"),
            Listener("0.0.0.0", 25672, "beam.smp"),
        ],
        TLS_PORTS,
    )
    assert [(row.subject, row.verdict) for row in rows] == [
        (":::5671 (beam.smp)", "ok"),
        ("0.0.0.0:8883 (beam.smp)", "ok"),
        ("0.0.0.0:25672 (beam.smp)", "finding"),
    ]


def test_nothing_beyond_loopback_is_one_ok_row() -> None:
    [row] = listener_rows([Listener("127.0.0.1", 5672, "beam.smp")], TLS_PORTS)
    assert row.verdict == "ok"


def test_configured_endpoints_are_judged_by_scheme_and_host() -> None:
    plain_remote = load_settings(amqp_url="amqp://hub:s@broker.example:5672/iot", mqtt_host="broker.example")
    verdicts = {row.subject: row.verdict for row in endpoint_rows(plain_remote)}
    assert verdicts["AMQP at broker.example"] == "finding"
    assert verdicts["MQTT at broker.example"] == "finding"
    assert verdicts["InfluxDB at localhost"] == "ok"
    secure = load_settings(amqp_url="amqps://hub:s@broker.example:5671/iot", mqtt_host="broker.example", mqtt_tls=True)
    verdicts = {row.subject: row.verdict for row in endpoint_rows(secure)}
    assert verdicts["AMQP at broker.example"] == verdicts["MQTT at broker.example"] == "ok"


@pytest.mark.parametrize("published", [password for _user, password in KNOWN_CREDENTIALS])
def test_a_configured_secret_that_was_ever_published_is_a_finding(published: str) -> None:
    settings = load_settings(amqp_url=f"amqp://hub:{published}@localhost:5672/iot", admin_password="fresh-and-long")
    verdicts = {row.subject: row.verdict for row in configured_secret_rows(settings)}
    assert verdicts == {"IOT_AMQP_URL (the hub's)": "finding", "IOT_ADMIN_PASSWORD": "ok"}


def _private_stack(root: Path) -> Path:
    root.mkdir(mode=0o700)
    (root / "rabbitmq").mkdir(mode=0o755)  # the servers' own modes below a private root are no finding
    for name in ("secrets.json", "devices.json"):
        (root / name).write_text("{}")
        (root / name).chmod(0o600)
    (root / "tls").mkdir()
    (root / "tls" / "server.key").write_text("key")
    (root / "tls" / "server.key").chmod(0o600)
    (root / "tls" / "ca.pem").write_text("public")
    return root


def test_a_private_stack_folder_with_owner_only_secrets_passes(tmp_path: Path) -> None:
    [row] = mode_rows(_private_stack(tmp_path / "stack"))
    assert row.verdict == "ok" and "3 secret files" in row.detail


def test_an_open_stack_folder_or_a_readable_secret_is_a_finding(tmp_path: Path) -> None:
    root = _private_stack(tmp_path / "stack")
    root.chmod(0o755)
    (root / "tls" / "server.key").chmod(0o644)
    rows = mode_rows(root)
    assert [row.verdict for row in rows] == ["finding", "finding"]
    assert "others may enter" in rows[0].detail
    assert "tls/server.key (-rw-r--r--)" in rows[1].detail


def _device_grants(device: str) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    return (
        {"name": device, "tags": []},
        {"user": device, "vhost": VHOST, **vhost_permissions(device)},
        {"user": device, "vhost": VHOST, **topic_permissions(device)},
    )


def test_devices_with_exactly_their_own_permissions_pass() -> None:
    user, granted, topic = _device_grants("th-0001")
    operators = [{"name": "hub", "tags": ["monitoring"]}, {"name": "admin", "tags": ["administrator"]}]
    hub_grant = {"user": "hub", "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"}
    [row] = permission_rows([user, *operators], [granted, hub_grant], [topic], OPERATORS)
    assert (row.verdict, row.subject) == ("ok", "1 accounts")


@pytest.mark.parametrize(
    "widen",
    [
        lambda u, g, t: (u | {"tags": ["management"]}, g, t),
        lambda u, g, t: (u, g | {"configure": ".*"}, t),
        lambda u, g, t: (u, g | {"vhost": "/"}, t),
        lambda u, g, t: (u, g, t | {"write": "^telemetry\\..*$"}),
        lambda u, g, t: (u, g, t | {"exchange": "amq.topic"}),
    ],
    ids=["tags", "configure anything", "another vhost", "publish anything", "another exchange"],
)
def test_a_device_with_more_than_its_own_is_a_finding(widen: object) -> None:
    user, granted, topic = widen(*_device_grants("th-0001"))  # type: ignore[operator]
    rows = permission_rows([user], [granted], [topic], OPERATORS)
    assert [(row.subject, row.verdict) for row in rows] == [("th-0001", "finding")], json.dumps(
        [row.detail for row in rows]
    )
