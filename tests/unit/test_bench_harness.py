"""bench.harness's pure parts: which queues the hub must consume, the verdicts on the broker's
consumer counts, the hub's environment and which Python runs a checkout's hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench.harness import REPO, all_consumed, checkout_python, hub_environment, hub_queues, none_consumed
from hub.core.config import Settings

SETTINGS = Settings(
    amqp_url="amqp://hub:pw@127.0.0.1:5999/iot",
    influx_url="http://127.0.0.1:8999",
    management_port=15999,
    partitions=3,
    stack_dir=Path("/tmp/bench-stack"),
)
QUEUES = hub_queues(SETTINGS)


def test_the_hub_consumes_every_partition_then_presence_commands_logs_and_twin() -> None:
    partitions = ("hub.telemetry.0", "hub.telemetry.1", "hub.telemetry.2")
    assert (*partitions, "hub.presence", "hub.commands", "hub.logs", "hub.twin") == QUEUES


def test_the_hub_consumes_when_every_queue_has_a_consumer() -> None:
    assert all_consumed(dict.fromkeys(QUEUES, 1), QUEUES)
    assert all_consumed({**dict.fromkeys(QUEUES, 1), "hub.presence": 2}, QUEUES)


@pytest.mark.parametrize(
    "counts",
    [
        {},  # the broker did not answer
        {**dict.fromkeys(QUEUES, 1), "hub.commands": 0},  # one service not consuming yet
        {**dict.fromkeys(QUEUES, 1), "hub.telemetry.2": None},  # a partition not declared yet
        {q: 1 for q in QUEUES if q != "hub.presence"},  # a queue not counted
    ],
    ids=["no-answer", "one-at-zero", "one-undeclared", "one-missing"],
)
def test_the_hub_does_not_consume_while_a_queue_lacks_a_consumer(counts: dict[str, int | None]) -> None:
    assert not all_consumed(counts, QUEUES)


def test_the_old_process_is_gone_when_no_queue_has_a_consumer() -> None:
    assert none_consumed({})
    assert none_consumed({"hub.telemetry.0": 0, "hub.presence": None})
    assert not none_consumed({"hub.telemetry.0": 0, "hub.commands": 1})


def test_the_hub_gets_the_stack_settings_and_none_of_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_AMQP_URL", "amqp://someone:else@elsewhere:5672/iot")
    monkeypatch.setenv("IOT_OUTPUTS", "jsonl")
    checkout = Path("/work/other")
    env = hub_environment(SETTINGS, checkout, 9200, {"IOT_UNKNOWN_SENSORS": "dead_letter"})
    assert env["IOT_AMQP_URL"] == SETTINGS.amqp_url
    assert env["IOT_OUTPUTS"] == SETTINGS.outputs
    assert env["IOT_PARTITIONS"] == "3"
    assert env["IOT_STACK_DIR"] == "/tmp/bench-stack"
    assert env["IOT_METRICS_PORT"] == "9200"
    assert env["IOT_RULES_FILE"] == str(checkout / "rules.yaml")
    assert env["IOT_UNKNOWN_SENSORS"] == "dead_letter"
    assert "IOT_INFLUX_TOKEN" not in env  # unset settings stay unset
    assert hub_environment(SETTINGS, checkout, None, {})["IOT_METRICS_PORT"] == "off"


def test_the_environment_gives_the_hub_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = hub_environment(SETTINGS, REPO, None, {})
    for name in [n for n in os.environ if n.startswith("IOT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("IOT_"):
            monkeypatch.setenv(name, value)
    seen = Settings()
    assert seen.model_copy(update={"metrics_port": None, "rules_file": SETTINGS.rules_file}) == SETTINGS.model_copy(
        update={"metrics_port": None}
    )


def test_another_checkouts_hub_runs_on_its_own_virtual_environment(tmp_path: Path) -> None:
    assert checkout_python(REPO) == sys.executable
    assert checkout_python(tmp_path) == sys.executable  # no .venv there: this Python
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    assert checkout_python(tmp_path) == str(python)
