"""The read side beside the outputs: which reader answers, what the v2 reader asks in Flux and how
its answer becomes the rows the fleet, presence and the command history are built from, and the
clear error of an output that cannot be read back. The v1 reader runs against influxd in the
integration tests (`hub devices`, `hub commands`, presence after a restart)."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest

from hub.control.fleet_view import build_fleet
from hub.control.history import build_history
from hub.core.config import Settings
from hub.core.errors import ConfigError, InvalidIdentifier, Unreadable
from hub.outputs.influxdb_v1 import InfluxV1Reader
from hub.outputs.influxdb_v2 import (
    InfluxV2Reader,
    flux_commands,
    flux_device_states,
    flux_newest_readings,
    flux_string,
    row_of,
    series_by_device,
)
from hub.outputs.jsonl import JsonLinesReader
from hub.outputs.registry import InfluxReader, open_reader
from hub.services.commands.recorded import settled_commands, settled_from_rows
from hub.services.presence.recorded import recorded_states, states_from_series

#: Nothing listens here: opening a reader must not dial it.
NOWHERE = "http://127.0.0.1:9"


def settings(outputs: str, tmp_path: Path) -> Settings:
    return Settings(outputs=outputs, influx_url=NOWHERE, jsonl_path=tmp_path / "points.jsonl", influx_token="t")


def test_the_reader_is_an_influxdb_outputs_whenever_one_is_configured_and_opening_it_dials_nothing(
    tmp_path: Path,
) -> None:
    assert isinstance(open_reader(settings("jsonl,influxdb_v2", tmp_path)), InfluxV2Reader)
    assert isinstance(open_reader(settings("influxdb_v1", tmp_path)), InfluxV1Reader)
    assert isinstance(open_reader(settings("influxdb", tmp_path)), InfluxReader)
    assert isinstance(open_reader(settings("jsonl", tmp_path)), JsonLinesReader)


def test_the_jsonl_output_cannot_be_read_back_and_says_what_to_configure_in_one_line(tmp_path: Path) -> None:
    reader = open_reader(settings("jsonl", tmp_path))
    for read in (reader.device_states, reader.newest_readings, lambda: reader.commands(60)):
        with pytest.raises(Unreadable) as refused:
            read()
        message = str(refused.value)
        assert "\n" not in message and "jsonl" in message and "IOT_OUTPUTS" in message
    assert issubclass(Unreadable, ConfigError) and Unreadable.exit_code == 2


def test_presence_and_commands_recovering_from_an_unreadable_output_start_from_nothing_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = JsonLinesReader(settings("jsonl", tmp_path))
    with caplog.at_level(logging.WARNING):
        assert recorded_states(reader) == []
        assert settled_commands(reader) == []
    lines = [record.getMessage() for record in caplog.records]
    assert any("service=presence event=no_recorded_states reason=unreadable" in line for line in lines)
    assert any("service=commands event=no_settled_commands reason=unreadable" in line for line in lines)


def test_the_v2_reader_asks_flux_of_the_bucket_so_it_needs_no_dbrp_mapping() -> None:
    states = flux_device_states("telemetry/autogen")
    assert states.startswith('from(bucket: "telemetry/autogen")') and 'r._measurement == "device_status"' in states
    assert "|> last()" in states and 'group(columns: ["_measurement", "device"])' in states
    readings = flux_newest_readings("telemetry")
    assert all(f'r._measurement != "{name}"' in readings for name in ("device_status", "alerts", "commands"))
    history = flux_commands("telemetry", 3600, "th-1", outcomes_only=True, limit=50)
    assert 'r.device == "th-1"' in history and 'r.status != "sent"' in history
    assert "range(start: -3600s)" in history and "limit(n: 50)" in history
    assert flux_string('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(InvalidIdentifier):
        flux_commands("telemetry", 60, 'x" or true or "', outcomes_only=False, limit=1)


def _at(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def test_what_flux_answers_becomes_the_states_presence_starts_from_and_the_fleet() -> None:
    status = {
        "result": "_result", "table": 0, "_start": _at(0), "_stop": _at(9), "_time": _at(1_700_000_000_123),
        "_measurement": "device_status", "device": "th-1", "site": "plant-a", "kind": "thermostat",
        "protocol": "stomp", "state": "online", "online": True, "interval_ms": 1000, "fw": "1.2", "reason": "status",
    }  # fmt: skip
    reading = {
        "result": "_result", "table": 1, "_time": _at(1_700_000_000_500), "_measurement": "thermostat",
        "device": "th-1", "site": "plant-a", "protocol": "stomp", "temperature": 21.5, "seq": 7,
    }  # fmt: skip
    [state] = states_from_series(series_by_device([status]))
    assert (state.device, state.site, state.kind, state.protocol, state.online) == (
        "th-1",
        "plant-a",
        "thermostat",
        "stomp",
        True,
    )
    assert state.last_seen_ms == 1_700_000_000_123 and state.interval_ms == 1000
    [view] = build_fleet(series_by_device([status]), series_by_device([reading]), at_ms=1_700_000_001_000)
    assert view.readings == {"temperature": 21.5} and view.readings_at == 1_700_000_000_500 and view.online


def test_what_flux_answers_about_commands_becomes_the_history_and_the_ledgers_memory() -> None:
    rows = [
        row_of({"_time": _at(5030), "_measurement": "commands", "id": "b", "device": "th-1", "command": "ping",
                "origin": "cli", "status": "ok", "rtt_ms": 30.0, "detail": ""}),
        row_of({"_time": _at(5000), "_measurement": "commands", "id": "b", "device": "th-1", "command": "ping",
                "origin": "cli", "status": "sent", "detail": ""}),
    ]  # fmt: skip
    [record] = build_history(rows)
    assert (record.id, record.status, record.sent_at, record.rtt_ms) == ("b", "ok", 5000, 30.0)
    assert settled_from_rows(rows[:1]) == [("b", "th-1")]
