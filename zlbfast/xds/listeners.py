"""Envoy v3 Listener -> a model listener: one filter chain with one network filter, either a TCP proxy (a tcp
listener) or an HTTP connection manager (an http listener, see zlbfast.xds.http_manager), with the chain's TLS."""

from __future__ import annotations

from dataclasses import dataclass, replace

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import DecodeError, Message

from zlbfast import model
from zlbfast.xds.http_manager import HTTP_CONNECTION_MANAGER, is_http_manager, translate_http_manager
from zlbfast.xds.resources import Ctx, SdsRef, downstream_tls, duration_ms, socket_address, tcp_congestion
from zlbfast.xds.routes import RouteTable

TCP_PROXY = "envoy.filters.network.tcp_proxy"


@dataclass(frozen=True)
class ListenerSpec:
    """A translated listener. It may name what is not here yet, and waits for it: its cluster (tcp), the Secrets of
    its TLS, its RouteConfiguration (http over RDS). An http listener's model has no virtual hosts: they come
    from `routes` (inline) or the RouteConfiguration named `rds` when the pipeline composes the config."""

    listener: model.Listener
    sds: SdsRef | None = None
    rds: str | None = None
    routes: RouteTable | None = None
    rds_fetch_timeout_s: float | None = None  # see HttpManager


def translate_listener(lst: listener_pb2.Listener) -> ListenerSpec:
    ctx = Ctx("Listener", lst.name)
    if not lst.name:
        raise ctx.fail("name", "must not be empty")
    ctx.only(lst, "", ("name", "address", "filter_chains", "stat_prefix", "traffic_direction", "metadata",
                       "socket_options"))
    address, port = socket_address(ctx, lst.address, "address", listening=True)
    congestion = tcp_congestion(ctx, lst.socket_options, "socket_options")
    if len(lst.filter_chains) != 1:
        raise ctx.fail("filter_chains", f"exactly one filter chain is supported, got {len(lst.filter_chains)}")
    chain: listener_components_pb2.FilterChain = lst.filter_chains[0]
    ctx.only(chain, "filter_chains[0]", ("filters", "name", "transport_socket"))
    tls: model.ListenerTls | None = None
    sds: SdsRef | None = None
    tls_path = "filter_chains[0].transport_socket"
    if chain.HasField("transport_socket"):
        tls, sds = downstream_tls(ctx, chain.transport_socket, tls_path)
    if len(chain.filters) != 1:
        raise ctx.fail("filter_chains[0].filters", f"exactly one network filter is supported, got {len(chain.filters)}")
    f = chain.filters[0]
    fpath = "filter_chains[0].filters[0]"
    ctx.only(f, fpath, ("name", "typed_config"))
    type_name = f.typed_config.TypeName()
    tpath = f"{fpath}.typed_config"
    if is_http_manager(f.name, type_name):
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        _unpack(ctx, f, hcm, tpath)
        manager = translate_http_manager(ctx, hcm, tpath)
        if tls is not None and tls.alpn not in ((), ("http/1.1",)):
            raise ctx.fail(f"{tls_path}.typed_config.common_tls_context.alpn_protocols", "an HTTP listener speaks "
                           f"HTTP/1.1 only: list http/1.1 alone or nothing, got {', '.join(tls.alpn)}")
        kw: dict[str, object] = {"protocol": "http", "http": manager.http, "tls": tls, "tcp_congestion": congestion}
        if manager.idle_timeout_ms is not None:
            kw["idle_timeout_ms"] = manager.idle_timeout_ms
        listener = model.Listener(lst.name, address, port, "", **kw)  # type: ignore[arg-type]
        return ListenerSpec(listener, sds, manager.rds, manager.routes, manager.rds_fetch_timeout_s)
    if type_name != tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name:
        raise ctx.fail(tpath, f"unsupported network filter {f.name or type_name!r}; only {TCP_PROXY} and "
                       f"{HTTP_CONNECTION_MANAGER} are supported")
    tp = tcp_proxy_pb2.TcpProxy()
    _unpack(ctx, f, tp, tpath)
    ctx.only(tp, tpath, ("stat_prefix", "cluster", "idle_timeout"))
    if not tp.cluster:
        raise ctx.fail(f"{tpath}.cluster", "a tcp_proxy needs a cluster (weighted_clusters is not supported)")
    listener = model.Listener(lst.name, address, port, tp.cluster, tls=tls, tcp_congestion=congestion)
    if tp.HasField("idle_timeout"):
        listener = replace(listener, idle_timeout_ms=duration_ms(tp.idle_timeout))
    return ListenerSpec(listener, sds)


def _unpack(ctx: Ctx, f: listener_components_pb2.Filter, msg: Message, path: str) -> None:
    try:
        f.typed_config.Unpack(msg)
    except DecodeError as exc:
        raise ctx.fail(path, f"cannot decode the filter's configuration: {exc}") from exc
