"""docs/contract.md and the code agree: its tables and examples are read and checked against the code.

No servers: the markdown is parsed (tables by the name of their first column, JSON examples by
the label after ```json) and compared with `hub.core.contract` and `hub.runtime.topology`. Every
failure names the line of the document and both values. The settings table lives in
docs/configuration.md, checked by test_reference_docs.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hub.core import contract
from hub.core.errors import InvalidMessage
from hub.runtime.topology import PARTITION_PREFIX, QUEUES, partition

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "contract.md"

#: Placeholders of the routing table, and the values they are filled with.
PLACEHOLDERS = {
    "<site>": "plant-a",
    "<kind>": "environment",
    "<device>": "env-0007",
    "<severity>": "warning",
    "<level>": "error",
    "<rollout>": "ro-3f2a1b0c9d8e",
}

#: The label after ```json -> the type its example must decode as.
BODIES: dict[str, type[Any]] = {
    "telemetry": contract.Reading,
    "batch": contract.Batch,
    "status": contract.Presence,
    "command": contract.Command,
    "ack": contract.Ack,
    "alert": contract.Alert,
    "log": contract.LogLine,
    "alarm": contract.AlarmTransition,
    "alarm_ack": contract.AlarmAck,
    "desired": contract.Desired,
    "deferred": contract.Deferred,
    "rollout": contract.Rollout,
}


# --- reading the markdown ------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    line: int
    header: list[str]
    rows: list[list[str]]

    def column(self, starts_with: str) -> int:
        for index, name in enumerate(self.header):
            if name.startswith(starts_with):
                return index
        raise AssertionError(f"{where(self.line)}: table has no column starting with {starts_with!r}: {self.header}")

    def by_first_cell(self) -> dict[str, list[str]]:
        rows: dict[str, list[str]] = {}
        for row in self.rows:
            assert row[0] not in rows, f"{where(self.line)}: row {row[0]!r} appears twice"
            rows[row[0]] = row
        return rows


@dataclass(frozen=True)
class Example:
    line: int
    label: str
    text: str


def where(line: int) -> str:
    return f"docs/contract.md line {line}"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@cache
def parsed() -> tuple[list[Table], list[Example]]:
    tables: list[Table] = []
    examples: list[Example] = []
    lines = DOC.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = re.match(r"^```(\S*)\s*(.*)$", line)
        if fence:
            start, body = index + 1, []
            index += 1
            while index < len(lines) and not lines[index].startswith("```"):
                body.append(lines[index])
                index += 1
            if fence.group(1) == "json":
                examples.append(Example(start, fence.group(2).strip(), "\n".join(body)))
        elif line.startswith("|") and index + 1 < len(lines) and re.match(r"^\|[\s|:-]+\|$", lines[index + 1]):
            start, header, rows = index + 1, _cells(line), []
            index += 2
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            tables.append(Table(start, header, rows))
            continue
        index += 1
    return tables, examples


def table(first_column: str) -> Table:
    """The one table whose first column is named `first_column`."""
    found = [t for t in parsed()[0] if t.header and t.header[0] == first_column]
    assert len(found) == 1, (
        f"docs/contract.md must have exactly one table whose first column is {first_column!r} "
        f"(found {len(found)}, at lines {[t.line for t in found]})"
    )
    return found[0]


def code_spans(cell: str) -> list[str]:
    """The `code` spans of a cell, in order."""
    return re.findall(r"`([^`]*)`", cell)


def one_code_span(cell: str, line: int) -> str:
    spans = code_spans(cell)
    assert len(spans) == 1, f"{where(line)}: expected exactly one `value` in cell {cell!r}"
    return spans[0]


def hub_sources() -> list[Path]:
    return sorted((ROOT / "hub").rglob("*.py"))


# --- names ---------------------------------------------------------------------------------------


def test_identifier_patterns_are_the_code_patterns() -> None:
    names = table("name")
    pattern = names.column("pattern")
    expected = {
        "identifier": contract.IDENTIFIER_PATTERN,
        "sensor name": contract.SENSOR_PATTERN,
        "command id": contract.COMMAND_ID_PATTERN,
    }
    rows = names.by_first_cell()
    assert set(rows) == set(expected), f"{where(names.line)}: rows {sorted(rows)}, expected {sorted(expected)}"
    for name, code_pattern in expected.items():
        documented = one_code_span(rows[name][pattern], names.line)
        assert documented == code_pattern, (
            f"{where(names.line)}: the {name} pattern is {documented!r} in the doc, {code_pattern!r} in the code"
        )


def _key_pattern(struct: type[Any], field: str) -> str | None:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    [found] = [f.type for f in info.fields if f.name == field]
    assert isinstance(found, msgspec.inspect.DictType) and isinstance(found.key_type, msgspec.inspect.StrType)
    return found.key_type.pattern


@pytest.mark.parametrize(("struct", "field"), [(contract.Reading, "readings"), (contract.Command, "args")])
def test_keys_the_doc_says_are_sensor_names_are_checked_as_sensor_names(struct: type[Any], field: str) -> None:
    assert _key_pattern(struct, field) == contract.SENSOR_PATTERN, (
        f"docs/contract.md says the keys of {struct.__name__}.{field} follow the sensor-name pattern "
        f"{contract.SENSOR_PATTERN!r}; the code checks {_key_pattern(struct, field)!r}"
    )


ROUTING: dict[str, Callable[[], str]] = {
    "telemetry": lambda: contract.telemetry_key(
        PLACEHOLDERS["<site>"], PLACEHOLDERS["<kind>"], PLACEHOLDERS["<device>"]
    ),
    "status": lambda: contract.status_key(PLACEHOLDERS["<device>"]),
    "command": lambda: contract.command_key(PLACEHOLDERS["<device>"]),
    "ack": lambda: contract.ack_key(PLACEHOLDERS["<device>"]),
    "alert": lambda: contract.alert_key("warning", PLACEHOLDERS["<site>"], PLACEHOLDERS["<device>"]),
    "log": lambda: contract.log_key(PLACEHOLDERS["<device>"], PLACEHOLDERS["<level>"]),
    "alarm": lambda: contract.alarm_key(
        "warning", PLACEHOLDERS["<site>"], PLACEHOLDERS["<kind>"], PLACEHOLDERS["<device>"]
    ),
    "desired": lambda: contract.desired_key(PLACEHOLDERS["<device>"]),
    "deferred": lambda: contract.deferred_key(PLACEHOLDERS["<device>"]),
    "rollout": lambda: contract.rollout_key(PLACEHOLDERS["<rollout>"]),
}


def _fill(template: str, line: int) -> str:
    filled = template
    for placeholder, value in PLACEHOLDERS.items():
        filled = filled.replace(placeholder, value)
    assert "<" not in filled, f"{where(line)}: unknown placeholder in {template!r} (known: {', '.join(PLACEHOLDERS)})"
    return filled


def test_routing_keys_topics_and_destinations_are_what_the_code_builds() -> None:
    routes = table("message")
    rows = routes.by_first_cell()
    assert set(rows) == set(ROUTING), f"{where(routes.line)}: messages {sorted(rows)}, expected {sorted(ROUTING)}"
    columns = {
        "AMQP routing key": lambda key: key,
        "MQTT topic": contract.mqtt_topic,
        "STOMP destination": contract.stomp_destination,
    }
    problems = []
    for message, build_key in ROUTING.items():
        key = build_key()
        for column, from_key in columns.items():
            template = one_code_span(rows[message][routes.column(column)], routes.line)
            documented, expected = _fill(template, routes.line), from_key(key)
            if documented != expected:
                problems.append(
                    f"{message} / {column}: the doc's {template!r} gives {documented!r}, the code gives {expected!r}"
                )
    assert not problems, f"{where(routes.line)}:\n  " + "\n  ".join(problems)


def test_broker_objects_are_the_code_constants() -> None:
    objects = table("broker object")
    name = objects.column("name")
    expected = {
        "vhost": contract.VHOST,
        "exchange": contract.EXCHANGE,
        "dead-letter exchange": contract.DEAD_LETTER_EXCHANGE,
        "dead-letter queue": contract.DEAD_LETTER_QUEUE,
    }
    rows = objects.by_first_cell()
    assert set(rows) == set(expected), f"{where(objects.line)}: rows {sorted(rows)}, expected {sorted(expected)}"
    for what, constant in expected.items():
        documented = one_code_span(rows[what][name], objects.line)
        assert documented == constant, (
            f"{where(objects.line)}: the {what} is {documented!r} in the doc, {constant!r} in the code"
        )


# --- bodies --------------------------------------------------------------------------------------


def test_every_json_example_says_what_it_is() -> None:
    examples = parsed()[1]
    known = {*BODIES, "jsonl", "notification"}
    for example in examples:
        assert example.label in known, (
            f"{where(example.line)}: a ```json example must be labelled with one of {sorted(known)} "
            f"(got {example.label!r}), e.g. ```json telemetry"
        )
    labels = [example.label for example in examples]
    for body in BODIES:
        assert labels.count(body) == 1, (
            f"docs/contract.md must have one ```json {body} example (has {labels.count(body)})"
        )


@pytest.mark.parametrize("label", sorted(BODIES))
def test_the_example_body_meets_the_contract(label: str) -> None:
    for example in parsed()[1]:
        if example.label != label:
            continue
        try:
            message = contract.decode(example.text.encode(), BODIES[label])
        except InvalidMessage as exc:
            pytest.fail(f"{where(example.line)}: the {label} example is not a valid {BODIES[label].__name__}: {exc}")
        assert contract.decode(contract.encode(message), BODIES[label]) == message


def test_the_notification_example_is_a_webhook_body() -> None:
    from hub.services.notify.message import decode_notification, encode_notification

    [example] = [example for example in parsed()[1] if example.label == "notification"]
    notification = decode_notification(example.text.encode())
    assert json.loads(encode_notification(notification)) == json.loads(example.text), where(example.line)


def test_the_jsonl_example_is_one_point_per_line() -> None:
    for example in parsed()[1]:
        if example.label == "jsonl":
            for line in example.text.splitlines():
                point = json.loads(line)
                assert set(point) == {"measurement", "tags", "fields", "ts"}, (
                    f"{where(example.line)}: a jsonl point has measurement, tags, fields and ts (got {sorted(point)})"
                )


def test_limits_are_the_code_limits() -> None:
    limits = table("limit")
    value = limits.column("value")
    rows = limits.by_first_cell()
    expected: dict[str, Any] = {
        "schema version `v`": str(contract.SCHEMA_VERSION),
        "largest body (bytes)": str(contract.MAX_BODY_BYTES),
        "most readings per message": str(contract.MAX_READINGS_PER_MESSAGE),
        "most entries per telemetry batch": str(contract.MAX_BATCH_ENTRIES),
        "reserved reading names": sorted(contract.RESERVED_FIELDS),
        "log message (characters)": str(contract.MAX_LOG_MESSAGE_CHARS),
        "most fields of a log line": str(contract.MAX_LOG_FIELDS),
        "log field text (characters)": str(contract.MAX_LOG_FIELD_CHARS),
    }
    assert set(rows) == set(expected), f"{where(limits.line)}: rows {sorted(rows)}, expected {sorted(expected)}"
    for limit, code_value in expected.items():
        cell = rows[limit][value]
        documented: Any = sorted(code_spans(cell)) if isinstance(code_value, list) else one_code_span(cell, limits.line)
        assert documented == code_value, (
            f"{where(limits.line)}: {limit} is {documented!r} in the doc, {code_value!r} in the code"
        )


# --- dead letters --------------------------------------------------------------------------------


def test_dead_letter_headers_are_the_ones_the_hub_sets() -> None:
    headers = table("header")
    documented = {one_code_span(row[0], headers.line) for row in headers.rows}
    in_code = {
        name
        for path in hub_sources()
        for name in re.findall(r"""["'](x-iot-[a-z-]+)["']""", path.read_text(encoding="utf-8"))
    }
    assert contract.DEAD_LETTER_REASON_HEADER in documented, (
        f"{where(headers.line)}: the reason header {contract.DEAD_LETTER_REASON_HEADER!r} is missing"
    )
    assert documented == in_code, (
        f"{where(headers.line)}: headers only in the doc: {sorted(documented - in_code)}; "
        f"only in hub/: {sorted(in_code - documented)}"
    )


def test_every_reason_code_in_the_code_is_documented() -> None:
    reasons = table("reason")
    documented = {one_code_span(row[0], reasons.line) for row in reasons.rows}
    patterns = [
        r"InvalidMessage\(\s*\"([a-z_]+)\"",
        r"dead_letter\([^\n]*?\"([a-z_]+)\"",
        r"_REASON\s*=\s*\"([a-z_]+)\"",
    ]
    in_code = {
        code
        for path in hub_sources()
        for pattern in patterns
        for code in re.findall(pattern, path.read_text(encoding="utf-8"))
    }
    assert in_code, "found no reason codes in hub/: the patterns of this test are out of date"
    assert in_code <= documented, (
        f"{where(reasons.line)}: reason codes the hub uses but the doc lacks: {sorted(in_code - documented)}"
    )


def test_a_body_that_is_not_utf8_is_bad_json() -> None:
    reasons = table("reason").by_first_cell()
    assert "not UTF-8" in reasons["`bad_json`"][-1], "the doc no longer says what bad_json covers"
    with pytest.raises(InvalidMessage) as refused:
        contract.decode(b'{"device":"\xff"}', contract.Reading)
    assert refused.value.reason == "bad_json"


# --- queues ---------------------------------------------------------------------------------------


def test_hub_queues_are_the_topology() -> None:
    queues = table("hub queue")
    bound, consumer, prefetch = queues.column("bound to"), queues.column("consumed by"), queues.column("prefetch")
    rows = {one_code_span(row[0], queues.line): row for row in queues.rows}
    expected = {queue.name: (service, queue) for service, queue in QUEUES.items()}
    expected[f"{PARTITION_PREFIX}<p>"] = ("telemetry", partition(0))  # one row for every partition
    assert set(rows) == set(expected), (
        f"{where(queues.line)}: hub queues {sorted(rows)} in the doc, {sorted(expected)} in hub.runtime.topology.QUEUES"
    )
    problems = []
    for name, (service, queue) in expected.items():
        row = rows[name]
        # Bindings on another exchange than `iot` name it: "`1` on `iot.telemetry`".
        bindings = [*queue.bindings, *([queue.exchange] if queue.exchange != contract.EXCHANGE else [])]
        if sorted(code_spans(row[bound])) != sorted(bindings):
            problems.append(f"{name} is bound to {code_spans(row[bound])} in the doc, {bindings} in the code")
        if not row[consumer].startswith(f"{service}:"):
            problems.append(f"{name} is consumed by service {service!r} in the code, the doc says {row[consumer]!r}")
        if row[prefetch].replace(",", "") != str(queue.prefetch):
            problems.append(f"{name} has prefetch {row[prefetch]} in the doc, {queue.prefetch} in the code")
    assert not problems, f"{where(queues.line)}:\n  " + "\n  ".join(problems)
