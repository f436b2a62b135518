"""The library behind `hub twin`: desired changes validated and published, the stored twins read back.

A change goes to the twin service as a `Desired` message per device (`twin.desired.<device>`),
published persistent with a confirm: once `publish_changes` returns, the change is in queue
`hub.twin` and the hub applies it even if it is not running now. The twins are read through the
outputs' reader (`twins`), as the twin service stored them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from hub.clients.amqp import close_quietly, connect
from hub.control.fleet_view import read_fleet
from hub.core.config import Settings
from hub.core.contract import EXCHANGE, Desired, Rollout, Scalar, encode, now_ms, require_identifier
from hub.core.errors import BrokerUnavailable, ConfigError
from hub.core.models import DeviceModels
from hub.core.twin import RolloutState, Twin, decode_rollout, decode_twin
from hub.outputs.registry import open_reader


@dataclass(frozen=True)
class Target:
    device: str
    kind: str
    site: str = ""


def read_twins(settings: Settings) -> list[Twin]:
    """Every stored twin, by device name (`StorageUnavailable` / `Unreadable` when it cannot be read)."""
    reader = open_reader(settings)
    try:
        series = reader.twins()
    finally:
        reader.close()
    twins = []
    for one in series:
        for row in one.rows[:1]:
            try:
                twins.append(decode_twin(str(row.get("doc") or "")))
            except ValueError:
                continue
    return sorted(twins, key=lambda twin: twin.device)


def targets(
    settings: Settings, devices: Sequence[str], kind: str | None, site: str | None, everyone: bool
) -> list[Target]:
    """The devices a `twin set` addresses, each with its kind: named ones (known to the fleet or to
    the twins), or every device of the fleet of a kind, of a site, or all."""
    for device in devices:
        require_identifier(device, "device")
    if kind is not None:
        require_identifier(kind, "kind")
    if site is not None:
        require_identifier(site, "site")
    if bool(devices) == (kind is not None or site is not None or everyone):
        raise ConfigError("name devices, or choose them with --kind, --site or --all (not both)")
    known: dict[str, Target] = {}
    for view in read_fleet(settings):
        known[view.device] = Target(view.device, view.kind, view.site)
    for twin in read_twins(settings):
        if twin.kind and twin.device not in known:
            known[twin.device] = Target(twin.device, twin.kind, twin.site)
    if devices:
        unknown = [device for device in devices if device not in known]
        if unknown:
            raise ConfigError(f"unknown device(s) {', '.join(unknown)}: the fleet has never seen them")
        return [known[device] for device in dict.fromkeys(devices)]
    chosen = [
        target
        for target in known.values()
        if (kind is None or target.kind == kind) and (site is None or target.site == site)
    ]
    if not chosen:
        raise ConfigError(
            "no device of the fleet matches " + (f"--kind {kind} " if kind else "") + (f"--site {site}" if site else "")
        )
    return sorted(chosen, key=lambda target: target.device)


def changes(models: DeviceModels, chosen: Iterable[Target], values: dict[str, Scalar | None]) -> list[Desired]:
    """One validated change per device; a value its kind cannot take is a `ConfigError` naming the range."""
    if not values:
        raise ConfigError("say what to set: property=value (e.g. setpoint=21, interval_ms=5000)")
    at = now_ms()
    out = []
    for target in chosen:
        for name, value in values.items():
            if value is not None:
                models.validate_property(target.kind, name, value)
        out.append(Desired(id=uuid.uuid4().hex, device=target.device, kind=target.kind, desired=values, ts=at))
    return out


def publish(settings: Settings, messages: Sequence[Any], routing_key: Any) -> None:
    """Publish every message persistent, mandatory and confirmed (`routing_key(message)` names its key)."""
    connection = connect(settings, "twin (cli)")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message in messages:
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                app_id="cli",
                timestamp=int(time.time()),
            )
            channel.basic_publish(EXCHANGE, routing_key(message), encode(message), properties, mandatory=True)
    except pika.exceptions.UnroutableError:
        raise BrokerUnavailable("RabbitMQ has no queue hub.twin to take the change (start the hub once)") from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailable(f"lost the connection to RabbitMQ while publishing: {exc!r}") from None
    finally:
        close_quietly(connection)


def publish_changes(settings: Settings, messages: Sequence[Desired]) -> None:
    publish(settings, messages, lambda message: message.routing_key)


def pending_for_ms(twin: Twin, now: int) -> int:
    """How long the oldest property of the delta has waited (0 when in sync)."""
    delta = twin.delta
    since = [c.since_ms for name, c in twin.converging.items() if name in delta]
    return max(0, now - min(since)) if since else 0


def parse_stages(text: str) -> list[int]:
    """`10%,50%,100%` -> [10, 50, 100]: rising shares ending at 100."""
    try:
        stages = [int(part.strip().rstrip("%")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--rollout {text!r} is not a list of shares: use e.g. 10%,50%,100%") from None
    if not stages or stages != sorted(set(stages)) or stages[0] < 1 or stages[-1] != 100:
        raise ConfigError(f"--rollout {text!r}: shares must rise from at least 1% and end at 100%")
    return stages


def parse_percent(text: str, option: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a share: use e.g. 5%") from None
    if not 0 <= value <= 100:
        raise ConfigError(f"{option} must be between 0% and 100% (got {text})")
    return value


def build_rollout(
    models: DeviceModels,
    chosen: Sequence[Target],
    values: dict[str, Scalar | None],
    stages: list[int],
    pause_s: float,
    abort_failures: float,
) -> Rollout:
    """A validated rollout of `values` over `chosen`, in their order."""
    desired: dict[str, Scalar] = {}
    for name, value in values.items():
        if value is None:
            raise ConfigError(f"a rollout sets values: {name}=null is not one")
        desired[name] = value
    changes(models, chosen, dict(desired))  # validates every device's kind
    return Rollout(
        id="ro-" + uuid.uuid4().hex[:12],
        desired=desired,
        devices=[(target.device, target.kind) for target in chosen],
        stages=stages,
        pause_ms=round(pause_s * 1000),
        abort_failures=abort_failures,
        ts=now_ms(),
    )


#: Devices one bulk change names at most: a rollout body of 1000 (device, kind) pairs is ~40 KB,
#: below the contract's 64 KB.
BULK_CHUNK = 1_000


def bulk_rollouts(models: DeviceModels, chosen: Sequence[Target], values: dict[str, Scalar | None]) -> list[Rollout]:
    """A change of many devices as one-stage rollouts of up to `BULK_CHUNK` devices each: a few
    messages (one confirm each) instead of one per device, which a quorum queue confirms one by one."""
    return [
        build_rollout(models, chosen[start : start + BULK_CHUNK], values, [100], 0.0, 100.0)
        for start in range(0, len(chosen), BULK_CHUNK)
    ]


def read_rollouts(settings: Settings) -> list[RolloutState]:
    """Every stored rollout, newest first."""
    reader = open_reader(settings)
    try:
        series = reader.rollouts()
    finally:
        reader.close()
    rollouts = []
    for one in series:
        for row in one.rows[:1]:
            try:
                rollouts.append(decode_rollout(str(row.get("doc") or "")))
            except ValueError:
                continue
    return sorted(rollouts, key=lambda rollout: rollout.created_ms, reverse=True)
