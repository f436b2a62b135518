"""`make demo`, the README's main job, end to end: its own stack on free ports, the hub, the
simulator and CLI commands; it stops by itself after DURATION and leaves no process behind.
And what the demo waits for before it starts the devices: the hub consuming its queues."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hub.clients.management import read_consumer_count
from hub.core.config import Settings
from hub.demo.readiness import HUB_READY_TIMEOUT_S, hub_consuming, hub_queue_names
from hub.runtime.topology import partitions
from hub.stack.processes import free_port
from hub.stack.stack import settings_on_free_ports
from tests.support import REPO, hub_process, wait_until

DURATION_S = 20
COUNT = 8
#: Stack start (cold RabbitMQ), the run itself, and a clean stop, with room for a busy machine.
MAKE_TIMEOUT_S = 240


def _alive(pid: int) -> bool:
    """Running, that is: a zombie (state Z) is gone, only not yet reaped by pid 1 here."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _members_of_groups(groups: set[int]) -> list[int]:
    """Live processes whose process group is one the demo started (children of its children too)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        state, pgid = fields[0], int(fields[2])
        if pgid in groups and state != "Z":
            members.append(int(entry.name))
    return members


def test_make_demo_runs_the_main_job_and_leaves_no_process_behind(tmp_path: Path) -> None:
    settings = settings_on_free_ports(tmp_path / "demo-stack")
    metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    env.update(
        IOT_AMQP_URL=settings.amqp_url,
        IOT_MQTT_HOST=settings.mqtt_host,
        IOT_MQTT_PORT=str(settings.mqtt_port),
        IOT_STOMP_HOST=settings.stomp_host,
        IOT_STOMP_PORT=str(settings.stomp_port),
        IOT_MANAGEMENT_PORT=str(settings.management_port),
        IOT_RABBITMQ_PROMETHEUS_PORT=str(settings.rabbitmq_prometheus_port),
        IOT_INFLUX_URL=settings.influx_url,
        IOT_STACK_DIR=str(settings.stack_dir),
        IOT_METRICS_PORT=str(metrics_port),
    )
    venv = Path(sys.prefix)
    # -o: the venv is the one running this test; `make demo` must not reinstall it here.
    make = subprocess.run(
        [
            "make",
            "-o",
            f"{venv}/.installed",
            "demo",
            f"VENV={venv}",
            f"DURATION={DURATION_S}",
            f"COUNT={COUNT}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT_S,
        check=False,
    )
    out = make.stdout
    assert make.returncode == 0, out + make.stderr
    assert "Traceback" not in out + make.stderr

    pids = {name: int(pid) for name, pid in re.findall(r"(RabbitMQ|InfluxDB) pid (\d+)", out)}
    pids |= {name: int(pid) for name, pid in re.findall(r"(hub|simulator) started \(pid (\d+)\)", out)}
    assert set(pids) == {"RabbitMQ", "InfluxDB", "hub", "simulator"}, out
    assert f"stack started under {settings.stack_dir}" in out
    consuming = f"the hub consumes {', '.join(hub_queue_names(settings))}"
    assert out.index("hub started") < out.index(consuming) < out.index("simulator started"), out

    own = re.search(r"(\d+) devices, each with its own credential", out)
    assert own is not None and int(own.group(1)) >= COUNT, out
    summary = re.search(r"demo summary: (\d+) readings stored from (\d+) devices", out)
    assert summary is not None, out
    assert int(summary.group(1)) > 0 and int(summary.group(2)) >= COUNT
    answered = re.search(r"(\d+) CLI commands, (\d+) answered \((\d+) ok\)", out)
    assert answered is not None, out
    assert int(answered.group(3)) >= 1
    assert re.search(r"\$ iot-hub send \S+ set_interval ms=5000 +-> +ok", out), out
    assert re.search(r"\$ iot-hub send \S+ self_destruct +-> +unsupported", out), out
    assert "$ iot-hub logs -f --level warning" in out, out

    assert "stopped the simulator" in out and "stopped the hub" in out
    assert "stopped the stack the demo started (RabbitMQ, broker auth, InfluxDB)" in out
    assert f"InfluxDB     {settings.influx_url}" in out and "RabbitMQ UI  http://localhost:" in out
    assert f"hub metrics  http://localhost:{metrics_port}/metrics" in out
    wait_until(lambda: not any(_alive(pid) for pid in pids.values()), 10)
    wait_until(lambda: not _members_of_groups(set(pids.values())), 10)


def test_the_hub_is_ready_when_it_consumes_every_queue_not_when_the_queues_exist(
    stack: Settings, tmp_path: Path
) -> None:
    """rabbitmq/definitions.json declares the hub's queues before any hub runs: only consumers tell."""
    wait_until(lambda: all(read_consumer_count(stack, name) == 0 for name in hub_queue_names(stack)))
    assert not hub_consuming(stack)
    with hub_process(stack, tmp_path, "--only", "telemetry"):
        wait_until(lambda: all(read_consumer_count(stack, q.name) == 1 for q in partitions(stack.partitions)))
        assert not hub_consuming(stack)
    with hub_process(stack, tmp_path):
        wait_until(lambda: hub_consuming(stack), HUB_READY_TIMEOUT_S)
