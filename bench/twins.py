"""Twins at fleet scale: a `twin set --all` of one property over N simulated thermostats.

Prints how long `twin set --all` and `twin diff` take to answer with N twins stored, the time
until 50 %, 99 % and 100 % of the devices are in sync, and the hub's stored telemetry rate during
the convergence beside its rate in the same run without one (readings per second counted in
InfluxDB over each window). One stack, one `hub run`, one simulator in this process.

    python -m bench.twins                 # 1000 devices
    python -m bench.twins --devices 200   # a quicker run
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devices.device import plan_fleet
from devices.fleet import Fleet
from hub.clients.influx import InfluxHttp
from hub.control.identity import provision_into
from hub.control.twin import read_twins
from hub.core.config import Settings
from hub.core.contract import now_ms
from hub.core.signals import interrupt_on_stop_signals
from hub.services import SERVICES
from hub.stack import Stack
from hub.stack.stack import settings_on_free_ports

REPO = Path(__file__).resolve().parents[1]
DEVICES = 1000
INTERVAL_S = 5.0
#: The window over which the telemetry rate without a convergence is counted.
BASELINE_S = 30.0
#: How often the twins are read while they converge.
POLL_S = 0.5
CONVERGE_TIMEOUT_S = 600.0
#: How long the fleet may take to connect on a loaded machine.
CONNECT_WAIT_S = 600.0
console = Console()


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_")}
    env.update(
        IOT_AMQP_URL=settings.amqp_url,
        IOT_INFLUX_URL=settings.influx_url,
        IOT_STACK_DIR=str(settings.stack_path),
        IOT_MANAGEMENT_PORT=str(settings.management_port),
        IOT_METRICS_PORT="0",
        IOT_CREDENTIALS_FILE=str(settings.credentials_path),
    )
    return env


@contextmanager
def running_hub(settings: Settings, log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "run"], cwd=REPO, env=_env(settings), stdout=out, stderr=out
        )
    try:
        while log.read_text().count("event=consuming") < len(SERVICES):
            if process.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def cli_s(settings: Settings, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hub", *args], cwd=REPO, env=_env(settings), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"hub {' '.join(args)}: {done.stderr}")
    return time.monotonic() - started


def stored_rate(settings: Settings, since_ms: int, until_ms: int) -> float:
    client = InfluxHttp.from_settings(settings, settings.influx_reader)
    try:
        [series] = client.query(
            f'SELECT count("seq") FROM "thermostat" WHERE time >= {since_ms}ms AND time < {until_ms}ms'
        )
    finally:
        client.close()
    count = sum(int(row.get("count") or 0) for one in series for row in one.rows)
    return count / max(0.001, (until_ms - since_ms) / 1000)


def main() -> None:
    interrupt_on_stop_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--interval", type=float, default=INTERVAL_S, help="each device's reading interval (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hub-twins-") as tmp:
        settings = settings_on_free_ports(Path(tmp) / "stack")
        stack = Stack(settings)
        try:
            stack.up(lambda message: console.print(f"  {message}"))
            ids = [spec.device_id for spec in plan_fleet(args.devices, ["thermostat"])]
            provision_into(settings, ids, settings.credentials_path)
            fleet = Fleet(settings, count=args.devices, kinds=["thermostat"], interval_s=args.interval)
            with (
                running_hub(settings, Path(tmp) / "hub.log"),
                closing(fleet),
            ):
                fleet.start(wait_s=CONNECT_WAIT_S)
                console.print(
                    f"{args.devices} thermostats, a reading every {args.interval:g} s; waiting for their twins"
                )
                deadline = time.monotonic() + CONVERGE_TIMEOUT_S
                while sum(t.online for t in read_twins(settings)) < args.devices:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the twins did not all come online")
                    time.sleep(1.0)
                base_from = now_ms()
                time.sleep(BASELINE_S)
                base_until = now_ms()
                set_s = cli_s(settings, "twin", "set", "--all", "setpoint=23.5")
                started = time.monotonic()
                set_at = now_ms()
                reached: dict[int, float] = {}
                while len(reached) < 3 and time.monotonic() - started < CONVERGE_TIMEOUT_S:
                    synced = sum(t.in_sync and t.desired.get("setpoint") == 23.5 for t in read_twins(settings))
                    for share in (50, 99, 100):
                        if share not in reached and synced * 100 >= share * args.devices:
                            reached[share] = time.monotonic() - started + set_s
                    time.sleep(POLL_S)
                done_at = now_ms()
                diff_s = cli_s(settings, "twin", "diff", "--json")
            baseline = stored_rate(settings, base_from, base_until)
            during = stored_rate(settings, set_at, max(done_at, set_at + 1000))
        finally:
            stack.down()
    table = Table(title=f"{args.devices} twins, one property set on all ({os.cpu_count()} cores)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("`twin set --all` answered (s)", f"{set_s:.2f}")
    table.add_row("`twin diff --json` answered (s)", f"{diff_s:.2f}")
    for share in (50, 99, 100):
        value = f"{reached[share]:.1f}" if share in reached else "not reached"
        table.add_row(f"{share} % in sync after (s, from the command)", value)
    table.add_row("stored readings/s without a convergence", f"{baseline:.0f}")
    table.add_row("stored readings/s during the convergence", f"{during:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
