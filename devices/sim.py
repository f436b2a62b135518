"""`python -m devices.sim` (also `iot-sim`): run a fleet of simulated sensors until Ctrl-C, SIGTERM or --duration.

A thin shell over `devices.fleet.Fleet`: parse flags into Settings, show a live progress
line, print a per-protocol summary at the end. Errors a user can act on are one line on
stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from devices.credentials import ensure_certificates, ensure_credentials, reprovision_refused
from devices.device import DEFAULT_SITE, ProtocolChoice, plan_fleet
from devices.fleet import Fleet
from devices.models import DEFAULT_KINDS
from devices.stats import FleetStats, LagSummary
from hub.core.config import format_addresses, load_settings
from hub.core.contract import MAX_BATCH_ENTRIES
from hub.core.credentials import Credential
from hub.core.errors import BrokerUnavailable
from hub.core.exit_codes import ExitCode
from hub.core.limits import raise_open_files_limit
from hub.core.models import load_models
from hub.core.program import run_command
from hub.core.signals import raise_interrupt

#: How often the progress line is redrawn.
PROGRESS_REFRESH_S = 0.5
#: In a log file (not a terminal), a progress line this often.
LOG_PROGRESS_EVERY_S = 10.0
#: Columns used when stderr is not a terminal (a log file), so the summary table is not squeezed.
SUMMARY_WIDTH = 130


def _parse_kinds(value: str) -> list[str]:
    """The names only: which kinds exist is the device models' answer (the fleet plan checks)."""
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    if not kinds:
        raise click.BadParameter("give at least one kind, e.g. --kinds environment,vibration")
    return kinds


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--count", "-n", default=50, show_default=True, type=click.IntRange(min=1), help="Number of devices.")
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01), help="Seconds between readings."
)
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds [default: until Ctrl-C].")
@click.option("--site", default=DEFAULT_SITE, show_default=True, help="Site every device belongs to.")
@click.option(
    "--kinds",
    "--kind",
    default=",".join(DEFAULT_KINDS),
    show_default=True,
    help="Comma-separated device kinds of the device models, cycled (a kind without physics gets generic readings).",
)
@click.option(
    "--protocol",
    type=click.Choice(["mqtt", "stomp", "mixed"]),
    default="mixed",
    show_default=True,
    help="How devices talk to the broker; mixed alternates so every kind has both.",
)
@click.option("--seed", type=int, help="Make the readings (and faults) of a run reproducible.")
@click.option(
    "--fault-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Chance per reading that a fault starts: a spike, a stuck sensor or a dropout.",
)
@click.option(
    "--batch",
    default=1,
    show_default=True,
    type=click.IntRange(1, MAX_BATCH_ENTRIES),
    help="Readings per message: above 1, each device sends its readings as telemetry batches of this many. "
    "Whatever the value, a device's buffer from while it was offline leaves in batches after a reconnect.",
)
@click.option("--mqtt-host", help="MQTT broker host [IOT_MQTT_HOST, localhost].")
@click.option("--mqtt-port", type=int, help="MQTT broker port [IOT_MQTT_PORT, 1883].")
@click.option("--stomp-host", help="STOMP broker host [IOT_STOMP_HOST, localhost].")
@click.option("--stomp-port", type=int, help="STOMP broker port [IOT_STOMP_PORT, 61613].")
@click.option(
    "--credentials",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The devices' credentials (JSON, from `python -m hub provision --out`); devices missing from it are "
    "provisioned into it with the admin account [IOT_CREDENTIALS_FILE, STACK_DIR/devices.json].",
)
@click.option(
    "--tls",
    is_flag=True,
    default=None,
    help="Connect over TLS: MQTTS and STOMP over TLS, verifying the broker [IOT_MQTT_TLS, IOT_STOMP_TLS, IOT_TLS_CA].",
)
@click.option(
    "--certs",
    type=click.Path(file_okay=False, path_type=Path),
    help="Devices log in with client certificates from this folder, no password (implies --tls); devices missing "
    "from it are provisioned as certificate devices with the admin account and the stack's CA [IOT_DEVICE_CERT_DIR].",
)
@click.option(
    "--models-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Device models merged over the shipped ones [IOT_MODELS_FILE].",
)
def sim(
    count: int,
    interval: float,
    duration: float | None,
    site: str,
    kinds: str,
    protocol: ProtocolChoice,
    seed: int | None,
    fault_rate: float,
    batch: int,
    mqtt_host: str | None,
    mqtt_port: int | None,
    stomp_host: str | None,
    stomp_port: int | None,
    credentials: Path | None,
    tls: bool | None,
    certs: Path | None,
    models_file: Path | None,
) -> None:
    """Simulated sensors over MQTT and STOMP: environment, air-quality, power-meter and thermostat
    devices with physics, and any other kind the device models declare."""
    settings = load_settings(
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        stomp_host=stomp_host,
        stomp_port=stomp_port,
        credentials_file=credentials,
        mqtt_tls=tls,
        stomp_tls=tls,
        device_cert_dir=certs,
        models_file=models_file,
    )
    if settings.device_cert_dir is not None:
        # A certificate is presented only over TLS.
        settings = settings.model_copy(update={"mqtt_tls": True, "stomp_tls": True})
    console = Console(stderr=True, width=None if sys.stderr.isatty() else SUMMARY_WIDTH)
    plan = plan_fleet(count, _parse_kinds(kinds), protocol, site, load_models(settings.models_file))
    ids = [spec.device_id for spec in plan]
    held = None
    if settings.device_cert_dir is not None:
        ensure_certificates(settings.device_cert_dir, ids, console)
        identity = f"its own certificate ({settings.device_cert_dir})"
    else:
        held = ensure_credentials(settings.credentials_path, ids, console)
        identity = f"its own credential ({settings.credentials_path})"

    def new_fleet(credentials: dict[str, Credential] | None) -> Fleet:
        return Fleet(
            settings,
            count=count,
            protocol=protocol,
            interval_s=interval,
            kinds=_parse_kinds(kinds),
            site=site,
            seed=seed,
            fault_rate=fault_rate,
            credentials=credentials,
            batch=batch,
        )

    fleet = new_fleet(held)
    console.print(
        f"starting {count} devices ({protocol}) at site {site}: "
        f"MQTT{'S' if settings.mqtt_tls else ''} {format_addresses(settings.mqtt_brokers)}, "
        f"STOMP{' over TLS' if settings.stomp_tls else ''} {format_addresses(settings.stomp_brokers)}"
    )
    interrupted = False
    try:
        turned_away = _start(fleet, password_logins=held is not None)
        if turned_away:
            # Credentials the broker never knew (the file was made on another broker): new ones, once.
            fleet.close()
            fleet = new_fleet(reprovision_refused(settings.credentials_path, turned_away, console))
            fleet.start()
        # Everything made so far lives for the whole run: keep the collector from rescanning it (pauses).
        gc.freeze()
        refused = fleet.stats().total.refused
        online = f"all {count}" if not refused else f"{count - refused} of {count}"
        console.print(f"{online} devices online, each with {identity}")
        if refused:
            console.print(f"{refused} devices refused by the broker (credential unknown or revoked); they keep trying")
        _show_progress(fleet, console, duration)
    except KeyboardInterrupt:
        interrupted = True
        console.print("\nstopping: devices are saying offline…")
    finally:
        # A second Ctrl-C must not cut the goodbye short: the devices' offline status is part of the contract.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fleet.close()
    console.print(_summary_table(fleet.stats()))
    if interrupted:
        sys.exit(ExitCode.INTERRUPTED)


def _start(fleet: Fleet, password_logins: bool) -> list[str]:
    """Start the fleet; the devices the broker refused to log in with their password (none: all is well)."""
    try:
        fleet.start()
    except BrokerUnavailable:
        # Every device failed: by refusals alone, the credentials file is the one to blame.
        if password_logins and fleet.refused_devices() and len(fleet.refused_devices()) == len(fleet.devices):
            return fleet.refused_devices()
        raise
    return fleet.refused_devices() if password_logins else []


def _show_progress(fleet: Fleet, console: Console, duration: float | None) -> None:
    """A live line on a terminal; in a log file, one plain line every `LOG_PROGRESS_EVERY_S`."""
    deadline = None if duration is None else time.monotonic() + duration
    refresh = PROGRESS_REFRESH_S if console.is_terminal else LOG_PROGRESS_EVERY_S
    with Live(console=console, refresh_per_second=4, transient=False) if console.is_terminal else nullcontext() as live:
        last = fleet.stats()
        while deadline is None or time.monotonic() < deadline:
            left = refresh if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(refresh, left)))
            now = fleet.stats()
            line = _progress_line(now, last, LagSummary.of(fleet.lag.take_recent()))
            if live is not None:
                live.update(line)
            else:
                console.print(line)
            last = now


def _progress_line(now: FleetStats, last: FleetStats, lag: LagSummary) -> Text:
    total, before = now.total, last.total
    window = max(1e-6, now.elapsed_s - last.elapsed_s)
    rate = (total.confirmed - before.confirmed) / window
    return Text.assemble(
        ("online ", "dim"),
        (f"{total.online}/{total.devices}", "bold green" if total.online == total.devices else "bold yellow"),
        ("  confirmed/s ", "dim"),
        f"{rate:,.0f}",
        ("  sent ", "dim"),
        f"{total.sent:,}",
        ("  buffered ", "dim"),
        f"{total.buffered:,}",
        ("  errors ", "dim"),
        (f"{total.errors}", "red" if total.errors else ""),
        ("  reconnects ", "dim"),
        f"{total.reconnects}",
        ("  refused ", "dim"),
        (f"{total.refused}", "red" if total.refused else ""),
        ("  commands ", "dim"),
        f"{total.commands}",
        ("  lag p99 ", "dim"),
        f"{lag.p99_ms:.1f} ms",
        ("  ", ""),
        (f"{now.elapsed_s:.0f} s", "dim"),
    )


def _summary_table(stats: FleetStats) -> Table:
    lag = stats.lag
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title=f"{stats.elapsed_s:.1f} s; schedule lag p50 {lag.p50_ms:.1f} ms, p99 {lag.p99_ms:.1f} ms, "
        f"max {lag.max_ms:.1f} ms",
    )
    columns = (
        "devices",
        "produced",
        "sent",
        "confirmed",
        "buffered",
        "dropped",
        "reconnects",
        "commands",
        "errors",
        "refused",
    )
    table.add_column("protocol")
    for column in columns:
        table.add_column(column, justify="right")
    rows = [*sorted(stats.by_protocol.items()), ("total", stats.total)]
    for name, row in rows:
        cells = (f"{getattr(row, column):,}" for column in columns)
        table.add_row(name, *cells, style="bold" if name == "total" else "")
    return table


def main() -> None:
    # stomp.py logs every lost connection with a traceback; the progress line counts them instead.
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, raise_interrupt)  # SIGINT: `run_command`
    raise_open_files_limit()  # one descriptor per device connection
    run_command(sim)


if __name__ == "__main__":
    main()
