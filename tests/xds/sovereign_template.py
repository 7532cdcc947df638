"""A sovereign template: renders Envoy v3 resources for the instances of sovereign's source.

It runs inside the sovereign control plane (its own virtual environment, see scripts/sovereign-env.sh), so it
imports nothing from zlbfast or the test suite. sovereign loads one template per discovery type; this one module
serves all four and picks by the request's type_url, which both Envoy and zlbfast send.

An instance of the source: {name, service_clusters, listen_port, endpoints: ["IP:PORT", ...]}, and for an HTTP
listener whose routes come over RDS (a RouteConfiguration named after the instance) also {domains: [...]}.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# The static cluster through which the bootstrap reaches the control plane (tests/xds/envoy_res.rest_bootstrap).
CONTROL_PLANE_CLUSTER = "cp"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
REST = {"api_config_source": {"api_type": "REST", "transport_api_version": "V3",
                              "cluster_names": [CONTROL_PLANE_CLUSTER], "refresh_delay": "0.2s"},
        "resource_api_version": "V3"}


def _socket_address(hostport: str) -> dict[str, Any]:
    host, _, port = hostport.rpartition(":")
    return {"socket_address": {"address": host, "port_value": int(port)}}


def _cluster(inst: dict[str, Any]) -> dict[str, Any]:
    return {"name": inst["name"], "type": "EDS", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
            "eds_cluster_config": {"eds_config": REST}}


def _assignment(inst: dict[str, Any]) -> dict[str, Any]:
    return {"cluster_name": inst["name"],
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(e)}} for e in inst["endpoints"]]}]}


def _listener(inst: dict[str, Any]) -> dict[str, Any]:
    if "domains" in inst:
        filt = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM_TYPE, "stat_prefix": inst["name"], "use_remote_address": True,
            "rds": {"route_config_name": inst["name"], "config_source": REST},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}}
    else:
        filt = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY_TYPE, "stat_prefix": inst["name"], "cluster": inst["name"]}}
    return {"name": inst["name"], "address": _socket_address(f"127.0.0.1:{inst['listen_port']}"),
            "filter_chains": [{"filters": [filt]}]}


def _routes(inst: dict[str, Any]) -> dict[str, Any]:
    return {"name": inst["name"], "virtual_hosts": [{"name": inst["name"], "domains": inst["domains"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": inst["name"]}}]}]}


def call(instances: list[dict[str, Any]], discovery_request: Any, **_context: Any) -> Iterator[dict[str, Any]]:
    kind = str(discovery_request.type_url or "").rsplit(".", 1)[-1]
    render = {"Cluster": _cluster, "ClusterLoadAssignment": _assignment, "Listener": _listener,
              "RouteConfiguration": _routes}[kind]
    for inst in instances:
        if kind != "RouteConfiguration" or "domains" in inst:
            yield render(inst)
