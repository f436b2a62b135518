"""The fleet's credentials: read from the credentials file, and the missing ones provisioned into it.

The simulator provisions through `python -m hub provision --out FILE`, the same command a
user runs, in a child process: it needs the admin account (IOT_ADMIN_USER, IOT_ADMIN_PASSWORD,
else the stack's generated one) and keeps the simulator free of the hub's management client.
A device whose account exists but whose secret the file lacks is not rotated behind anyone's
back: the error says how to. A device whose secret the file holds and the broker refuses (the
file was made on another broker) gets a new one (`reprovision_refused`): the file's is worthless.
Certificate devices (`ensure_certificates`) are provisioned the same way, with
`--cert --cert-dir FOLDER`, which also needs the stack's CA.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from hub.core.credentials import Credential, lacking, read_credentials
from hub.core.errors import ConfigError
from hub.core.tls import DeviceCert

#: Seconds `python -m hub provision` may take (a thousand devices take a few).
PROVISION_TIMEOUT_S = 120.0


def ensure_credentials(path: Path, devices: list[str], console: Console) -> dict[str, Credential]:
    """Credentials for every one of `devices`, provisioning the ones `path` lacks into it."""
    held = read_credentials(path)
    missing = [device for device in devices if device not in held]
    if not missing:
        return held
    console.print(f"provisioning {len(missing)} devices into {path}")
    _provision("--out", str(path), *missing)
    held = read_credentials(path)
    # Those left had an account already, whose secret only a rotation can bring back.
    lacking(devices, held, path, f"they exist on the broker: python -m hub provision --rotate --out {path} DEVICE...")
    return held


def reprovision_refused(path: Path, refused: list[str], console: Console) -> dict[str, Credential]:
    """New secrets in `path` for the `refused` devices, whose secrets there the broker refused; the whole file."""
    console.print(
        f"the broker refused {len(refused)} devices their credentials in {path} (made on another broker?): "
        "provisioning them again"
    )
    try:
        _provision("--rotate", "--out", str(path), *refused)
    except ConfigError as exc:
        raise ConfigError(
            f"the broker refused {len(refused)} devices their credentials in {path}, and giving them new ones "
            f"failed ({exc}): delete {path} and start again with the broker's admin account at hand "
            "(IOT_ADMIN_PASSWORD, or the stack's secrets file)"
        ) from None
    return read_credentials(path)


def ensure_certificates(folder: Path, devices: list[str], console: Console) -> None:
    """A client certificate in `folder` for every one of `devices`, provisioning certificate devices for the rest."""
    missing = [device for device in devices if not DeviceCert(folder, device).present()]
    if not missing:
        return
    console.print(f"provisioning {len(missing)} certificate devices into {folder}")
    _provision("--cert", "--cert-dir", str(folder), *missing)
    present = {device for device in devices if DeviceCert(folder, device).present()}
    # Those left had an account already: its certificate went elsewhere, or it is a password device.
    remedy = f"they exist on the broker: python -m hub provision --cert --rotate --cert-dir {folder} DEVICE..."
    lacking(devices, present, folder, remedy)


def _provision(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub", "provision", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=PROVISION_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise ConfigError(f"could not provision the devices: {done.stderr.strip() or done.stdout.strip()}")
