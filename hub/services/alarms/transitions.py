"""What an alarm's change becomes: a row of `alarms` (keyed so a replay overwrites it: tags
type, device, site, kind and transition, at the change's time) and, for a published one, the
message `alarms.<severity>.<site>.<kind>.<device>` of docs/contract.md."""

from __future__ import annotations

from pika.spec import BasicProperties

from hub.core.contract import EXCHANGE, AlarmTransition, encode
from hub.core.measurements import ALARMS_MEASUREMENT
from hub.core.points import FieldValue, Point
from hub.runtime.handler import Publish
from hub.services.alarms.lifecycle import Change
from hub.services.rules.alerts import RULE_ORIGIN


def change_point(change: Change) -> Point:
    alarm = change.alarm
    fields: dict[str, FieldValue] = {
        "id": alarm.id,
        "rule": alarm.rule,
        "severity": alarm.severity,
        "sensor": alarm.sensor,
        "state": alarm.state,
        "acked": alarm.acked,
        "acked_by": alarm.acked_by,
        "note": alarm.note,
        "count": alarm.count,
        "raised_at": alarm.raised_at,
        "last_ts": alarm.last_ts,
        "cleared_at": alarm.cleared_at or 0,
        "version": alarm.version,
    }
    if alarm.value is not None:
        fields["value"] = alarm.value
    tags = {
        "device": alarm.device,
        "kind": alarm.kind,
        "site": alarm.site,
        "transition": change.transition,
        "type": alarm.type,
    }
    return Point(ALARMS_MEASUREMENT, tags, fields, change.ts)


def change_message(change: Change) -> AlarmTransition:
    alarm = change.alarm
    acked = change.transition == "acked"
    assert change.transition != "updated", "an update is stored, not published"
    return AlarmTransition(
        key=change.key,
        alarm_id=alarm.id,
        transition=change.transition,
        type=alarm.type,
        rule=alarm.rule,
        device=alarm.device,
        site=alarm.site,
        kind=alarm.kind,
        severity=alarm.severity,
        sensor=alarm.sensor,
        value=alarm.value,
        ts=change.ts,
        raised_at=alarm.raised_at,
        count=alarm.count,
        acked=alarm.acked,
        acked_by=alarm.acked_by if acked else None,
        note=alarm.note if acked else None,
    )


def change_publish(change: Change) -> Publish:
    """A broadcast, persistent: the notifier binds `alarms.#`; with nobody bound it is only stored."""
    message = change_message(change)
    properties = BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        app_id=RULE_ORIGIN,
        message_id=change.key,
    )
    return Publish(EXCHANGE, message.routing_key, encode(message), properties, mandatory=False)
