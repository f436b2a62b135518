"""A blocking AMQP connection for the command-line tools, with errors a user can act on."""

from __future__ import annotations

import contextlib
import socket

import pika
import pika.exceptions

from hub.core.config import Settings
from hub.core.errors import BrokerUnavailable

#: How long connecting may take before we say the broker is unreachable.
CONNECT_TIMEOUT_S = 5.0
#: Heart-beats keep a long `tail` alive through idle stretches.
HEARTBEAT_S = 30


def connect(settings: Settings, purpose: str) -> pika.BlockingConnection:
    """A connection to the `iot` vhost as the hub user, or `BrokerUnavailable` in one clear line."""
    amqp = settings.amqp
    parameters = pika.ConnectionParameters(
        host=amqp.host,
        port=amqp.port,
        virtual_host=amqp.vhost,
        credentials=pika.PlainCredentials(amqp.user, amqp.password),
        connection_attempts=1,
        socket_timeout=CONNECT_TIMEOUT_S,
        stack_timeout=CONNECT_TIMEOUT_S * 2,
        blocked_connection_timeout=CONNECT_TIMEOUT_S * 6,
        heartbeat=HEARTBEAT_S,
        client_properties={"connection_name": f"iot-hub {purpose}"},
    )
    where = f"amqp://{amqp.host}:{amqp.port}/{amqp.vhost}"
    try:
        # pika reports a refused connection as a bare AMQPConnectionError; the socket says why.
        socket.create_connection((amqp.host, amqp.port), timeout=CONNECT_TIMEOUT_S).close()
        return pika.BlockingConnection(parameters)
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(
            f"RabbitMQ at {where} refused user {amqp.user!r}: check the password in IOT_AMQP_URL"
        ) from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise BrokerUnavailable(
            f"RabbitMQ at {where} denied user {amqp.user!r} access to vhost {amqp.vhost!r}: check IOT_AMQP_URL"
        ) from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {where} ({reason}): start the stack with `python -m hub stack up`, "
            "or point IOT_AMQP_URL / --amqp-url at your broker"
        ) from None


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be broken: on the way out, closing is best effort."""
    if connection is not None and connection.is_open:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()
