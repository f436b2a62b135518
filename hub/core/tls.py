"""TLS on the client side: one way to build the context every AMQP, MQTT and STOMP client uses.

The server's certificate is verified against the configured CA (`Settings.tls_ca_file`), and
its host name against the name the client dialled: a certificate for another host is refused.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from hub.core.config import Settings
from hub.core.errors import ConfigError


@functools.lru_cache(maxsize=16)
def client_context(ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context; `cert_file`/`key_file` add a client certificate (certificate logins).

    One context per set of files, shared: a thousand simulated devices read the CA file once,
    not a thousand times. Nothing changes a context after it is made.
    """
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"IOT_TLS_CA: no CA file at {ca_file}")
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def settings_context(settings: Settings) -> ssl.SSLContext:
    """The context for the broker the settings name."""
    return client_context(settings.tls_ca_file)
