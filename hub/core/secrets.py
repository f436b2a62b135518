"""The stack's generated secrets: one JSON file in the stack folder, `secrets.json`, mode 0600.

    secrets, made = ensure_secrets(stack_folder / SECRETS_FILE_NAME)   # `stack up`: once, then kept
    secrets = read_secrets(path)                                        # every process: None if absent

The first `python -m hub stack up` makes it; from then on the hub, the CLI, the simulator, the
demo and the tests find every account's password there with no set-up (`load_settings` reads
it). An IOT_* variable still wins over it, for a deployment with secrets of its own.

It holds the passwords of the broker's hub and admin accounts and of InfluxDB's three accounts:
the admin (the stack creates the database and the other accounts with it), the writer (the
hub) and the reader (the CLI, the fleet view, the dashboards). No password the repository,
the README or a banner shows works anywhere: each stack has its own, random ones.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import msgspec

from hub.core.errors import ConfigError

SECRETS_FILE_NAME = "secrets.json"
#: Owner read/write only: the file holds every account's password.
SECRETS_FILE_MODE = 0o600
#: Bytes of randomness per secret (URL-safe base64: 32 characters).
SECRET_BYTES = 24

#: The accounts' names (each overridable by its IOT_* variable, like the passwords).
HUB_USER = "hub"
ADMIN_USER = "admin"
INFLUX_ADMIN_USER = "admin"
INFLUX_WRITER_USER = "writer"
INFLUX_READER_USER = "reader"


class StackSecrets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The passwords of a stack's accounts."""

    hub_password: str
    admin_password: str
    influx_admin_password: str
    influx_writer_password: str
    influx_reader_password: str


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def generate_secrets() -> StackSecrets:
    return StackSecrets(*(new_secret() for _ in StackSecrets.__struct_fields__))


def read_secrets(path: Path) -> StackSecrets | None:
    """The secrets in `path`, or None when the file does not exist (no stack was started there yet)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the stack's secrets file {path}: {exc.strerror}") from None
    try:
        return msgspec.json.decode(raw, type=StackSecrets)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(
            f"{path} is not a secrets file ({exc}): restore it, or delete it and the stack's data "
            "(`python -m hub stack down --purge`) to start afresh"
        ) from None


def ensure_secrets(path: Path) -> tuple[StackSecrets, bool]:
    """The secrets in `path`, made first if the file does not exist; True when they were made now.

    Made once and atomically: written with mode 0600 from the start into a temporary file and
    linked into place only if nothing is there, so two `stack up` at once agree on one set.
    """
    held = read_secrets(path)
    if held is not None:
        return held, False
    made = generate_secrets()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, SECRETS_FILE_MODE)
        with os.fdopen(descriptor, "wb") as out:
            out.write(msgspec.json.format(msgspec.json.encode(made), indent=2) + b"\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            # Another start made them first: theirs it is.
            return ensure_secrets(path)[0], False
    finally:
        Path(temporary).unlink(missing_ok=True)
    return made, True
