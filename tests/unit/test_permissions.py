"""A device's permissions as the broker applies them: its own routing keys and session queue, nobody else's."""

from __future__ import annotations

import re

import pytest

from hub.core.contract import LOG_LEVELS, ack_key, command_key, log_key, status_key, telemetry_key
from hub.core.errors import InvalidIdentifier
from hub.core.permissions import (
    device_permission_version,
    earlier_topic_permissions,
    permission_definitions,
    topic_permissions,
    vhost_permissions,
)

ME, OTHER = "env-0001", "env-0002"


def _allows(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


@pytest.mark.parametrize(
    "key", [telemetry_key("plant-a", "environment", ME), telemetry_key("b", "x", ME), status_key(ME), ack_key(ME)]
)
def test_a_device_may_publish_its_own_telemetry_status_and_acks(key: str) -> None:
    assert _allows(topic_permissions(ME)["write"], key)


@pytest.mark.parametrize(
    "key",
    [
        telemetry_key("plant-a", "environment", OTHER),
        status_key(OTHER),
        ack_key(OTHER),
        command_key(ME),
        f"telemetry.plant-a.environment.{ME}.extra",
        f"telemetry.plant-a.{ME}",
        f"status.{ME}x",
        f"alerts.warning.plant-a.{ME}",
        log_key(OTHER, "error"),
        f"logs.{ME}.fatal",
        f"logs.{ME}",
        f"logs.{ME}.error.extra",
        f"logs.{ME}x.error",
    ],
)
def test_a_device_may_not_publish_anything_else(key: str) -> None:
    assert not _allows(topic_permissions(ME)["write"], key)


@pytest.mark.parametrize("level", LOG_LEVELS)
def test_a_device_may_publish_its_own_log_lines_at_every_level(level: str) -> None:
    assert _allows(topic_permissions(ME)["write"], log_key(ME, level))


def test_a_device_may_subscribe_only_to_its_own_commands() -> None:
    read = topic_permissions(ME)["read"]
    assert _allows(read, command_key(ME))
    assert not any(_allows(read, key) for key in (command_key(OTHER), "commands.#", "commands.*", f"acks.{ME}"))


def test_only_its_own_mqtt_session_queue_and_stomp_subscriptions() -> None:
    configure = vhost_permissions(ME)["configure"]
    assert _allows(configure, f"mqtt-subscription-{ME}qos1") and _allows(configure, f"mqtt-subscription-{ME}qos0")
    assert _allows(configure, "stomp-subscription-Zx8q_7Ab")
    assert not any(
        _allows(configure, name) for name in (f"mqtt-subscription-{OTHER}qos1", "iot", "hub.telemetry.0", "amq.gen-x")
    )


def test_a_name_that_is_not_an_identifier_gets_no_permissions() -> None:
    with pytest.raises(InvalidIdentifier):
        topic_permissions("a.*")
    with pytest.raises(InvalidIdentifier):
        vhost_permissions("x|.*")


def test_a_device_account_is_recognised_in_this_version_and_the_one_before_and_no_other() -> None:
    def listed(user: str, permissions: dict[str, str], vhost: str = "iot") -> dict[str, str]:
        return {"user": user, "vhost": vhost, **permissions}

    assert device_permission_version(listed("env-0001", topic_permissions("env-0001"))) == "current"
    assert device_permission_version(listed("env-0001", earlier_topic_permissions("env-0001"))) == "earlier"
    assert device_permission_version(listed("env-0001", topic_permissions("env-0002"))) is None  # another's
    assert device_permission_version(listed("env-0001", topic_permissions("env-0001"), vhost="/")) is None
    assert device_permission_version(listed("hub", {"exchange": "iot", "write": ".*", "read": ".*"})) is None
    assert not re.fullmatch(earlier_topic_permissions("env-0001")["write"], log_key("env-0001", "info"))


def test_the_definitions_give_existing_accounts_this_version_s_permissions_and_no_password() -> None:
    definitions = permission_definitions(["env-0001"])
    assert "users" not in definitions
    [topic] = definitions["topic_permissions"]
    assert topic == {"user": "env-0001", "vhost": "iot", **topic_permissions("env-0001")}
