"""A fleet of simulated devices driven by one event loop thread: the in-process API.

    with Fleet(settings, count=4, protocol="mixed", interval_s=1.0, site="plant-a", seed=1) as fleet:
        fleet.devices            # SimulatedDevice: .device_id .kind .protocol .site .seq .state()
        fleet.stats()            # FleetStats, per protocol
        fleet.cut("env-0001", for_s=2.0)       # pull the cable; it reconnects with backoff after 2 s
        fleet.stop_device("th-0001")           # switch one off (offline status; commands now time out)
        fleet.start_device("th-0001")          # and on again; seq carries on

One thread owns every device's state. It runs a timer heap (one entry per device's next
reading, reconnects, keep-alives) and a selector over every MQTT socket; STOMP connections'
own threads only hand events to it through `call_soon`. That is what lets one process keep a
thousand devices on schedule where a thread per device would not.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from devices.device import (
    DEFAULT_SITE,
    ProtocolChoice,
    SimulatedDevice,
    device_rng,
    plan_fleet,
)
from devices.links import LinkDown
from devices.models import DEFAULT_KINDS
from devices.mqtt_link import MqttLink
from devices.outbox import MAX_IN_FLIGHT
from devices.stats import CommandTimes, FleetStats, LagRecorder, ProtocolStats
from devices.stomp_link import StompLink
from hub.core.backoff import DEVICE_RECONNECT, Backoff
from hub.core.config import Settings, format_addresses
from hub.core.contract import (
    MAX_BATCH_ENTRIES,
    MAX_BODY_BYTES,
    Batch,
    BatchEntry,
    LogLevel,
    Reading,
    ack_key,
    decode,
    encode,
    now_ms,
    status_key,
    telemetry_key,
)
from hub.core.credentials import Credential, lacking, read_credentials
from hub.core.errors import BrokerUnavailable, ConfigError
from hub.core.models import load_models
from hub.core.tls import DeviceCert

#: How long `start()` waits for every device to be online before giving up.
CONNECT_WAIT_S = 30.0
#: A rebooting device is off (no readings, no connection) for this long.
REBOOT_DOWNTIME_S = 1.0
#: On shutdown: how long to wait for buffered readings to be confirmed, then for devices to say goodbye.
DRAIN_TIMEOUT_S = 5.0
GOODBYE_TIMEOUT_S = 10.0
#: How often MQTT clients get their keep-alive housekeeping.
KEEPALIVE_TICK_S = 1.0
#: Threads that run blocking connects (STOMP connects and disconnects, MQTT TLS handshakes), shared by the fleet.
STOMP_POOL_THREADS = 8
#: Longest the loop sleeps when nothing is due, so stop requests are seen promptly.
MAX_SLEEP_S = 0.5
#: At start-up, at most this many devices are connecting (connected, not yet online) at once; the
#: rest wait their turn, looked at every CONNECT_PACE_S. Connecting 10,000 at once filled the broker's
#: accept backlog (128), so each TCP connect blocked the loop for up to CONNECT_TIMEOUT_S, and CONNECTs
#: waited past the broker's MQTT login timeout (10 s), which closed them: a retry storm.
MAX_CONNECTING = 100
#: A device's buffer after a reconnect leaves in batches of up to this many readings.
BACKLOG_BATCH_ENTRIES = 100
#: A batch's readings' own bodies stay under this many bytes (the batch body is smaller: one identity).
BATCH_MAX_BYTES = MAX_BODY_BYTES - 4 * 1024
CONNECT_PACE_S = 0.01
#: A device whose login was refused tries again after this (plus its backoff): a revoked credential stays
#: refused, but a broker whose auth service is down refuses every login until it is back.
REFUSED_RETRY_S = 5.0

DeviceState = Literal["connecting", "online", "waiting", "rebooting", "stopped", "closing", "closed", "refused"]
AnyLink = MqttLink | StompLink
T = TypeVar("T")


@dataclass
class _Runtime:
    """The shell around one `SimulatedDevice`: its current link, connection state and counters."""

    device: SimulatedDevice
    backoff: Backoff
    routing_key: str
    state: DeviceState = "connecting"
    link: AnyLink | None = None
    powered: bool = True
    #: What the next link_down means: an unplanned loss, or a reboot / stop / shutdown we asked for.
    intent: Literal["run", "reboot", "stop", "shutdown"] = "run"
    schedule: int = 0
    attempt: int = 0
    #: Monotonic time its connection was lost unplanned (0: it was not): a reconnect says how long it was down.
    lost_at: float = 0.0
    ever_online: bool = False
    offline_until: float = 0.0
    #: Which broker node of its protocol's list (IOT_MQTT_ADDRESSES / IOT_STOMP_ADDRESSES) it connects to.
    node: int = 0
    sent: int = 0
    reconnects: int = 0
    errors: int = 0
    last_error: str = ""


def _passwords_for(devices: list[str], credentials: Mapping[str, Credential], source: Path) -> dict[str, str]:
    """Each device's password; a ConfigError naming the devices without a credential (and how to make them)."""
    lacking(devices, credentials, source, f"python -m hub provision DEVICE... --out {source}")
    return {device: credentials[device].password for device in devices}


def _certificates_for(devices: list[str], settings: Settings, folder: Path) -> dict[str, DeviceCert]:
    """Each device's client certificate in `folder`; a ConfigError naming the devices without one."""
    if not (settings.mqtt_tls and settings.stomp_tls):
        raise ConfigError("certificate logins need TLS: --tls (IOT_MQTT_TLS=true, IOT_STOMP_TLS=true)")
    certs = {device: DeviceCert(folder, device) for device in devices}
    present = {device for device, cert in certs.items() if cert.present()}
    lacking(devices, present, folder, f"python -m hub provision --cert --cert-dir {folder} DEVICE...")
    return certs


class Fleet:
    """Simulated devices, each with its own broker connection and identity, behind one event loop."""

    def __init__(
        self,
        settings: Settings,
        count: int = 50,
        protocol: ProtocolChoice = "mixed",
        interval_s: float = 1.0,
        kinds: Sequence[str] = DEFAULT_KINDS,
        site: str = DEFAULT_SITE,
        seed: int | None = None,
        fault_rate: float = 0.0,
        credentials: Mapping[str, Credential] | None = None,
        batch: int = 1,
    ) -> None:
        """`credentials` by device id; by default the file `settings.credentials_path` (IOT_CREDENTIALS_FILE).

        `batch`: readings per message (a telemetry batch once more than one); at 1, a device still sends
        what it buffered while offline as batches of up to `BACKLOG_BATCH_ENTRIES` after a reconnect.

        With `settings.device_cert_dir` (IOT_DEVICE_CERT_DIR) devices log in with their certificates instead.
        """
        interval_ms = round(interval_s * 1000)
        if interval_ms < 1:
            raise ConfigError(f"--interval must be at least 0.001 s (got {interval_s})")
        if not 0.0 <= fault_rate <= 1.0:
            raise ConfigError(f"--fault-rate must be between 0 and 1 (got {fault_rate})")
        if not 1 <= batch <= MAX_BATCH_ENTRIES:
            raise ConfigError(f"--batch must be between 1 and {MAX_BATCH_ENTRIES} (got {batch})")
        self.batch = batch
        self.settings = settings
        self.models = load_models(settings.models_file)
        specs = plan_fleet(count, list(kinds), protocol, site, self.models)
        started = time.time()
        ids = [spec.device_id for spec in specs]
        self._certs: dict[str, DeviceCert] = {}
        self._passwords: dict[str, str] = {}
        if settings.device_cert_dir is not None:
            self._certs = _certificates_for(ids, settings, settings.device_cert_dir)
        else:
            self._passwords = _passwords_for(
                ids,
                credentials if credentials is not None else read_credentials(settings.credentials_path),
                settings.credentials_path,
            )
        self.devices: list[SimulatedDevice] = [
            SimulatedDevice.create(
                spec, seed=seed, interval_ms=interval_ms, fault_rate=fault_rate, start_s=started, models=self.models
            )
            for spec in specs
        ]
        # Devices spread over a cluster's nodes: device i starts on node i modulo the nodes.
        self._runtimes = {
            d.device_id: _Runtime(
                d,
                Backoff(DEVICE_RECONNECT, device_rng(seed, d.device_id + "/backoff")),
                telemetry_key(d.site, d.kind, d.device_id),
                node=index,
            )
            for index, d in enumerate(self.devices)
        }
        self.lag = LagRecorder()
        self.command_times = CommandTimes()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._inbox: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_order = itertools.count()
        self._dirty: set[MqttLink] = set()
        self._pool = ThreadPoolExecutor(STOMP_POOL_THREADS, thread_name_prefix="connect")
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._finished = False
        self._started_at = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self, wait_s: float | None = CONNECT_WAIT_S) -> None:
        """Connect every device and start their readings; with `wait_s`, wait until all are online."""
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="fleet-loop", daemon=True)
        self._thread.start()
        if wait_s is None:
            return
        if not self._wait_started(wait_s):
            missing = [rt for rt in self._runtimes.values() if rt.state not in ("online", "refused")]
            missing = missing or [rt for rt in self._runtimes.values() if rt.state != "online"]
            reasons = sorted({rt.last_error for rt in missing if rt.last_error}) or ["no answer"]
            self.close()
            raise BrokerUnavailable(
                f"{len(missing)} of {len(self._runtimes)} devices not online "
                f"(MQTT {format_addresses(self.settings.mqtt_brokers)}, "
                f"STOMP {format_addresses(self.settings.stomp_brokers)}): {'; '.join(reasons[:3])}"
            )

    def _wait_started(self, wait_s: float) -> bool:
        """True once every device is online or refused (its credential is no good: it is counted, not waited
        for) and one at least is online; False after `wait_s`, or as soon as every device failed and none is up."""
        deadline = time.monotonic() + wait_s
        while True:
            runtimes = list(self._runtimes.values())
            online = any(rt.state == "online" for rt in runtimes)
            if online and all(rt.state in ("online", "refused") for rt in runtimes):
                return True
            if time.monotonic() >= deadline or (all(rt.errors for rt in runtimes) and not online):
                return False
            time.sleep(0.02)

    def close(self) -> None:
        """Stop readings, wait (bounded) for buffered ones to be confirmed, say offline, disconnect."""
        if self._thread is None:
            return
        self.call_soon(self._begin_shutdown)
        self._thread.join(DRAIN_TIMEOUT_S + GOODBYE_TIMEOUT_S + 5.0)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._finished

    # --- what other threads may ask --------------------------------------------------------------

    def device(self, device_id: str) -> SimulatedDevice:
        return self._runtime(device_id).device

    def refused_devices(self) -> list[str]:
        """The devices the broker refused to log in (unknown, wrong or revoked credential), in fleet order."""
        return [rt.device.device_id for rt in list(self._runtimes.values()) if rt.state == "refused"]

    def is_online(self, device_id: str) -> bool:
        return self._runtime(device_id).state == "online"

    def _address(self, rt: _Runtime) -> tuple[str, int]:
        brokers = self.settings.mqtt_brokers if rt.device.protocol == "mqtt" else self.settings.stomp_brokers
        return brokers[rt.node % len(brokers)]

    def describe(self, device_id: str) -> str:
        """Its connection in a few words: state, broker address, last error (for a test's failure message)."""
        rt = self._runtime(device_id)
        host, port = self._address(rt)
        return f"{rt.state} on {host}:{port}, last error: {rt.last_error or 'none'}"

    def wait_online(self, device_ids: Iterable[str] | None = None, timeout_s: float = CONNECT_WAIT_S) -> bool:
        wanted = [self._runtime(i) for i in device_ids] if device_ids is not None else list(self._runtimes.values())
        deadline = time.monotonic() + timeout_s
        while any(rt.state != "online" for rt in wanted):
            if time.monotonic() > deadline or self._finished:
                return False
            time.sleep(0.02)
        return True

    def cut(self, device_id: str, for_s: float = 0.0) -> None:
        """Drop one device's connection abruptly; it starts reconnecting (with backoff) after `for_s`."""
        rt = self._runtime(device_id)

        def cut() -> None:
            rt.offline_until = time.monotonic() + for_s
            if rt.link is not None:
                rt.link.cut()

        self._in_loop(cut)

    def stop_device(self, device_id: str, clean: bool = True) -> None:
        """Switch one device off: readings stop; `clean` says offline first, else the connection just dies."""
        rt = self._runtime(device_id)

        def stop() -> None:
            rt.intent, rt.powered, rt.state = "stop", False, "stopped"
            rt.schedule += 1
            if rt.link is not None:
                if clean:
                    rt.link.close(encode(rt.device.presence("offline")))
                else:
                    rt.link.cut()

        self._in_loop(stop)

    def start_device(self, device_id: str) -> None:
        """Switch a stopped device on again: it reconnects and its readings carry on from the same seq."""
        rt = self._runtime(device_id)
        self._in_loop(lambda: self._power_on(rt))

    def stats(self) -> FleetStats:
        """A snapshot of the counters (cheap enough to call a few times a second with thousands of devices)."""
        columns: dict[str, list[int]] = {}
        for rt in list(self._runtimes.values()):
            d = rt.device
            outbox = d.outbox
            row = columns.setdefault(d.protocol, [0] * 11)
            row[0] += 1
            row[1] += rt.state == "online"
            row[2] += d.seq
            row[3] += rt.sent
            row[4] += outbox.confirmed
            row[5] += len(outbox)
            row[6] += outbox.dropped
            row[7] += rt.reconnects
            row[8] += d.commands_handled
            row[9] += rt.errors + d.bad_commands
            row[10] += rt.state == "refused"
        by_protocol = {protocol: ProtocolStats(*row) for protocol, row in sorted(columns.items())}
        elapsed = time.monotonic() - self._started_at if self._started_at else 0.0
        return FleetStats(by_protocol=by_protocol, elapsed_s=elapsed, lag=self.lag.summary())

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the event loop thread (safe from any thread)."""
        self._inbox.append(callback)
        with contextlib.suppress(OSError):  # a full wake-up pipe means the loop is awake already
            self._wake_w.send(b"\0")

    # --- the event loop ------------------------------------------------------------------------

    def _run(self) -> None:
        start = time.monotonic()
        count = len(self._runtimes)
        for index, rt in enumerate(self._runtimes.values()):
            # Spread first readings over one interval so the fleet does not publish in bursts.
            self._schedule_reading(rt, start + rt.device.interval_ms / 1000.0 * index / count)
        self._connect_paced(deque(self._runtimes.values()), [])
        self._call_at(start + KEEPALIVE_TICK_S, self._keepalive)
        try:
            while not self._finished:
                self._turn()
        finally:
            for rt in self._runtimes.values():
                if rt.link is not None:
                    rt.link.cut()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _turn(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            callback()
        self._flush()
        timeout = MAX_SLEEP_S
        if self._timers:
            timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
        if self._inbox:
            timeout = 0.0
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while self._wake_r.recv(4096):
                        pass
            else:
                key.data.on_ready(mask)
        while self._inbox:
            self._inbox.popleft()()
        # Stamped before the write: once the bytes are out, the ack may be read before this thread runs again.
        self.command_times.acks_writing(time.monotonic())
        self._flush()

    def _flush(self) -> None:
        while self._dirty:
            self._dirty.pop().flush()

    def _call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_order), callback))

    def _in_loop(self, action: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return action()
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(action())
            except BaseException as exc:
                future.set_exception(exc)

        self.call_soon(run)
        return future.result(timeout=10.0)

    def _runtime(self, device_id: str) -> _Runtime:
        try:
            return self._runtimes[device_id]
        except KeyError:
            raise ConfigError(f"no device {device_id!r} in this fleet") from None

    def _keepalive(self) -> None:
        for rt in self._runtimes.values():
            if rt.link is not None:
                rt.link.tick()
        if not self._stopping:
            self._call_at(time.monotonic() + KEEPALIVE_TICK_S, self._keepalive)

    # --- readings ------------------------------------------------------------------------------

    def _schedule_reading(self, rt: _Runtime, due: float) -> None:
        schedule = rt.schedule
        self._call_at(due, lambda: self._reading_due(rt, schedule, due))

    def _reading_due(self, rt: _Runtime, schedule: int, due: float) -> None:
        if schedule != rt.schedule or not rt.powered or self._stopping:
            return
        self.lag.add(time.monotonic() - due)
        rt.device.produce(now_ms())
        self._pump(rt)
        self._schedule_reading(rt, due + rt.device.interval_ms / 1000.0)

    def _pump(self, rt: _Runtime) -> None:
        """Hand waiting readings to the broker, in seq order, as far as the in-flight window allows."""
        link = rt.link
        if link is None or rt.state != "online":
            return
        outbox = rt.device.outbox
        if self.batch > 1 and outbox.waiting < self.batch and not self._stopping:
            return  # a batch leaves full (or at shutdown)
        most = self.batch if self.batch > 1 else (BACKLOG_BATCH_ENTRIES if outbox.waiting > 1 else 1)
        for group in outbox.sendable_groups(most, BATCH_MAX_BYTES):
            body = group[0][1] if len(group) == 1 else batch_body([entry[1] for entry in group])
            try:
                token = link.publish(rt.routing_key, body, token=group[0][0])
            except LinkDown:
                outbox.unsent(group)
                return
            outbox.sent(token, group)
            rt.sent += len(group)
        self._send_logs(rt)
        if isinstance(link, MqttLink):
            self._dirty.add(link)

    def _send_logs(self, rt: _Runtime) -> None:
        """Publish the device's waiting log lines, at most once each (a line is worth less than a reading)."""
        link = rt.link
        if link is None or rt.state != "online" or not len(rt.device.log):
            return
        for routing_key, body in rt.device.log.take():
            try:
                link.publish(routing_key, body)
            except LinkDown:
                rt.device.log.dropped += 1
        if isinstance(link, MqttLink):
            self._dirty.add(link)

    def _publish(self, rt: _Runtime, routing_key: str, body: bytes) -> None:
        if rt.link is None:
            return
        try:
            rt.link.publish(routing_key, body)
        except LinkDown:
            rt.errors += 1
            return
        if isinstance(rt.link, MqttLink):
            self._dirty.add(rt.link)

    # --- connections -----------------------------------------------------------------------------

    def _connect(self, rt: _Runtime) -> None:
        if rt.link is not None or not rt.powered or self._stopping:
            return
        rt.state = "connecting"
        rt.intent = "run"
        will = encode(rt.device.presence("offline"))
        link: AnyLink
        brokers = self.settings.mqtt_brokers if rt.device.protocol == "mqtt" else self.settings.stomp_brokers
        address = brokers[rt.node % len(brokers)]
        if rt.device.protocol == "mqtt":
            link = MqttLink(
                rt.device.device_id,
                self.settings,
                self._selector,
                self,
                will,
                MAX_IN_FLIGHT,
                self._dirty.add,
                password=self._passwords.get(rt.device.device_id, ""),
                cert=self._certs.get(rt.device.device_id),
                pool=self._pool,
                call_soon=self.call_soon,
                address=address,
            )
        else:
            link = StompLink(
                rt.device.device_id,
                self.settings,
                self,
                self.call_soon,
                self._pool,
                password=self._passwords.get(rt.device.device_id, ""),
                cert=self._certs.get(rt.device.device_id),
                address=address,
            )
        rt.link = link
        try:
            link.open()
        except (OSError, ValueError) as exc:
            self.link_down(link, f"connect failed: {exc}")

    def _connect_paced(self, waiting: deque[_Runtime], connecting: list[_Runtime]) -> None:
        """Connect waiting devices while fewer than MAX_CONNECTING first attempts are under way."""
        connecting = [rt for rt in connecting if rt.state == "connecting"]
        while waiting and len(connecting) < MAX_CONNECTING:
            rt = waiting.popleft()
            self._connect(rt)
            connecting.append(rt)
        if waiting:
            self._call_at(time.monotonic() + CONNECT_PACE_S, lambda: self._connect_paced(waiting, connecting))

    def _retry_later(self, rt: _Runtime, at_least_s: float = 0.0, state: DeviceState = "waiting") -> None:
        delay = max(rt.backoff.next_delay_s() + at_least_s, rt.offline_until - time.monotonic())
        rt.attempt += 1
        attempt = rt.attempt
        rt.state = state

        def retry() -> None:
            if attempt == rt.attempt and rt.state == state:
                self._connect(rt)

        self._call_at(time.monotonic() + delay, retry)

    def _power_on(self, rt: _Runtime) -> None:
        if rt.powered or self._stopping:
            return
        rt.powered = True
        rt.intent = "run"
        rt.offline_until = 0.0
        rt.backoff.reset()
        rt.schedule += 1
        self._schedule_reading(rt, time.monotonic() + rt.device.interval_ms / 1000.0)
        if rt.link is None:
            self._connect(rt)

    # --- LinkEvents (called on the loop thread by the links) -----------------------------------

    def _owner(self, link: Any) -> _Runtime | None:
        rt = self._runtimes.get(link.device_id)
        return rt if rt is not None and rt.link is link else None

    def link_up(self, link: Any) -> None:
        rt = self._owner(link)
        if rt is None:
            return
        if rt.intent != "run" or self._stopping:
            link.close(encode(rt.device.presence("offline")))
            return
        host, port = self._address(rt)
        if rt.ever_online:
            rt.reconnects += 1
            if rt.lost_at:
                down_s = round(time.monotonic() - rt.lost_at, 1)
                message = f"reconnected to {host}:{port} after {down_s} s"
                rt.device.log.add("warning", message, now_ms(), down_s=down_s, protocol=rt.device.protocol)
            else:
                rt.device.log.add("info", f"connected again to {host}:{port}", now_ms(), protocol=rt.device.protocol)
            rt.lost_at = 0.0
        else:
            rt.device.log.add("info", f"connected to {host}:{port}", now_ms(), protocol=rt.device.protocol)
        rt.ever_online = True
        rt.state = "online"
        rt.backoff.reset()
        self._publish(rt, status_key(rt.device.device_id), encode(rt.device.presence("online")))
        self._pump(rt)

    def link_down(self, link: Any, reason: str) -> None:
        rt = self._owner(link)
        if rt is None:
            return
        rt.link = None
        rt.device.outbox.requeue_in_flight()
        if rt.intent == "run":
            rt.errors += 1
            rt.last_error = reason
            level: LogLevel = "error" if link.refused else "warning"
            what = "login refused" if link.refused else "connection lost"
            rt.device.log.add(level, f"{what}: {reason}"[:200], now_ms())
            rt.lost_at = rt.lost_at or time.monotonic()
            if link.refused:
                # An unknown or revoked credential, or a broker whose auth service is down (which refuses
                # every login): it tries again, slowly, and buffers meanwhile; the rest of the fleet carries on.
                if not self._stopping:
                    self._retry_later(rt, REFUSED_RETRY_S, "refused")
                return
            if not self._stopping:
                # Its node may be the one that failed: the next attempt goes to the next node (one node: the same).
                rt.node += 1
                self._retry_later(rt)
                return
        if rt.intent == "reboot":
            rt.state = "rebooting"
            self._call_at(time.monotonic() + REBOOT_DOWNTIME_S, lambda: self._power_on(rt))
        elif rt.intent == "stop":
            rt.state = "stopped"
        else:
            rt.state = "closed"

    def link_confirmed(self, link: Any, token: Hashable) -> None:
        rt = self._owner(link)
        if rt is not None and rt.device.outbox.confirm(token):
            self._pump(rt)

    def link_command(self, link: Any, body: bytes) -> None:
        taken = time.monotonic()
        rt = self._owner(link)
        if rt is None:
            return
        outcome = rt.device.handle_command(body)
        if outcome is None:
            return
        self._publish(rt, ack_key(rt.device.device_id), encode(outcome.ack))
        self.command_times.ack_queued(outcome.ack.id, taken)
        self._send_logs(rt)
        if outcome.interval_changed:
            rt.schedule += 1
            self._schedule_reading(rt, time.monotonic() + rt.device.interval_ms / 1000.0)
            # A new interval is news for whoever watches for silent devices.
            self._publish(rt, status_key(rt.device.device_id), encode(rt.device.presence("online")))
        if outcome.reboot:
            rt.intent, rt.powered = "reboot", False
            rt.schedule += 1
            link.close(encode(rt.device.presence("offline")))

    # --- shutdown --------------------------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for rt in self._runtimes.values():
            self._pump(rt)  # a partial batch leaves now
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        self._drain(deadline)

    def _drain(self, deadline: float) -> None:
        """Wait until buffered readings are confirmed (or the deadline passes), then say goodbye."""
        online = [rt for rt in self._runtimes.values() if rt.state == "online"]
        if time.monotonic() < deadline and any(len(rt.device.outbox) for rt in online):
            self._call_at(time.monotonic() + 0.05, lambda: self._drain(deadline))
            return
        for rt in self._runtimes.values():
            rt.intent = "shutdown"
            if rt.link is not None:
                rt.state = "closing"
                rt.link.close(encode(rt.device.presence("offline")))
            elif rt.state not in ("stopped", "refused"):
                rt.state = "closed"
        self._await_goodbyes(time.monotonic() + GOODBYE_TIMEOUT_S)

    def _await_goodbyes(self, deadline: float) -> None:
        if time.monotonic() < deadline and any(rt.link is not None for rt in self._runtimes.values()):
            self._call_at(time.monotonic() + 0.05, lambda: self._await_goodbyes(deadline))
            return
        self._finished = True


def batch_body(bodies: Sequence[bytes]) -> bytes:
    """One telemetry batch of a device's single-reading bodies (in their order)."""
    readings = [decode(body, Reading) for body in bodies]
    first = readings[0]
    entries = [BatchEntry(seq=r.seq, ts=r.ts, readings=r.readings) for r in readings]
    return encode(Batch(device=first.device, site=first.site, kind=first.kind, batch=entries))
