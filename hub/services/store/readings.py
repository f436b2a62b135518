"""What the store makes of a reading: the point it is stored as."""

from __future__ import annotations

from hub.core.contract import Reading, Transport
from hub.core.points import FieldValue, Point


def reading_point(reading: Reading, protocol: Transport) -> Point:
    """The reading as stored: measurement = kind, tags device/protocol/site, fields readings + seq.

    Trusted: a `Reading` only exists once its identifiers and sensor names matched the
    contract's patterns, so no output needs to escape them (the store's hot path).
    """
    fields: dict[str, FieldValue] = dict(reading.readings)
    fields["seq"] = reading.seq
    return Point(
        reading.kind,
        {"device": reading.device, "protocol": protocol, "site": reading.site},
        fields,
        reading.ts,
        True,
    )
