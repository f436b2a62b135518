"""Which telemetry partitions a hub process consumes: `0-1,3` -> (0, 1, 3). Pure.

Readings are spread over IOT_PARTITIONS queues `hub.telemetry.<p>` by a hash of their routing
key (so by device); IOT_HUB_PARTITIONS (`hub run --partitions`) picks the ones this process
subscribes to, so several processes can split them. Empty or `all`: every partition.
"""

from __future__ import annotations

from hub.core.errors import ConfigError

#: The spec that means every partition (as does an empty one).
ALL = "all"
#: More partitions than this is a typo, not a plan: each is a quorum queue with its own Raft group.
MAX_PARTITIONS = 256


def parse_partitions(spec: str, count: int) -> tuple[int, ...]:
    """The partition numbers `spec` names, sorted and distinct, each below `count`.

    `spec` is comma-separated numbers and inclusive ranges (`0-1,3`); raises `ConfigError`.
    """
    if not 1 <= count <= MAX_PARTITIONS:
        raise ConfigError(f"IOT_PARTITIONS must be between 1 and {MAX_PARTITIONS} (got {count})")
    text = spec.strip()
    if text in ("", ALL):
        return tuple(range(count))
    chosen: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        first, dash, last = item.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ConfigError(f"partitions {spec!r}: {item!r} is not a number nor a range like 0-3")
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise ConfigError(f"partitions {spec!r}: the range {item!r} runs backwards")
        if high >= count:
            raise ConfigError(f"partitions {spec!r}: {high} is not a partition (IOT_PARTITIONS={count}: 0-{count - 1})")
        chosen.update(range(low, high + 1))
    return tuple(sorted(chosen))


def format_partitions(partitions: tuple[int, ...]) -> str:
    """The inverse of `parse_partitions`, with runs as ranges: (0, 1, 2, 5) -> `0-2,5`."""
    runs: list[list[int]] = []
    for p in sorted(partitions):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
