"""Broker address lists (a cluster's nodes) in the settings, and the native cluster's port scheme."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub.core.config import format_addresses, load_settings, parse_addresses
from hub.core.errors import ConfigError
from hub.stack.cluster import NODE_PORT_OFFSET, client_settings, cluster_config, lagging_quorum_queues, offset_ports
from hub.stack.rabbitmq import RabbitPorts

NODE0 = RabbitPorts(
    amqp=5672, mqtt=1883, stomp=61613, management=15672, prometheus=15692, dist=25672, epmd=4369,
    amqps=5671, mqtts=8883, stomps=61614,
)  # fmt: skip


def test_address_lists_parse_and_format_both_ways() -> None:
    pairs = parse_addresses("127.0.0.1:1883, node-b:1983,[::1]:2083")
    assert pairs == [("127.0.0.1", 1883), ("node-b", 1983), ("::1", 2083)]
    assert parse_addresses(format_addresses(pairs)) == pairs
    assert parse_addresses("") == []


@pytest.mark.parametrize("bad", ["localhost", "host:", "host:99999", ":1883"])
def test_a_malformed_address_list_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="IOT_MQTT_ADDRESSES"):
        load_settings(mqtt_addresses=bad)


def test_without_address_lists_clients_use_the_single_host_and_its_tls_port() -> None:
    settings = load_settings(mqtt_host="broker", mqtt_port=11883, stomp_tls=True, stomps_port=61999)
    assert settings.mqtt_brokers == [("broker", 11883)]
    assert settings.stomp_brokers == [("localhost", 61999)]


def test_address_lists_replace_the_single_host() -> None:
    settings = load_settings(mqtt_addresses="a:1,b:2", stomp_addresses="c:3")
    assert settings.mqtt_brokers == [("a", 1), ("b", 2)]
    assert settings.stomp_brokers == [("c", 3)]


def test_amqp_url_may_list_every_node_and_the_first_gives_the_account() -> None:
    settings = load_settings(amqp_url="amqp://hub:pw@n0:5672/iot, amqp://hub:pw@n1:5772/iot")
    assert settings.amqp_urls == ["amqp://hub:pw@n0:5672/iot", "amqp://hub:pw@n1:5772/iot"]
    assert (settings.amqp.host, settings.amqp.port, settings.amqp.user) == ("n0", 5672, "hub")
    with pytest.raises(ConfigError, match="IOT_AMQP_URL"):
        load_settings(amqp_url="amqp://hub:pw@n0/iot,http://n1")


def test_node_i_listens_on_every_port_plus_i_times_the_offset_and_shares_epmd_and_the_auth_service() -> None:
    node2 = offset_ports(replace(NODE0, authz=30100), 2, dist=30001, epmd=NODE0.epmd)
    assert node2.authz == 30100
    assert node2.amqp == 5672 + 2 * NODE_PORT_OFFSET
    assert node2.mqtts == 8883 + 2 * NODE_PORT_OFFSET
    assert node2.management == 15672 + 2 * NODE_PORT_OFFSET
    assert (node2.dist, node2.epmd) == (30001, 4369)
    ports = [offset_ports(NODE0, i, dist=30000 + i, epmd=4369) for i in range(3)]
    listeners = [value for p in ports for name, value in vars(p).items() if name not in ("epmd", "authz")]
    assert len(listeners) == len(set(listeners)), "no two listeners of the three nodes share a port"


def test_every_node_lists_every_node_for_classic_config_peer_discovery() -> None:
    config = cluster_config(["a@localhost", "b@localhost", "c@localhost"])
    assert "cluster_formation.peer_discovery_backend = classic_config" in config
    assert "cluster_formation.classic_config.nodes.3 = c@localhost" in config


def test_the_printed_settings_name_every_node() -> None:
    settings = load_settings(amqp_url="amqp://hub:pw@localhost:5672/iot")
    ports = [offset_ports(NODE0, i, dist=30000 + i, epmd=4369) for i in range(3)]
    exports = client_settings(settings, ports)
    assert exports["IOT_AMQP_URL"].split(",")[2] == "amqp://hub:pw@127.0.0.1:5872/iot"
    assert exports["IOT_MQTT_ADDRESSES"] == "127.0.0.1:1883,127.0.0.1:1983,127.0.0.1:2083"
    assert exports["IOT_STOMP_ADDRESSES"] == "127.0.0.1:61613,127.0.0.1:61713,127.0.0.1:61813"


def test_a_quorum_queue_lags_until_every_node_is_an_online_member() -> None:
    nodes = ["a@localhost", "b@localhost", "c@localhost"]
    rows = [
        {"name": "hub.store", "type": "quorum", "members": nodes, "online": nodes},
        {"name": "hub.rules", "type": "quorum", "members": nodes, "online": nodes[:2]},
        {"name": "hub.commands", "type": "quorum", "members": nodes[1:], "online": nodes[1:]},
        {"name": "mqtt-subscription-env-0001qos1", "type": "classic", "members": [], "online": []},
    ]
    assert lagging_quorum_queues(rows, nodes) == ["hub.commands", "hub.rules"]
    assert lagging_quorum_queues(rows[:1] + rows[3:], nodes) == []
