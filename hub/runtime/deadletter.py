"""Dead-lettering with the reason: a refused delivery goes to `iot.dlx` with headers that say why.

`x-iot-reason` is a short code (the contract's reasons: `bad_json`, `schema`, `routing_mismatch`,
`rejected_by_influxdb`, `internal`, ...), `x-iot-detail` says it for people and `x-iot-queue`
names the hub queue that refused it. The original body and routing key are kept as they came.
"""

from __future__ import annotations

from typing import Any

from pika.spec import BasicProperties

from hub.core.contract import DEAD_LETTER_REASON_HEADER

#: Header carrying the human-readable detail of a dead-lettering.
DEAD_LETTER_DETAIL_HEADER = "x-iot-detail"
#: Header naming the hub queue the message was refused from.
DEAD_LETTER_QUEUE_HEADER = "x-iot-queue"
DETAIL_MAX_CHARS = 500
#: The reason of a message whose handling raised an error nobody expected (a bug, not bad input).
INTERNAL_REASON = "internal"


def dead_letter_properties(properties: BasicProperties, reason: str, detail: str, queue: str) -> BasicProperties:
    """The properties of the dead-lettered copy: the original's, plus the three headers."""
    headers: dict[str, Any] = dict(properties.headers or {})
    headers[DEAD_LETTER_REASON_HEADER] = reason
    headers[DEAD_LETTER_DETAIL_HEADER] = detail[:DETAIL_MAX_CHARS]
    headers[DEAD_LETTER_QUEUE_HEADER] = queue
    return BasicProperties(
        headers=headers,
        delivery_mode=2,
        content_type=properties.content_type,
        app_id=properties.app_id,
        timestamp=properties.timestamp,
    )


def internal_detail(error: BaseException) -> str:
    """What an unexpected error says about itself: its class first, so the dead-letter queue can be grouped."""
    return f"{type(error).__name__}: {error}"
