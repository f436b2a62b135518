"""A twin as a point of `twins` and back: what a restarted twin service, a standby that takes over,
and `hub twin show|diff` read (through the outputs' reader).

One row per stored change of a device's twin: tags `device`, `site`, `kind` (when known); fields
`doc` (the whole twin as JSON: desired, reported, version, what is converging and waiting),
`version`, `in_sync`, `delta` and `failed` (counts, for queries and dashboards). The newest row
of a device is its twin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hub.clients.influx import Series
from hub.core.contract import is_identifier
from hub.core.errors import StorageUnavailable, Unreadable
from hub.core.measurements import ROLLOUTS_MEASUREMENT, TWINS_MEASUREMENT
from hub.core.points import Point
from hub.core.twin import RolloutState, Twin, decode_rollout, decode_twin, encode_rollout, encode_twin
from hub.outputs.base import Reader

log = logging.getLogger(__name__)


def twin_point(twin: Twin) -> Point:
    tags = {"device": twin.device}
    for name, value in (("site", twin.site), ("kind", twin.kind)):
        if value:
            tags[name] = value
    delta = twin.delta
    return Point(
        TWINS_MEASUREMENT,
        tags,
        {
            "doc": encode_twin(twin),
            "version": twin.version,
            "in_sync": not delta,
            "delta": len(delta),
            "failed": len(twin.failed),
        },
        twin.updated_ms,
    )


def twins_from_series(series: Iterable[Series]) -> list[Twin]:
    """The twin of each device's newest row; a row that does not parse is skipped, and logged."""
    twins = []
    for one in series:
        for row in one.rows[:1]:
            try:
                twin = decode_twin(str(row.get("doc") or ""))
            except ValueError as exc:
                log.warning("service=twin event=unreadable_twin device=%r error=%r", one.tags.get("device"), str(exc))
                continue
            if is_identifier(twin.device):
                twins.append(twin)
    return twins


def recorded_twins(reader: Reader) -> list[Twin]:
    """Every stored twin; none, said in one log line, when the outputs cannot be read back (jsonl).

    Storage that does not answer now raises `StorageUnavailable`: a twin service that started
    from nothing would store twins without their desired state over the recorded ones, so its
    runner waits and connects again instead."""
    try:
        return twins_from_series(reader.twins())
    except Unreadable as exc:
        log.warning("service=twin event=no_recorded_twins reason=unreadable detail=%r", str(exc))
    except OSError as exc:
        raise StorageUnavailable(f"cannot read the stored twins: {exc}") from exc
    return []


def rollout_point(rollout: RolloutState) -> Point:
    """A row of `rollouts`: tag `rollout`; fields `doc` (the rollout as JSON), `state`, `stage`,
    `changed`, `in_sync`, `failed`."""
    return Point(
        ROLLOUTS_MEASUREMENT,
        {"rollout": rollout.id},
        {
            "doc": encode_rollout(rollout),
            "state": rollout.state,
            "stage": rollout.stage + 1,
            "changed": rollout.reached,
            "in_sync": rollout.in_sync,
            "failed": rollout.failed,
        },
        rollout.updated_ms,
    )


def rollouts_from_series(series: Iterable[Series]) -> list[RolloutState]:
    rollouts = []
    for one in series:
        for row in one.rows[:1]:
            try:
                rollouts.append(decode_rollout(str(row.get("doc") or "")))
            except ValueError as exc:
                log.warning(
                    "service=twin event=unreadable_rollout rollout=%r error=%r", one.tags.get("rollout"), str(exc)
                )
    return rollouts


def recorded_rollouts(reader: Reader) -> list[RolloutState]:
    """Every stored rollout (running ones go on); as `recorded_twins` when storage does not answer."""
    try:
        return rollouts_from_series(reader.rollouts())
    except Unreadable:
        return []
    except OSError as exc:
        raise StorageUnavailable(f"cannot read the stored rollouts: {exc}") from exc
