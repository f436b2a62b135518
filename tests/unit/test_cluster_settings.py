"""Broker address lists (a cluster's nodes) in the settings, and the native cluster's port scheme."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub.core.config import TlsPorts, format_addresses, load_settings, over_tls, parse_addresses
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
    assert exports["IOT_MANAGEMENT_ADDRESSES"] == "127.0.0.1:15672,127.0.0.1:15772,127.0.0.1:15872"


def test_the_management_api_is_every_node_s_in_turn() -> None:
    assert load_settings(amqp_url="amqp://hub:pw@broker:5672/iot").management_apis == [("broker", 15672)]
    machines = load_settings(amqp_url="amqp://hub:pw@n0:5672/iot,amqp://hub:pw@n1:5672/iot", management_port=15999)
    assert machines.management_apis == [("n0", 15999), ("n1", 15999)], "each host of IOT_AMQP_URL"
    one_host = load_settings(
        amqp_url="amqp://hub:pw@127.0.0.1:5672/iot,amqp://hub:pw@127.0.0.1:5772/iot",
        management_addresses="127.0.0.1:15672,127.0.0.1:15772",
    )
    assert one_host.management_apis == [("127.0.0.1", 15672), ("127.0.0.1", 15772)]
    with pytest.raises(ConfigError, match="IOT_MANAGEMENT_ADDRESSES"):
        load_settings(management_addresses="127.0.0.1")


def test_over_tls_moves_every_node_of_a_cluster_on_one_host_to_its_own_tls_listeners() -> None:
    ports = [offset_ports(NODE0, i, dist=30000 + i, epmd=4369) for i in range(3)]
    exports = client_settings(load_settings(amqp_url="amqp://hub:p%40ss@localhost:5672/iot"), ports)
    cluster = load_settings(
        amqp_url=exports["IOT_AMQP_URL"],
        mqtt_addresses=exports["IOT_MQTT_ADDRESSES"],
        stomp_addresses=exports["IOT_STOMP_ADDRESSES"],
    )
    tls = over_tls(cluster, [p.tls for p in ports])
    assert tls.amqp_urls == [f"amqps://hub:p%40ss@127.0.0.1:{p.amqps}/iot" for p in ports]
    assert tls.mqtt_brokers == [("127.0.0.1", p.mqtts) for p in ports]
    assert tls.stomp_brokers == [("127.0.0.1", p.stomps) for p in ports]
    assert tls.mqtt_tls and tls.stomp_tls
    # What `stack up --nodes 3` prints with IOT_*_TLS set says the same.
    printed = client_settings(tls.model_copy(update={"amqp_url": tls.amqp_urls[0]}), ports)
    assert printed["IOT_AMQP_URL"] == tls.amqp_url and printed["IOT_MQTT_ADDRESSES"] == tls.mqtt_addresses


def test_over_tls_gives_nodes_on_their_own_hosts_the_usual_tls_ports() -> None:
    cluster = load_settings(
        amqp_url="amqp://hub:pw@n0:5672/iot,amqps://hub:pw@n1:5999/iot",
        mqtt_addresses="n0:1883,n1:1883",
        amqps_port=5671,
        mqtts_port=8883,
    )
    tls = over_tls(cluster)
    assert tls.amqp_urls == ["amqps://hub:pw@n0:5671/iot", "amqps://hub:pw@n1:5999/iot"], "amqps:// stays as it is"
    assert tls.mqtt_brokers == [("n0", 8883), ("n1", 8883)]
    assert tls.stomp_brokers == [("localhost", tls.stomps_port)]


def test_over_tls_refuses_nodes_sharing_a_host_without_their_ports_and_ports_not_one_per_node() -> None:
    one_host = load_settings(amqp_url="amqp://hub:pw@127.0.0.1:5672/iot,amqp://hub:pw@127.0.0.1:5772/iot")
    with pytest.raises(ConfigError, match="share a host"):
        over_tls(one_host)
    with pytest.raises(ConfigError, match="2 URLs in IOT_AMQP_URL but the TLS ports of 1 nodes"):
        over_tls(one_host, [TlsPorts(5671, 8883, 61614)])
    with pytest.raises(ConfigError, match="IOT_MQTT_ADDRESSES names 1 nodes"):
        over_tls(one_host.model_copy(update={"mqtt_addresses": "127.0.0.1:1883"}), [TlsPorts(1, 2, 3)] * 2)


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
