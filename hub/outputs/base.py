"""What an output is: something that takes a batch of points and makes them durable.

`write` returns only once the points are stored; it raises `StorageUnavailable` when that may
pass (server down, 5xx, 429: the batch is kept and retried) and `PointsRejected` when the
server refuses the points themselves (retrying the same points cannot help).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hub.core.points import Point


class Output(Protocol):
    #: The name it is registered and configured by (IOT_OUTPUTS).
    name: str
    #: What it stores into ("influxdb" for both APIs): a refused point is dead-lettered `rejected_by_<family>`.
    family: str

    def write(self, points: Sequence[Point]) -> None: ...

    def ping(self) -> bool:
        """True if the output's server answers."""
        ...

    def close(self) -> None: ...
