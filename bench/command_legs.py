"""Where a command's round trip goes: CLI -> broker -> device -> broker -> CLI, and the hub's record of it.

Every stamp is `time.monotonic()` in the bench's own process, where the CLI (`CommandSender`), the
simulated devices (`Fleet`, whose `command_times` stamp when a device takes a command and when
its ack is written) and a bare paho echo device all run, so legs are differences of one clock.
The echo device answers the same CLI from paho's own network thread with no simulator around
it: its legs are the broker + CLI baseline, and the simulated device's excess over it is the
simulator's. The hub's recording is timed apart: the ack's `ts` to its row in `commands` being
queryable, polled every POLL_S. An AMQP listener on its own connection and thread stamps each
ack as it reaches a consumer that is not blocked in a publish: the round trip the CLI would
see if its acks did not wait for the confirm of its command.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.stats import CommandTimes, CommandTiming
from hub.clients import influx
from hub.clients.amqp import connect
from hub.control.send import CommandSender, Outcome, SendStamps
from hub.core.config import Settings
from hub.core.contract import EXCHANGE, Ack, Command, ack_key, command_key, decode, encode, mqtt_topic, now_ms
from hub.core.errors import BrokerUnavailable, InvalidMessage
from hub.core.tls import settings_context

#: The legs of one answered command, in the order they happen.
LEGS = (
    "cli_before",
    "confirm",
    "outbound",
    "device",
    "back",
    "held",
    "cli_after",
    "round_trip",
    "free_back",
    "free_round_trip",
)
#: How often InfluxDB is asked for new `commands` rows (the resolution of the recording leg).
POLL_S = 0.02
#: How long the echo device may take to connect and subscribe.
ECHO_CONNECT_S = 10.0
#: How long the ack listener's thread blocks at a time (how soon it sees that it should stop).
LISTEN_SLICE_S = 0.1
#: How long one command waits for its ack.
COMMAND_TIMEOUT_S = 5.0


def split_round_trip(
    stamps: SendStamps, returned: float, device: CommandTiming, heard: float | None = None
) -> dict[str, float]:
    """One answered command's legs (s) from the sender's stamps, when `send` returned, the device's
    stamps and when the free listener `heard` the ack (without it, no `free_` legs).

    `confirm` runs beside `outbound`: the broker confirms the command while it is on its way. pika's
    blocking `basic_publish` dispatches no delivery until the confirm is in, so an ack written before
    it waits: `held` is that wait's upper bound, part of `back`.
    """
    return {
        "cli_before": stamps.published - stamps.entered,
        "confirm": stamps.confirmed - stamps.published,
        "outbound": device.taken - stamps.published,
        "device": device.ack_written - device.taken,
        "back": stamps.acked - device.ack_written,
        "held": max(0.0, stamps.confirmed - device.ack_written),
        "cli_after": returned - stamps.acked,
        "round_trip": stamps.acked - stamps.published,
    } | (
        {} if heard is None else {"free_back": heard - device.ack_written, "free_round_trip": heard - stamps.published}
    )


@dataclass
class LegSamples:
    """Samples (s) per leg of the commands one kind of device answered."""

    legs: dict[str, list[float]] = field(default_factory=lambda: {leg: [] for leg in LEGS})
    ids: set[str] = field(default_factory=set)
    #: Commands without a usable answer (timeout, refusal) or without the device's stamps.
    missed: int = 0

    def add(self, outcome: Outcome, returned: float, device: CommandTiming | None, heard: float | None) -> None:
        if outcome.status != "ok" or outcome.stamps is None or device is None:
            self.missed += 1
            return
        self.ids.add(outcome.id)
        for leg, seconds in split_round_trip(outcome.stamps, returned, device, heard).items():
            self.legs[leg].append(seconds)


class EchoDevice:
    """A bare paho client that acks every command at once from its own network thread (the baseline device).

    Logs in with its own device account; the ack has the contract's shape with an empty state.
    """

    def __init__(self, settings: Settings, device_id: str, password: str) -> None:
        self.device_id = device_id
        self.times: dict[str, CommandTiming] = {}
        self._subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=True)
        client.username_pw_set(device_id, password)
        if settings.mqtt_tls:
            client.tls_set_context(settings_context(settings))
        client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(mqtt_topic(command_key(device_id)), qos=1)
        client.on_subscribe = lambda _c, _u, _m, _r, _p: self._subscribed.set()
        client.on_message = self._on_message
        self.client = client
        self._settings = settings

    def __enter__(self) -> EchoDevice:
        self.client.connect(self._settings.mqtt_host, self._settings.mqtt_connect_port, keepalive=60)
        self.client.loop_start()
        if not self._subscribed.wait(ECHO_CONNECT_S):
            self.__exit__()
            raise BrokerUnavailable(f"echo device {self.device_id} did not subscribe within {ECHO_CONNECT_S:g} s")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        taken = time.monotonic()
        try:
            command = decode(bytes(message.payload), Command)
        except InvalidMessage:
            return
        ack = Ack(id=command.id, device=self.device_id, status="ok", detail="pong", ts=now_ms())
        client.publish(mqtt_topic(ack_key(self.device_id)), encode(ack), qos=1)
        self.times[command.id] = CommandTiming(taken, time.monotonic())


class AckListener:
    """Stamps each ack of `devices` as it arrives, on its own AMQP connection and thread, never blocked
    in a publish (the CLI's channel dispatches nothing while it waits for a confirm)."""

    def __init__(self, settings: Settings, devices: list[str]) -> None:
        self.heard: dict[str, float] = {}
        self._connection = connect(settings, "bench ack listener")
        channel = self._connection.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for device in devices:
            channel.queue_bind(queue, EXCHANGE, routing_key=ack_key(device))
        channel.basic_consume(queue, self._on_ack, auto_ack=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ack-listener", daemon=True)

    def __enter__(self) -> AckListener:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._connection.process_data_events(time_limit=LISTEN_SLICE_S)

    def _on_ack(self, _channel: Any, _method: Any, _props: Any, body: bytes) -> None:
        at = time.monotonic()
        try:
            self.heard.setdefault(decode(body, Ack).id, at)
        except InvalidMessage:
            return


@dataclass
class RoundTrips:
    """The legs of the commands the simulated devices answered, beside those of the echo device."""

    simulated: LegSamples = field(default_factory=LegSamples)
    echo: LegSamples = field(default_factory=LegSamples)


def command_round_trips(
    settings: Settings,
    devices: list[str],
    device_times: CommandTimes,
    echo: EchoDevice,
    count: int,
    pace_s: float,
) -> RoundTrips:
    """`count` pings, one at a time over `devices`, each followed by one to `echo`: every leg of each."""
    trips = RoundTrips()
    with CommandSender(settings) as sender, AckListener(settings, [*devices, echo.device_id]) as listener:
        targets = itertools.chain.from_iterable((device, echo.device_id) for device in itertools.cycle(devices))
        for target in itertools.islice(targets, 2 * count):
            [outcome] = sender.send([target], "ping", {}, timeout_s=COMMAND_TIMEOUT_S)
            returned = time.monotonic()
            heard = listener.heard.get(outcome.id)
            if target == echo.device_id:
                trips.echo.add(outcome, returned, echo.times.get(outcome.id), heard)
            else:
                trips.simulated.add(outcome, returned, device_times.get(outcome.id), heard)
            time.sleep(pace_s)
    return trips


@contextmanager
def watching_records(settings: Settings) -> Iterator[Callable[[set[str]], list[float]]]:
    """Poll `commands` for the CLI's answered commands while inside; yields `delays(ids)`: for each of
    `ids` seen, its ack's `ts` to the moment its row was first queryable, in seconds."""
    since_ms = now_ms()
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            [series] = influx.query(
                settings, f"SELECT id FROM commands WHERE status = 'ok' AND origin = 'cli' AND time >= {since_ms}ms"
            )
            at = now_ms()
            for one in series:
                for row in one.rows:
                    seen.setdefault(str(row["id"]), (at - int(row["time"])) / 1000)
            stop.wait(POLL_S)

    thread = threading.Thread(target=poll, name="records-watch", daemon=True)
    thread.start()
    try:
        yield lambda ids: [seen[i] for i in ids if i in seen]
    finally:
        stop.set()
        thread.join()
