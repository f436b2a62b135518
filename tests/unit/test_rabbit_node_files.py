"""The native node's files: what it may write stays in its own home, which no one else may enter;
its environment, which keeps Erlang distribution on loopback; its TLS settings."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from hub.core.config import load_settings, with_stack_secrets
from hub.core.secrets import SECRETS_FILE_NAME, ensure_secrets, generate_secrets
from hub.stack.certs import TlsFiles
from hub.stack.rabbitmq import NODE_FOLDERS, RABBITMQ_CONFIG_DIR, RabbitNode, RabbitPorts

PORTS = RabbitPorts(
    amqp=5672, mqtt=1883, stomp=61613, management=15672, prometheus=15692, dist=25672, epmd=4369, authz=15680
)


def test_the_node_reads_a_copy_of_the_repository_plugins_file_in_its_own_home(tmp_path: Path) -> None:
    settings = with_stack_secrets(load_settings(stack_dir=tmp_path), generate_secrets())
    node = RabbitNode(settings, tmp_path / "rabbitmq", PORTS, TlsFiles(tmp_path / "tls"))
    node.prepare()
    plugins = Path(node.environment()["RABBITMQ_ENABLED_PLUGINS_FILE"])
    assert plugins.parent == tmp_path / "rabbitmq"
    assert plugins.read_text() == (RABBITMQ_CONFIG_DIR / "enabled_plugins").read_text()


def _node(tmp_path: Path) -> RabbitNode:
    """A node of a stack under `tmp_path` that has its secrets (its definitions need the accounts' passwords)."""
    ensure_secrets(tmp_path / SECRETS_FILE_NAME)
    return RabbitNode(load_settings(stack_dir=tmp_path), tmp_path / "rabbitmq", PORTS, TlsFiles(tmp_path / "tls"))


def test_epmd_and_erlang_distribution_listen_on_loopback_for_the_node_and_its_cli_tools(tmp_path: Path) -> None:
    env = _node(tmp_path).environment()
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"  # epmd adds ::1 itself
    loopback_only = "-kernel inet_dist_use_interface {127,0,0,1}"
    assert env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == loopback_only
    assert env["RABBITMQ_CTL_ERL_ARGS"] == loopback_only


def test_the_node_folders_are_private_even_when_made_open_before(tmp_path: Path) -> None:
    node = _node(tmp_path)
    for folder in (node.home, node.home / "mnesia", node.home / "log"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    node.prepare()
    for folder in (node.home, *(node.home / sub for sub in NODE_FOLDERS)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


#: TLS 1.3's suites (always forward-secret and AEAD), then TLS 1.2's: ECDHE, and GCM or ChaCha20-Poly1305.
MODERN_CIPHER = re.compile(
    r"^(TLS_(AES_(128|256)_GCM|CHACHA20_POLY1305)_SHA(256|384)"
    r"|ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305))$"
)


def _tls_list(conf: str, prefix: str, key: str) -> list[str]:
    return re.findall(rf"(?m)^{re.escape(prefix)}\.{key}\.\d+ = (\S+)$", conf)


def test_the_tls_listeners_speak_tls_1_2_and_1_3_with_modern_ciphers_only(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.prepare()
    conf = (node.home / "rabbitmq.conf").read_text()
    versions, ciphers = _tls_list(conf, "ssl_options", "versions"), _tls_list(conf, "ssl_options", "ciphers")
    assert sorted(versions) == ["tlsv1.2", "tlsv1.3"]
    assert ciphers and all(MODERN_CIPHER.match(cipher) for cipher in ciphers), ciphers
    assert [c for c in ciphers if c.startswith("TLS_")], "without a TLS 1.3 suite no 1.3 handshake succeeds"
    # MQTTS and STOMP over TLS use these ssl_options; any TLS options of their own, or the management
    # API's when it is served over TLS, must say the same.
    for other in ("mqtt.ssl_options", "stomp.ssl_options", "management.ssl"):
        assert _tls_list(conf, other, "versions") in ([], versions), other
        assert _tls_list(conf, other, "ciphers") in ([], ciphers), other
