"""Envoy's socket_options carrying TCP_CONGESTION (on a Listener, and in a Cluster's upstream_bind_config) become
tcp_congestion; any other socket option, a source address to bind, and an algorithm the kernel lacks are refused
with a message naming the field, over a real ADS stream as well."""

from __future__ import annotations

import base64
import socket
import threading

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from tests.congestionutil import SYSTEM, alternative, wait_algorithms
from tests.netutil import Backend, free_port, label_handler, read_line, wait_for
from tests.xds.envoy_res import assignment, eds_cluster, tcp_listener
from zlbfast.xds import resources as r
from zlbfast.xds.listeners import translate_listener


def _congestion_option(name: str) -> dict[str, object]:
    return {"level": socket.IPPROTO_TCP, "name": socket.TCP_CONGESTION,
            "buf_value": base64.b64encode(name.encode()).decode()}


def _listener(port: int, cluster: str, options: list[dict[str, object]]) -> listener_pb2.Listener:
    msg = tcp_listener("l", port, cluster)
    msg.MergeFrom(json_format.ParseDict({"socket_options": options}, listener_pb2.Listener()))
    return msg


def _cluster(name: str, bind_config: dict[str, object]) -> cluster_pb2.Cluster:
    return eds_cluster(name, upstream_bind_config=bind_config)


def test_tcp_congestion_options_translate_to_the_model():
    assert translate_listener(_listener(8080, "a", [_congestion_option("cubic")])).listener.tcp_congestion == "cubic"
    assert translate_listener(tcp_listener("l", 8080, "a")).listener.tcp_congestion == ""
    spec = r.translate_cluster(_cluster("a", {"socket_options": [_congestion_option("reno")]}))
    assert spec.cluster.tcp_congestion == "reno"


@pytest.mark.parametrize(
    ("make", "field", "problem"),
    [
        (lambda: translate_listener(_listener(8080, "a", [{"level": socket.SOL_SOCKET, "name": socket.SO_KEEPALIVE,
                                                           "int_value": 1}])),
         "socket_options[0]", f"level {socket.SOL_SOCKET} name {socket.SO_KEEPALIVE} is not supported"),
        (lambda: translate_listener(_listener(8080, "a", [_congestion_option("cubic"), _congestion_option("reno")])),
         "socket_options[1]", "sets congestion control 'reno' after 'cubic'"),
        (lambda: translate_listener(_listener(8080, "a", [_congestion_option("Not Valid")])),
         "socket_options[0].buf_value", "'Not Valid' is not a congestion control name"),
        (lambda: r.translate_cluster(_cluster("a", {"source_address": {"address": "127.0.0.2", "port_value": 0}})),
         "upstream_bind_config.source_address", "field is not supported by zlbfast"),
    ],
    ids=["other-option", "two-algorithms", "malformed", "source-address"],
)
def test_what_zlbfast_does_not_apply_is_refused(make, field, problem):
    with pytest.raises(r.ResourceError) as exc:
        make()
    assert exc.value.field == field
    assert problem in exc.value.problem


def test_over_ads_the_sockets_take_the_algorithm_and_an_unknown_one_is_nacked(ads_server, agent_factory):
    alt = alternative()
    release = threading.Event()
    backend = Backend(label_handler("b0", hold=release))
    port = free_port()
    try:
        ads_server.set(r.CLUSTER, {"a": _cluster("a", {"socket_options": [_congestion_option(alt)]})})
        ads_server.set(r.ENDPOINT, {"a": assignment("a", [(backend.host, backend.port)])})
        ads_server.set(r.LISTENER, {"l": _listener(port, "a", [_congestion_option(alt)])})
        agent = agent_factory(ads_server)
        wait_for(lambda: agent.has_listener("l"), what="listener from LDS")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert read_line(client) == b"b0\n"
            assert wait_algorithms(f"( sport = :{port} )", 1) == [alt]
            assert wait_algorithms(f"( dport = :{backend.port} )", 1) == [alt]
            release.set()

        # The validator asks the kernel: a name it lacks is NACKed, and the accepted cluster stays.
        ads_server.set(r.CLUSTER, {"a": _cluster("a", {"socket_options": [_congestion_option("nosuchcc")]})})
        wait_for(lambda: ads_server.nacks(r.CLUSTER), what="NACK of the unknown algorithm")
        assert "this kernel has no congestion control 'nosuchcc'" in ads_server.nacks(r.CLUSTER)[0]
        assert SYSTEM in ads_server.nacks(r.CLUSTER)[0]
        assert agent.state()["last_version"]["Cluster"] == "1"
    finally:
        release.set()
        backend.stop()
