"""What a device's broker account may do: vhost permissions and topic permissions, as the broker wants them.

Each device has its own account, named by its id, confined to its own routing keys on
exchange `iot`: it publishes `telemetry.<site>.<kind>.<id>`, `status.<id>`, `acks.<id>` and its
log lines `logs.<id>.<level>` (a level of `LOG_LEVELS`),
and binds (subscribes) only `commands.<id>`. The patterns name the id literally rather than
`{username}`: RabbitMQ 3.10 and 4.x both expand `{username}` and `{vhost}` (and, over MQTT only,
`{client_id}`), but a literal pattern means the same on every version and every protocol.

Over MQTT the session queue is `mqtt-subscription-<client id>qos0|1`, so a device may create
only the one named by its own id: with another client id it cannot subscribe to commands.
STOMP subscription queues are server-named and exclusive; the topic permission on the binding
is what confines them.
"""
# Example, device `env-0001`: publish `^(telemetry\.[^.]+\.[^.]+\.env-0001|status\.env-0001|acks\.env-0001|`
# `logs\.env-0001\.(debug|info|warning|error|critical))$` (one regex),
# subscribe `^commands\.env-0001$`.

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from hub.core.contract import EXCHANGE, LOG_LEVELS, VHOST, is_identifier, require_identifier

#: Queues RabbitMQ's STOMP plugin declares for a `/exchange/...` subscription (server-named, exclusive).
STOMP_SUBSCRIPTION_QUEUES = r"stomp-subscription-.*"
#: The last word of a log line's routing key (no regex syntax in a level).
_LEVELS = "|".join(LOG_LEVELS)


def _mqtt_session_queue(device: str) -> str:
    return rf"mqtt-subscription-{device}qos[01]"


def vhost_permissions(device: str) -> dict[str, str]:
    """configure / write / read regexes on vhost `iot` for `device`'s account."""
    require_identifier(device, "device")
    queues = f"{_mqtt_session_queue(device)}|{STOMP_SUBSCRIPTION_QUEUES}"
    return {
        "configure": f"^({queues})$",
        "write": f"^({re.escape(EXCHANGE)}|{queues})$",
        "read": f"^({re.escape(EXCHANGE)}|{queues})$",
    }


def topic_permissions(device: str) -> dict[str, str]:
    """write (publish) / read (bind) regexes on exchange `iot` for `device`'s account."""
    # An identifier holds no regex syntax ('-' is literal outside a class): it goes in as it is.
    me = require_identifier(device, "device")
    return {
        "exchange": EXCHANGE,
        "write": rf"^(telemetry\.[^.]+\.[^.]+\.{me}|status\.{me}|acks\.{me}|logs\.{me}\.({_LEVELS}))$",
        "read": rf"^commands\.{me}$",
    }


def earlier_topic_permissions(device: str) -> dict[str, str]:
    """What `topic_permissions` gave before devices had log lines: an account made then may
    publish no `logs.<id>.<level>` (the broker closes the connection of a device that tries)."""
    me = require_identifier(device, "device")
    return {
        "exchange": EXCHANGE,
        "write": rf"^(telemetry\.[^.]+\.[^.]+\.{me}|status\.{me}|acks\.{me})$",
        "read": rf"^commands\.{me}$",
    }


def device_permission_version(permission: Mapping[str, Any]) -> str | None:
    """ "current" or "earlier" when one topic permission (as the management API lists it) is exactly
    a device account's own, of this version or the one before; None for any other account's."""
    user = permission.get("user")
    if not isinstance(user, str) or permission.get("vhost") != VHOST or not is_identifier(user):
        return None
    for version, wanted in (("current", topic_permissions(user)), ("earlier", earlier_topic_permissions(user))):
        if all(permission.get(key) == wanted[key] for key in ("exchange", "write", "read")):
            return version
    return None


def permission_definitions(devices: Iterable[str]) -> dict[str, Any]:
    """A definitions document giving existing device accounts this version's permissions (their secrets untouched)."""
    wanted = list(devices)
    return {
        "permissions": [{"user": device, "vhost": VHOST, **vhost_permissions(device)} for device in wanted],
        "topic_permissions": [{"user": device, "vhost": VHOST, **topic_permissions(device)} for device in wanted],
    }
