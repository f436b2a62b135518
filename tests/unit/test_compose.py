"""docker-compose.yml, checked without a Docker engine: pinned tags, contract ports, real files."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from hub.core.config import load_settings
from hub.core.secrets import SECRETS_FILE_MODE, read_secrets
from hub.stack.certs import CA_CERT_FILE, COMPOSE_TLS_DIR, SERVER_CERT_FILE, SERVER_KEY_FILE
from hub.stack.cluster import NODE_PORT_OFFSET
from hub.stack.compose import (
    CHRONOGRAF_PASSWORD_VARIABLE,
    CHRONOGRAF_USER_VARIABLE,
    COMPOSE_DIR,
    MAY_FAIL_MARK,
    ensure_compose_secrets,
    retention_file,
)
from hub.stack.rabbitmq import ADVANCED_CONFIG_AUTHZ
from tests.support import REPO

CONTRACT_PORTS = {
    "rabbitmq": {5672, 1883, 61613, 5671, 8883, 61614, 15672},
    "influxdb": {8086},
    "chronograf": {8888},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


#: Plain listeners: published on the host's loopback only. TLS listeners: on every interface.
PLAIN_PORTS = {5672, 1883, 61613}
TLS_PORTS = {5671, 8883, 61614}


def _bindings(service: dict[str, Any]) -> dict[int, str]:
    """Published container port -> the host address it is bound to ("" = every interface)."""
    ports = {}
    for entry in service.get("ports", []):
        address, host, container = ["", *str(entry).split(":")][-3:]
        assert host == container, f"{entry}: host and container ports should match the contract"
        ports[int(container)] = address
    return ports


def _published(service: dict[str, Any]) -> set[int]:
    return set(_bindings(service))


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            mounts.append((source, target))
    return mounts


def test_every_image_tag_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        _repository, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.match(r"^\d+(\.\d+)+", tag), f"{name}: {image} is not pinned"
    assert re.match(r"^4\.\d+\.\d+-management$", compose["services"]["rabbitmq"]["image"].split(":")[1])
    assert compose["services"]["influxdb"]["image"] == "influxdb:1.11"
    assert compose["services"]["chronograf"]["image"] == "chronograf:1.10"


def test_ports_are_the_contracts(compose: dict[str, Any]) -> None:
    for name, wanted in CONTRACT_PORTS.items():
        assert wanted <= _published(compose["services"][name]), name


def test_plain_listeners_are_published_on_loopback_only_and_tls_everywhere(compose: dict[str, Any]) -> None:
    bindings = _bindings(compose["services"]["rabbitmq"])
    assert {port: bindings[port] for port in PLAIN_PORTS} == dict.fromkeys(PLAIN_PORTS, "127.0.0.1")
    assert {port: bindings[port] for port in TLS_PORTS} == dict.fromkeys(TLS_PORTS, "")
    conf = (REPO / "rabbitmq" / "rabbitmq.conf").read_text()
    for key, port in (("listeners.ssl", 5671), ("mqtt.listeners.ssl", 8883), ("stomp.listeners.ssl", 61614)):
        assert re.search(rf"(?m)^{re.escape(key)}\.default = {port}$", conf), key


CHRONOGRAF_PORT = 8888


def _open_to_the_network() -> set[int]:
    """What may be published beyond the host's loopback: every node's TLS listeners, and Chronograf."""
    tls = {port + index * NODE_PORT_OFFSET for port in TLS_PORTS for index in range(len(CLUSTER_NODES))}
    return tls | {CHRONOGRAF_PORT}


def test_only_tls_listeners_and_chronograf_are_published_beyond_loopback(compose: dict[str, Any]) -> None:
    allowed = _open_to_the_network()
    for name, service in compose["services"].items():
        for port, address in _bindings(service).items():
            if address != "127.0.0.1":
                assert port in allowed, f"{name} publishes {port} on {address or 'every interface'}"


def test_the_http_apis_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for index, name in enumerate(CLUSTER_NODES):
        shift = index * NODE_PORT_OFFSET
        bindings = _bindings(services[name])
        # management API (it carries the admin password) and Prometheus endpoint: plain HTTP
        assert bindings[15672 + shift] == bindings[15692 + shift] == "127.0.0.1", name
    assert _bindings(services["influxdb"]) == {8086: "127.0.0.1"}
    assert _bindings(services["chronograf"]) == {CHRONOGRAF_PORT: ""}


def test_rabbitmq_reads_the_certificates_stack_certs_makes(compose: dict[str, Any]) -> None:
    mounts = {source: target for source, target in _bind_mounts(compose["services"]["rabbitmq"])}
    folder = mounts[f"./{COMPOSE_TLS_DIR}"]
    conf = (REPO / "rabbitmq" / "rabbitmq.conf").read_text()
    for option, name in (("cacertfile", CA_CERT_FILE), ("certfile", SERVER_CERT_FILE), ("keyfile", SERVER_KEY_FILE)):
        assert re.search(rf"(?m)^ssl_options\.{option} = {re.escape(folder)}/{name}$", conf), option


#: Services that run once and exit (compose's `restart: "no"`): they wait for a healthy server instead.
ONE_SHOT_SERVICES = {"influxdb-retention"}


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT_SERVICES:
            assert service["restart"] == "no", name
            assert all(d["condition"] == "service_healthy" for d in service["depends_on"].values()), name
            continue
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert check.get("interval") and check.get("retries"), name


#: What `python -m hub stack certs` makes under the checkout's .stack/ (never committed: secrets).
MADE_BY_STACK_CERTS = f"./{COMPOSE_TLS_DIR.parent}/"
COMPOSE_FILES = f"./{COMPOSE_TLS_DIR.parent / COMPOSE_DIR}"


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, _target in _bind_mounts(service):
            if source.startswith(MADE_BY_STACK_CERTS):
                continue  # made by `python -m hub stack certs`, never committed (keys and passwords)
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_rabbitmq_uses_the_same_files_as_the_native_launcher(compose: dict[str, Any]) -> None:
    mounts = dict(_bind_mounts(compose["services"]["rabbitmq"]))
    definitions = f"{COMPOSE_FILES}/definitions.json"  # rabbitmq/definitions.json, rendered with the secrets
    assert {"./rabbitmq/rabbitmq.conf", "./rabbitmq/enabled_plugins", definitions} <= set(mounts)
    conf = (REPO / "rabbitmq" / "rabbitmq.conf").read_text()
    [definitions_path] = re.findall(r"(?m)^load_definitions\s*=\s*(\S+)$", conf)
    assert mounts[definitions] == definitions_path
    assert mounts["./rabbitmq/enabled_plugins"] == "/etc/rabbitmq/enabled_plugins"
    plugins = (REPO / "rabbitmq" / "enabled_plugins").read_text()
    for plugin in (
        "rabbitmq_management",
        "rabbitmq_mqtt",
        "rabbitmq_stomp",
        "rabbitmq_prometheus",
        "rabbitmq_consistent_hash_exchange",  # iot.telemetry, the partitions' exchange
    ):
        assert plugin in plugins


def test_influxdb_and_chronograf_are_wired_together(compose: dict[str, Any]) -> None:
    services = compose["services"]
    influx_mounts = dict(_bind_mounts(services["influxdb"]))
    assert influx_mounts["./influxdb/influxdb.conf"] == "/etc/influxdb/influxdb.conf"
    assert services["influxdb"]["environment"]["INFLUXDB_DB"] == "telemetry"
    assert services["chronograf"]["depends_on"]["influxdb"]["condition"] == "service_healthy"
    resources = dict((target, source) for source, target in _bind_mounts(services["chronograf"]))
    sources_dir = REPO / resources["/usr/share/chronograf/resources"]
    [source] = [json.loads(path.read_text()) for path in sources_dir.glob("*.src")]
    assert source["url"] == "http://influxdb:8086"
    assert source["telegraf"] == "telemetry"


def test_no_password_in_the_repository_logs_in_to_the_compose_stack(compose: dict[str, Any]) -> None:
    """The broker's users have no password hash in the repository; InfluxDB's accounts and
    Chronograf's come from the files `stack certs` renders; InfluxDB's own file turns logins on."""
    users = json.loads((REPO / "rabbitmq" / "definitions.json").read_text())["users"]
    assert users and all(user["password_hash"] == "" for user in users)
    assert re.search(r"(?m)^\[http\][^\[]*^\s*auth-enabled = true$", (REPO / "influxdb/influxdb.conf").read_text())
    services = compose["services"]
    assert services["influxdb"]["env_file"] == [f"{COMPOSE_FILES}/influxdb.env"]
    assert services["chronograf"]["env_file"] == [f"{COMPOSE_FILES}/chronograf.env"]
    for node in CLUSTER_NODES:
        mounts = dict(_bind_mounts(services[node]))
        assert mounts[f"{COMPOSE_FILES}/definitions.json"] == "/etc/rabbitmq/definitions.json"
    assert "PASSWORD" not in json.dumps(services["influxdb"].get("environment", {})).upper()


def _env_file(path: Any) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_stack_certs_renders_the_secrets_compose_reads(tmp_path: Any) -> None:
    settings = load_settings(stack_dir=tmp_path)
    files = ensure_compose_secrets(settings)
    secrets = read_secrets(settings.secrets_path)
    assert secrets is not None and files.folder == tmp_path / COMPOSE_DIR
    for path in (files.definitions, files.influxdb_env, files.chronograf_env, settings.secrets_path):
        assert path.stat().st_mode & 0o777 == SECRETS_FILE_MODE, path
    influx = _env_file(files.influxdb_env)
    assert influx == {
        "INFLUXDB_HTTP_AUTH_ENABLED": "true",
        "INFLUXDB_ADMIN_USER": "admin",
        "INFLUXDB_ADMIN_PASSWORD": secrets.influx_admin_password,
        "INFLUXDB_WRITE_USER": "writer",
        "INFLUXDB_WRITE_USER_PASSWORD": secrets.influx_writer_password,
        "INFLUXDB_READ_USER": "reader",
        "INFLUXDB_READ_USER_PASSWORD": secrets.influx_reader_password,
    }
    chronograf = _env_file(files.chronograf_env)
    assert chronograf == {
        CHRONOGRAF_USER_VARIABLE: "reader",
        CHRONOGRAF_PASSWORD_VARIABLE: secrets.influx_reader_password,
    }
    # Chronograf renders its resource files with its environment: the source logs in as the reader.
    source = json.loads((REPO / "dashboards" / "influxdb.src").read_text())
    assert source["username"] == f"{{{{ .{CHRONOGRAF_USER_VARIABLE} }}}}"
    assert source["password"] == f"{{{{ .{CHRONOGRAF_PASSWORD_VARIABLE} }}}}"
    users = {user["name"]: user["password_hash"] for user in json.loads(files.definitions.read_text())["users"]}
    assert set(users) == {"hub", "admin"} and all(users.values())
    again = ensure_compose_secrets(settings)
    assert _env_file(again.influxdb_env) == influx, "the secrets are made once, then kept"


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name in ("rabbitmq", "influxdb", "chronograf"):
        named = [str(v).split(":")[0] for v in compose["services"][name]["volumes"] if not str(v).startswith(".")]
        assert named and set(named) <= declared, name


CLUSTER_NODES = ("rabbitmq", "rabbitmq-1", "rabbitmq-2")


def test_the_cluster_profile_adds_two_nodes_on_the_native_clusters_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    single = _bindings(services["rabbitmq"])
    assert "profiles" not in services["rabbitmq"], "`docker compose up -d` still starts the single node"
    for index, name in enumerate(CLUSTER_NODES[1:], start=1):
        node = services[name]
        assert node["profiles"] == ["cluster"]
        assert node["image"] == services["rabbitmq"]["image"]
        shift = index * NODE_PORT_OFFSET
        assert _bindings(node) == {port + shift: address for port, address in single.items()}
        assert node["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_cluster_nodes_share_a_cookie_and_find_each_other_by_classic_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cookies = {services[name]["environment"]["RABBITMQ_ERLANG_COOKIE"] for name in CLUSTER_NODES}
    assert len(cookies) == 1
    names = {f"rabbit@{services[name].get('hostname')}" for name in CLUSTER_NODES}
    for index, name in enumerate(CLUSTER_NODES[1:], start=1):
        mounts = dict(_bind_mounts(services[name]))
        conf = (REPO / f"rabbitmq/cluster/node-{index}.conf").read_text()
        assert mounts[f"./rabbitmq/cluster/node-{index}.conf"] > mounts["./rabbitmq/rabbitmq.conf"], "read after"
        assert re.search(r"(?m)^cluster_formation\.peer_discovery_backend = classic_config$", conf)
        assert set(re.findall(r"(?m)^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", conf)) == names
        listeners = dict(re.findall(r"(?m)^(\S+\.port|\S+\.default) = (\d+)$", conf))
        assert {int(port) for port in listeners.values()} == set(_bindings(services[name]))


def test_every_node_asks_the_broker_auth_service_which_compose_runs_unpublished(compose: dict[str, Any]) -> None:
    service = compose["services"]["brokerauth"]
    assert not service.get("ports"), "the auth service answers the broker only"
    host, port = ADVANCED_CONFIG_AUTHZ.removeprefix("http://").split(":")
    assert host == "brokerauth"
    command = service["command"]
    assert command[command.index("--port") + 1] == port
    assert ("./hub", "/app/hub") in _bind_mounts(service)
    for name in ("rabbitmq", "rabbitmq-1", "rabbitmq-2"):
        node = compose["services"][name]
        assert ("./rabbitmq/advanced.config", "/etc/rabbitmq/advanced.config") in _bind_mounts(node), name
        assert node["depends_on"]["brokerauth"]["condition"] == "service_healthy", name


def test_compose_sets_the_retention_policies_and_roll_ups_as_stack_up_does(
    compose: dict[str, Any], tmp_path: Any
) -> None:
    """The one-shot influxdb-retention runs influxdb/retention.sh as the admin over the statements `stack certs`
    renders from IOT_RETENTION_* (the native stack runs the same list: tests/integration/test_retention.py)."""
    service = compose["services"]["influxdb-retention"]
    assert service["image"] == compose["services"]["influxdb"]["image"]
    assert service["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert service["env_file"] == [f"{COMPOSE_FILES}/influxdb.env"]
    assert service["environment"]["INFLUX_URL"] == "http://influxdb:8086"
    mounts = dict(_bind_mounts(service))
    script, statements = mounts["./influxdb/retention.sh"], mounts[f"{COMPOSE_FILES}/retention.iql"]
    assert service["entrypoint"] == ["sh", script, statements]
    settings = load_settings(stack_dir=tmp_path).model_copy(update={"retention_raw": "14d"})
    files = ensure_compose_secrets(settings)
    rendered = files.retention.read_text()
    assert rendered == retention_file(settings.retention)
    lines = [line for line in rendered.splitlines() if not line.startswith("#")]
    assert [line.removeprefix(MAY_FAIL_MARK) for line in lines] == [s.text for s in settings.retention.statements()]
    assert (
        'ALTER RETENTION POLICY "autogen" ON "telemetry" DURATION 336h REPLICATION 1 SHARD DURATION 1d DEFAULT' in lines
    )
