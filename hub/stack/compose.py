"""The stack's secrets as docker compose takes them: files under `<stack folder>/compose/`.

    python -m hub stack certs --key-owner 999     # writes these beside the TLS files

docker-compose.yml mounts or reads them; nothing secret is in the repository:

- `definitions.json`: rabbitmq/definitions.json with the hub's and the admin's passwords
  (as hashes), rendered like the native node's (`render_definitions`);
- `influxdb.env`: the influxdb image's variables: authentication on, and its admin, writer and
  reader accounts, which the image makes at its first start on an empty volume;
- `chronograf.env`: the reader's account, which dashboards/influxdb.src names by variable
  (Chronograf renders its resource files with its environment);
- `retention.iql`: the retention policies and roll-up queries of IOT_RETENTION_* (no secret),
  which the one-shot service influxdb-retention runs as the admin (influxdb/retention.sh).

Every file is mode 0600; the broker in its container runs as another user, so `--key-owner`
gives it definitions.json as it does server.key.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hub.core.config import Settings, with_stack_secrets
from hub.core.errors import StackError
from hub.core.retention import RetentionPlan
from hub.core.secrets import ensure_secrets
from hub.stack.influx import account_plan
from hub.stack.rabbitmq import render_definitions

COMPOSE_DIR = "compose"
DEFINITIONS_FILE = "definitions.json"
INFLUXDB_ENV_FILE = "influxdb.env"
CHRONOGRAF_ENV_FILE = "chronograf.env"
RETENTION_FILE = "retention.iql"
#: The mark influxdb/retention.sh reads: the statement on this line may fail.
MAY_FAIL_MARK = "?"
#: The variables dashboards/influxdb.src reads the reader's account from.
CHRONOGRAF_USER_VARIABLE = "INFLUX_READER_USER"
CHRONOGRAF_PASSWORD_VARIABLE = "INFLUX_READER_PASSWORD"
SECRET_FILE_MODE = 0o600


@dataclass(frozen=True)
class ComposeFiles:
    folder: Path

    @property
    def definitions(self) -> Path:
        return self.folder / DEFINITIONS_FILE

    @property
    def influxdb_env(self) -> Path:
        return self.folder / INFLUXDB_ENV_FILE

    @property
    def chronograf_env(self) -> Path:
        return self.folder / CHRONOGRAF_ENV_FILE

    @property
    def retention(self) -> Path:
        return self.folder / RETENTION_FILE


def influxdb_environment(settings: Settings) -> dict[str, str]:
    """The influxdb image's variables for the accounts of `settings` (the image grants WRITE and READ)."""
    plan = account_plan(settings)
    if len(plan.grants) != 2:
        raise StackError("docker compose's InfluxDB needs a reader apart from the writer (IOT_INFLUX_READER_USER)")
    (writer, _), (reader, _) = plan.grants
    return {
        "INFLUXDB_HTTP_AUTH_ENABLED": "true",
        "INFLUXDB_ADMIN_USER": plan.admin.user,
        "INFLUXDB_ADMIN_PASSWORD": plan.admin.password,
        "INFLUXDB_WRITE_USER": writer.user,
        "INFLUXDB_WRITE_USER_PASSWORD": writer.password,
        "INFLUXDB_READ_USER": reader.user,
        "INFLUXDB_READ_USER_PASSWORD": reader.password,
    }


def chronograf_environment(settings: Settings) -> dict[str, str]:
    """Chronograf's: the reader only (it never writes, and needs no admin)."""
    influx = influxdb_environment(settings)
    return {
        CHRONOGRAF_USER_VARIABLE: influx["INFLUXDB_READ_USER"],
        CHRONOGRAF_PASSWORD_VARIABLE: influx["INFLUXDB_READ_USER_PASSWORD"],
    }


def retention_file(plan: RetentionPlan) -> str:
    """The plan's statements one a line for influxdb/retention.sh, those that may fail marked."""
    lines = [f"# {RETENTION_FILE}: rendered by `python -m hub stack certs` from IOT_RETENTION_*; run by retention.sh"]
    for statement in plan.statements():
        if "\n" in statement.text:
            raise StackError(f"a retention statement spans lines: {statement.text!r}")
        lines.append((MAY_FAIL_MARK if statement.may_fail else "") + statement.text)
    return "\n".join(lines) + "\n"


def env_file(variables: dict[str, str]) -> str:
    """`NAME=value` lines, as compose's env_file reads them (generated values need no quoting)."""
    for name, value in variables.items():
        if any(c in value for c in "\n\"'$ #\\"):
            raise StackError(f"{name} holds a character docker compose's env_file would read otherwise")
    return "".join(f"{name}={value}\n" for name, value in variables.items())


def write_compose_files(settings: Settings, folder: Path, key_owner: int | None = None) -> ComposeFiles:
    """Every file of the module's docstring, written anew into `folder` (mode 0600)."""
    files = ComposeFiles(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(files.definitions, json.dumps(render_definitions(settings), indent=2) + "\n")
    _write_private(files.influxdb_env, env_file(influxdb_environment(settings)))
    _write_private(files.chronograf_env, env_file(chronograf_environment(settings)))
    _write_private(files.retention, retention_file(settings.retention))
    if key_owner is not None:
        try:
            os.chown(files.definitions, key_owner, -1)
        except PermissionError:
            raise StackError(
                f"only root may give {files.definitions} to user {key_owner}: run `sudo chown {key_owner} "
                f"{files.definitions}`"
            ) from None
    return files


def _write_private(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, SECRET_FILE_MODE)
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def ensure_compose_secrets(settings: Settings, key_owner: int | None = None) -> ComposeFiles:
    """The stack's secrets (made first if it has none) rendered into `<stack folder>/compose/`.

    An IOT_* value in `settings` wins over the secrets file, as it does for the hub on the host.
    """
    secrets, _made = ensure_secrets(settings.secrets_path)
    return write_compose_files(with_stack_secrets(settings, secrets), settings.stack_path / COMPOSE_DIR, key_owner)
