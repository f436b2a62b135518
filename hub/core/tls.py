"""TLS on the client side: one way to build the context every AMQP, MQTT and STOMP client uses.

The server's certificate is verified against the configured CA (`Settings.tls_ca_file`), and
its host name against the name the client dialled: a certificate for another host is refused.
A device that logs in with its certificate (`DeviceCert`) presents it in the same context.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from pathlib import Path

from hub.core.config import Settings
from hub.core.errors import ConfigError

#: In a certificate folder: `<device>.pem` (the certificate), `<device>.key` (its key, mode 0600),
#: and the CA that signed them, for convenience.
DEVICE_CERT_SUFFIX = ".pem"
DEVICE_KEY_SUFFIX = ".key"
CERT_DIR_CA_FILE = "ca.pem"
#: The oldest TLS a client speaks, as the broker (rabbitmq/rabbitmq.conf `ssl_options.versions`).
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class DeviceCert:
    """Where one device's client certificate and key are in a certificate folder."""

    folder: Path
    device: str

    @property
    def cert_file(self) -> Path:
        return self.folder / f"{self.device}{DEVICE_CERT_SUFFIX}"

    @property
    def key_file(self) -> Path:
        return self.folder / f"{self.device}{DEVICE_KEY_SUFFIX}"

    def present(self) -> bool:
        return self.cert_file.is_file() and self.key_file.is_file()


@functools.lru_cache(maxsize=16)
def client_context(ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context; `cert_file`/`key_file` add a client certificate (certificate logins).

    One context per set of files, shared: a thousand simulated devices read the CA file once,
    not a thousand times. Nothing changes a context after it is made.
    """
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"IOT_TLS_CA: no CA file at {ca_file}")
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    # Python's default since 3.10, pinned here: the broker accepts nothing older either.
    context.minimum_version = MINIMUM_TLS_VERSION
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def settings_context(settings: Settings) -> ssl.SSLContext:
    """The context for the broker the settings name."""
    return client_context(settings.tls_ca_file)


def device_context(settings: Settings, cert: DeviceCert) -> ssl.SSLContext:
    """The context of a device that logs in with its certificate: it verifies the broker and presents `cert`."""
    if not cert.present():
        raise ConfigError(
            f"no certificate for {cert.device} in {cert.folder} ({cert.cert_file.name}, {cert.key_file.name})"
        )
    return client_context(settings.tls_ca_file, cert.cert_file, cert.key_file)
