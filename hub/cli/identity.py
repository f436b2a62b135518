"""`python -m hub provision|revoke`: give devices their own broker credential, or take it away."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import msgspec
from rich.console import Console

from hub.control.identity import provision as provision_devices
from hub.control.identity import revoke as revoke_devices
from hub.core.config import load_settings
from hub.core.credentials import forget_credentials, merge_credentials

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
def provision(devices: tuple[str, ...], out: Path | None, rotate: bool) -> None:
    """Create a broker account per device: username = device id, a random secret shown once.

    Each account may publish only its own telemetry, status and acks and subscribe only to its
    own commands. Uses the admin account (IOT_ADMIN_USER, IOT_ADMIN_PASSWORD) and the management
    API (IOT_MANAGEMENT_PORT). A device that exists keeps its secret unless --rotate.

    \b
    Examples:
      python -m hub provision env-0001 --out env-0001.json
      python -m hub provision $(seq -f 'dev-%04g' 1 1000) --out fleet.json
    """
    settings = load_settings()
    console = _console()
    started = time.monotonic()
    result = provision_devices(settings, devices, rotate=rotate)
    elapsed = time.monotonic() - started
    for device in result.existing:
        console.print(f"{device}: exists, secret kept (--rotate gives it a new one)")
    new = len(result.issued) - len(result.rotated)
    console.print(f"{new} created, {len(result.rotated)} rotated, {len(result.existing)} kept in {elapsed:.2f} s")
    if not result.issued:
        return
    if out is not None:
        merge_credentials(out, result.issued)
        console.print(f"credentials written to {out} (mode 0600)")
    else:
        document = {device: msgspec.structs.asdict(c) for device, c in result.issued.items()}
        click.echo(json.dumps(document, indent=2))


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
