"""`python -m hub provision|revoke`: give devices their own broker credential, or take it away."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import msgspec
from rich.console import Console
from rich.text import Text

from hub.control.identity import checked_devices
from hub.control.identity import impostors as impostors_of
from hub.control.identity import provision as provision_devices
from hub.control.identity import revoke as revoke_devices
from hub.core.config import load_settings
from hub.core.credentials import check_writable, forget_credentials, merge_credentials
from hub.core.errors import ConfigError
from hub.core.printable import printable
from hub.stack.certs import stack_ca, write_device_cert

#: `hub impostors`'s exit code when it found some (0: none), so a cron job or a probe can alert on it.
IMPOSTORS_FOUND = 1

_DEVICES = click.argument("devices", nargs=-1, required=True, metavar="DEVICE...")


def _console() -> Console:
    return Console(file=sys.stderr, highlight=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_DEVICES
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write (merge) the new credentials into this JSON file (mode 0600) instead of printing them.",
)
@click.option(
    "--rotate", is_flag=True, help="Give devices that already exist a new secret (the old one stops working)."
)
@click.option(
    "--cert",
    is_flag=True,
    help="Certificate devices: no password; each gets a client certificate (CN = its id) signed by the stack's CA.",
)
@click.option(
    "--cert-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --cert: write DEVICE.pem, DEVICE.key (mode 0600) and ca.pem into this folder.",
)
def provision(devices: tuple[str, ...], out: Path | None, rotate: bool, cert: bool, cert_dir: Path | None) -> None:
    """Create a broker account per device: username = device id, a random secret shown once.

    Each account may publish only its own telemetry, status and acks and subscribe only to its
    own commands. Uses the admin account (IOT_ADMIN_USER, IOT_ADMIN_PASSWORD) and the management
    API (IOT_MANAGEMENT_PORT). A device that exists keeps its secret unless --rotate.

    With --cert the account has no password: the device logs in over MQTTS or STOMP over TLS
    with the certificate written to --cert-dir, signed by the development CA of IOT_STACK_DIR.

    \b
    Examples:
      python -m hub provision env-0001 --out env-0001.json
      python -m hub provision $(seq -f 'dev-%04g' 1 1000) --out fleet.json
      python -m hub provision cam-0001 --cert --cert-dir certs/
    """
    if cert and (cert_dir is None or out is not None):
        raise click.UsageError("--cert writes certificates to --cert-dir DIR (and no passwords to --out)")
    if cert_dir is not None and not cert:
        raise click.UsageError("--cert-dir goes with --cert")
    settings = load_settings()
    console = _console()
    started = time.monotonic()
    if out is not None:  # a secret is shown once: before any account exists, make sure it can be kept
        check_writable(out)
    if cert_dir is not None:
        # Everything that can refuse the call does so before any account exists.
        wanted = checked_devices(devices)
        ca = stack_ca(settings)
        _writable_folder(cert_dir)
        result = provision_devices(settings, wanted, rotate=rotate, certificate=True)
        for device in result.certified:
            write_device_cert(ca, device, cert_dir)
    else:
        result = provision_devices(settings, devices, rotate=rotate)
    elapsed = time.monotonic() - started
    for device in result.existing:
        console.print(
            f"{device}: exists, {'certificate' if cert else 'secret'} kept (--rotate gives it a new one),"
            " permissions brought up to date"
        )
    new = len(result.issued) + len(result.certified) - len(result.rotated)
    console.print(f"{new} created, {len(result.rotated)} rotated, {len(result.existing)} kept in {elapsed:.2f} s")
    if result.certified:
        console.print(f"certificates written to {cert_dir} (DEVICE.pem, DEVICE.key mode 0600, ca.pem)")
    if not result.issued:
        return
    document = {device: msgspec.structs.asdict(c) for device, c in result.issued.items()}
    if out is None:
        click.echo(json.dumps(document, indent=2))
        return
    try:
        merge_credentials(out, result.issued)
    except (ConfigError, OSError) as exc:  # changed since the check: the secrets must not be lost
        click.echo(json.dumps(document, indent=2))
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"could not write {out} ({reason}): the credentials are printed above instead") from None
    console.print(f"credentials written to {out} (mode 0600)")


def _writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the certificate folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to the certificate folder {folder}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_DEVICES
@click.option(
    "--credentials",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also drop the devices from this credentials file [IOT_CREDENTIALS_FILE, STACK_DIR/devices.json].",
)
def revoke(devices: tuple[str, ...], credentials: Path | None) -> None:
    """Delete the devices' broker accounts and close their open connections now.

    \b
    Example:
      python -m hub revoke env-0001
    """
    settings = load_settings(credentials_file=credentials)
    console = _console()
    result = revoke_devices(settings, devices)
    for device in result.unknown:
        console.print(f"{device}: no such device account")
    console.print(f"{len(result.deleted)} revoked, {result.connections_closed} connections closed")
    forget_credentials(settings.credentials_path, result.deleted)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--close", is_flag=True, help="Close the connections found (the device whose id they use can reconnect).")
def impostors(close: bool) -> None:
    """List device accounts connected over MQTT under another device's client id.

    Such a client gets no commands and publishes only as itself, but its CONNECT takes over the
    session of the device whose id it uses. The stack's broker auth service refuses it at login;
    this is the audit for a broker that runs without it. Exit code 0 when none
    is connected, 1 when some are (after closing them, with --close); `hub revoke` the account if
    its credential is stolen. Uses the admin account, like `provision`.

    \b
    Example:
      python -m hub impostors --close
    """
    settings = load_settings()
    console = _console()
    found = impostors_of(settings, close=close)
    for impostor in found:
        action = "closed" if close else "connected"
        # The client id is the client's own choice: shown escaped, never read as markup.
        line = f"{impostor.user}: {action} under client id {impostor.client_id!r} ({impostor.connection})"
        console.print(Text(printable(line)))
    console.print(f"{len(found)} impostor connection(s)" + (" closed" if close and found else ""))
    if found:
        sys.exit(IMPOSTORS_FOUND)
