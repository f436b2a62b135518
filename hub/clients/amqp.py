"""The one AMQP client: connection parameters and connecting, for every process of the hub.

The hub's services, its monitor, the CLI (`send`, `tail`), the stack's readiness check, the
benchmarks and the tests all connect through `connect`, so vhost, heartbeat, client name,
timeouts and the errors a user sees are decided here once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import ssl

import pika
import pika.exceptions

from hub.core.config import AmqpParts, Settings, missing_secret
from hub.core.errors import BrokerUnavailable
from hub.core.tls import settings_context

#: How long connecting may take before the broker counts as unreachable.
CONNECT_TIMEOUT_S = 5.0
#: AMQP heartbeat: long-lived consumers (and a long `tail`) stay alive through idle stretches.
HEARTBEAT_S = 30
#: A publisher blocked by the broker's flow control (memory or disk alarm) gives up after this.
BLOCKED_CONNECTION_TIMEOUT_S = 60.0
TLS_HINT = "the broker's certificate must be signed by IOT_TLS_CA and name the host in IOT_AMQP_URL"
#: Where the next connection of this process starts in a list of broker URLs: each new connection
#: starts one node further (from a pid-dependent place), so a process's connections, and several
#: processes, spread over a cluster's nodes; a node that does not answer is skipped.
_next_start = itertools.count(os.getpid())


def connection_parameters(
    settings: Settings,
    name: str,
    *,
    host: str | None = None,
    port: int | None = None,
    amqp: AmqpParts | None = None,
) -> pika.ConnectionParameters:
    """Parameters for a connection named `name` (shown in the management UI) to IOT_AMQP_URL.

    `amqp`: one of the URLs of IOT_AMQP_URL (default: the first). `host` and `port` replace the
    URL's, for a check of one particular node. An amqps:// URL connects over TLS, verifying the
    broker's certificate and host name (IOT_TLS_CA). A URL without a password (and no stack
    secrets to take it from) is a ConfigError.
    """
    amqp = amqp or settings.amqp
    if not amqp.password:
        raise missing_secret(settings, f"the broker account {amqp.user!r}", "IOT_AMQP_URL (amqp://USER:PASSWORD@...)")
    host = host or amqp.host
    ssl_options = pika.SSLOptions(settings_context(settings), server_hostname=host) if amqp.tls else None
    return pika.ConnectionParameters(
        host=host,
        ssl_options=ssl_options,
        port=port or amqp.port,
        virtual_host=amqp.vhost,
        credentials=pika.PlainCredentials(amqp.user, amqp.password),
        heartbeat=HEARTBEAT_S,
        connection_attempts=1,
        socket_timeout=CONNECT_TIMEOUT_S,
        stack_timeout=CONNECT_TIMEOUT_S * 2,
        blocked_connection_timeout=BLOCKED_CONNECTION_TIMEOUT_S,
        client_properties={"connection_name": f"iot-hub {name}"},
    )


def connect(
    settings: Settings, name: str, *, host: str | None = None, port: int | None = None
) -> pika.BlockingConnection:
    """A connection to the configured vhost, or `BrokerUnavailable` in one line a user can act on.

    IOT_AMQP_URL may list several nodes of a cluster: each is tried in turn (see `_next_start`),
    and only when none answers is the last node's error raised.
    """
    if host is not None or port is not None:
        return _connect_one(settings, name, settings.amqp, host, port)
    urls = settings.amqp_urls
    start = next(_next_start) % len(urls)
    for tried, url in enumerate(urls[start:] + urls[:start], start=1):
        try:
            return _connect_one(settings, name, AmqpParts.parse(url), None, None)
        except BrokerUnavailable:
            if tried == len(urls):
                raise
    raise AssertionError("unreachable: IOT_AMQP_URL names at least one URL")


def _connect_one(
    settings: Settings, name: str, amqp: AmqpParts, host: str | None, port: int | None
) -> pika.BlockingConnection:
    parameters = connection_parameters(settings, name, host=host, port=port, amqp=amqp)
    where = f"{'amqps' if amqp.tls else 'amqp'}://{parameters.host}:{parameters.port}/{amqp.vhost}"
    try:
        # pika reports a refused connection as a bare AMQPConnectionError; the socket says why.
        socket.create_connection((parameters.host, parameters.port), timeout=CONNECT_TIMEOUT_S).close()
        return pika.BlockingConnection(parameters)
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(
            f"RabbitMQ at {where} refused user {amqp.user!r}: check the password in IOT_AMQP_URL "
            f"(unset: the stack's, in {settings.secrets_path})"
        ) from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise BrokerUnavailable(
            f"RabbitMQ at {where} denied user {amqp.user!r} access to vhost {amqp.vhost!r}: check IOT_AMQP_URL"
        ) from None
    except ssl.SSLError as exc:
        raise BrokerUnavailable(f"TLS to RabbitMQ at {where} failed ({exc.reason or exc}): {TLS_HINT}") from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        if amqp.tls and _tls_failure(exc):
            raise BrokerUnavailable(f"TLS to RabbitMQ at {where} failed ({exc}): {TLS_HINT}") from None
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {where} ({reason}): start the stack with `python -m hub stack up`, "
            "or point IOT_AMQP_URL / --amqp-url at your broker"
        ) from None


def _tls_failure(exc: BaseException) -> bool:
    """pika wraps a failed handshake in AMQPConnectionError; the SSL error is in its arguments."""
    return any(isinstance(arg, ssl.SSLError) or "SSL" in repr(arg) for arg in getattr(exc, "args", ()))


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a connection that may already be broken: on the way out, closing is best effort."""
    if connection is not None and connection.is_open:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()
