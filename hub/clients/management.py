"""The RabbitMQ management HTTP API: who listens for commands, and (as the admin) device users.

Which devices are listening for commands right now, from the broker's bindings.

The hub's own `hub.commands` queue is bound to `commands.#`, so once the hub runs every
command is routable and `mandatory` alone cannot tell an unknown device. A device, though,
binds the exact key `commands.<device>` (its MQTT subscription queue or STOMP subscription),
so an exact-key binding on exchange `iot` from a queue that is not the hub's means a device is
there to hear it. The management API lists those bindings.

It also counts the consumers of a queue: the demo waits until the hub consumes each of its
queues, which rabbitmq/definitions.json declares long before the hub runs.

A cluster's nodes each serve the whole cluster's API: a call goes to the node that answered the
last one and, when that node does not answer, to the next (`Settings.management_apis`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from hub.core.config import Settings, missing_secret
from hub.core.contract import EXCHANGE
from hub.core.errors import BrokerUnavailable

#: Queues of the hub itself, never a device.
HUB_QUEUE_PREFIX = "hub."
COMMAND_PREFIX = "commands."
#: The management API answers in milliseconds; a slow one must not hold a command up long.
MANAGEMENT_TIMEOUT_S = 5.0


def subscribed_devices(bindings: Iterable[dict[str, Any]]) -> set[str]:
    """Devices with an exact `commands.<device>` binding to a queue that is not the hub's."""
    devices = set()
    for binding in bindings:
        key = binding.get("routing_key", "")
        destination = binding.get("destination", "")
        if (
            binding.get("destination_type") == "queue"
            and isinstance(key, str)
            and key.startswith(COMMAND_PREFIX)
            and not destination.startswith(HUB_QUEUE_PREFIX)
        ):
            device = key[len(COMMAND_PREFIX) :]
            if device and "*" not in device and "#" not in device and "." not in device:
                devices.add(device)
    return devices


#: The API that answered last, per list of them: the next call asks it first, so a node that went
#: away costs one failed attempt, not one per call.
_answered: dict[tuple[str, ...], str] = {}


def management_urls(settings: Settings) -> list[str]:
    """Every management API of IOT_MANAGEMENT_ADDRESSES (else of IOT_AMQP_URL's hosts), in order."""
    return [
        f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}" for host, port in settings.management_apis
    ]


def management_url(settings: Settings) -> str:
    """The management API a call asks first (the one that answered last)."""
    return in_turn(management_urls(settings))[0]


def in_turn(urls: list[str]) -> list[str]:
    """`urls` in the order a call tries them: the one that answered last first, then the others in order."""
    last = _answered.get(tuple(urls))
    return [last, *(url for url in urls if url != last)] if last in urls else list(urls)


def ask_in_turn(urls: list[str], request: Callable[[str], urllib.request.Request], timeout_s: float) -> bytes:
    """The body of the first answer to `request(base URL)` from `urls` (see `in_turn`).

    An HTTP error below 500 is an answer (raised as it is: every node would say the same); a
    connection refused, a time-out or a 5xx (a node stopping) sends the request to the next
    node. Raises the last node's error when none answers.
    """
    failure: OSError | None = None
    for base in in_turn(urls):
        try:
            with urllib.request.urlopen(request(base), timeout=timeout_s) as response:
                body: bytes = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                _answered[tuple(urls)] = base
                raise
            failure = exc
        except OSError as exc:  # URLError, a refused connection or a time-out: this node does not answer
            failure = exc
        else:
            _answered[tuple(urls)] = base
            return body
    assert failure is not None, "no management API to ask"
    raise failure


def _management_get(settings: Settings, path: str) -> Any:
    """A JSON document from the management API as the hub user, or None when it cannot be had."""
    amqp = settings.amqp
    token = base64.b64encode(f"{amqp.user}:{amqp.password}".encode()).decode()

    def request(base: str) -> urllib.request.Request:
        return urllib.request.Request(f"{base}/api/{path}", headers={"Authorization": f"Basic {token}"})

    try:
        return json.loads(ask_in_turn(management_urls(settings), request, MANAGEMENT_TIMEOUT_S))
    except (OSError, ValueError):
        return None


def _vhost(settings: Settings) -> str:
    return urllib.parse.quote(settings.amqp.vhost, safe="")


def read_bindings(settings: Settings) -> list[dict[str, Any]] | None:
    """The bindings whose source is exchange `iot`, or None when the management API cannot say."""
    bindings = _management_get(settings, f"exchanges/{_vhost(settings)}/{EXCHANGE}/bindings/source")
    return [b for b in bindings if isinstance(b, dict)] if isinstance(bindings, list) else None


def read_subscribed_devices(settings: Settings) -> set[str] | None:
    """The devices subscribed now, or None when the management API cannot say (then only
    `mandatory` and the timeout tell)."""
    bindings = read_bindings(settings)
    return subscribed_devices(bindings) if bindings is not None else None


def consumer_activity(consumers: Any) -> dict[str, str]:
    """Consumer tag -> `activity_status` ('single_active', 'waiting', 'up') from `/api/consumers`."""
    activity: dict[str, str] = {}
    for consumer in consumers if isinstance(consumers, list) else []:
        if isinstance(consumer, dict):
            tag, status = consumer.get("consumer_tag"), consumer.get("activity_status")
            if isinstance(tag, str) and isinstance(status, str):
                activity[tag] = status
    return activity


def read_consumer_activity(settings: Settings) -> dict[str, str] | None:
    """Every consumer of the vhost by tag, with whether the broker delivers to it or keeps it
    waiting (single-active-consumer queues), or None when the management API cannot say."""
    consumers = _management_get(settings, f"consumers/{_vhost(settings)}?columns=consumer_tag,activity_status")
    return consumer_activity(consumers) if isinstance(consumers, list) else None


def hub_consumers(consumers: Any, connections: Any) -> list[tuple[str, str, str]]:
    """(queue, connection, activity status) of every consumer of a hub queue, sorted; the
    connection by the name its client gave it (the hub's: service and instance) where known."""
    given = {
        c.get("name"): c.get("user_provided_name")
        for c in (connections if isinstance(connections, list) else [])
        if isinstance(c, dict) and c.get("user_provided_name")
    }
    found = []
    for consumer in consumers if isinstance(consumers, list) else []:
        if not isinstance(consumer, dict):
            continue
        # The API gives `[]` instead of an object for details it no longer has (a closing channel).
        queue_details, channel_details = consumer.get("queue"), consumer.get("channel_details")
        queue = queue_details.get("name") if isinstance(queue_details, dict) else None
        if isinstance(queue, str) and queue.startswith(HUB_QUEUE_PREFIX):
            connection = channel_details.get("connection_name", "?") if isinstance(channel_details, dict) else "?"
            found.append((queue, str(given.get(connection, connection)), str(consumer.get("activity_status", "?"))))
    return sorted(found)


def read_hub_consumers(settings: Settings) -> list[tuple[str, str, str]] | None:
    """Who consumes each hub queue and whether the broker delivers to it, or None when the
    management API cannot say."""
    consumers = _management_get(settings, f"consumers/{_vhost(settings)}")
    connections = _management_get(settings, f"vhosts/{_vhost(settings)}/connections?columns=name,user_provided_name")
    return hub_consumers(consumers, connections) if isinstance(consumers, list) else None


def consumer_count(queue: Any) -> int | None:
    """The `consumers` of one queue's management document, or None when it does not say."""
    consumers = queue.get("consumers") if isinstance(queue, dict) else None
    return consumers if isinstance(consumers, int) and not isinstance(consumers, bool) else None


def read_consumer_count(settings: Settings, queue_name: str) -> int | None:
    """How many consumers `queue_name` has now, or None when the management API cannot say."""
    name = urllib.parse.quote(queue_name, safe="")
    return consumer_count(_management_get(settings, f"queues/{_vhost(settings)}/{name}"))


def published_counts(queues: Any) -> dict[str, int]:
    """Queue name -> messages published into it so far, from `/api/queues/<vhost>` (queues the
    management API has no statistics for yet are left out)."""
    counts: dict[str, int] = {}
    for queue in queues if isinstance(queues, list) else []:
        if not isinstance(queue, dict):
            continue
        name, stats = queue.get("name"), queue.get("message_stats")
        published = stats.get("publish") if isinstance(stats, dict) else None
        if isinstance(name, str) and isinstance(published, int) and not isinstance(published, bool):
            counts[name] = published
    return counts


def read_published_counts(settings: Settings) -> dict[str, int] | None:
    """How many messages each queue of the vhost has received so far, or None when the management API cannot say."""
    queues = _management_get(settings, f"queues/{_vhost(settings)}?columns=name,message_stats.publish")
    return published_counts(queues) if isinstance(queues, list) else None


#: What `read_node` asks the management API for about the broker node.
NODE_COLUMNS = "name,mem_used,mem_limit,mem_alarm,fd_used,fd_total,sockets_used,sockets_total,proc_used"


def read_node(settings: Settings) -> dict[str, Any] | None:
    """The first broker node's memory (used, high watermark, alarm), descriptors and sockets; None if unknown."""
    nodes = _management_get(settings, f"nodes?columns={NODE_COLUMNS}")
    return nodes[0] if isinstance(nodes, list) and nodes and isinstance(nodes[0], dict) else None


def memory_breakdown(document: Any) -> dict[str, int]:
    """A node's memory breakdown (`/api/nodes/<node>/memory`) as bytes by category (`binary`,
    `queue_procs`...), its totals as `total.erlang`, `total.rss`, `total.allocated`; empty if unknown."""
    memory = document.get("memory") if isinstance(document, dict) else None
    flat: dict[str, int] = {}
    for key, value in memory.items() if isinstance(memory, dict) else []:
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, number in items:
            if isinstance(number, int) and not isinstance(number, bool):
                flat[f"{key}.{sub}" if sub else key] = number
    return flat


def read_memory_breakdown(settings: Settings) -> dict[str, int] | None:
    """`memory_breakdown` of the first broker node, computed by the node when asked; None if unknown."""
    node = read_node(settings)
    name = node.get("name") if node else None
    if not isinstance(name, str):
        return None
    breakdown = memory_breakdown(_management_get(settings, f"nodes/{urllib.parse.quote(name, safe='')}/memory"))
    return breakdown or None


def read_broker_version(settings: Settings) -> str | None:
    """The RabbitMQ version the management API reports, or None when it cannot say."""
    overview = _management_get(settings, "overview")
    version = overview.get("rabbitmq_version") if isinstance(overview, dict) else None
    return version if isinstance(version, str) else None


# --- the administrative account: device users (provisioning and revoking only) ------------------

#: Importing thousands of users at once takes the broker a while: allow more than a read.
ADMIN_TIMEOUT_S = 60.0
#: Salt length of RabbitMQ's own password hashes (bytes).
PASSWORD_SALT_BYTES = 4
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password)).

    Hashing here lets one definitions import create thousands of users without their
    passwords ever crossing the wire.
    """
    salt = os.urandom(PASSWORD_SALT_BYTES) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class ManagementAdmin:
    """The management HTTP API as the administrative account (IOT_ADMIN_USER / IOT_ADMIN_PASSWORD)."""

    def __init__(self, settings: Settings) -> None:
        if not settings.admin_password:
            raise missing_secret(settings, f"the broker's admin account {settings.admin_user!r}", "IOT_ADMIN_PASSWORD")
        self._urls = management_urls(settings)
        self._user = settings.admin_user
        token = base64.b64encode(f"{settings.admin_user}:{settings.admin_password}".encode()).decode()
        self._authorization = f"Basic {token}"

    def user_names(self) -> set[str]:
        users = self._call("GET", "users?columns=name")
        return {user["name"] for user in users if isinstance(user, dict) and isinstance(user.get("name"), str)}

    def import_definitions(self, definitions: dict[str, Any]) -> None:
        """One POST /api/definitions: users, permissions and topic permissions in a single request."""
        self._call("POST", "definitions", definitions)

    def delete_users(self, names: Iterable[str]) -> None:
        self._call("POST", "users/bulk-delete", {"users": list(names)})

    def connections(self) -> list[tuple[str, str]]:
        """(name, user) of every client connection, AMQP, MQTT and STOMP alike."""
        connections = self._call("GET", "connections?columns=name,user")
        return [
            (c["name"], c["user"])
            for c in connections
            if isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("user"), str)
        ]

    def connections_named(self, prefix: str) -> list[str]:
        """The broker's names of the client connections whose client named them `prefix`... (the hub's
        are `iot-hub <role> <host>-<pid>`, see `hub.clients.amqp`)."""
        connections = self._call("GET", "connections?columns=name,user_provided_name")
        return [
            c["name"]
            for c in connections or []
            if isinstance(c, dict) and str(c.get("user_provided_name", "")).startswith(prefix) and "name" in c
        ]

    def mqtt_connections(self) -> list[dict[str, Any]]:
        """Every MQTT connection: name, user and `client_properties` (which hold its client id)."""
        connections = self._call("GET", "connections?columns=name,user,protocol,client_properties")
        return [c for c in connections or [] if isinstance(c, dict) and str(c.get("protocol", "")).startswith("MQTT")]

    def users(self) -> list[dict[str, Any]]:
        """Every account: name and tags."""
        users = self._call("GET", "users?columns=name,tags")
        return [u for u in users or [] if isinstance(u, dict)]

    def permissions(self) -> list[dict[str, Any]]:
        """Every account's vhost permissions (user, vhost, configure, write, read)."""
        permissions = self._call("GET", "permissions")
        return [p for p in permissions or [] if isinstance(p, dict)]

    def topic_permissions(self) -> list[dict[str, Any]]:
        """Every account's topic permissions (user, vhost, exchange, write, read)."""
        permissions = self._call("GET", "topic-permissions")
        return [p for p in permissions or [] if isinstance(p, dict)]

    def set_password(self, user: str, password: str) -> None:
        """A new password for an existing account, its tags kept."""
        path = f"users/{urllib.parse.quote(user, safe='')}"
        current = self._call("GET", path)
        tags = current.get("tags", []) if isinstance(current, dict) else []
        self._call("PUT", path, {"password": password, "tags": ",".join(tags) if isinstance(tags, list) else tags})

    def set_permissions(self, user: str, vhost: str, *, configure: str, write: str, read: str) -> None:
        path = f"permissions/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(user, safe='')}"
        self._call("PUT", path, {"configure": configure, "write": write, "read": read})

    def close_connection(self, name: str, reason: str) -> None:
        """Close one client connection; one already gone is no error."""
        path = f"connections/{urllib.parse.quote(name, safe='')}"
        self._call("DELETE", path, headers={"X-Reason": reason}, missing_ok=True)

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        missing_ok: bool = False,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()

        def request(base: str) -> urllib.request.Request:
            request = urllib.request.Request(f"{base}/api/{path}", data=data, method=method)
            request.add_header("Authorization", self._authorization)
            if data is not None:
                request.add_header("Content-Type", "application/json")
            for name, value in (headers or {}).items():
                request.add_header(name, value)
            return request

        try:
            # Every call here is idempotent (PUT, DELETE, definitions, bulk delete): the next node may take it.
            payload = ask_in_turn(self._urls, request, ADMIN_TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            if exc.code == 401:
                raise BrokerUnavailable(
                    f"the management API refused the admin account {self._user!r} "
                    "(check IOT_ADMIN_USER and IOT_ADMIN_PASSWORD; unset: the stack's secrets file)"
                ) from None
            detail = exc.read().decode(errors="replace")[:300]
            raise BrokerUnavailable(f"management API {method} /api/{path}: HTTP {exc.code} {detail}") from None
        except OSError as exc:
            where = ", ".join(self._urls)
            raise BrokerUnavailable(f"management API at {where} not reachable: {exc}") from None
        return json.loads(payload) if payload else None
