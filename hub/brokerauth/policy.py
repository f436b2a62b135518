"""What a login may do beyond what RabbitMQ's internal backend already checked.

RabbitMQ checks passwords and permissions itself (internal backend); this policy is a second
authoriser every login must also pass (`auth_backends` = internal for authentication, internal
*and* http for authorisation). It refuses what the internal backend cannot:

- An MQTT client id that is not the login's own. RabbitMQ 3.10 sends the client id with both the
  user and the vhost check, before it registers the client, so the device already connected under
  that id is never disconnected by an impostor.
- A device account over AMQP 0-9-1 (or the management API). Password logins through the MQTT and
  STOMP plugins carry the vhost with the password; an AMQP 0-9-1 or HTTP login carries the password
  alone, since it authenticates before it names a vhost. Devices speak MQTT or STOMP only.

A certificate login (MQTTS, STOMP over TLS) sends the user check nothing but the username: the
broker trusts the certificate and no other path logs in without a password. Its client id arrives
with the vhost check, which still comes before the client is registered.

Every account that is not an operator account (the hub's and the admin's) is a device account.
Resource and topic checks are left to the internal backend's permissions: this policy allows them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

#: The paths RabbitMQ's HTTP backend calls (`auth_http.*_path`), under the service's root.
USER_PATH = "/auth/user"
VHOST_PATH = "/auth/vhost"
RESOURCE_PATH = "/auth/resource"
TOPIC_PATH = "/auth/topic"
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class Decision:
    allow: bool
    #: Why a login was refused (empty when allowed): for the service's counters and log.
    reason: str = ""

    @property
    def body(self) -> bytes:
        """The answer RabbitMQ's HTTP backend reads: `allow` or `deny` (tags come from the internal backend)."""
        return b"allow" if self.allow else b"deny"


ALLOW = Decision(True)
#: Refusal reasons, one per rule.
FOREIGN_CLIENT_ID = "foreign_client_id"
DEVICE_OVER_AMQP = "device_not_over_mqtt_or_stomp"
UNKNOWN_PATH = "unknown_path"
NO_USERNAME = "no_username"


def decide(path: str, params: Mapping[str, str], operators: Collection[str]) -> Decision:
    """The answer to one request of RabbitMQ's HTTP backend (`params`: its form fields)."""
    username = params.get("username", "")
    if path in (RESOURCE_PATH, TOPIC_PATH):
        return ALLOW
    if path not in (USER_PATH, VHOST_PATH):
        return Decision(False, UNKNOWN_PATH)
    if not username:
        return Decision(False, NO_USERNAME)
    if username in operators:
        return ALLOW
    client_id = params.get("client_id")
    if client_id is not None and client_id != username:
        return Decision(False, FOREIGN_CLIENT_ID)
    if path == USER_PATH and "password" in params and "vhost" not in params:
        return Decision(False, DEVICE_OVER_AMQP)
    return ALLOW
