"""The load the benches put on a stack: MQTT publishers speaking for many devices each, and the
counts of what became of their readings.

A publisher logs in as a bench gateway account (`create_gateway`, `login_as_own_gateway`) that
may publish the telemetry of any device; each runs in a process of its own (`start_processes`),
flat out (`publisher`) or at one reading per device per second (`steady_publisher`).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pika
from paho.mqtt.enums import CallbackAPIVersion

from hub.clients import influx
from hub.clients.amqp import connect
from hub.clients.management import ManagementAdmin
from hub.control.identity import device_definitions, new_secret
from hub.core.config import Settings
from hub.core.contract import Reading, encode, mqtt_topic, now_ms
from hub.core.credentials import Credential, merge_credentials
from hub.core.tls import settings_context

#: The account the publishers log in as (see `create_gateway`).
GATEWAY_USER = "bench-gateway"


#: MQTT messages a publisher keeps in flight (unacknowledged PUBACKs).
MAX_INFLIGHT = 1000


#: The sensor the hub's models do not declare: a reading with it is dead-lettered (`unknown_sensor`).
UNKNOWN_SENSOR = "bogus"


def make_reading(site: str, device: int, seq: int, ts: int, invalid: bool = False) -> Reading:
    readings = {"temperature": 20.0 + (seq % 50) / 10, "humidity": 40.0 + (seq % 7)}
    if invalid:
        readings[UNKNOWN_SENSOR] = 1.0
    return Reading(device=f"{site}-{device:04d}", site=site, kind="environment", seq=seq, ts=ts, readings=readings)


def create_gateway(settings: Settings) -> None:
    """A bench-only account that may publish the telemetry of any device, like a gateway.

    Every device has its own account, confined to its own topics; the publishers here speak for
    many devices over one connection each, so they log in as this gateway instead. Its secret
    goes to the stack's credentials file, where the publisher processes read it.
    """
    credential = {GATEWAY_USER: Credential(GATEWAY_USER, new_secret())}
    definitions = device_definitions(credential)
    definitions["topic_permissions"][0]["write"] = r"^telemetry\.[^.]+\.[^.]+\.[^.]+$"
    ManagementAdmin(settings).import_definitions(definitions)
    merge_credentials(settings.credentials_path, credential)


def login_as_own_gateway(client: mqtt.Client, settings: Settings, client_id: str) -> None:
    """Log in as a gateway account named like the client id, made now (the broker's auth service
    refuses an MQTT client id that is not its login's own, the gateway's included)."""
    credential = {client_id: Credential(client_id, new_secret())}
    definitions = device_definitions(credential)
    definitions["topic_permissions"][0]["write"] = r"^telemetry\.[^.]+\.[^.]+\.[^.]+$"
    ManagementAdmin(settings).import_definitions(definitions)
    client.username_pw_set(client_id, credential[client_id].password)


def mqtt_client(settings: Settings, client_id: str) -> mqtt.Client:
    """A connected MQTT client logged in as a bench gateway, its network loop running (the bench's one login).

    Over MQTTS when the settings say IOT_MQTT_TLS, verifying the broker.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    login_as_own_gateway(client, settings, client_id)
    if settings.mqtt_tls:
        client.tls_set_context(settings_context(settings))
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.connect(settings.mqtt_host, settings.mqtt_connect_port, keepalive=60)
    client.loop_start()
    return client


def drain_and_close(client: mqtt.Client, last: mqtt.MQTTMessageInfo | None) -> None:
    if last is not None:
        last.wait_for_publish(120)
    while client._out_messages:
        time.sleep(0.01)
    client.loop_stop()
    client.disconnect()


def publisher(
    settings: Settings, site: str, devices: range, per_device: int, base_ts: int, invalid_every: int, done: Any
) -> None:
    """One MQTT connection publishing `per_device` readings for each of `devices`, QoS 1, flat out.

    Every `invalid_every`-th device (0: none) sends a sensor the hub does not know.
    """
    client = mqtt_client(settings, f"bench-{site}-{devices.start}")
    last = None
    for seq in range(per_device):
        for device in devices:
            invalid = invalid_every > 0 and device % invalid_every == 0
            reading = make_reading(site, device, seq, base_ts + seq, invalid)
            last = client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1)
        while len(client._out_messages) > MAX_INFLIGHT * 4:  # keep memory bounded, the broker sets the pace
            time.sleep(0.001)
    drain_and_close(client, last)
    done.value += 1


def steady_publisher(settings: Settings, site: str, devices: range, duration_s: int, done: Any) -> None:
    """One MQTT connection publishing one reading per device per second, evenly spread, stamped now."""
    client = mqtt_client(settings, f"bench-{site}-{devices.start}")
    step_s = 1.0 / len(devices)
    started = time.monotonic()
    last = None
    for index in range(duration_s * len(devices)):
        wait = started + index * step_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        device = devices[index % len(devices)]
        reading = make_reading(site, device, index // len(devices), now_ms())
        last = client.publish(mqtt_topic(reading.routing_key), encode(reading), qos=1)
    drain_and_close(client, last)
    done.value += 1


def start_processes(target: Callable[..., None], devices: int, processes: int, *args: Any) -> list[Any]:
    """`processes` processes running `target(settings-and-site args..., devices range, *rest)`."""
    ctx = multiprocessing.get_context("fork")
    done = ctx.Value("i", 0)
    step = (devices + processes - 1) // processes
    settings, site, *rest = args
    procs = []
    for start in range(0, devices, step):
        proc = ctx.Process(target=target, args=(settings, site, range(start, min(devices, start + step)), *rest, done))
        proc.start()
        procs.append(proc)
    return procs


def start_publishers(
    settings: Settings, site: str, devices: int, per_device: int, processes: int, invalid_every: int = 0
) -> list[Any]:
    base_ts = now_ms() - 3_600_000
    return start_processes(publisher, devices, processes, settings, site, per_device, base_ts, invalid_every)


def amqp(settings: Settings) -> pika.BlockingConnection:
    return connect(settings, "bench")


def influx_seqs(settings: Settings, query: str) -> list[int]:
    [series] = influx.query(settings, query)
    return [int(value) for one in series for row in one.rows for key, value in row.items() if key != "time"]


def influx_count(settings: Settings, query: str, db: str | None = None) -> int:
    [series] = influx.query(settings.model_copy(update={"influx_db": db}) if db else settings, query)
    return sum(int(value or 0) for one in series for row in one.rows for key, value in row.items() if key != "time")


def quantile_ms(values: list[float], q: int) -> float:
    """The q-th percentile of `values` (seconds) in ms; 0 without samples."""
    if len(values) < 2:
        return 1000 * values[0] if values else 0.0
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1]
