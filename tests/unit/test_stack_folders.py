"""The stack's folders are private (mode 0700): made so, and closed again when an older version left them open."""

from __future__ import annotations

import stat
from pathlib import Path

from hub.stack.folders import private_folder
from hub.stack.influx import InfluxNode


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_folder_is_private(tmp_path: Path) -> None:
    folder = private_folder(tmp_path / "stack" / "rabbitmq")
    assert folder.is_dir() and _mode(folder) == 0o700


def test_an_open_folder_is_closed_and_keeps_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "rabbit_user.DCD").write_text("hashes")
    private_folder(folder)
    assert _mode(folder) == 0o700
    assert (folder / "rabbit_user.DCD").read_text() == "hashes"


def test_influxd_data_folders_are_private(tmp_path: Path) -> None:
    node = InfluxNode(tmp_path / "influxdb", 8086, 8088)
    node.home.mkdir(mode=0o755)
    node.home.chmod(0o755)
    node.prepare()
    for folder in (node.home, node.home / "meta", node.home / "data", node.home / "wal"):
        assert _mode(folder) == 0o700, folder
