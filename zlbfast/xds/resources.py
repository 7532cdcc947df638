"""Envoy v3 resources -> zlbfast's typed model: clusters, endpoints, TLS contexts and secrets here, listeners in
zlbfast.xds.listeners (HTTP connection managers in zlbfast.xds.http_manager), route configurations in
zlbfast.xds.routes; the shared vocabulary (ResourceError, Ctx, type URLs, unpack) is here.

One translator per resource type. Each checks that the message uses only the fields zlbfast implements
(docs/xds.md lists them): a field that would change behaviour and is not implemented raises ResourceError
naming the resource and the field path, which becomes a NACK (xDS) or a startup error (bootstrap). Fields that
only label things (stat prefixes, metadata) are accepted and have no effect.

Endpoints are the bulk of any large configuration, so ``unpack`` hands a serialized ClusterLoadAssignment to the
C decoder first (zlbfast._native.EdsDecoder, csrc/eds.c): when the message keeps to the fields and values the
model takes as they are, which is the common case, it comes back translated and checked as one compact
EndpointTable; anything else takes the exact path here, which names what it refuses.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2, socket_option_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message

from zlbfast import _native, congestion, model
from zlbfast.config import MAX_NAME_BYTES, MAX_PRIORITY, MAX_WEIGHT

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

MESSAGE_TYPES: dict[str, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
}
# Short names for logs, metrics and messages.
KIND = {LISTENER: "Listener", ROUTE: "RouteConfiguration", CLUSTER: "Cluster", ENDPOINT: "ClusterLoadAssignment",
        SECRET: "Secret"}


class ResourceError(Exception):
    """A resource zlbfast cannot honour: which resource, which field, why."""

    def __init__(self, kind: str, name: str, field: str, problem: str) -> None:
        super().__init__(kind, name, field, problem)
        self.kind = kind
        self.name = name
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        where = f"{self.kind} {self.name!r}"
        return f"{where}: {self.field}: {self.problem}" if self.field else f"{where}: {self.problem}"


class Ctx:
    """Raises ResourceError for one resource; paths are Envoy's proto field names."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name

    def fail(self, field: str, problem: str) -> ResourceError:
        return ResourceError(self.kind, self.name, field, problem)

    def only(self, msg: Message, path: str, allowed: Iterable[str]) -> None:
        """Every field set in msg must be one zlbfast implements or one that does not change behaviour."""
        allowed = set(allowed)
        for fd, _ in msg.ListFields():
            if fd.name not in allowed:
                where = f"{path}.{fd.name}" if path else fd.name
                supported = ", ".join(sorted(allowed))
                raise self.fail(where, f"field is not supported by zlbfast (supported here: {supported})")


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def duration_ms(d: duration_pb2.Duration) -> int:
    return d.seconds * 1000 + d.nanos // 1_000_000


def canonical_ip(text: str) -> str | None:
    """Canonical text of a numeric IP address, None if text is not one. inet_pton is about five times faster
    than ipaddress, which matters for EDS messages with thousands of endpoints."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def socket_address(ctx: Ctx, addr: address_pb2.Address, path: str, *, listening: bool) -> tuple[str, int]:
    _eds_only(ctx, addr, path)
    sa = addr.socket_address
    sa_path = join(path, "socket_address")
    _eds_only(ctx, sa, sa_path)
    if sa.protocol != address_pb2.SocketAddress.TCP:
        raise ctx.fail(f"{sa_path}.protocol", "only TCP is supported")
    ip = canonical_ip(sa.address)
    if ip is None:
        raise ctx.fail(f"{sa_path}.address", f"expected a numeric IP address (no DNS), got {sa.address!r}")
    low = 0 if listening else 1
    if not low <= sa.port_value <= 65535:
        raise ctx.fail(f"{sa_path}.port_value", f"must be between {low} and 65535, got {sa.port_value}")
    return ip, sa.port_value


def tcp_congestion(ctx: Ctx, options: Sequence[socket_option_pb2.SocketOption], path: str) -> str:
    """The congestion control that socket_options set (TCP_CONGESTION, level IPPROTO_TCP), "" when none does.
    zlbfast applies no other socket option, so any other is refused rather than silently dropped. Whether the
    kernel has the algorithm is judged with the rest of the config (zlbfast.congestion)."""
    name = ""
    for i, opt in enumerate(options):
        opath = f"{path}[{i}]"
        if (opt.level, opt.name) != (socket.IPPROTO_TCP, socket.TCP_CONGESTION):
            raise ctx.fail(opath, f"socket option level {opt.level} name {opt.name} is not supported; only "
                           f"TCP_CONGESTION (level {socket.IPPROTO_TCP}, name {socket.TCP_CONGESTION})")  # fmt: skip
        ctx.only(opt, opath, ("description", "level", "name", "buf_value", "state"))
        value = opt.buf_value.rstrip(b"\0").decode("ascii", errors="replace")
        if why := congestion.malformed(value):
            raise ctx.fail(f"{opath}.buf_value", why)
        if name and value != name:
            raise ctx.fail(opath, f"sets congestion control {value!r} after {name!r}")
        name = value
    return name


# ---------------------------------------------------------------------------------------------------------
# Clusters

_POLICIES = {
    # Envoy's ROUND_ROBIN honours load_balancing_weight; smooth weighted round robin is plain round robin
    # when all weights are equal.
    cluster_pb2.Cluster.ROUND_ROBIN: "weighted",
    cluster_pb2.Cluster.LEAST_REQUEST: "least_request",
    cluster_pb2.Cluster.RANDOM: "random",
    cluster_pb2.Cluster.RING_HASH: "ring_hash",
    cluster_pb2.Cluster.MAGLEV: "maglev",
}


@dataclass(frozen=True)
class ClusterSpec:
    """A translated Cluster: the model cluster (with its static endpoints) and, for EDS clusters, the name
    of the ClusterLoadAssignment that supplies its endpoints; for upstream TLS, the Secrets it takes its identity
    from (the cluster waits for them)."""

    cluster: model.Cluster
    eds_name: str | None
    sds: SdsRef | None = None


def translate_cluster(c: cluster_pb2.Cluster) -> ClusterSpec:
    ctx = Ctx("Cluster", c.name)
    if not c.name:
        raise ctx.fail("name", "must not be empty")
    ctx.only(c, "", ("name", "type", "eds_cluster_config", "connect_timeout", "lb_policy", "load_assignment",
                     "outlier_detection", "common_lb_config", "ring_hash_lb_config", "maglev_lb_config",
                     "metadata", "alt_stat_name", "transport_socket", "upstream_bind_config"))
    kw: dict[str, object] = {}
    sds: SdsRef | None = None
    if c.HasField("transport_socket"):
        kw["tls"], sds = _upstream_tls(ctx, c.transport_socket, "transport_socket")
    if c.HasField("connect_timeout"):
        kw["connect_timeout_ms"] = duration_ms(c.connect_timeout)
    if c.lb_policy not in _POLICIES:
        raise ctx.fail("lb_policy", f"{cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)} is not supported; "
                       "use ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV")
    kw["policy"] = _POLICIES[c.lb_policy]
    if c.HasField("common_lb_config"):
        ctx.only(c.common_lb_config, "common_lb_config", ("healthy_panic_threshold",))
        if c.common_lb_config.HasField("healthy_panic_threshold"):
            # Envoy takes a double percent; the data plane takes whole percents.
            kw["panic_threshold"] = round(c.common_lb_config.healthy_panic_threshold.value)
    if c.HasField("ring_hash_lb_config"):
        ctx.only(c.ring_hash_lb_config, "ring_hash_lb_config", ("minimum_ring_size",))
        if c.ring_hash_lb_config.HasField("minimum_ring_size"):
            kw["ring_size"] = c.ring_hash_lb_config.minimum_ring_size.value
    if c.HasField("maglev_lb_config"):
        ctx.only(c.maglev_lb_config, "maglev_lb_config", ("table_size",))
        if c.maglev_lb_config.HasField("table_size"):
            kw["maglev_table_size"] = c.maglev_lb_config.table_size.value
    if c.HasField("outlier_detection"):
        kw["outlier"] = _outlier(ctx, c.outlier_detection)
    if c.HasField("upstream_bind_config"):
        # Only for its socket options: zlbfast binds upstream sockets to no source address.
        ctx.only(c.upstream_bind_config, "upstream_bind_config", ("socket_options",))
        kw["tcp_congestion"] = tcp_congestion(ctx, c.upstream_bind_config.socket_options,
                                              "upstream_bind_config.socket_options")

    endpoints: Sequence[model.Endpoint] = ()
    eds_name: str | None = None
    if c.type == cluster_pb2.Cluster.EDS:
        if c.HasField("load_assignment"):
            raise ctx.fail("load_assignment", "an EDS cluster takes its endpoints from EDS, not load_assignment")
        ctx.only(c.eds_cluster_config, "eds_cluster_config", ("eds_config", "service_name"))
        check_config_source(ctx, c.eds_cluster_config.eds_config, "eds_cluster_config.eds_config")
        eds_name = c.eds_cluster_config.service_name or c.name
    elif c.type == cluster_pb2.Cluster.STATIC:
        if c.HasField("eds_cluster_config"):
            raise ctx.fail("eds_cluster_config", "only EDS clusters take eds_cluster_config")
        assignment = translate_assignment(c.load_assignment, field="load_assignment", owner=ctx)
        endpoints = assignment.endpoints
        if assignment.overprovisioning is not None:
            kw["overprovisioning"] = assignment.overprovisioning
    else:
        raise ctx.fail("type", f"{cluster_pb2.Cluster.DiscoveryType.Name(c.type)} is not supported; use STATIC "
                       "or EDS (zlbfast resolves no names)")
    return ClusterSpec(model.Cluster(c.name, endpoints, **kw), eds_name, sds)  # type: ignore[arg-type]


def _outlier(ctx: Ctx, od: cluster_pb2.OutlierDetection) -> model.OutlierDetection:
    path = "outlier_detection"
    # `interval` paces Envoy's success-rate sweeps, which zlbfast does not run; consecutive-failure ejection
    # happens at once in both, so the interval changes nothing here.
    ctx.only(od, path, ("consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
                        "base_ejection_time", "max_ejection_time", "max_ejection_percent", "interval",
                        "enforcing_consecutive_5xx"))
    kw: dict[str, int] = {}
    # A TCP proxy has no HTTP status: Envoy counts connect failures as 5xx-class errors.
    if od.HasField("consecutive_5xx"):
        kw["consecutive_failures"] = od.consecutive_5xx.value
    if od.HasField("enforcing_consecutive_5xx") and od.enforcing_consecutive_5xx.value not in (0, 100):
        raise ctx.fail(f"{path}.enforcing_consecutive_5xx", "only 0 (off) or 100 (always) is supported")
    if od.HasField("enforcing_consecutive_5xx") and od.enforcing_consecutive_5xx.value == 0:
        kw["consecutive_failures"] = 0
    if od.HasField("base_ejection_time"):
        kw["base_ejection_time_ms"] = duration_ms(od.base_ejection_time)
    if od.HasField("max_ejection_time"):
        kw["max_ejection_time_ms"] = duration_ms(od.max_ejection_time)
    if od.HasField("max_ejection_percent"):
        kw["max_ejection_percent"] = od.max_ejection_percent.value
    return model.OutlierDetection(**kw)


def check_config_source(ctx: Ctx, src: config_source_pb2.ConfigSource, path: str) -> None:
    """Dynamic resources must come over ADS or the one REST source the bootstrap names; zlbfast keeps a single
    pipeline per process and polls EDS from the server it polls CDS from. A REST control plane (sovereign, or
    one serving Envoy) has to name its REST source in eds_config, since that is what Envoy polls."""
    ctx.only(src, path, ("ads", "resource_api_version", "initial_fetch_timeout", "self", "api_config_source"))
    if src.HasField("api_config_source"):
        api = src.api_config_source
        api_path = f"{path}.api_config_source"
        ctx.only(api, api_path, ("api_type", "transport_api_version", "cluster_names", "refresh_delay",
                                 "request_timeout"))
        if api.api_type != config_source_pb2.ApiConfigSource.REST:
            raise ctx.fail(f"{api_path}.api_type", "only REST is supported here (gRPC comes over ADS)")


# ---------------------------------------------------------------------------------------------------------
# Endpoints

_HEALTH = {
    health_check_pb2.UNKNOWN: "healthy",
    health_check_pb2.HEALTHY: "healthy",
    health_check_pb2.DEGRADED: "degraded",
    health_check_pb2.UNHEALTHY: "unhealthy",
    health_check_pb2.DRAINING: "unhealthy",
    health_check_pb2.TIMEOUT: "unhealthy",
}


# The fields of the EDS messages that zlbfast implements or that only label things (locality region/sub_zone,
# hostname, metadata); the exact path checks them message by message and names a field it refuses. csrc/eds.c
# decodes the same fields (tests/xds/test_eds_translate.py holds it to this list).
_EDS_FIELDS: dict[str, tuple[str, ...]] = {
    "envoy.config.endpoint.v3.ClusterLoadAssignment": ("cluster_name", "endpoints", "policy"),
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy": ("overprovisioning_factor",),
    "envoy.config.endpoint.v3.LocalityLbEndpoints": ("locality", "lb_endpoints", "priority", "load_balancing_weight"),
    "envoy.config.core.v3.Locality": ("region", "zone", "sub_zone"),
    "envoy.config.endpoint.v3.LbEndpoint": ("endpoint", "health_status", "load_balancing_weight", "metadata"),
    "envoy.config.endpoint.v3.Endpoint": ("address", "hostname", "health_check_config"),
    "envoy.config.core.v3.Address": ("socket_address",),
    "envoy.config.core.v3.SocketAddress": ("address", "port_value", "protocol"),
    "google.protobuf.UInt32Value": ("value",),
}


def _eds_only(ctx: Ctx, msg: Message, path: str) -> None:
    ctx.only(msg, path, _EDS_FIELDS[msg.DESCRIPTOR.full_name])


# The model's limits, so that what the decoder admits needs no second look from zlbfast.config.
_EDS_DECODER = _native.EdsDecoder(MAX_WEIGHT, MAX_PRIORITY, MAX_NAME_BYTES, {int(k): v for k, v in _HEALTH.items()},
                                  "unhealthy")


@dataclass(frozen=True)
class Assignment:
    name: str
    # An EndpointTable from the C decoder, or a tuple from the exact path.
    endpoints: Sequence[model.Endpoint]
    overprovisioning: int | None  # percent, None = the cluster's default


def decode_assignment(value: bytes) -> Assignment | None:
    """The translation of a serialized ClusterLoadAssignment that keeps to what the model takes as it is, else None
    (parse it and translate it with translate_assignment, which names what it refuses)."""
    decoded = _EDS_DECODER.decode(value)
    if decoded is None:
        return None
    name, overprovisioning, table = decoded
    return Assignment(name, table, overprovisioning)


def translate_assignment(cla: endpoint_pb2.ClusterLoadAssignment, *, field: str = "",
                         owner: Ctx | None = None) -> Assignment:
    ctx = owner or Ctx("ClusterLoadAssignment", cla.cluster_name)
    if owner is None and not cla.cluster_name:
        raise ctx.fail("cluster_name", "must not be empty")
    _eds_only(ctx, cla, field)
    overprovisioning: int | None = None
    if cla.HasField("policy"):
        _eds_only(ctx, cla.policy, join(field, "policy"))
        if cla.policy.HasField("overprovisioning_factor"):
            overprovisioning = cla.policy.overprovisioning_factor.value
    out: list[model.Endpoint] = []
    seen: set[tuple[str, int]] = set()
    for i, locality_eps in enumerate(cla.endpoints):
        lpath = join(field, f"endpoints[{i}]")
        _eds_only(ctx, locality_eps, lpath)
        # region and sub_zone are accepted as labels: the data plane prefers by zone only.
        zone = locality_eps.locality.zone
        priority = locality_eps.priority
        if priority > MAX_PRIORITY:
            raise ctx.fail(f"{lpath}.priority", f"must be at most {MAX_PRIORITY}, got {priority}")
        for j, lb in enumerate(locality_eps.lb_endpoints):
            ep = _endpoint(ctx, lb, f"{lpath}.lb_endpoints[{j}]", priority, zone)
            if (ep.address, ep.port) in seen:
                raise ctx.fail(f"{lpath}.lb_endpoints[{j}].endpoint.address",
                               f"duplicate endpoint {ep.address}:{ep.port}")
            seen.add((ep.address, ep.port))
            out.append(ep)
    return Assignment(cla.cluster_name, tuple(out), overprovisioning)


def _endpoint(ctx: Ctx, lb: endpoint_components_pb2.LbEndpoint, path: str, priority: int,
              zone: str) -> model.Endpoint:
    _eds_only(ctx, lb, path)
    _eds_only(ctx, lb.endpoint, f"{path}.endpoint")
    if lb.endpoint.HasField("health_check_config"):
        _check_health_check_config(ctx, lb.endpoint.health_check_config, f"{path}.endpoint")
    address, port = socket_address(ctx, lb.endpoint.address, f"{path}.endpoint.address", listening=False)
    weight = lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else 1
    if not 1 <= weight <= MAX_WEIGHT:
        raise ctx.fail(f"{path}.load_balancing_weight", f"must be between 1 and {MAX_WEIGHT}, got {weight}")
    return model.Endpoint(address, port, weight, priority, zone, _HEALTH.get(lb.health_status, "unhealthy"))


def _check_health_check_config(ctx: Ctx, hc: endpoint_components_pb2.Endpoint.HealthCheckConfig,
                               path: str) -> None:
    # Only meaningful with active health checks on the cluster, which zlbfast refuses; an empty one is harmless.
    if hc.ListFields():
        raise ctx.fail(f"{path}.health_check_config", "active health checking is not supported yet")


# ---------------------------------------------------------------------------------------------------------
# Transport sockets: TLS contexts -> the model's tls sections, with the identity from SDS Secrets.

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True)
class SdsRef:
    """The Secrets a TLS context names: its tls_certificate and its validation context (trust bundle)."""

    certificate: str
    validation: str

    @property
    def identity(self) -> str:
        """Name of the engine identity made of the two (zlbfast.xds.state installs it); distinct for any two
        pairs of names."""
        return "sds:" + json.dumps([self.certificate, self.validation], separators=(",", ":"))


# Envoy's minimum when tls_params leaves it open (TLS_AUTO), for clients and servers alike.
_ENVOY_DEFAULT_MIN = "1.2"
_TLS_VERSIONS = {common_pb2.TlsParameters.TLS_AUTO: _ENVOY_DEFAULT_MIN, common_pb2.TlsParameters.TLSv1_2: "1.2",
                 common_pb2.TlsParameters.TLSv1_3: "1.3"}


@dataclass(frozen=True)
class _CommonTls:
    sds: SdsRef
    min_version: str
    alpn: tuple[str, ...]
    peer: model.PeerMatch | None


def _tls_context(ctx: Ctx, ts: base_pb2.TransportSocket, path: str, context: type[_M]) -> tuple[_M, str]:
    """The TLS context message inside a transport socket, and its field path."""
    ctx.only(ts, path, ("name", "typed_config"))
    want = context.DESCRIPTOR.full_name
    short = want.rsplit(".", 1)[-1]
    if ts.typed_config.TypeName() != want:
        got = ts.name or ts.typed_config.TypeName()
        raise ctx.fail(f"{path}.typed_config", f"unsupported transport socket {got!r}; "
                       f"only {TLS_TRANSPORT_SOCKET} with a {short} is supported")
    msg = context()
    try:
        ts.typed_config.Unpack(msg)
    except DecodeError as exc:
        raise ctx.fail(f"{path}.typed_config", f"cannot decode the {short}: {exc}") from exc
    return msg, f"{path}.typed_config"


def downstream_tls(ctx: Ctx, ts: base_pb2.TransportSocket, path: str) -> tuple[model.ListenerTls, SdsRef]:
    dtc, path = _tls_context(ctx, ts, path, tls_pb2.DownstreamTlsContext)
    ctx.only(dtc, path, ("common_tls_context", "require_client_certificate"))
    if not dtc.require_client_certificate.value:
        raise ctx.fail(f"{path}.require_client_certificate", "zlbfast listeners are mutual TLS only: it must be true")
    common = _common_tls(ctx, dtc.common_tls_context, f"{path}.common_tls_context")
    return model.ListenerTls("", "", "", mode="strict", min_version=common.min_version, alpn=common.alpn,
                             peer=common.peer, identity=common.sds.identity), common.sds


def _upstream_tls(ctx: Ctx, ts: base_pb2.TransportSocket, path: str) -> tuple[model.ClusterTls, SdsRef]:
    utc, path = _tls_context(ctx, ts, path, tls_pb2.UpstreamTlsContext)
    ctx.only(utc, path, ("common_tls_context", "sni"))
    common = _common_tls(ctx, utc.common_tls_context, f"{path}.common_tls_context")
    return model.ClusterTls("", "", "", peer=common.peer, min_version=common.min_version, alpn=common.alpn,
                            sni=utc.sni, identity=common.sds.identity), common.sds


def _common_tls(ctx: Ctx, common: tls_pb2.CommonTlsContext, path: str) -> _CommonTls:
    """zlbfast always presents an identity and verifies the peer's SPIFFE ID: a certificate and a validation
    context, both SDS Secrets over ADS, are required."""
    ctx.only(common, path, ("tls_params", "tls_certificate_sds_secret_configs", "validation_context_sds_secret_config",
                            "combined_validation_context", "alpn_protocols"))
    min_version = _ENVOY_DEFAULT_MIN
    if common.HasField("tls_params"):
        min_version = _tls_params(ctx, common.tls_params, f"{path}.tls_params")
    certs = common.tls_certificate_sds_secret_configs
    if len(certs) != 1:
        raise ctx.fail(f"{path}.tls_certificate_sds_secret_configs", f"exactly one is supported, got {len(certs)} "
                       "(inline tls_certificates are not: identities come from SDS)")
    certificate = _sds_secret(ctx, certs[0], f"{path}.tls_certificate_sds_secret_configs[0]")
    peer: model.PeerMatch | None = None
    if common.HasField("combined_validation_context"):
        cvc = common.combined_validation_context
        cpath = f"{path}.combined_validation_context"
        ctx.only(cvc, cpath, ("default_validation_context", "validation_context_sds_secret_config"))
        if not cvc.HasField("validation_context_sds_secret_config"):
            raise ctx.fail(f"{cpath}.validation_context_sds_secret_config", "required: the trust bundle comes from SDS")
        validation = _sds_secret(ctx, cvc.validation_context_sds_secret_config,
                                 f"{cpath}.validation_context_sds_secret_config")
        peer = _peer_match(ctx, cvc.default_validation_context, f"{cpath}.default_validation_context")
    elif common.HasField("validation_context_sds_secret_config"):
        validation = _sds_secret(ctx, common.validation_context_sds_secret_config,
                                 f"{path}.validation_context_sds_secret_config")
    else:
        raise ctx.fail(path, "needs validation_context_sds_secret_config or combined_validation_context: zlbfast "
                       "verifies every peer's SPIFFE ID against a trust bundle")
    alpn = tuple(common.alpn_protocols)
    return _CommonTls(SdsRef(certificate, validation), min_version, alpn, peer)


def _tls_params(ctx: Ctx, tp: common_pb2.TlsParameters, path: str) -> str:
    ctx.only(tp, path, ("tls_minimum_protocol_version", "tls_maximum_protocol_version"))
    if tp.tls_minimum_protocol_version not in _TLS_VERSIONS:
        name = common_pb2.TlsParameters.TlsProtocol.Name(tp.tls_minimum_protocol_version)
        raise ctx.fail(f"{path}.tls_minimum_protocol_version", f"{name} is not supported; use TLSv1_2 or TLSv1_3")
    if tp.tls_maximum_protocol_version not in (common_pb2.TlsParameters.TLS_AUTO, common_pb2.TlsParameters.TLSv1_3):
        raise ctx.fail(f"{path}.tls_maximum_protocol_version", "zlbfast always allows TLS 1.3: use TLS_AUTO or TLSv1_3")
    return _TLS_VERSIONS[tp.tls_minimum_protocol_version]


def _sds_secret(ctx: Ctx, cfg: secret_pb2.SdsSecretConfig, path: str) -> str:
    ctx.only(cfg, path, ("name", "sds_config"))
    if not cfg.name:
        raise ctx.fail(f"{path}.name", "must name a Secret")
    src = cfg.sds_config
    ctx.only(src, f"{path}.sds_config", ("ads", "resource_api_version"))
    if not src.HasField("ads"):
        raise ctx.fail(f"{path}.sds_config", "Secrets come over the ADS stream: use sds_config {ads: {}}")
    return cfg.name


def _peer_match(ctx: Ctx, vc: common_pb2.CertificateValidationContext, path: str) -> model.PeerMatch | None:
    """The one SPIFFE ID (exact) or ID prefix a peer must have; None: any ID the trust bundle verifies."""
    ctx.only(vc, path, ("match_typed_subject_alt_names",))
    matchers = vc.match_typed_subject_alt_names
    if not matchers:
        return None
    mpath = f"{path}.match_typed_subject_alt_names"
    if len(matchers) > 1:
        raise ctx.fail(mpath, f"at most one matcher is supported, got {len(matchers)}")
    m = matchers[0]
    mpath += "[0]"
    ctx.only(m, mpath, ("san_type", "matcher"))
    if m.san_type != common_pb2.SubjectAltNameMatcher.URI:
        name = common_pb2.SubjectAltNameMatcher.SanType.Name(m.san_type)
        raise ctx.fail(f"{mpath}.san_type", f"{name} is not supported: zlbfast matches the SPIFFE ID (URI)")
    ctx.only(m.matcher, f"{mpath}.matcher", ("exact", "prefix"))
    kind = m.matcher.WhichOneof("match_pattern")
    value = getattr(m.matcher, kind) if kind else ""
    if not value.startswith("spiffe://") or len(value.encode()) > 255:
        raise ctx.fail(f"{mpath}.matcher.{kind or 'exact'}", f"expected a spiffe:// ID of at most 255 bytes, "
                       f"got {value!r}")
    return model.PeerMatch("spiffe_id" if kind == "exact" else "spiffe_prefix", value)


# ---------------------------------------------------------------------------------------------------------
# Secrets: kept for the TLS data plane; only inline PEM material and files are understood.


@dataclass(frozen=True)
class SecretSpec:
    name: str
    certificate_chain: bytes  # PEM; empty for a validation context
    private_key: bytes
    trusted_ca: bytes

    def __repr__(self) -> str:  # never print key material
        return f"SecretSpec({self.name!r})"


def data_source(ctx: Ctx, ds: base_pb2.DataSource, path: str) -> bytes:
    kind = ds.WhichOneof("specifier")
    if kind == "inline_bytes":
        return ds.inline_bytes
    if kind == "inline_string":
        return ds.inline_string.encode()
    if kind == "filename":
        try:
            with open(ds.filename, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ctx.fail(f"{path}.filename", f"cannot read {ds.filename!r}: {exc.strerror or exc}") from exc
    raise ctx.fail(path, f"unsupported data source {kind!r}")


def translate_secret(s: secret_pb2.Secret) -> SecretSpec:
    ctx = Ctx("Secret", s.name)
    if not s.name:
        raise ctx.fail("name", "must not be empty")
    ctx.only(s, "", ("name", "tls_certificate", "validation_context"))
    if s.HasField("tls_certificate"):
        tc: common_pb2.TlsCertificate = s.tls_certificate
        ctx.only(tc, "tls_certificate", ("certificate_chain", "private_key"))
        return SecretSpec(s.name, data_source(ctx, tc.certificate_chain, "tls_certificate.certificate_chain"),
                          data_source(ctx, tc.private_key, "tls_certificate.private_key"), b"")
    if s.HasField("validation_context"):
        vc: common_pb2.CertificateValidationContext = s.validation_context
        ctx.only(vc, "validation_context", ("trusted_ca",))
        return SecretSpec(s.name, b"", b"", data_source(ctx, vc.trusted_ca, "validation_context.trusted_ca"))
    raise ctx.fail("", "needs tls_certificate or validation_context")


# ---------------------------------------------------------------------------------------------------------


def unpack(type_url: str, resource: any_pb2.Any) -> Message | Assignment:
    """The typed message inside an Any; ResourceError when it is not of the subscribed type. A
    ClusterLoadAssignment that decode_assignment takes comes back translated already (an Assignment)."""
    cls = MESSAGE_TYPES[type_url]
    if resource.type_url != type_url:
        raise ResourceError(KIND[type_url], "?", "", f"got a resource of type {resource.type_url!r}")
    if type_url == ENDPOINT:
        assignment = decode_assignment(resource.value)
        if assignment is not None:
            return assignment
    msg = cls()
    try:
        msg.ParseFromString(resource.value)
    except DecodeError as exc:
        raise ResourceError(KIND[type_url], "?", "", f"cannot decode: {exc}") from exc
    return msg


def resource_name(msg: Message | Assignment) -> str:
    if isinstance(msg, Assignment):
        return msg.name
    if isinstance(msg, endpoint_pb2.ClusterLoadAssignment):
        return str(msg.cluster_name)
    return str(msg.name)

