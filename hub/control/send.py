"""Send a command to one or many devices and wait for their acks.

The order matters: the ack queue is bound to `acks.<device>` BEFORE the command goes out, so
an ack can never overtake our subscription. Commands are published persistently, with publisher
confirms and `mandatory`, an id and an expiry (`Command.expires`: the device refuses it after
that). No AMQP `expiration`: it would expire the hub's record of the command too; the broker's
`device-sessions` policy bounds how long a command waits in an offline device's session.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from hub.clients.amqp import close_quietly, connect
from hub.clients.management import read_subscribed_devices
from hub.control.fleet_view import read_fleet
from hub.core.config import Settings
from hub.core.contract import (
    EXCHANGE,
    Ack,
    Command,
    Deferred,
    Scalar,
    ack_key,
    command_key,
    decode,
    deferred_key,
    encode,
    now_ms,
    require_identifier,
)
from hub.core.errors import BrokerUnavailable, ConfigError, InvalidMessage, StorageUnavailable
from hub.core.exit_codes import ExitCode

#: How long `send` waits for an ack unless told otherwise.
DEFAULT_TIMEOUT_S = 10.0
#: The longest wait allowed; a command is meant for now, not for later.
MAX_TIMEOUT_S = 3600.0
#: The longest a command may wait for an offline device (`--ttl`): the twin keeps it, not the broker.
MAX_TTL_S = 30 * 86_400.0
#: Granularity of the wait loop (how late a timeout may be noticed).
POLL_S = 0.05
#: How often the broker is asked whether an offline device has subscribed again.
SUBSCRIPTION_POLL_S = 0.25

Origin = Literal["cli", "rule"]
OutcomeStatus = Literal["ok", "error", "unsupported", "expired", "timeout", "unknown_device", "queued"]

_EXIT_CODE: dict[OutcomeStatus, ExitCode] = {
    "ok": ExitCode.OK,
    "error": ExitCode.DEVICE_REFUSED,
    "unsupported": ExitCode.DEVICE_REFUSED,
    "expired": ExitCode.DEVICE_REFUSED,
    "timeout": ExitCode.TIMEOUT,
    "unknown_device": ExitCode.UNKNOWN_DEVICE,
    "queued": ExitCode.OK,
}
#: When several devices fare differently, the exit code names the worst: no subscriber, then
#: silence, then a refusal.
_SEVERITY = [ExitCode.UNKNOWN_DEVICE, ExitCode.TIMEOUT, ExitCode.DEVICE_REFUSED, ExitCode.OK]


@dataclass(frozen=True)
class SendStamps:
    """Where one answered command's time went in the sender, in `time.monotonic()` seconds.

    For callers that split a round trip (the benchmark); not printed.
    """

    #: `send` was called.
    entered: float
    #: The command's publish began (the round trip starts here).
    published: float
    #: The broker confirmed it (publish returned).
    confirmed: float
    #: Its ack was handed to us.
    acked: float


@dataclass(frozen=True)
class Outcome:
    """What became of one command to one device."""

    device: str
    command: str
    id: str
    status: OutcomeStatus
    detail: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    rtt_ms: float | None = None
    stamps: SendStamps | None = field(default=None, compare=False, repr=False)

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT_CODE[self.status]

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "command": self.command,
            "id": self.id,
            "status": self.status,
            "detail": self.detail,
            "state": self.state,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 1),
        }


def overall_exit_code(outcomes: Sequence[Outcome]) -> ExitCode:
    codes = {outcome.exit_code for outcome in outcomes}
    return next((code for code in _SEVERITY if code in codes), ExitCode.OK)


def build_command(
    command: str,
    args: dict[str, Scalar],
    timeout_s: float,
    at_ms: int | None = None,
    longest_s: float = MAX_TIMEOUT_S,
    option: str = "--timeout",
) -> Command:
    """A valid `Command` that expires when we stop waiting for it, or a usage error."""
    if not 0 < timeout_s <= longest_s:
        raise ConfigError(f"{option} must be between 0 and {longest_s:.0f} seconds (got {timeout_s:g})")
    require_identifier(command, "command")
    ts = now_ms() if at_ms is None else at_ms
    candidate = Command(id=uuid.uuid4().hex, command=command, args=args, ts=ts, expires=ts + round(timeout_s * 1000))
    try:
        return decode(encode(candidate), Command)
    except InvalidMessage as exc:
        raise ConfigError(f"command {command!r} with these arguments breaks the contract: {exc.detail}") from None


class CommandSender:
    """One AMQP connection that sends commands and collects their acks; a context manager.

    `origin` becomes the AMQP `app_id` ("cli" or "rule"), which the hub records. `stop`, once
    set, ends a wait for acks with KeyboardInterrupt, raised between two reads from the broker
    (never inside pika: see `hub.core.signals`), so the connection still closes cleanly.
    """

    def __init__(self, settings: Settings, origin: Origin = "cli", stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.origin = origin
        self._stop = stop
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._queue = ""
        self._bound: set[str] = set()
        #: Command id -> the device it went to: only that device's ack answers it.
        self._expected: dict[str, str] = {}
        self._acks: dict[str, tuple[Ack, float]] = {}

    def __enter__(self) -> CommandSender:
        self._connection = connect(self.settings, f"send ({self.origin})")
        try:
            channel = self._connection.channel()
            channel.confirm_delivery()
            self._queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.basic_consume(self._queue, self._on_ack, auto_ack=True)
        except pika.exceptions.AMQPError as exc:
            close_quietly(self._connection)
            raise BrokerUnavailable(f"RabbitMQ refused to set up the ack queue: {exc}") from None
        self._channel = channel
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        close_quietly(self._connection)
        self._connection = None

    def send(
        self,
        devices: Sequence[str],
        command: str,
        args: dict[str, Scalar],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_outcome: Callable[[Outcome], None] = lambda _outcome: None,
    ) -> list[Outcome]:
        """Send `command` to every device, wait for each ack until `timeout_s`; outcomes in `devices` order.

        A device the broker has no subscription for is `unknown_device` at once, unless the fleet
        view knows it: then it is offline (rebooting, reconnecting), and the command goes out as
        soon as it subscribes again, or ends as `timeout`.
        """
        entered = time.monotonic()
        for device in devices:
            require_identifier(device, "device")
        build_command(command, args, timeout_s)
        deadline = time.monotonic() + timeout_s
        outcomes: dict[str, Outcome] = {}
        in_flight: dict[str, tuple[str, float, float]] = {}  # command id -> (device, sent at, confirmed at)

        def settle(outcome: Outcome) -> None:
            outcomes[outcome.device] = outcome
            on_outcome(outcome)

        wanted = list(dict.fromkeys(devices))
        channel = self._require_channel()
        for device in wanted:
            self._bind(channel, device)
        subscribed = read_subscribed_devices(self.settings)
        offline: set[str] = set()
        if subscribed is not None and any(device not in subscribed for device in wanted):
            known = self._known_devices()
            for device in wanted:
                if device in subscribed:
                    continue
                if known is not None and device in known:
                    offline.add(device)
                else:
                    settle(Outcome(device, command, "", "unknown_device", _no_subscriber(device)))
        ready = [device for device in wanted if device not in outcomes and device not in offline]
        next_check = time.monotonic() + SUBSCRIPTION_POLL_S
        while True:
            for device in ready:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    offline.add(device)
                    continue
                body = build_command(command, args, remaining)
                self._expected[body.id] = device
                sent_at = time.monotonic()
                try:
                    self._publish(channel, device, body, remaining)
                except pika.exceptions.UnroutableError:
                    settle(Outcome(device, command, body.id, "unknown_device", _no_subscriber(device)))
                    continue
                in_flight[body.id] = (device, sent_at, time.monotonic())
            ready = []
            for command_id in [cid for cid in in_flight if cid in self._acks]:
                device, sent_at, confirmed_at = in_flight.pop(command_id)
                ack, received_at = self._acks.pop(command_id)
                rtt_ms = (received_at - sent_at) * 1000
                stamps = SendStamps(entered, sent_at, confirmed_at, received_at)
                settle(Outcome(device, command, command_id, ack.status, ack.detail, dict(ack.state), rtt_ms, stamps))
            if not in_flight and not offline:
                break
            now = time.monotonic()
            if now >= deadline:
                for command_id, (device, _sent_at, _confirmed_at) in in_flight.items():
                    settle(Outcome(device, command, command_id, "timeout", _silent(timeout_s)))
                for device in sorted(offline):
                    settle(Outcome(device, command, "", "timeout", _offline(timeout_s)))
                break
            if offline and now >= next_check:
                next_check = now + SUBSCRIPTION_POLL_S
                back = offline & (read_subscribed_devices(self.settings) or set())
                offline -= back
                ready = sorted(back)
                continue
            self._wait(min(deadline - now, POLL_S))
        return [outcomes[device] for device in wanted]

    def send_or_queue(
        self,
        devices: Sequence[str],
        command: str,
        args: dict[str, Scalar],
        ttl_s: float,
        wait: bool,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> list[Outcome]:
        """`send --ttl`: to an online device as `send` does (waiting up to the ttl with `wait`); for an
        offline one the fleet knows, queued with the twin service (`queued`, or with `wait` its
        outcome, up to the ttl). A device no one has ever seen is `unknown_device`."""
        build_command(command, args, ttl_s, longest_s=MAX_TTL_S, option="--ttl")
        wanted = list(dict.fromkeys(devices))
        for device in wanted:
            require_identifier(device, "device")
        subscribed = read_subscribed_devices(self.settings)
        offline = [] if subscribed is None else [device for device in wanted if device not in subscribed]
        known = self._known_devices() if offline else set()
        outcomes: dict[str, Outcome] = {}
        queued: dict[str, Command] = {}
        for device in offline:
            if known is not None and device not in known:
                outcomes[device] = Outcome(device, command, "", "unknown_device", _no_subscriber(device))
            else:
                body = queued[device] = self.defer(device, command, args, ttl_s)
                outcomes[device] = Outcome(device, command, body.id, "queued", _queued(body))
        online = [device for device in wanted if device not in outcomes]
        if online:
            wait_s = min(ttl_s, MAX_TIMEOUT_S) if wait else min(timeout_s, ttl_s)
            for outcome in self.send(online, command, args, wait_s):
                outcomes[outcome.device] = outcome
        if wait:
            for device, body in queued.items():
                outcomes[device] = self.await_ack(device, body)
        return [outcomes[device] for device in wanted]

    def defer(self, device: str, command: str, args: dict[str, Scalar], ttl_s: float) -> Command:
        """Queue `command` for an offline `device` with the twin service (`twin.command.<device>`):
        it goes out when the device is online before `ttl_s` ends, else it is recorded `expired`.
        Returns once the broker confirmed it (the hub has it, running or not)."""
        require_identifier(device, "device")
        body = build_command(command, args, ttl_s, longest_s=MAX_TTL_S, option="--ttl")
        channel = self._require_channel()
        self._bind(channel, device)
        self._expected[body.id] = device
        properties = BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            app_id=self.origin,
            message_id=body.id,
            timestamp=body.ts // 1000,
        )
        deferred = Deferred(device=device, command=body)
        try:
            channel.basic_publish(EXCHANGE, deferred_key(device), encode(deferred), properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            raise BrokerUnavailable("RabbitMQ has no queue hub.twin to keep the command (start the hub once)") from None
        except pika.exceptions.NackError:
            raise BrokerUnavailable(f"RabbitMQ refused (nacked) the command for {device}") from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"lost the connection to RabbitMQ while sending: {exc!r}") from None
        return body

    def await_ack(self, device: str, body: Command) -> Outcome:
        """The outcome of a deferred command: its ack, or `expired` once its expiry has passed."""
        while body.id not in self._acks:
            remaining_s = (body.expires - now_ms()) / 1000 + POLL_S
            if remaining_s <= 0:
                return Outcome(device, body.command, body.id, "expired", _not_back())
            self._wait(min(remaining_s, POLL_S * 4))
        ack, _received_at = self._acks.pop(body.id)
        rtt_ms = float(max(0, ack.ts - body.ts))
        return Outcome(device, body.command, body.id, ack.status, ack.detail, dict(ack.state), rtt_ms)

    def _known_devices(self) -> set[str] | None:
        """Devices the fleet view knows, or None when InfluxDB cannot say."""
        try:
            return {view.device for view in read_fleet(self.settings)}
        except StorageUnavailable:
            return None

    # --- AMQP plumbing ----------------------------------------------------------------------------

    def _require_channel(self) -> BlockingChannel:
        if self._channel is None:
            raise RuntimeError("CommandSender is used outside its `with` block")
        return self._channel

    def _bind(self, channel: BlockingChannel, device: str) -> None:
        if device not in self._bound:
            self._guard(lambda: channel.queue_bind(self._queue, EXCHANGE, routing_key=ack_key(device)))
            self._bound.add(device)

    def _publish(self, channel: BlockingChannel, device: str, body: Command, timeout_s: float) -> None:
        properties = BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            app_id=self.origin,
            message_id=body.id,
            timestamp=body.ts // 1000,
        )
        try:
            channel.basic_publish(EXCHANGE, command_key(device), encode(body), properties, mandatory=True)
        except pika.exceptions.NackError:
            raise BrokerUnavailable(f"RabbitMQ refused (nacked) the command for {device}") from None
        except (pika.exceptions.UnroutableError, ConfigError):
            raise
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"lost the connection to RabbitMQ while sending: {exc!r}") from None

    def _wait(self, seconds: float) -> None:
        connection = self._connection
        assert connection is not None
        if self._stop is not None and self._stop.is_set():
            raise KeyboardInterrupt("stop requested")
        self._guard(lambda: connection.process_data_events(time_limit=seconds))

    @staticmethod
    def _guard(action: Callable[[], object]) -> None:
        try:
            action()
        except (pika.exceptions.AMQPError, OSError) as exc:
            raise BrokerUnavailable(f"lost the connection to RabbitMQ: {exc or type(exc).__name__}") from None

    def _on_ack(self, _channel: BlockingChannel, method: Basic.Deliver, _props: BasicProperties, body: bytes) -> None:
        received_at = time.monotonic()
        try:
            ack = decode(body, Ack)
        except InvalidMessage:
            return  # not ours to judge: the hub dead-letters invalid acks from its own queue
        # Only the addressee answers, on its own routing key (the broker lets a device publish only
        # there): another device's ack for this id is the hub's to dead-letter, not an outcome.
        device = self._expected.get(ack.id)
        if device is not None and ack.device == device and method.routing_key == ack_key(device):
            del self._expected[ack.id]
            self._acks[ack.id] = (ack, received_at)


def _no_subscriber(_device: str) -> str:
    return "no device by that name is listening for commands, and the fleet has never seen it"


def _silent(timeout_s: float) -> str:
    return f"no answer within {timeout_s:g} s; the command expires unexecuted"


def _queued(body: Command) -> str:
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(body.expires / 1000))
    return f"the device is offline: the hub sends the command when it comes back before {until}"


def _not_back() -> str:
    return "the device did not come back before the --ttl ended; the command was not sent"


def _offline(timeout_s: float) -> str:
    return f"offline: it did not come back within {timeout_s:g} s, so the command was not sent"
