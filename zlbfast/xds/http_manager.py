"""Envoy's HTTP connection manager (envoy.filters.network.http_connection_manager) -> an http listener's options.

An HCM listener runs zlbfast's HTTP/1.1 data plane. What the HCM sets maps to the listener's HttpOptions, its
idle timeout and its routes (an RDS name, or an inline route_config). Options that would make Envoy treat requests
in a way zlbfast does not are refused with their field path (a NACK); where zlbfast's fixed behaviour is one of
Envoy's choices, that choice must be the one configured (use_remote_address: true, say), so that no
configuration is silently read as something else. docs/xds.md lists the subset and the defaults that differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import duration_pb2

from zlbfast import model
from zlbfast.config import MAX_DURATION_MS, MAX_HTTP_HEAD, MAX_HTTP_HEADERS
from zlbfast.xds.resources import Ctx, check_config_source, duration_ms
from zlbfast.xds.routes import RouteTable, translate_route

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"

_HCM = hcm_pb2.HttpConnectionManager
# Envoy's default max_request_headers_kb.
ENVOY_MAX_HEADERS_KB = 60

_XFCC = {
    _HCM.SANITIZE: "sanitize",
    _HCM.FORWARD_ONLY: "forward_only",
    _HCM.APPEND_FORWARD: "append_forward",
    _HCM.SANITIZE_SET: "sanitize_set",
}


@dataclass(frozen=True)
class HttpManager:
    """A translated connection manager: the listener's HTTP options and idle timeout, and where its routes come
    from: the RouteConfiguration named `rds`, or `routes` (inline)."""

    http: model.HttpOptions
    idle_timeout_ms: int | None  # None: the model's default (Envoy's 1 h)
    rds: str | None
    routes: RouteTable | None
    # rds.config_source.initial_fetch_timeout in seconds (0: wait for ever); None: not set, the pipeline's default.
    rds_fetch_timeout_s: float | None = None


def is_http_manager(name: str, type_name: str) -> bool:
    return name == HTTP_CONNECTION_MANAGER or type_name == _HCM.DESCRIPTOR.full_name


def translate_http_manager(ctx: Ctx, hcm: hcm_pb2.HttpConnectionManager, path: str) -> HttpManager:
    ctx.only(hcm, path, ("codec_type", "stat_prefix", "rds", "route_config", "http_filters",
                         "common_http_protocol_options", "http_protocol_options", "max_request_headers_kb",
                         "request_timeout", "stream_idle_timeout", "request_headers_timeout", "use_remote_address",
                         "generate_request_id", "preserve_external_request_id", "forward_client_cert_details",
                         "set_current_client_cert_details", "normalize_path", "path_with_escaped_slashes_action",
                         "server_header_transformation"))
    if hcm.codec_type not in (_HCM.AUTO, _HCM.HTTP1):
        raise ctx.fail(f"{path}.codec_type", f"{_HCM.CodecType.Name(hcm.codec_type)} is not supported: zlbfast's "
                       "HTTP listeners speak HTTP/1.1 (AUTO or HTTP1)")
    _router_only(ctx, hcm, f"{path}.http_filters")
    # Envoy counts the request line in the header limit; zlbfast checks it separately, so it gets the same room.
    head = ENVOY_MAX_HEADERS_KB * 1024
    if hcm.HasField("max_request_headers_kb"):
        kb = hcm.max_request_headers_kb.value
        if not 1 <= kb <= MAX_HTTP_HEAD // 1024:
            raise ctx.fail(f"{path}.max_request_headers_kb", f"must be between 1 and {MAX_HTTP_HEAD // 1024}, got {kb}")
        head = kb * 1024
    kw: dict[str, object] = {"max_head": head, "max_request_line": head}
    idle_ms: int | None = None
    if hcm.HasField("common_http_protocol_options"):
        opts = hcm.common_http_protocol_options
        opath = f"{path}.common_http_protocol_options"
        # max_requests_per_connection limits downstream connections here; zlbfast's limit is on upstream ones.
        ctx.only(opts, opath, ("idle_timeout", "max_headers_count"))
        if opts.HasField("idle_timeout"):
            idle_ms = _duration(ctx, opts.idle_timeout, f"{opath}.idle_timeout")  # 0 = none, in both
        if opts.HasField("max_headers_count"):
            count = opts.max_headers_count.value
            if not 1 <= count <= MAX_HTTP_HEADERS:
                raise ctx.fail(f"{opath}.max_headers_count", f"must be between 1 and {MAX_HTTP_HEADERS}, got {count}")
            kw["max_headers"] = count
    if hcm.HasField("http_protocol_options"):
        ctx.only(hcm.http_protocol_options, f"{path}.http_protocol_options", ())
    for name, what in (("request_timeout", "a timeout for receiving the whole request"),
                       ("stream_idle_timeout", "a per-request idle timeout")):
        if hcm.HasField(name) and duration_ms(getattr(hcm, name)):
            raise ctx.fail(f"{path}.{name}", f"zlbfast has no {what}; only 0 (disabled) is supported")
    if hcm.HasField("request_headers_timeout") and duration_ms(hcm.request_headers_timeout):
        kw["header_timeout_ms"] = _duration(ctx, hcm.request_headers_timeout, f"{path}.request_headers_timeout")
    # Envoy appends the client's address to x-forwarded-for only with use_remote_address (its default is false).
    kw["append_x_forwarded_for"] = hcm.use_remote_address.value
    if hcm.HasField("generate_request_id") and not hcm.generate_request_id.value:
        raise ctx.fail(f"{path}.generate_request_id", "zlbfast always adds an x-request-id when there is none")
    if hcm.HasField("normalize_path") and hcm.normalize_path.value:
        raise ctx.fail(f"{path}.normalize_path", "zlbfast routes the path as it was sent")
    if hcm.path_with_escaped_slashes_action not in (_HCM.IMPLEMENTATION_SPECIFIC_DEFAULT, _HCM.KEEP_UNCHANGED):
        name = _HCM.PathWithEscapedSlashesAction.Name(hcm.path_with_escaped_slashes_action)
        raise ctx.fail(f"{path}.path_with_escaped_slashes_action", f"{name} is not supported: zlbfast keeps the "
                       "path unchanged (KEEP_UNCHANGED)")
    if hcm.server_header_transformation not in (_HCM.OVERWRITE, _HCM.PASS_THROUGH):
        raise ctx.fail(f"{path}.server_header_transformation", "zlbfast passes the upstream's Server header on "
                       "(PASS_THROUGH)")
    kw["forward_client_cert"], kw["client_cert_details"] = _xfcc(ctx, hcm, path)
    rds, routes = _routes(ctx, hcm, path)
    fetch_timeout_s = None
    if rds is not None and hcm.rds.config_source.HasField("initial_fetch_timeout"):
        fetch_timeout_s = duration_ms(hcm.rds.config_source.initial_fetch_timeout) / 1000
    return HttpManager(model.HttpOptions(**kw), idle_ms, rds, routes, fetch_timeout_s)  # type: ignore[arg-type]


def _duration(ctx: Ctx, d: duration_pb2.Duration, path: str) -> int:
    ms = duration_ms(d)
    if not 0 <= ms <= MAX_DURATION_MS:
        raise ctx.fail(path, f"must be between 0 and {MAX_DURATION_MS // 3_600_000}h")
    return ms


def _router_only(ctx: Ctx, hcm: hcm_pb2.HttpConnectionManager, path: str) -> None:
    """The filter chain must be Envoy's router alone: zlbfast runs no other HTTP filter."""
    if len(hcm.http_filters) != 1:
        raise ctx.fail(path, f"exactly one HTTP filter, {ROUTER}, is supported; got {len(hcm.http_filters)}")
    hf = hcm.http_filters[0]
    fpath = f"{path}[0]"
    ctx.only(hf, fpath, ("name", "typed_config"))
    type_name = hf.typed_config.TypeName() if hf.HasField("typed_config") else ""
    if type_name and type_name != router_pb2.Router.DESCRIPTOR.full_name:
        raise ctx.fail(f"{fpath}.typed_config", f"unsupported HTTP filter {hf.name or type_name!r}; only {ROUTER}")
    if not type_name and hf.name != ROUTER:
        raise ctx.fail(f"{fpath}.name", f"unsupported HTTP filter {hf.name!r}; only {ROUTER}")
    if type_name:
        router = router_pb2.Router()
        hf.typed_config.Unpack(router)
        ctx.only(router, f"{fpath}.typed_config", ())


def _xfcc(ctx: Ctx, hcm: hcm_pb2.HttpConnectionManager, path: str) -> tuple[str, tuple[str, ...]]:
    """forward_client_cert and client_cert_details (the model's names) of the manager's XFCC settings."""
    mode = hcm.forward_client_cert_details
    if mode not in _XFCC:
        raise ctx.fail(f"{path}.forward_client_cert_details", f"{_HCM.ForwardClientCertDetails.Name(mode)} is not "
                       "supported; use SANITIZE, FORWARD_ONLY, APPEND_FORWARD or SANITIZE_SET")
    details = hcm.set_current_client_cert_details
    dpath = f"{path}.set_current_client_cert_details"
    # zlbfast's element is By, Hash and URI (the client's SPIFFE ID), plus Cert, Chain, Subject and DNS when asked:
    # what Envoy writes with the same fields set.
    ctx.only(details, dpath, ("uri", "cert", "chain", "subject", "dns"))
    if mode in (_HCM.APPEND_FORWARD, _HCM.SANITIZE_SET) and not details.uri:
        raise ctx.fail(f"{dpath}.uri", "must be true: zlbfast's x-forwarded-client-cert element always carries "
                       "URI=<client SPIFFE ID> (with By and Hash)")
    extra = tuple(name for name, on in (("cert", details.cert), ("chain", details.chain),
                                        ("subject", details.subject.value), ("dns", details.dns)) if on)
    return _XFCC[mode], extra


def _routes(ctx: Ctx, hcm: hcm_pb2.HttpConnectionManager, path: str) -> tuple[str | None, RouteTable | None]:
    kind = hcm.WhichOneof("route_specifier")
    if kind == "rds":
        rpath = f"{path}.rds"
        ctx.only(hcm.rds, rpath, ("config_source", "route_config_name"))
        if not hcm.rds.route_config_name:
            raise ctx.fail(f"{rpath}.route_config_name", "must name a RouteConfiguration")
        check_config_source(ctx, hcm.rds.config_source, f"{rpath}.config_source")
        return hcm.rds.route_config_name, None
    if kind == "route_config":
        # An inline route table is checked against the clusters when the listener applies (validate_clusters
        # defaults to true here, as in Envoy).
        return None, translate_route(hcm.route_config, owner=ctx, field=f"{path}.route_config", validate_clusters=True)
    raise ctx.fail(path, "needs rds or route_config (scoped_routes is not supported)")
