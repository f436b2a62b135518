"""What a rule's decision becomes on the wire and in storage: the alert point, the messages' origin."""

from __future__ import annotations

from hub.core.contract import Alert
from hub.core.points import Point

#: AMQP app_id of alerts and commands sent by rules (the `origin` tag in `commands`).
RULE_ORIGIN = "rule"


def alert_point(alert: Alert) -> Point:
    return Point(
        "alerts",
        {
            "device": alert.device,
            "site": alert.site,
            "kind": alert.kind,
            "severity": alert.severity,
            "rule": alert.rule,
        },
        {"id": alert.id, "sensor": alert.sensor, "value": alert.value, "message": alert.message},
        alert.ts,
    )
