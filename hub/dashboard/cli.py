"""`python -m hub dashboard`: serve the local page until Ctrl-C."""

from __future__ import annotations

import click

from hub.core.config import load_settings
from hub.core.errors import ConfigError
from hub.dashboard.server import make_server

DEFAULT_PORT = 8050
DEFAULT_HOST = "127.0.0.1"


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="HTTP port")
@click.option(
    "--host", default=DEFAULT_HOST, show_default=True, help="address to listen on (0.0.0.0 shows it to your network)"
)
@click.option("--influx-url", default=None, help="InfluxDB URL [IOT_INFLUX_URL, http://localhost:8086]")
@click.option("--influx-db", default=None, help="database [IOT_INFLUX_DB, telemetry]")
def dashboard(port: int, host: str, influx_url: str | None, influx_db: str | None) -> None:
    """Fleet overview and device detail charts in your browser, read live from InfluxDB.

    For machines without Docker (and so without Chronograf): no internet needed.
    """
    settings = load_settings(influx_url=influx_url, influx_db=influx_db)
    try:
        server = make_server(settings, host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port") from None
    click.echo(
        f"dashboard on http://{host}:{server.server_port}/ reading {settings.influx_url} db {settings.influx_db}"
    )
    click.echo("Ctrl-C stops it", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
