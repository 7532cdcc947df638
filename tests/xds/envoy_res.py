"""Builders for the Envoy v3 resources the tests serve, and bootstraps for zlbfast and Envoy."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format

TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def eds_cluster(name: str, policy: str = "ROUND_ROBIN", **extra: Any) -> cluster_pb2.Cluster:
    return json_format.ParseDict({
        "name": name, "type": "EDS", "connect_timeout": "1s", "lb_policy": policy,
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}, **extra,
    }, cluster_pb2.Cluster())


def assignment(name: str, addrs: list[tuple[str, int]], zone: str = "") -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict({
        "cluster_name": name,
        "endpoints": [{"locality": {"zone": zone}, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}} for h, p in addrs]}],
    }, endpoint_pb2.ClusterLoadAssignment())


def tcp_listener(name: str, port: int, cluster: str) -> listener_pb2.Listener:
    return json_format.ParseDict({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": cluster}}]}],
    }, listener_pb2.Listener())


def tcp_proxy(cluster: str) -> tcp_proxy_pb2.TcpProxy:
    return tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)


def _static_cluster(name: str, port: int, *, http2: bool) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if http2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


def ads_bootstrap(xds_port: int, *, delta: bool = False, node_id: str = "zlb-test",
                  admin_port: int | None = None, fetch_timeout: str = "15s") -> dict[str, Any]:
    """A bootstrap both zlbfast and Envoy accept (Envoy also needs admin_port)."""
    source = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": fetch_timeout}
    boot: dict[str, Any] = {
        "node": {"id": node_id, "cluster": "test", "locality": {"zone": "z1"}},
        "dynamic_resources": {
            "ads_config": {"api_type": "DELTA_GRPC" if delta else "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "cds_config": source, "lds_config": source,
        },
        "static_resources": {"clusters": [_static_cluster("xds", xds_port, http2=True)]},
    }
    if admin_port is not None:
        boot["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}}
    return boot


def rest_bootstrap(port: int, node_cluster: str, refresh: str = "0.2s") -> dict[str, Any]:
    source = {"api_config_source": {"api_type": "REST", "transport_api_version": "V3", "cluster_names": ["cp"],
                                    "refresh_delay": refresh}, "resource_api_version": "V3"}
    return {
        "node": {"id": "zlb-rest", "cluster": node_cluster},
        "dynamic_resources": {"cds_config": source, "lds_config": source},
        "static_resources": {"clusters": [_static_cluster("cp", port, http2=False)]},
    }
