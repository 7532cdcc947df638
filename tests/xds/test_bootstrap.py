"""Envoy bootstraps: unsupported fields are startup errors naming the field; static resources (TCP and HTTP
listeners) and filesystem-watched (path_config_source) resources run through the same pipeline."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.httputil import RecordingUpstream
from tests.netutil import free_port, wait_for
from tests.xds.agentrun import AgentThread
from tests.xds.envoy_res import TCP_PROXY_TYPE, ads_bootstrap, http_manager, to_cluster, vhost
from tests.xds.traffic import label_or_empty, routed
from zlbfast.config import ConfigError
from zlbfast.xds import bootstrap


def test_unsupported_fields_are_startup_errors():
    boot = ads_bootstrap(1)
    boot["static_resources"]["clusters"].append({"name": "d", "type": "STRICT_DNS", "connect_timeout": "1s"})
    with pytest.raises(ConfigError, match=r"Cluster 'd': type: STRICT_DNS is not supported"):
        bootstrap.from_dict(boot, "b.yaml")
    boot = ads_bootstrap(1)
    boot["layered_runtime"] = {}
    with pytest.raises(ConfigError, match=r"b.yaml: layered_runtime: not supported by zlbfast"):
        bootstrap.from_dict(boot, "b.yaml")
    with pytest.raises(ConfigError, match="not a valid Envoy v3 bootstrap"):
        bootstrap.from_dict({"node": {"idd": "x"}}, "b.yaml")


def _listener_file(path: str, version: str, port: int, cluster: str) -> None:
    resp = {"version_info": version, "resources": [{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                        "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "l",
                                                         "cluster": cluster}}]}]}]}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(resp, f)
    os.replace(tmp, path)  # atomic, as Envoy expects of watched files


def static(name: str, backend) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": backend.host, "port_value": backend.port}}}}]}]}}


def test_static_http_listener_with_inline_routes(tmp_path):
    """A static HTTP listener routes with its inline route_config at once; as in Envoy, a route to a cluster that
    is not static is a startup error (validate_clusters is on for inline route tables)."""
    port = free_port()
    with RecordingUpstream("a0") as a0, RecordingUpstream("b0") as b0:
        ups = {"a": a0.backend, "b": b0.backend}
        routes = {"virtual_hosts": [vhost("b", ["b.example"], to_cluster("b")), vhost("rest", ["*"], to_cluster("a"))]}
        listener = {"name": "web", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": http_manager(route_config=routes)}]}]}
        boot = {"node": {"id": "static"},
                "static_resources": {"clusters": [static(n, up) for n, up in ups.items()], "listeners": [listener]}}
        agent = AgentThread(boot, str(tmp_path / "cache")).start()
        try:
            wait_for(lambda: agent.has_listener("web"), what="the static HTTP listener")
            assert routed(port, "b.example", "/x") == (200, "b0")
            assert routed(port, "a.example", "/x") == (200, "a0")
        finally:
            agent.stop()
        boot["static_resources"]["clusters"].pop()
        with pytest.raises(ConfigError) as err:
            bootstrap.from_dict(boot, "b.yaml")
        assert err.value.path == ("static_resources: Listener 'web': filter_chains[0].filters[0].typed_config."
                                  "route_config.virtual_hosts[0].routes[0].route.cluster")
        assert err.value.problem.startswith("unknown cluster 'b'")


def test_static_clusters_and_watched_listener_file(tmp_path, backends):
    b0, b1 = backends(2)
    port = free_port()

    lds = str(tmp_path / "lds.yaml")
    _listener_file(lds, "1", port, "one")
    boot = {"node": {"id": "files"}, "static_resources": {"clusters": [static("one", b0), static("two", b1)]},
            "dynamic_resources": {"lds_config": {"path_config_source": {"path": lds}}}}
    agent = AgentThread(boot, str(tmp_path / "cache")).start()
    try:
        wait_for(lambda: label_or_empty(port) == "b0", what="listener from the watched file")
        _listener_file(lds, "2", port, "")  # no cluster: rejected, the old listener stays
        wait_for(lambda: agent.state()["nacks"] == 1, what="rejected file")
        assert label_or_empty(port) == "b0"
        _listener_file(lds, "3", port, "two")
        wait_for(lambda: label_or_empty(port) == "b1", what="listener moved to the other static cluster")
        assert agent.state()["last_version"]["Listener"] == "3"
    finally:
        agent.stop()
