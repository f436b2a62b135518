"""What the store makes of a reading: the point it is stored as."""

from __future__ import annotations

from hub.core.contract import Reading, Transport
from hub.core.points import FieldValue, Point

#: The field that flags a point's readings outside their kind's plausible range (comma-separated names).
OUT_OF_RANGE_FIELD = "out_of_range"


def reading_point(reading: Reading, protocol: Transport, out_of_range: tuple[str, ...] = ()) -> Point:
    """The reading as stored: measurement = kind, tags device/protocol/site, fields readings + seq.

    Trusted: a `Reading` only exists once its identifiers and sensor names matched the
    contract's patterns, so no output needs to escape them (the store's hot path). Values outside
    their plausible range are stored as they came, flagged by a field `out_of_range` naming them.
    """
    fields: dict[str, FieldValue] = dict(reading.readings)
    fields["seq"] = reading.seq
    if out_of_range:
        fields[OUT_OF_RANGE_FIELD] = ",".join(out_of_range)
    return Point(
        reading.kind,
        {"device": reading.device, "protocol": protocol, "site": reading.site},
        fields,
        reading.ts,
        True,
    )
