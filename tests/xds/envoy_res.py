"""Builders for the Envoy v3 resources the tests serve, and bootstraps for zlbfast and Envoy."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (registers the Any type for JSON)
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from google.protobuf import json_format

from tests.tlsutil import CA, Svid

TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


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


def http_manager(*, rds: str = "", route_config: dict[str, Any] | None = None, rds_fetch_timeout: str = "",
                 **extra: Any) -> dict[str, Any]:
    """An HttpConnectionManager (JSON form) with the router filter and use_remote_address (both proxies then
    append to x-forwarded-for), its routes from RDS over ADS (`rds`, with the config source's initial_fetch_timeout
    when `rds_fetch_timeout` is given) or inline (`route_config`)."""
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
    hcm: dict[str, Any] = {"@type": HCM_TYPE, "stat_prefix": "http", "use_remote_address": True,
                           "http_filters": [router], **extra}
    if rds:
        hcm["rds"] = {"route_config_name": rds, "config_source": {"ads": {}, "resource_api_version": "V3"}}
        if rds_fetch_timeout:
            hcm["rds"]["config_source"]["initial_fetch_timeout"] = rds_fetch_timeout
    if route_config is not None:
        hcm["route_config"] = route_config
    return hcm


def http_listener(name: str, port: int, **hcm: Any) -> listener_pb2.Listener:
    """A listener on 127.0.0.1:port whose one filter is http_manager(**hcm)."""
    return json_format.ParseDict({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": http_manager(**hcm)}]}],
    }, listener_pb2.Listener())


def route_config(name: str, *vhosts: dict[str, Any], **extra: Any) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict({"name": name, "virtual_hosts": list(vhosts), **extra}, route_pb2.RouteConfiguration())


def vhost(name: str, domains: list[str], *routes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "domains": domains, "routes": list(routes), **extra}


def to_cluster(cluster: str, prefix: str = "/", **route: Any) -> dict[str, Any]:
    """A route (JSON form) sending a path prefix to a cluster."""
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **route}}


def tls_secret(name: str, svid: Svid, key_pem: str | None = None) -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(inline_string=svid.cert_pem),
        private_key=base_pb2.DataSource(inline_string=key_pem if key_pem is not None else svid.key_pem)))


def ca_secret(name: str, ca: CA) -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_string=ca.pem)))


def sds(name: str) -> dict[str, Any]:
    """An SdsSecretConfig naming a Secret that comes over ADS."""
    return {"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}}


def common_tls(certificate: str, validation: str, *, spiffe_exact: str = "", spiffe_prefix: str = "",
               **extra: Any) -> dict[str, Any]:
    """A CommonTlsContext: identity and trust bundle from SDS, the peer's SPIFFE ID matched exactly or by
    prefix when given."""
    matchers = [{"san_type": "URI", "matcher": {"exact": spiffe_exact} if spiffe_exact else {"prefix": spiffe_prefix}}]
    return {"tls_certificate_sds_secret_configs": [sds(certificate)],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": matchers}
                if spiffe_exact or spiffe_prefix else {},
                "validation_context_sds_secret_config": sds(validation)}, **extra}


def tls_socket(context: str, **fields: Any) -> dict[str, Any]:
    """An envoy.transport_sockets.tls transport socket; `context` is DownstreamTlsContext or UpstreamTlsContext."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{context}", **fields}}


def tls_listener(name: str, port: int, cluster: str, common: dict[str, Any], **fields: Any) -> listener_pb2.Listener:
    """A tcp_proxy listener terminating mutual TLS."""
    msg = tcp_listener(name, port, cluster)
    json_format.ParseDict(tls_socket("DownstreamTlsContext", common_tls_context=common, require_client_certificate=True,
                                     **fields), msg.filter_chains[0].transport_socket)
    return msg


def tls_cluster(name: str, common: dict[str, Any], **fields: Any) -> cluster_pb2.Cluster:
    """An EDS cluster originating mutual TLS."""
    return eds_cluster(name, transport_socket=tls_socket("UpstreamTlsContext", common_tls_context=common, **fields))


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
