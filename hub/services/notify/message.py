"""The alarm transition as the alarms side publishes it (docs/agents' agreed message, in
docs/contract.md), and the notification body every channel sends (the webhook's JSON).

Parsed once here; a body that is not a transition is refused with a reason code.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from hub.core.contract import MAX_BODY_BYTES, EpochMs, Identifier, Severity
from hub.core.errors import InvalidMessage

Transition = Literal["raised", "escalated", "acked", "cleared"]
#: What a notification says: an alarm's transition, an alarm still unacked after an escalation's
#: delay, or `python -m hub notify test`.
Notice = Literal["transition", "unacked", "test"]
NOTIFICATION_VERSION = 1


class AlarmTransition(msgspec.Struct, frozen=True):
    """One alarm transition (extra fields tolerated, as agreed)."""

    v: Literal[1]
    key: str
    alarm_id: str
    transition: Transition
    type: str
    rule: str
    device: Identifier
    site: Identifier
    kind: Identifier
    severity: Severity
    ts: EpochMs
    raised_at: EpochMs
    sensor: str | None = None
    value: float | None = None
    count: int = 1
    acked: bool = False
    acked_by: str | None = None
    note: str | None = None


class Notification(msgspec.Struct, frozen=True, omit_defaults=False):
    """The body of a webhook POST (and the content of a mail): docs/contract.md, "Notifications"."""

    v: int
    key: str
    notice: Notice
    alarm_id: str
    transition: Transition
    type: str
    rule: str
    device: str
    site: str
    kind: str
    severity: Severity
    sensor: str | None
    value: float | None
    ts: int
    raised_at: int
    count: int
    acked: bool
    acked_by: str | None
    note: str | None
    #: For `unacked`: how long the alarm had been active and unacked (the escalation's delay).
    unacked_after_s: float | None = None


#: The first word of every alarm transition's routing key.
ALARMS_PREFIX = "alarms"

_decoder = msgspec.json.Decoder(AlarmTransition)


def alarm_routing_key(severity: str, site: str, kind: str, device: str) -> str:
    """`alarms.<severity>.<site>.<kind>.<device>` (the parts are validated identifiers already)."""
    return f"{ALARMS_PREFIX}.{severity}.{site}.{kind}.{device}"


_notification = msgspec.json.Decoder(Notification)


def decode_transition(body: bytes, routing_key: str) -> AlarmTransition:
    """The transition in `body`, checked against its routing key `alarms.<severity>.<site>.<kind>.<device>`."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidMessage("oversize", f"{len(body)} bytes, at most {MAX_BODY_BYTES}")
    try:
        message = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidMessage("schema", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage("bad_json", str(exc)) from None
    expected = alarm_routing_key(message.severity, message.site, message.kind, message.device)
    if routing_key != expected:
        raise InvalidMessage("routing_mismatch", f"routing key {routing_key!r}, body says {expected!r}")
    return message


def notification(message: AlarmTransition, notice: Notice = "transition", unacked_after_ms: int = 0) -> Notification:
    """What is sent about `message`; its `key` (the receivers' idempotency key) is the transition's,
    or for an escalation `<alarm_id>/unacked-<seconds>s`, the same however often it is replayed."""
    key = message.key
    after_s = None
    if notice == "unacked":
        after_s = unacked_after_ms / 1000
        key = f"{message.alarm_id}/unacked-{after_s:g}s"
    return Notification(
        v=NOTIFICATION_VERSION,
        key=key,
        notice=notice,
        alarm_id=message.alarm_id,
        transition=message.transition,
        type=message.type,
        rule=message.rule,
        device=message.device,
        site=message.site,
        kind=message.kind,
        severity=message.severity,
        sensor=message.sensor,
        value=message.value,
        ts=message.ts,
        raised_at=message.raised_at,
        count=message.count,
        acked=message.acked,
        acked_by=message.acked_by,
        note=message.note,
        unacked_after_s=after_s,
    )


def encode_notification(value: Notification) -> bytes:
    return msgspec.json.encode(value)


def decode_notification(body: bytes) -> Notification:
    try:
        return _notification.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidMessage("schema", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage("bad_json", str(exc)) from None


def test_notification(channel: str, now: int) -> Notification:
    """What `python -m hub notify test CHANNEL` sends: a made-up critical alarm, marked `test`."""
    alarm_id = f"test:{channel}:{now}"
    return Notification(
        v=NOTIFICATION_VERSION,
        key=f"{alarm_id}/raised",
        notice="test",
        alarm_id=alarm_id,
        transition="raised",
        type="notify-test",
        rule="notify-test",
        device="notify-test",
        site="notify-test",
        kind="notify-test",
        severity="critical",
        sensor=None,
        value=None,
        ts=now,
        raised_at=now,
        count=1,
        acked=False,
        acked_by=None,
        note=None,
    )
