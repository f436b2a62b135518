"""The stack's generated secrets: made once (0600), and the rule that gives each account its password."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from hub.clients.amqp import connection_parameters
from hub.clients.management import ManagementAdmin
from hub.core.config import (
    CLUSTER_DIR,
    CLUSTER_STATE_FILE,
    CREDENTIALS_FILE_NAME,
    Settings,
    load_settings,
    with_stack_secrets,
)
from hub.core.errors import ConfigError
from hub.core.secrets import SECRETS_FILE_MODE, SECRETS_FILE_NAME, StackSecrets, ensure_secrets, read_secrets
from hub.demo.view import where_to_look
from hub.stack.influx import account_plan, create_user
from hub.stack.rabbitmq import render_definitions

SECRETS = StackSecrets(
    hub_password="hub-secret",
    admin_password="admin-secret",
    influx_admin_password="influx-admin-secret",
    influx_writer_password="writer-secret",
    influx_reader_password="reader-secret",
)


def test_the_first_start_makes_the_secrets_once_owner_only_and_all_different(tmp_path: Path) -> None:
    path = tmp_path / "stack" / SECRETS_FILE_NAME
    made, new = ensure_secrets(path)
    again, new_again = ensure_secrets(path)
    assert (new, new_again) == (True, False)
    assert again == made == read_secrets(path)
    assert path.stat().st_mode & 0o777 == SECRETS_FILE_MODE
    values = [getattr(made, name) for name in StackSecrets.__struct_fields__]
    assert len(set(values)) == len(values) and all(len(value) >= 32 for value in values)
    assert [p.name for p in path.parent.iterdir()] == [SECRETS_FILE_NAME], "no temporary file is left"


def test_a_stack_folder_without_secrets_reads_as_none_and_a_damaged_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / SECRETS_FILE_NAME
    assert read_secrets(path) is None
    path.write_text('{"hub_password": "x"}')
    with pytest.raises(ConfigError, match=r"is not a secrets file .*stack down --purge"):
        read_secrets(path)


def test_every_password_the_environment_does_not_give_is_the_stacks() -> None:
    settings = with_stack_secrets(Settings(), SECRETS)
    assert (settings.amqp.user, settings.amqp.password) == ("hub", "hub-secret")
    assert (settings.admin_user, settings.admin_password) == ("admin", "admin-secret")
    assert (settings.influx_writer.user, settings.influx_writer.password) == ("writer", "writer-secret")
    assert (settings.influx_reader.user, settings.influx_reader.password) == ("reader", "reader-secret")
    assert (settings.influx_admin.user, settings.influx_admin.password) == ("admin", "influx-admin-secret")
    assert with_stack_secrets(settings, SECRETS) == settings, "resolving twice changes nothing"


def test_every_node_of_a_cluster_url_gets_the_password_and_a_named_user_is_kept() -> None:
    settings = with_stack_secrets(Settings(amqp_url="amqp://ops@n0:5672/iot,amqps://n1:5771/iot"), SECRETS)
    assert settings.amqp_urls == ["amqp://ops:hub-secret@n0:5672/iot", "amqps://hub:hub-secret@n1:5771/iot"]


def test_what_the_environment_gives_wins_over_the_stacks_secrets() -> None:
    given = Settings(
        amqp_url="amqp://hub:mine@localhost:5672/iot",
        admin_password="my-admin",
        influx_user="telegraf",
        influx_password="its-own",
        influx_admin_password="my-influx-admin",
    )
    settings = with_stack_secrets(given, SECRETS)
    assert settings.amqp.password == "mine" and settings.admin_password == "my-admin"
    assert (settings.influx_writer.user, settings.influx_writer.password) == ("telegraf", "its-own")
    # An InfluxDB account of one's own reads too, unless a reader is given.
    assert settings.influx_reader == settings.influx_writer
    assert settings.influx_admin.password == "my-influx-admin"


def test_an_influxdb_token_is_used_to_write_and_to_read() -> None:
    settings = with_stack_secrets(Settings(influx_token="t0ken", influx_org="acme"), SECRETS)
    assert settings.influx_writer.token == settings.influx_reader.token == "t0ken"
    assert settings.influx_writer.user is None


def test_without_secrets_nor_passwords_a_connection_says_where_the_password_comes_from(tmp_path: Path) -> None:
    settings = load_settings(stack_dir=tmp_path)
    assert settings.amqp.password == "" and settings.admin_password is None
    for attempt in (lambda: connection_parameters(settings, "test"), lambda: ManagementAdmin(settings)):
        with pytest.raises(ConfigError) as refused:
            attempt()
        assert str(tmp_path / SECRETS_FILE_NAME) in str(refused.value) and "stack up" in str(refused.value)


def test_load_settings_reads_the_stacks_secrets_file(tmp_path: Path) -> None:
    made, _ = ensure_secrets(tmp_path / SECRETS_FILE_NAME)
    settings = load_settings(stack_dir=tmp_path)
    assert settings.amqp.password == made.hub_password
    assert settings.influx_reader.password == made.influx_reader_password


def _hash_matches(password_hash: str, password: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt[4] + sha256(salt + password))."""
    raw = base64.b64decode(password_hash)
    return raw[4:] == hashlib.sha256(raw[:4] + password.encode()).digest()


def test_the_broker_users_get_hashes_of_the_stacks_passwords_and_the_repository_none(tmp_path: Path) -> None:
    settings = with_stack_secrets(load_settings(stack_dir=tmp_path), SECRETS)
    users = {user["name"]: user["password_hash"] for user in render_definitions(settings)["users"]}
    assert _hash_matches(users["hub"], "hub-secret") and _hash_matches(users["admin"], "admin-secret")
    repository = Path(__file__).resolve().parents[2] / "rabbitmq" / "definitions.json"
    assert all(user["password_hash"] == "" for user in json.loads(repository.read_text())["users"])
    with pytest.raises(ConfigError, match="no password for the hub's broker account"):
        render_definitions(load_settings(stack_dir=tmp_path))


def test_influxdb_accounts_get_only_the_right_they_need() -> None:
    plan = account_plan(with_stack_secrets(Settings(), SECRETS))
    assert plan.admin.user == "admin"
    assert [(login.user, right) for login, right in plan.grants] == [("writer", "WRITE"), ("reader", "READ")]
    one = account_plan(with_stack_secrets(Settings(influx_user="solo", influx_password="pw"), SECRETS))
    assert [(login.user, right) for login, right in one.grants] == [("solo", "ALL")]


def test_account_names_and_passwords_are_quoted_in_influxql() -> None:
    [(writer, _), _reader] = account_plan(with_stack_secrets(Settings(influx_password="it's\\"), SECRETS)).grants
    assert create_user(writer) == "CREATE USER \"writer\" WITH PASSWORD 'it\\'s\\\\'"


def test_a_cluster_keeps_its_device_credentials_apart_from_the_single_node(tmp_path: Path) -> None:
    settings = load_settings(stack_dir=tmp_path)
    assert settings.credentials_path == tmp_path / CREDENTIALS_FILE_NAME
    (tmp_path / CLUSTER_STATE_FILE).write_text("{}")  # `stack up --nodes N` runs in this folder
    assert settings.credentials_path == tmp_path / CLUSTER_DIR / CREDENTIALS_FILE_NAME
    chosen = tmp_path / "mine.json"
    assert load_settings(stack_dir=tmp_path, credentials_file=chosen).credentials_path == chosen


def test_the_demo_says_where_the_passwords_live_never_what_they_are(tmp_path: Path) -> None:
    settings = with_stack_secrets(load_settings(stack_dir=tmp_path), SECRETS)
    shown = "\n".join(where_to_look(settings, SECRETS, docker=True, logs=tmp_path, metrics_port=9108))
    assert str(tmp_path / SECRETS_FILE_NAME) in shown and "user hub" in shown and "curl -u reader" in shown
    assert not any(getattr(SECRETS, name) in shown for name in StackSecrets.__struct_fields__)
    own = with_stack_secrets(load_settings(stack_dir=tmp_path, amqp_url="amqp://hub:mine@localhost/iot"), SECRETS)
    assert "the one in IOT_AMQP_URL" in "\n".join(where_to_look(own, SECRETS, docker=False, logs=tmp_path))
