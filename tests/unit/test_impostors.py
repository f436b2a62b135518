"""Finding device accounts connected over MQTT under another device's client id (pure part)."""

from __future__ import annotations

from typing import Any

from hub.control.identity import Impostor, device_accounts, find_impostors
from hub.core.contract import VHOST
from hub.core.permissions import topic_permissions


def granted(user: str, **override: str) -> dict[str, Any]:
    return {"user": user, "vhost": VHOST, **topic_permissions(user), **override}


def mqtt(name: str, user: str, client_id: str | None) -> dict[str, Any]:
    properties = {"product": "MQTT client"} if client_id is None else {"client_id": client_id}
    return {"name": name, "user": user, "protocol": "MQTT 3.1.1", "client_properties": properties}


def test_device_accounts_are_those_with_exactly_a_device_s_own_topic_permission() -> None:
    permissions = [
        granted("env-0001"),
        granted("th-0002"),
        granted("gateway", write=".*"),  # not a device's: may publish anything
        {"user": "hub", "vhost": VHOST, "exchange": "iot", "write": ".*", "read": ".*"},
        granted("env-0003") | {"vhost": "other"},
    ]
    assert device_accounts(permissions) == {"env-0001", "th-0002"}


def test_an_impostor_is_a_device_account_under_another_client_id() -> None:
    connections = [
        mqtt("c1", "env-0001", "env-0001"),  # itself
        mqtt("c2", "env-0001", "th-0002"),  # env-0001 taking th-0002's session
        mqtt("c3", "gateway", "anything"),  # not a device account: its client ids are its own business
        mqtt("c4", "th-0002", None),  # no client id listed: nothing to judge
    ]
    assert find_impostors(connections, {"env-0001", "th-0002"}) == [Impostor("c2", "env-0001", "th-0002")]
