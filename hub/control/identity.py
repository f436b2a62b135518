"""Device identities: one broker account per device, created and revoked through the management API.

    result = provision(settings, ["env-0001", "th-0002"])   # new secrets in result.issued
    provision(settings, ["cam-0003"], certificate=True)     # no password: its certificate logs it in
    revoke(settings, ["env-0001"])                         # deleted, its connections closed

Provisioning hashes each secret here and creates every account with one definitions import,
so a thousand devices cost one request, not four thousand. Every id is checked before
anything is sent: a bad one refuses the whole call and nothing is half-created.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.clients.management import HASHING_ALGORITHM, ManagementAdmin, password_hash
from hub.core.config import Settings
from hub.core.contract import VHOST, require_identifier
from hub.core.credentials import Credential, merge_credentials, read_credentials
from hub.core.permissions import (
    device_permission_version,
    permission_definitions,
    topic_permissions,
    vhost_permissions,
)

#: Bytes of randomness per device secret (URL-safe base64: 32 characters).
SECRET_BYTES = 24
REVOKED_REASON = "credential revoked"
IMPOSTOR_REASON = "MQTT client id is not this account's device id"
#: The password hash of a certificate device: RabbitMQ's internal backend refuses every password
#: against an empty hash, so the account logs in only by its certificate (ssl_cert_login, CN = id).
NO_PASSWORD_HASH = ""


@dataclass
class Provisioned:
    """What `provision` did: secrets issued (new or rotated; shown once) and devices left as they were."""

    issued: dict[str, Credential] = field(default_factory=dict)
    #: Certificate devices whose account was created (or rotated) now: they need a certificate.
    certified: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


@dataclass
class Revoked:
    deleted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    connections_closed: int = 0


def checked_devices(devices: Iterable[str]) -> list[str]:
    """The ids in order, duplicates dropped; the contract's error for the first that is not an identifier."""
    return list(dict.fromkeys(require_identifier(device, "device") for device in devices))


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def device_definitions(credentials: dict[str, Credential]) -> dict[str, Any]:
    """A definitions document creating (or replacing) one confined account per device."""
    return _account_definitions({device: password_hash(c.password) for device, c in credentials.items()})


def certificate_definitions(devices: Iterable[str]) -> dict[str, Any]:
    """The same confined accounts, without a usable password: only the device's certificate logs it in."""
    return _account_definitions(dict.fromkeys(devices, NO_PASSWORD_HASH))


def _account_definitions(hashes: Mapping[str, str]) -> dict[str, Any]:
    return {
        "users": [
            {"name": device, "password_hash": hashed, "hashing_algorithm": HASHING_ALGORITHM, "tags": [], "limits": {}}
            for device, hashed in hashes.items()
        ],
        "permissions": [{"user": device, "vhost": VHOST, **vhost_permissions(device)} for device in hashes],
        "topic_permissions": [{"user": device, "vhost": VHOST, **topic_permissions(device)} for device in hashes],
    }


def provision(
    settings: Settings, devices: Iterable[str], rotate: bool = False, certificate: bool = False
) -> Provisioned:
    """Create an account for each device that has none; with `rotate`, give existing ones a new secret too.

    An existing account keeps its secret but gets the permissions of this version (e.g. a new
    message type of its own, such as its log lines).

    With `certificate`, the accounts have no password (`result.certified`): the caller issues
    each a certificate, and a rotated one loses its password.
    """
    wanted = checked_devices(devices)
    admin = ManagementAdmin(settings)
    present = admin.user_names()
    result = Provisioned()
    for device in wanted:
        if device in present and not rotate:
            result.existing.append(device)
            continue
        if device in present:
            result.rotated.append(device)
        if certificate:
            result.certified.append(device)
        else:
            result.issued[device] = Credential(username=device, password=new_secret())
    if result.existing:
        admin.import_definitions(permission_definitions(result.existing))
    if result.issued:
        admin.import_definitions(device_definitions(result.issued))
    if result.certified:
        admin.import_definitions(certificate_definitions(result.certified))
    if result.rotated:
        # A new secret must lock the old one out now, not at the device's next reconnect.
        _close_connections(admin, result.rotated, "credential rotated")
    return result


def revoke(settings: Settings, devices: Iterable[str]) -> Revoked:
    """Delete each device's account, then close its open connections (they would otherwise live on)."""
    wanted = checked_devices(devices)
    admin = ManagementAdmin(settings)
    present = admin.user_names()
    result = Revoked(
        deleted=[d for d in wanted if d in present],
        unknown=[d for d in wanted if d not in present],
    )
    if result.deleted:
        # Deleted first, so a connection closed next cannot log in again in between.
        admin.delete_users(result.deleted)
        result.connections_closed = _close_connections(admin, result.deleted, REVOKED_REASON)
    return result


@dataclass(frozen=True)
class Impostor:
    """An MQTT connection of a device account under another client id than the device's own."""

    connection: str
    user: str
    client_id: str


def device_accounts(granted: Iterable[Mapping[str, Any]]) -> set[str]:
    """Accounts `provision` made: their topic permission on `iot` is exactly a device's own (of
    this version, or of the one before, which the next `stack up` upgrades)."""
    return {permission["user"] for permission in granted if device_permission_version(permission) is not None}


def find_impostors(mqtt_connections: Iterable[Mapping[str, Any]], devices: set[str]) -> list[Impostor]:
    """The connections of `devices` whose MQTT client id is not the device's id.

    Such a client gets no commands and publishes only as itself (the broker confines it), but
    its CONNECT still takes over the session of the device whose id it uses: MQTT's rule, which
    RabbitMQ's internal authorisation (3.10 and 4.x alike) cannot refuse.
    """
    found = []
    for connection in mqtt_connections:
        user, name = connection.get("user"), connection.get("name")
        properties = connection.get("client_properties")
        client_id = properties.get("client_id") if isinstance(properties, dict) else None
        if user in devices and isinstance(name, str) and isinstance(client_id, str) and client_id != user:
            found.append(Impostor(name, str(user), client_id))
    return found


def impostors(settings: Settings, close: bool = False) -> list[Impostor]:
    """Device accounts connected over MQTT under another device's client id; with `close`, closed."""
    admin = ManagementAdmin(settings)
    found = find_impostors(admin.mqtt_connections(), device_accounts(admin.topic_permissions()))
    if close:
        for impostor in found:
            admin.close_connection(impostor.connection, IMPOSTOR_REASON)
    return found


def _close_connections(admin: ManagementAdmin, users: list[str], reason: str) -> int:
    wanted = set(users)
    names = [name for name, user in admin.connections() if user in wanted]
    for name in names:
        admin.close_connection(name, reason)
    return len(names)


def provision_into(settings: Settings, devices: Iterable[str], path: Path) -> dict[str, Credential]:
    """Credentials for `devices` from the file at `path`, provisioning the ones it lacks into it.

    For stacks a program owns (tests, benchmarks): an account that exists without its secret
    in the file gets a new secret, since nobody else can be using it.
    """
    wanted = checked_devices(devices)
    held = read_credentials(path)
    missing = [device for device in wanted if device not in held]
    if missing:
        held = merge_credentials(path, provision(settings, missing, rotate=True).issued)
    return {device: held[device] for device in wanted}
