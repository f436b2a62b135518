"""The native node's files: what it may write stays in its own home."""

from __future__ import annotations

from pathlib import Path

from hub.core.config import load_settings
from hub.stack.certs import TlsFiles
from hub.stack.rabbitmq import RABBITMQ_CONFIG_DIR, RabbitNode, RabbitPorts

PORTS = RabbitPorts(
    amqp=5672, mqtt=1883, stomp=61613, management=15672, prometheus=15692, dist=25672, epmd=4369, authz=15680
)


def test_the_node_reads_a_copy_of_the_repository_plugins_file_in_its_own_home(tmp_path: Path) -> None:
    node = RabbitNode(load_settings(stack_dir=tmp_path), tmp_path / "rabbitmq", PORTS, TlsFiles(tmp_path / "tls"))
    node.prepare()
    plugins = Path(node.environment()["RABBITMQ_ENABLED_PLUGINS_FILE"])
    assert plugins.parent == tmp_path / "rabbitmq"
    assert plugins.read_text() == (RABBITMQ_CONFIG_DIR / "enabled_plugins").read_text()
