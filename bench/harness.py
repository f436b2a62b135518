"""What every bench starts the same way: a stack, `python -m hub run`, and the wait for the hub.

- `bench_stack`: a stack (RabbitMQ + influxd) on free ports in a temporary folder, stopped and
  removed when the block ends, also on SIGTERM or SIGINT (every bench's `main` begins with
  `interrupt_on_stop_signals()`, which turns them into KeyboardInterrupt, so `finally` blocks
  run); `started_stack` and `started_cluster` under a folder the bench gives (several stacks in one run).
- `HubProcess` / `running_hub`: `python -m hub run` (all services) of a checkout, its output in a log.
- The one wait for the hub, by state, not by its log: the hub consumes when every queue it takes
  (each telemetry partition, `hub.presence`, `hub.commands`) has a consumer, as the broker counts
  them (a passive declare). After `stop` the harness waits until the broker has let go of the
  process's consumers, so the wait after a restart sees the new process's, not the old one's.
"""

from __future__ import annotations

import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pika.exceptions

from hub.clients.amqp import close_quietly, connect
from hub.clients.influx import server_version
from hub.clients.management import read_broker_version
from hub.core.config import Settings
from hub.core.errors import BrokerUnavailable, ConfigError
from hub.runtime.topology import QUEUES, partitions
from hub.stack import Stack
from hub.stack.cluster import Cluster, started_on_free_ports
from hub.stack.processes import free_port
from hub.stack.stack import settings_on_free_ports

REPO = Path(__file__).resolve().parents[1]
#: The line before a stack starts, with its folder after it (tests/integration/test_bench_signals.py reads it).
STARTING = "starting a stack under "
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
#: How often the broker is asked whether the hub consumes (one short connection each time).
POLL_S = 0.05

#: Queue -> consumers the broker counts on it; None: the queue is not declared yet.
Counts = Mapping[str, int | None]


@dataclass(frozen=True)
class BenchStack:
    root: Path
    settings: Settings
    stack: Stack


@dataclass(frozen=True)
class BenchCluster:
    settings: Settings
    cluster: Cluster
    #: Seconds from start to quorum queues on every node.
    up_s: float


@contextmanager
def started_stack(
    root: Path, progress: Callable[[str], None] = print, prepare: Callable[[Settings], None] | None = None
) -> Iterator[BenchStack]:
    """A running stack on free ports, its folder `root / "stack"`; stopped after the block.

    `prepare`: called with the stack's settings before it starts (a bench's own broker configuration)."""
    settings = settings_on_free_ports(root / "stack")
    if prepare is not None:
        prepare(settings)
    stack = Stack(settings)
    progress(f"{STARTING}{root} ...")
    try:
        stack.up(lambda message: progress(f"  {message}"))
        yield BenchStack(root, settings, stack)
    finally:
        stack.down()


@contextmanager
def bench_stack(
    prefix: str, progress: Callable[[str], None] = print, prepare: Callable[[Settings], None] | None = None
) -> Iterator[BenchStack]:
    """A running stack on free ports under a new temporary folder; stopped and removed after the block."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, started_stack(Path(tmp), progress, prepare) as bench:
        yield bench


@contextmanager
def started_cluster(root: Path, nodes: int, progress: Callable[[str], None] = print) -> Iterator[BenchCluster]:
    """A running cluster of `nodes` on free ports under `root` (a new folder per try); stopped after the block."""
    progress(f"{STARTING}{root} ...")
    folders = iter(root / f"try-{attempt}" for attempt in range(1, 100))
    settings, cluster, up_s = started_on_free_ports(lambda: next(folders), nodes, lambda m: progress(f"  {m}"))
    try:
        yield BenchCluster(settings, cluster, up_s)
    finally:
        cluster.down()


def broker_pid(stack_root: Path) -> int:
    """The Erlang VM of the stack's node (the pid `stack up` keeps is its start script's)."""
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "comm").read_text().strip() == "beam.smp" and str(stack_root) in (proc / "cmdline").read_text():
                return int(proc.name)
        except (OSError, ValueError):
            continue
    raise SystemExit(f"no beam.smp of the stack under {stack_root}")


def run_header(settings: Settings) -> str:
    """The date, the machine and the versions a bench ran on."""
    versions = (
        f"Python {platform.python_version()}, RabbitMQ {read_broker_version(settings) or '?'}, "
        f"InfluxDB {server_version(settings.influx_url) or '?'}"
    )
    machine = f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}"
    return f"{datetime.date.today().isoformat()}: {machine}; {versions}"


# --- the wait, by state ---------------------------------------------------------------------------


def hub_queues(settings: Settings) -> tuple[str, ...]:
    """Every queue `hub run` with all services consumes: the telemetry partitions, then the others."""
    return tuple(q.name for q in partitions(settings.partitions)) + tuple(q.name for q in QUEUES.values())


def all_consumed(counts: Counts, queues: tuple[str, ...]) -> bool:
    """Whether every one of `queues` has a consumer (a queue not declared yet has none)."""
    return all((counts.get(name) or 0) > 0 for name in queues)


def none_consumed(counts: Counts) -> bool:
    """Whether no queue has a consumer (nothing counted, as with the broker unreachable, is none)."""
    return not any(counts.values())


def consumer_counts(settings: Settings, queues: tuple[str, ...]) -> dict[str, int | None]:
    """The broker's consumer count of each queue ({} when it does not answer)."""
    try:
        connection = connect(settings, "bench-harness")
    except (BrokerUnavailable, ConfigError):
        return {}
    try:
        counts: dict[str, int | None] = {}
        for name in queues:
            channel = connection.channel()
            try:
                counts[name] = channel.queue_declare(name, passive=True).method.consumer_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                counts[name] = None  # not declared yet
        return counts
    except (pika.exceptions.AMQPError, OSError):
        return {}
    finally:
        close_quietly(connection)


# --- the hub --------------------------------------------------------------------------------------


def hub_environment(
    settings: Settings, checkout: Path, metrics_port: int | None, extra: Mapping[str, str]
) -> dict[str, str]:
    """The environment a user would have: every IOT_* variable from `settings`, none of the caller's."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            environment[f"IOT_{name.upper()}"] = str(value)
    environment.update(
        IOT_METRICS_PORT="off" if metrics_port is None else str(metrics_port),
        IOT_RULES_FILE=str(checkout / "rules.yaml"),
    )
    environment.update(extra)
    return environment


def checkout_python(checkout: Path) -> str:
    """The Python of a checkout's own virtual environment (`make .venv/.installed`), else this one."""
    python = checkout / ".venv" / "bin" / "python"
    return str(python) if checkout != REPO and python.exists() else sys.executable


class HubProcess:
    """`python -m hub run` of `checkout` (default: this one), one process at a time, its output appended to `log`.

    `metrics`: serve /metrics on a free port (`metrics()` reads it). `env`: IOT_* settings beside the stack's.
    """

    def __init__(
        self,
        settings: Settings,
        log: Path,
        *,
        checkout: Path = REPO,
        metrics: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings, self.log, self.checkout = settings, log, checkout
        self.metrics_port = free_port() if metrics else None
        self.env = dict(env or {})
        self.queues = hub_queues(settings)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the hub is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, wait: bool = True) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [checkout_python(self.checkout), "-m", "hub", "run"],
                cwd=self.checkout,
                env=hub_environment(self.settings, self.checkout, self.metrics_port, self.env),
                stdout=out,
                stderr=out,
            )
        if wait:
            self.wait_consuming()

    def check(self) -> None:
        """SystemExit with the log's end if the hub has exited."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"the hub exited ({self.process.returncode}); see {self.log}:\n{tail}")

    def consuming(self) -> bool:
        """Whether every hub queue has a consumer (after `stop`, only a new process can give them one)."""
        return all_consumed(consumer_counts(self.settings, self.queues), self.queues)

    def wait_consuming(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Wait until the hub consumes every queue; the seconds it took."""
        started = time.monotonic()
        while not self.consuming():
            self.check()
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"the hub did not consume within {timeout_s:.0f} s; see {self.log}")
            time.sleep(POLL_S)
        return time.monotonic() - started

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig`, wait for the process to end, then until the broker has dropped its consumers."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while not none_consumed(consumer_counts(self.settings, self.queues)) and time.monotonic() < deadline:
            time.sleep(POLL_S)

    def metrics(self) -> str:
        """The hub's /metrics text (with `metrics=True`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())


@contextmanager
def running_hub(
    settings: Settings,
    log: Path,
    *,
    checkout: Path = REPO,
    metrics: bool = False,
    env: Mapping[str, str] | None = None,
) -> Iterator[HubProcess]:
    """A started hub, consuming every queue; stopped (SIGTERM) after the block."""
    hub = HubProcess(settings, log, checkout=checkout, metrics=metrics, env=env)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
