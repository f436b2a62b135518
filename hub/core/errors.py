"""The one exception hierarchy: every failure a caller can act on is a subclass of `HubError`.

The CLI turns any `HubError` into one line on stderr and the exit code the class names.
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code: int = 1


class ConfigError(HubError):
    """A setting or a command-line argument is wrong."""

    exit_code = 2


class Unreadable(ConfigError):
    """The configured outputs cannot answer a read (recorded device states, the fleet, the command
    history): e.g. only `jsonl`, which keeps points but cannot be queried."""


class InvalidIdentifier(HubError, ValueError):
    """A site, kind or device name that may not become a topic level, routing key or tag."""

    exit_code = 2


class InvalidMessage(HubError, ValueError):
    """A message body that does not meet the wire contract.

    `reason` is a short machine-readable code (it becomes the dead-letter header and a
    metric label); `detail` is for people.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StackError(HubError):
    """The native stack could not be installed, started, checked or stopped."""

    exit_code = 3


class QueueOutdated(StackError):
    """A hub queue exists with other arguments than this version declares (made by an older hub)."""


class BrokerUnavailable(HubError):
    """RabbitMQ (AMQP, MQTT or STOMP) cannot be reached or refused the credentials."""

    exit_code = 4


class StorageUnavailable(HubError):
    """InfluxDB cannot be reached or refused a write; the data waits in RabbitMQ."""

    exit_code = 5


class NotPermitted(StorageUnavailable):
    """InfluxDB knows the account, which lacks the right to what it asked (e.g. the writer to drop a database)."""


class PointsRejected(HubError):
    """An output's server refused the points themselves (e.g. a field type conflict); retrying cannot help."""
