"""A project-local `influxd` (InfluxDB 1.x) using influxdb/influxdb.conf.

The directories and bind addresses are overridden with INFLUXDB_* variables, so the config
file stays the same one docker compose mounts.
"""

from __future__ import annotations

import os
from pathlib import Path

from hub.clients.influx import InfluxHttp, server_version
from hub.core.config import PROJECT_ROOT
from hub.core.errors import StackError, StorageUnavailable
from hub.stack.folders import private_folder
from hub.stack.packages import INFLUXD

INFLUX_CONFIG = PROJECT_ROOT / "influxdb" / "influxdb.conf"


class InfluxNode:
    def __init__(self, home: Path, http_port: int, rpc_port: int) -> None:
        self.home = home
        self.http_port = http_port
        self.rpc_port = rpc_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.home / "influxd.log"

    def prepare(self) -> None:
        """The data folders, private (also those made before)."""
        private_folder(self.home)
        for sub in ("meta", "data", "wal"):
            private_folder(self.home / sub)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        env.update(
            INFLUXDB_META_DIR=str(self.home / "meta"),
            INFLUXDB_DATA_DIR=str(self.home / "data"),
            INFLUXDB_DATA_WAL_DIR=str(self.home / "wal"),
            INFLUXDB_HTTP_BIND_ADDRESS=f"127.0.0.1:{self.http_port}",
            INFLUXDB_BIND_ADDRESS=f"127.0.0.1:{self.rpc_port}",
        )
        return env

    def argv(self) -> list[str]:
        return [str(INFLUXD), "-config", str(INFLUX_CONFIG), "-pidfile", str(self.home / "influxd.pid")]

    def problems(self) -> list[str]:
        return [] if server_version(self.url) is not None else [f"{self.url}/ping does not answer"]

    def create_database(self, name: str) -> None:
        client = InfluxHttp(self.url, name)
        try:
            client.create_database()
        except StorageUnavailable as exc:
            raise StackError(str(exc)) from exc
        finally:
            client.close()
