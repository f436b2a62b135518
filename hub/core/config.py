"""The one configuration object.

Every value comes from an `IOT_*` environment variable, else from its development default
(the table in docs/configuration.md); command-line flags override both by passing
keyword arguments to `load_settings`. Nothing else in the project reads the environment.

A value that cannot work (a port out of range, a URL whose port is not a number) is an error
naming its variable; an `IOT_*` variable that is no setting (a typo) is ignored with a warning
naming the nearest one.

No password has a default: an account's password the environment does not give comes from
the stack's generated secrets (`<stack folder>/secrets.json`, see hub/core/secrets.py), which
`load_settings` reads (`with_stack_secrets` is the rule, a pure function).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hub.core.contract import VHOST
from hub.core.durations import durations_ms
from hub.core.errors import ConfigError
from hub.core.partitions import MAX_PARTITIONS, parse_partitions
from hub.core.retention import DEFAULT_RAW_RP, FOREVER, BadDuration, RetentionPlan, parse_retention
from hub.core.secrets import (
    ADMIN_USER,
    HUB_USER,
    INFLUX_ADMIN_USER,
    INFLUX_READER_USER,
    INFLUX_WRITER_USER,
    SECRETS_FILE_NAME,
    StackSecrets,
    read_secrets,
)

#: The checkout (or installed tree) holding rabbitmq/, influxdb/, rules.yaml and the device models.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: The hub's broker account on the stack: its password is the stack's generated one (no password in the URL).
DEFAULT_AMQP_URL = f"amqp://{HUB_USER}@localhost:5672/iot"
#: Where the simulator keeps its devices' credentials, in the folder of the broker they were made
#: on (the stack folder, or its cluster folder), unless IOT_CREDENTIALS_FILE says.
CREDENTIALS_FILE_NAME = "devices.json"
#: `python -m hub stack up --nodes N` keeps its nodes' data under this folder of the stack folder,
#: and its state in this file of the stack folder while it runs.
CLUSTER_DIR = "cluster"
CLUSTER_STATE_FILE = "cluster.json"
#: The stack's development CA: `stack up` writes it to <stack folder>/tls/ca.pem.
DEV_TLS_DIR = "tls"
DEV_CA_FILE = "ca.pem"
#: The IANA ports of AMQP and of AMQP over TLS (what an amqp:// or amqps:// URL without a port means).
DEFAULT_AMQP_PORT = 5672
DEFAULT_AMQPS_PORT = 5671
#: The highest TCP port.
MAX_PORT = 65_535
#: IOT_METRICS_PORT (`hub run --metrics-port`) of a hub without /metrics and /health.
METRICS_OFF = "off"
#: Delivery workers per channel and process, at most (each is a thread with its own connection).
MAX_NOTIFY_WORKERS = 16
#: The InfluxDB 1.x retention policy of `device_logs` when IOT_LOG_RETENTION gives them one of their own.
LOG_RETENTION_POLICY = "device_logs"
#: The prefix of every setting's environment variable.
ENV_PREFIX = "IOT_"

log = logging.getLogger(__name__)
#: Unknown IOT_* names already warned about in this process (settings are loaded more than once).
_warned: set[str] = set()


class Settings(BaseSettings):
    """All settings of the hub, the simulator and the native stack."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    #: The hub's account; a URL without a password takes the stack's generated one.
    amqp_url: str = DEFAULT_AMQP_URL
    mqtt_host: str = "localhost"
    mqtt_port: int = 1883
    stomp_host: str = "localhost"
    stomp_port: int = 61613
    #: A cluster's MQTT / STOMP listeners, `host:port,host:port` (the TLS ones when IOT_MQTT_TLS /
    #: IOT_STOMP_TLS is set); when given they replace IOT_MQTT_HOST and its ports (STOMP likewise).
    mqtt_addresses: str = ""
    stomp_addresses: str = ""
    #: The broker's administrative account: provisioning and revoking device credentials only.
    #: No password given: the stack's generated one.
    admin_user: str = ADMIN_USER
    admin_password: str | None = None
    #: The simulator's device credentials (JSON, 0600); unset: `devices.json` in the stack folder.
    credentials_file: Path | None = None
    #: The native stack's TLS listeners. A client uses TLS when IOT_AMQP_URL is amqps:// (its port
    #: wins over IOT_AMQPS_PORT then), and for MQTT / STOMP when IOT_MQTT_TLS / IOT_STOMP_TLS is true.
    amqps_port: int = DEFAULT_AMQPS_PORT
    mqtts_port: int = 8883
    stomps_port: int = 61614
    mqtt_tls: bool = False
    stomp_tls: bool = False
    #: The CA file clients verify the broker's certificate (and host name) against. Unset: the
    #: stack's development CA when the stack folder has one, else the system's trust store.
    tls_ca: Path | None = None
    #: Devices log in with their certificate from this folder (`<device>.pem`, `<device>.key`, as
    #: `python -m hub provision --cert --cert-dir` writes them) instead of a password; needs TLS.
    device_cert_dir: Path | None = None
    #: The native stack's plain (unencrypted) listeners, bound to loopback only; false: none at all.
    plain_listeners: bool = True
    #: The native stack's nodes ask the broker auth service (hub/brokerauth) at every login, which refuses an
    #: MQTT client id other than the login's own and device accounts over AMQP. False: passwords and
    #: permissions only, as a broker configured without it (benchmarks compare the two; never on a network).
    broker_auth: bool = True
    influx_url: str = "http://localhost:8086"
    influx_db: str = "telemetry"
    influx_token: str | None = None
    influx_org: str | None = None
    #: InfluxDB's accounts (1.x logins). The writer is the hub's; the reader is for the CLI, the
    #: fleet view, the dashboards and the presence service's recovery (unset: the writer's when
    #: IOT_INFLUX_USER or IOT_INFLUX_TOKEN is given); the admin is the stack's, which creates
    #: the database and the other two. Unset: the stack's accounts with its generated passwords.
    influx_user: str | None = None
    influx_password: str | None = None
    influx_reader_user: str | None = None
    influx_reader_password: str | None = None
    influx_admin_user: str | None = None
    influx_admin_password: str | None = None

    #: Ports only the native stack binds (the broker's HTTP API and Prometheus endpoint).
    management_port: int = 15672
    #: A cluster's management HTTP APIs, `host:port,host:port`, tried in turn (a node that does not
    #: answer is skipped); unset: each host of IOT_AMQP_URL on IOT_MANAGEMENT_PORT.
    management_addresses: str = ""
    rabbitmq_prometheus_port: int = 15692
    #: Where `python -m hub stack` keeps data, logs and pid files (git-ignored).
    stack_dir: Path = Path(".stack")

    #: InfluxDB retention policy for 1.x writes ("" = the database's default).
    influx_rp: str = ""
    #: How long InfluxDB keeps the raw points, and the 1-minute and 1-hour roll-ups (`<n>h|d|w|y`, or
    #: INF: forever); `python -m hub stack up` and docker compose set them (docs/contract.md, Retention).
    retention_raw: str = "30d"
    retention_1m: str = "1y"
    retention_1h: str = FOREVER
    #: Which InfluxDB write API the hub uses: "v1" (HTTP /write), "v2" (influxdb-client) or "auto"
    #: (v2 when IOT_INFLUX_TOKEN is set, else from the server's /ping X-Influxdb-Version).
    influx_api: Literal["auto", "v1", "v2"] = "auto"
    #: Where the hub's points go: output names, comma-separated (see hub/outputs): `influxdb`
    #: (v1 or v2 as IOT_INFLUX_API says), `influxdb_v1`, `influxdb_v2`, `jsonl`.
    outputs: str = "influxdb"
    #: The file the `jsonl` output appends points to (one JSON object a line).
    jsonl_path: Path = Path("points.jsonl")
    #: Port of the hub's /metrics (Prometheus) and /health endpoint on 127.0.0.1: 0 takes any free
    #: port (logged), e.g. for a standby hub on the same machine; None (`off`) serves none.
    metrics_port: int | None = 9108
    #: /health/ready answers 503 when a hub queue this process consumes holds more messages than
    #: this (ready in RabbitMQ plus delivered to this process and not yet acked).
    ready_max_backlog: int = 10_000
    #: /health/ready answers 503 when the store runs here, its queue has a backlog, and it has
    #: stored nothing for this long (readings waiting while nothing is stored: stuck).
    ready_max_reading_age_s: float = 60.0
    #: The rules file `python -m hub run` loads (YAML, see rules.yaml).
    rules_file: Path = Path("rules.yaml")
    #: The notification file (channels, routes, escalations; see notify.example.yaml). No such
    #: file: no notifications, and `hub run` starts no notify service.
    notify_file: Path = Path("notify.yaml")
    #: The waits between a notification's attempts (after the first fails, the second, ...), each
    #: through a delay queue of the broker; after the last attempt it is dead-lettered.
    notify_retry_delays: str = "10s,1m,5m,30m"
    #: How long one attempt may take (an HTTP request, an SMTP session) before it counts as failed.
    notify_timeout_s: float = 10.0
    #: Delivery workers per channel in each `hub run` with the notify service (competing consumers).
    notify_workers: int = 2
    #: Device models merged over the shipped hub/core/models.yaml: kinds added or replaced (YAML).
    models_file: Path | None = None
    #: What the store does with a reading that carries sensors its kind does not declare (or comes
    #: from an undeclared kind): store them as they are, or dead-letter the whole reading.
    unknown_sensors: Literal["store", "dead_letter"] = "store"
    #: Telemetry queues `hub.telemetry.<p>`, p in 0..N-1: readings spread over them by device
    #: (consistent hash of the routing key). Changing it remaps devices: see docs/scaling.md.
    #: One by default: each partition is a quorum queue of its own, and on one machine one queue
    #: is the cheapest for the broker (`bench.fanout`, `bench.hub_throughput`); more are for
    #: spreading the telemetry over several hub processes.
    partitions: int = 1
    #: The partitions this `hub run` process consumes, e.g. `0-1,3`; empty: all of them.
    hub_partitions: str = ""
    #: Device log lines the logs service stores per device and second, on average (a token
    #: bucket's refill); the excess is counted and dropped, with one summary line per device.
    log_rate: float = Field(default=5.0, gt=0)
    #: How many lines a device may send at once above that rate (the bucket's size).
    log_burst: int = Field(default=100, ge=1)
    #: A device over its log rate gets one summary line (how many were dropped) per this many seconds.
    log_summary_s: float = Field(default=60.0, gt=0)
    #: How long `device_logs` are kept, in a retention policy of their own (`LOG_RETENTION_POLICY`,
    #: InfluxDB 1.x), e.g. `14d`; empty: with every other point. `stack up` creates or alters the
    #: policy; every hub process and `hub logs` need the same value.
    log_retention: str = Field(default="", pattern=r"^(|INF|[1-9][0-9]*[hdw])$")

    @property
    def log_rp(self) -> str:
        """The retention policy `device_logs` go to; empty: IOT_INFLUX_RP's, as every point."""
        return LOG_RETENTION_POLICY if self.log_retention else ""

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url_parses(cls, value: str) -> str:
        for url in value.split(","):
            parts = urlsplit(url.strip())
            if parts.scheme not in ("amqp", "amqps"):
                raise ValueError("must look like amqp://user:password@host:port/vhost (or several, comma-separated)")
            _require_url_port(parts)
        return value

    @field_validator("influx_url")
    @classmethod
    def _influx_url_parses(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must look like http://host:port (or https://)")
        _require_url_port(parts)
        return value

    @field_validator(
        "mqtt_port",
        "stomp_port",
        "amqps_port",
        "mqtts_port",
        "stomps_port",
        "management_port",
        "rabbitmq_prometheus_port",
    )
    @classmethod
    def _port_in_range(cls, value: int) -> int:
        if not 1 <= value <= MAX_PORT:
            raise ValueError(f"must be a port from 1 to {MAX_PORT} (got {value})")
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port_or_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == METRICS_OFF:
            return None
        return value

    @field_validator("metrics_port")
    @classmethod
    def _metrics_port_in_range(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_PORT:
            raise ValueError(f"must be a port from 1 to {MAX_PORT}, 0 (any free port) or {METRICS_OFF} (got {value})")
        return value

    @field_validator("mqtt_addresses", "stomp_addresses", "management_addresses")
    @classmethod
    def _addresses_parse(cls, value: str) -> str:
        parse_addresses(value)
        return value

    @field_validator("notify_retry_delays")
    @classmethod
    def _delays_parse(cls, value: str) -> str:
        durations_ms(value)
        return value

    @field_validator("notify_timeout_s")
    @classmethod
    def _timeout_positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @field_validator("notify_workers")
    @classmethod
    def _workers_positive(cls, value: int) -> int:
        if not 1 <= value <= MAX_NOTIFY_WORKERS:
            raise ValueError(f"must be between 1 and {MAX_NOTIFY_WORKERS}")
        return value

    @property
    def notify_retry_delays_ms(self) -> tuple[int, ...]:
        return durations_ms(self.notify_retry_delays)

    @field_validator("retention_raw", "retention_1m", "retention_1h")
    @classmethod
    def _retention_parses(cls, value: str) -> str:
        try:
            parse_retention(value)
        except BadDuration as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("partitions")
    @classmethod
    def _partitions_in_range(cls, value: int) -> int:
        if not 1 <= value <= MAX_PARTITIONS:
            raise ValueError(f"must be between 1 and {MAX_PARTITIONS}")
        return value

    @model_validator(mode="after")
    def _partitions_parse(self) -> Settings:
        try:
            parse_partitions(self.hub_partitions, self.partitions)
        except ConfigError as exc:
            raise ValueError(f"IOT_HUB_PARTITIONS (--partitions): {exc}") from None
        return self

    @property
    def hub_partition_ids(self) -> tuple[int, ...]:
        """The partitions this hub process consumes (IOT_HUB_PARTITIONS within IOT_PARTITIONS)."""
        return parse_partitions(self.hub_partitions, self.partitions)

    @property
    def amqp_urls(self) -> list[str]:
        """IOT_AMQP_URL as a list: one URL per broker node (a cluster), tried in turn."""
        return [url.strip() for url in self.amqp_url.split(",") if url.strip()]

    @property
    def amqp(self) -> AmqpParts:
        """The first (or only) URL of IOT_AMQP_URL."""
        return AmqpParts.parse(self.amqp_urls[0])

    @property
    def mqtt_brokers(self) -> list[tuple[str, int]]:
        """Where MQTT clients connect, in order: IOT_MQTT_ADDRESSES, else IOT_MQTT_HOST on its (TLS) port."""
        return parse_addresses(self.mqtt_addresses) or [(self.mqtt_host, self.mqtt_connect_port)]

    @property
    def stomp_brokers(self) -> list[tuple[str, int]]:
        """Where STOMP clients connect, in order: IOT_STOMP_ADDRESSES, else IOT_STOMP_HOST on its (TLS) port."""
        return parse_addresses(self.stomp_addresses) or [(self.stomp_host, self.stomp_connect_port)]

    @property
    def management_apis(self) -> list[tuple[str, int]]:
        """Where the broker's management HTTP API answers, in order: IOT_MANAGEMENT_ADDRESSES, else
        each host of IOT_AMQP_URL (once) on IOT_MANAGEMENT_PORT."""
        hosts = [AmqpParts.parse(url).host for url in self.amqp_urls]
        return parse_addresses(self.management_addresses) or [(h, self.management_port) for h in dict.fromkeys(hosts)]

    @property
    def credentials_path(self) -> Path:
        """IOT_CREDENTIALS_FILE, else `devices.json` beside the data of the broker the stack folder runs.

        Device accounts live in one broker's data: the single node's (`devices.json` in the stack
        folder) or, while `stack up --nodes N` runs there, the cluster's (`cluster/devices.json`).
        A file made on one is worthless on the other.
        """
        if self.credentials_file is not None:
            return self.credentials_file
        if (self.stack_path / CLUSTER_STATE_FILE).exists():
            return self.stack_path / CLUSTER_DIR / CREDENTIALS_FILE_NAME
        return self.stack_path / CREDENTIALS_FILE_NAME

    @property
    def secrets_path(self) -> Path:
        """The stack's generated secrets (`secrets.json` in the stack folder)."""
        return self.stack_path / SECRETS_FILE_NAME

    @property
    def influx_writer(self) -> InfluxAccount:
        """The hub's InfluxDB account: IOT_INFLUX_TOKEN, else IOT_INFLUX_USER / IOT_INFLUX_PASSWORD."""
        return InfluxAccount(self.influx_user, self.influx_password, self.influx_token)

    @property
    def influx_reader(self) -> InfluxAccount:
        """The account that only reads: IOT_INFLUX_READER_USER, else the writer's (one account for both)."""
        if self.influx_reader_user is None:
            return self.influx_writer
        return InfluxAccount(self.influx_reader_user, self.influx_reader_password, None)

    @property
    def influx_admin(self) -> InfluxAccount:
        """The account the stack creates the database and the other accounts with."""
        return InfluxAccount(self.influx_admin_user, self.influx_admin_password, None)

    @property
    def mqtt_connect_port(self) -> int:
        """Where MQTT clients connect: the TLS listener when IOT_MQTT_TLS is set."""
        return self.mqtts_port if self.mqtt_tls else self.mqtt_port

    @property
    def stomp_connect_port(self) -> int:
        """Where STOMP clients connect: the TLS listener when IOT_STOMP_TLS is set."""
        return self.stomps_port if self.stomp_tls else self.stomp_port

    @property
    def stack_path(self) -> Path:
        """The stack folder as an absolute path (a relative IOT_STACK_DIR is under the checkout)."""
        root = self.stack_dir
        return (root if root.is_absolute() else PROJECT_ROOT / root).resolve()

    @property
    def tls_ca_file(self) -> Path | None:
        """The CA clients trust: IOT_TLS_CA, else the stack's development CA if it exists, else None (system)."""
        if self.tls_ca is not None:
            return self.tls_ca
        dev_ca = self.stack_path / DEV_TLS_DIR / DEV_CA_FILE
        return dev_ca if dev_ca.is_file() else None

    @property
    def retention(self) -> RetentionPlan:
        """The database's retention policies and roll-ups (IOT_RETENTION_*, the raw ones in IOT_INFLUX_RP)."""
        return RetentionPlan(
            db=self.influx_db,
            raw_rp=self.influx_rp or DEFAULT_RAW_RP,
            raw_s=parse_retention(self.retention_raw),
            rollup_1m_s=parse_retention(self.retention_1m),
            rollup_1h_s=parse_retention(self.retention_1h),
            rollups=not (self.influx_api == "v2" or (self.influx_api == "auto" and self.influx_token)),
        )

    @property
    def influx_port(self) -> int:
        return urlsplit(self.influx_url).port or 8086

    @property
    def influx_host(self) -> str:
        return urlsplit(self.influx_url).hostname or "localhost"


@dataclass(frozen=True)
class InfluxAccount:
    """How a client logs in to InfluxDB: a token (2.x), else a user and password, else not at all."""

    user: str | None
    password: str | None
    token: str | None = None


class AmqpParts:
    """The pieces of an `amqp://user:password@host:port/vhost` URL (no password: "")."""

    def __init__(self, host: str, port: int, user: str, password: str, vhost: str, tls: bool = False) -> None:
        self.host, self.port, self.user, self.password, self.vhost = host, port, user, password, vhost
        self.tls = tls

    @classmethod
    def parse(cls, url: str) -> AmqpParts:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(f"IOT_AMQP_URL must start with amqp:// or amqps:// (got {url!r})")
        tls = parts.scheme == "amqps"
        # No vhost in the URL means the contract's; `%2F` still names the default vhost "/".
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else VHOST
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or (DEFAULT_AMQPS_PORT if tls else DEFAULT_AMQP_PORT),
            user=unquote(parts.username or HUB_USER),
            password=unquote(parts.password or ""),
            vhost=vhost,
            tls=tls,
        )


def _require_url_port(parts: SplitResult) -> None:
    """A URL's port, when it has one, is a number from 1 to 65535."""
    # The error does not quote the URL: it may hold a password.
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None:
        return
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"the port after the host must be a number from 1 to {MAX_PORT}")


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The IOT_* names in `environ` that are no setting, each with the nearest setting's name (or None)."""
    known = [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]
    unknown = sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)
    return [(name, next(iter(difflib.get_close_matches(name.upper(), known, n=1)), None)) for name in unknown]


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """One warning per IOT_* name that is no setting (a typo is otherwise silently ignored), once per process."""
    for name, nearest in unknown_variables(environ):
        if name not in _warned:
            _warned.add(name)
            hint = f"; did you mean {nearest}?" if nearest else ""
            log.warning("%s is not a setting and is ignored%s", name, hint)


def parse_addresses(value: str) -> list[tuple[str, int]]:
    """`host:port,host:port` (IPv6 hosts in brackets) as (host, port) pairs; "" is none."""
    addresses = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def format_addresses(addresses: list[tuple[str, int]]) -> str:
    """The inverse of `parse_addresses`: `host:port,host:port`."""
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in addresses)


@dataclass(frozen=True)
class TlsPorts:
    """One broker node's TLS listeners: AMQPS, MQTTS and STOMP over TLS."""

    amqps: int
    mqtts: int
    stomps: int


def over_tls(settings: Settings, nodes: Sequence[TlsPorts] = ()) -> Settings:
    """The same settings with every client on the TLS listeners: AMQPS, MQTTS and STOMP over TLS.

    Each URL of IOT_AMQP_URL becomes amqps:// on the same host (account, password and vhost
    kept), at its node's AMQPS port; one already amqps:// is kept as it is (its port is its
    node's TLS one). Each address of IOT_MQTT_ADDRESSES / IOT_STOMP_ADDRESSES moves to its node's
    MQTTS / STOMPS port likewise; IOT_MQTT_TLS and IOT_STOMP_TLS are set.

    A node's TLS ports: without `nodes`, IOT_AMQPS_PORT, IOT_MQTTS_PORT and IOT_STOMPS_PORT, the
    same for every node (one node, or a cluster of machines that each listen on the usual ports).
    Nodes sharing a host (`stack up --nodes N` on one machine) each have their own: `nodes`
    gives them, one per URL and in the order of IOT_AMQP_URL (and of the address lists, as
    `stack up --nodes N` prints them). Several nodes on one host without `nodes`, or `nodes` not
    one per URL, is a `ConfigError`: every client would otherwise land on one node's ports.
    """
    urls = settings.amqp_urls
    if nodes and len(nodes) != len(urls):
        raise ConfigError(f"over TLS: {len(urls)} URLs in IOT_AMQP_URL but the TLS ports of {len(nodes)} nodes")
    hosts = [urlsplit(url).hostname or "localhost" for url in urls]
    if not nodes and len(set(hosts)) < len(hosts):
        raise ConfigError(
            "over TLS: several nodes of IOT_AMQP_URL share a host, so each has its own TLS ports: give them"
        )
    ports = list(nodes) or [TlsPorts(settings.amqps_port, settings.mqtts_port, settings.stomps_port)] * len(urls)
    update: dict[str, Any] = {
        "amqp_url": ",".join(_amqps_url(url, node.amqps) for url, node in zip(urls, ports, strict=True)),
        "mqtt_tls": True,
        "stomp_tls": True,
    }
    if settings.mqtt_addresses:
        update["mqtt_addresses"] = _on_ports(settings.mqtt_addresses, [n.mqtts for n in ports], "IOT_MQTT_ADDRESSES")
    if settings.stomp_addresses:
        update["stomp_addresses"] = _on_ports(
            settings.stomp_addresses, [n.stomps for n in ports], "IOT_STOMP_ADDRESSES"
        )
    return settings.model_copy(update=update)


def _on_ports(addresses: str, ports: list[int], variable: str) -> str:
    """`host:port,...` with the i-th host on `ports[i]` (one address per node)."""
    parsed = parse_addresses(addresses)
    if len(parsed) != len(ports):
        raise ConfigError(f"over TLS: {variable} names {len(parsed)} nodes, IOT_AMQP_URL {len(ports)}")
    return format_addresses([(host, port) for (host, _plain), port in zip(parsed, ports, strict=True)])


def _amqps_url(url: str, amqps_port: int) -> str:
    """`url` as amqps:// on the same host at `amqps_port` (an amqps:// URL as it is)."""
    parts = urlsplit(url)
    if parts.scheme == "amqps":
        return url
    userinfo, _, _where = parts.netloc.rpartition("@")
    host = parts.hostname or "localhost"
    address = f"[{host}]:{amqps_port}" if ":" in host else f"{host}:{amqps_port}"
    return urlunsplit(("amqps", f"{userinfo}@{address}" if userinfo else address, parts.path, parts.query, ""))


def with_stack_secrets(settings: Settings, secrets: StackSecrets | None) -> Settings:
    """`settings` with every password it does not give taken from the stack's `secrets` (None: as they are).

    What the environment or a flag gives always wins: a URL of IOT_AMQP_URL with a password
    keeps it, IOT_ADMIN_PASSWORD, IOT_INFLUX_* likewise. An unset account name is the stack's
    (hub, admin; InfluxDB's admin, writer, reader), an unset password its generated one. InfluxDB
    with IOT_INFLUX_TOKEN or IOT_INFLUX_USER given is someone else's: the writer and the reader
    stay as given (the reader falls back to the writer, see `Settings.influx_reader`).
    """
    if secrets is None:
        return settings
    update: dict[str, Any] = {}
    urls = [_with_password(url, secrets.hub_password) for url in settings.amqp_urls]
    if urls != settings.amqp_urls:
        update["amqp_url"] = ",".join(urls)
    if settings.admin_password is None:
        update["admin_password"] = secrets.admin_password
    if settings.influx_token is None and settings.influx_user is None:
        update["influx_user"] = INFLUX_WRITER_USER
        update["influx_password"] = settings.influx_password or secrets.influx_writer_password
        if settings.influx_reader_user is None:
            update["influx_reader_user"] = INFLUX_READER_USER
            update["influx_reader_password"] = settings.influx_reader_password or secrets.influx_reader_password
    if settings.influx_admin_user is None:
        update["influx_admin_user"] = INFLUX_ADMIN_USER
    if settings.influx_admin_password is None:
        update["influx_admin_password"] = secrets.influx_admin_password
    return settings.model_copy(update=update) if update else settings


def _with_password(url: str, password: str) -> str:
    """`url` with the hub's user (unless it names one) and `password`, if it gives no password itself."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    where = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or HUB_USER
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@{where}", *parts[2:]))


def missing_secret(settings: Settings, account: str, variables: str) -> ConfigError:
    """The error for an account without a password: neither the environment nor the stack's secrets give one."""
    return ConfigError(
        f"no password for {account}: set {variables}, or start the stack once (`python -m hub stack up` "
        f"generates {settings.secrets_path})"
    )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with every non-None keyword (a CLI flag) on top, and the
    passwords neither gives from the stack's secrets file (when the stack folder has one)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    warn_unknown_variables(os.environ)
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"IOT_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    return with_stack_secrets(settings, read_secrets(settings.secrets_path))
