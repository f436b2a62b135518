"""Device credentials and the JSON file that holds them: `{"<device>": {"username": ..., "password": ...}}`.

`python -m hub provision --out FILE` writes it and the simulator reads it. The file holds
secrets, so it is written with mode 0600 (created that way, never readable by others even
for a moment) and replaced atomically, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Container, Mapping
from pathlib import Path

import msgspec

from hub.core.errors import ConfigError

#: Owner read/write only: the file holds device secrets.
CREDENTIALS_FILE_MODE = 0o600
#: How many device ids an error message names before "…".
IDS_SHOWN = 5


class Credential(msgspec.Struct, frozen=True):
    """A device's broker login: its username is its device id."""

    username: str
    password: str


def read_credentials(path: Path) -> dict[str, Credential]:
    """The credentials in `path`, by device id; an empty dict when the file does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the credentials file {path}: {exc.strerror}") from None
    try:
        return msgspec.json.decode(raw, type=dict[str, Credential])
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path} is not a credentials file ({exc})") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path} is not JSON ({exc})") from None


def lacking(devices: list[str], credentials: Container[str], path: Path, remedy: str) -> None:
    """A ConfigError naming (some of) the devices without a credential in `credentials`, read from `path`."""
    missing = [device for device in devices if device not in credentials]
    if missing:
        shown = " ".join(missing[:IDS_SHOWN]) + (" …" if len(missing) > IDS_SHOWN else "")
        raise ConfigError(f"{len(missing)} devices have no credential in {path} ({shown}): {remedy}")


def merge_credentials(path: Path, new: Mapping[str, Credential]) -> dict[str, Credential]:
    """Write `new` over what `path` holds (other devices kept), mode 0600; returns the whole file."""
    merged = {**read_credentials(path), **new}
    _write(path, merged)
    return merged


def check_writable(path: Path) -> None:
    """A `ConfigError` now if `merge_credentials(path, ...)` would fail: the file is not a credentials
    file, cannot be read, or its folder cannot take a new file. For callers that must not create
    anything (a device account whose secret is shown once) before they know they can keep it."""
    if path.is_dir():
        raise ConfigError(f"cannot write the credentials file {path}: it is a folder")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"cannot write the credentials file {path}: {path.parent} is not a folder")
    read_credentials(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write the credentials file {path}: {exc.strerror}") from None
    os.close(descriptor)
    Path(probe).unlink()


def forget_credentials(path: Path, devices: list[str]) -> None:
    """Drop `devices` from the file at `path`, if it holds them (after a revoke their secrets are worthless)."""
    held = read_credentials(path)
    if any(device in held for device in devices):
        _write(path, {device: credential for device, credential in held.items() if device not in devices})


def _write(path: Path, credentials: Mapping[str, Credential]) -> None:
    document = {device: msgspec.structs.asdict(credential) for device, credential in sorted(credentials.items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, CREDENTIALS_FILE_MODE)
        with os.fdopen(descriptor, "w") as out:
            json.dump(document, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
