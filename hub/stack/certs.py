"""The development certificate authority: a CA, the node's server certificate, device certificates.

Pure issuing code on top of `cryptography` (no `openssl` command): `stack up` calls
`ensure_dev_tls` once per stack folder and reuses what it finds there on later ups; the same CA
signs device client certificates (`issue_device_cert`, CN = device id) for certificate logins.
Private keys are written with mode 0600, before any byte of them reaches the disk.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.core.config import DEV_TLS_DIR, Settings
from hub.core.contract import require_identifier
from hub.core.errors import ConfigError, StackError
from hub.core.tls import CERT_DIR_CA_FILE, DeviceCert

#: The development CA lives ten years: long enough never to expire under a laptop's stack.
CA_VALID_DAYS = 3650
#: Server and device certificates: about two years (within what browsers and clients accept).
LEAF_VALID_DAYS = 825
#: Certificates start a little in the past, so a clock slightly behind still accepts them.
BACKDATE = datetime.timedelta(minutes=5)
#: A file holding a private key: readable and writable by its owner only.
KEY_MODE = 0o600
#: The user the official rabbitmq image runs the server as: it must be able to read server.key.
DOCKER_RABBITMQ_UID = 999
#: Where docker-compose.yml mounts the certificates from (relative to the checkout).
COMPOSE_TLS_DIR = Path(".stack") / "tls"
CA_NAME = "IoT hub development CA"
SERVER_NAME = "IoT hub RabbitMQ node"

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"


@dataclass(frozen=True)
class TlsFiles:
    """Where one stack's CA and server certificate are (the paths RabbitMQ's ssl_options name)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / CA_CERT_FILE

    @property
    def ca_key(self) -> Path:
        return self.folder / CA_KEY_FILE

    @property
    def server_cert(self) -> Path:
        return self.folder / SERVER_CERT_FILE

    @property
    def server_key(self) -> Path:
        return self.folder / SERVER_KEY_FILE

    def complete(self) -> bool:
        return all(path.is_file() for path in (self.ca_cert, self.ca_key, self.server_cert, self.server_key))


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, in PEM."""

    cert_pem: bytes
    key_pem: bytes


def server_names() -> list[str]:
    """The names a client on this machine may use for the node: loopback in every form, and the host name."""
    names = ["localhost", "127.0.0.1", "::1"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    return names


def ensure_dev_tls(folder: Path, names: list[str] | None = None) -> TlsFiles:
    """The development CA and server certificate under `folder`: made once, reused on every later call."""
    files = TlsFiles(folder)
    if files.complete():
        return files
    folder.mkdir(parents=True, exist_ok=True)
    ca = issue_ca()
    server = issue_server_cert(ca, names or server_names())
    write_key(files.ca_key, ca.key_pem)
    files.ca_cert.write_bytes(ca.cert_pem)
    write_key(files.server_key, server.key_pem)
    # The chain a server presents: its own certificate; the CA is in ssl_options.cacertfile.
    files.server_cert.write_bytes(server.cert_pem)
    return files


def ensure_compose_tls(checkout: Path) -> TlsFiles:
    """The certificates docker-compose.yml mounts; as root, server.key goes to the image's rabbitmq user."""
    files = ensure_dev_tls(checkout / COMPOSE_TLS_DIR)
    if os.geteuid() == 0:
        os.chown(files.server_key, DOCKER_RABBITMQ_UID, -1)
    return files


def issue_ca(common_name: str = CA_NAME) -> Issued:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(name, name, key.public_key(), CA_VALID_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(_pem(builder.sign(key, hashes.SHA256())), _key_pem(key))


def issue_server_cert(ca: Issued, names: list[str]) -> Issued:
    """A TLS server certificate for `names` (DNS names or IP addresses) signed by `ca`."""
    if not names:
        raise StackError("a server certificate needs at least one name")
    return _issue_leaf(ca, SERVER_NAME, _subject_alt_names(names), ExtendedKeyUsageOID.SERVER_AUTH)


def issue_device_cert(ca: Issued, device_id: str) -> Issued:
    """A TLS client certificate whose CN is `device_id` (the user name RabbitMQ's ssl_cert_login takes)."""
    return _issue_leaf(ca, require_identifier(device_id, "device id"), None, ExtendedKeyUsageOID.CLIENT_AUTH)


def load_ca(files: TlsFiles) -> Issued:
    """The stack's CA, to sign more certificates with."""
    return Issued(files.ca_cert.read_bytes(), files.ca_key.read_bytes())


def stack_ca(settings: Settings) -> Issued:
    """The development CA of the stack folder (IOT_STACK_DIR), which the broker trusts for client certificates."""
    files = TlsFiles(settings.stack_path / DEV_TLS_DIR)
    if not (files.ca_cert.is_file() and files.ca_key.is_file()):
        raise ConfigError(f"no development CA in {files.folder}: `python -m hub stack up` makes it")
    return load_ca(files)


def write_device_cert(ca: Issued, device_id: str, folder: Path) -> DeviceCert:
    """Issue `device_id` a client certificate and write it, its key (0600) and the CA's certificate to `folder`."""
    issued = issue_device_cert(ca, device_id)
    cert = DeviceCert(folder, device_id)
    folder.mkdir(parents=True, exist_ok=True)
    write_key(cert.key_file, issued.key_pem)
    cert.cert_file.write_bytes(issued.cert_pem)
    (folder / CERT_DIR_CA_FILE).write_bytes(ca.cert_pem)
    return cert


def write_key(path: Path, key_pem: bytes) -> None:
    """Write a private key that is never readable by others, not even for a moment."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_pem)


# --- helpers -------------------------------------------------------------------------------------


def _issue_leaf(
    ca: Issued, common_name: str, alt_names: x509.SubjectAlternativeName | None, usage: x509.ObjectIdentifier
) -> Issued:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise StackError("the CA key must be an EC key")
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), LEAF_VALID_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    return Issued(_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _subject_alt_names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: small, fast handshakes, and every TLS stack in use (Erlang, OpenSSL, mbedTLS) speaks it.
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
