"""The alarms as people see them (`python -m hub alarms`), and their acknowledgement.

Listing reads `alarms` back through the outputs' reader: the newest row of every alarm type and
device (each one's current alarm, however old) and every row of the last `since_s` seconds
(earlier occurrences), folded into one `AlarmRecord` per alarm id. An ack is a message to the
alarm's owner: the telemetry partition of its device, through exchange `iot.telemetry` with the
device's telemetry routing key (devices cannot publish there); the owner records and publishes
the `acked` transition once, however often the ack is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import pika

from hub.clients.amqp import connect
from hub.core.alarms import SEVERITY_RANK, AlarmRecord, newest_per_alarm
from hub.core.config import Settings
from hub.core.contract import ALARM_ACK_TYPE, AlarmAck, encode, require_identifier, telemetry_key
from hub.core.errors import BrokerUnavailable, ConfigError
from hub.outputs.registry import open_reader
from hub.runtime.topology import TELEMETRY_EXCHANGE

StateFilter = Literal["active", "cleared", "all"]
#: How far back earlier occurrences (cleared alarms) are listed unless told otherwise.
DEFAULT_SINCE_S = 7 * 86_400


class UnknownAlarm(ConfigError):
    """An ack named an alarm id the store does not hold (exit 2, the id named)."""


def read_alarms(settings: Settings, since_s: int = DEFAULT_SINCE_S) -> list[AlarmRecord]:
    reader = open_reader(settings)
    try:
        return newest_per_alarm([*reader.alarm_rows(), *reader.alarm_rows(since_s)])
    finally:
        reader.close()


@dataclass(frozen=True)
class AlarmFilter:
    state: StateFilter = "active"
    severity: str | None = None
    device: str | None = None
    site: str | None = None

    def __post_init__(self) -> None:
        if self.severity is not None and self.severity not in SEVERITY_RANK:
            raise ConfigError(f"--severity {self.severity!r} is not one of {', '.join(SEVERITY_RANK)}")
        for what in ("device", "site"):
            value = getattr(self, what)
            if value is not None:
                require_identifier(value, what)

    def select(self, alarms: Iterable[AlarmRecord]) -> list[AlarmRecord]:
        return [
            alarm
            for alarm in alarms
            if (self.state == "all" or alarm.state == self.state)
            and (self.severity is None or alarm.severity == self.severity)
            and (self.device is None or alarm.device == self.device)
            and (self.site is None or alarm.site == self.site)
        ]


def acks_for(alarms: Sequence[AlarmRecord], ids: Sequence[str], by: str, note: str, at_ms: int) -> list[AlarmAck]:
    """One ack per id; an id the store does not hold, or of a cleared alarm, is an error (nothing is sent)."""
    known = {alarm.id: alarm for alarm in alarms}
    unknown = [alarm_id for alarm_id in ids if alarm_id not in known]
    if unknown:
        raise UnknownAlarm(f"unknown alarm {', '.join(unknown)}: see `python -m hub alarms --state all`")
    cleared = [alarm_id for alarm_id in ids if not known[alarm_id].active]
    if cleared:
        raise UnknownAlarm(f"alarm {', '.join(cleared)} is cleared: only an active alarm can be acknowledged")
    if not 1 <= len(by) <= 64:
        raise ConfigError("--by must be 1 to 64 characters")
    if len(note) > 1024:
        raise ConfigError("--note must be at most 1024 characters")
    return [
        AlarmAck(
            alarm_id=alarm_id,
            device=known[alarm_id].device,
            site=known[alarm_id].site,
            kind=known[alarm_id].kind,
            by=by,
            note=note,
            ts=at_ms,
        )
        for alarm_id in dict.fromkeys(ids)
    ]


def send_acks(settings: Settings, acks: Sequence[AlarmAck]) -> None:
    """Publish each ack to its alarm's owner, persistent, confirmed by the broker."""
    connection = connect(settings, "alarms-ack")
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for ack in acks:
            properties = pika.BasicProperties(content_type="application/json", delivery_mode=2, type=ALARM_ACK_TYPE)
            key = telemetry_key(ack.site, ack.kind, ack.device)
            try:
                channel.basic_publish(TELEMETRY_EXCHANGE, key, encode(ack), properties, mandatory=True)
            except pika.exceptions.UnroutableError:
                raise BrokerUnavailable(
                    f"the ack of {ack.alarm_id} reached no telemetry partition: has the hub ever run here?"
                ) from None
            except pika.exceptions.ChannelClosedByBroker as exc:  # no exchange iot.telemetry, no permission
                raise BrokerUnavailable(f"the broker refused the ack of {ack.alarm_id}: {exc.reply_text}") from None
    finally:
        connection.close()
