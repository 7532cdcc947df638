"""The one typed configuration model.

Every configuration source (zlbfast YAML, Envoy static resources, xDS, the
``zlbfast proxy`` command line) is turned into these frozen dataclasses, which
``zlbfast.config.validate`` checks and the runtime compiles into a native
snapshot. They are immutable so that a published configuration can be shared
with the compiler and the admin endpoints without copies or locks.

Units are in the field names (``_ms``) because the C side takes plain integers.
Defaults are the documented defaults of docs/config.md and mirror
``zlb_cluster_opts_defaults`` in csrc/snapshot.h.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

POLICIES: tuple[str, ...] = (
    "round_robin",
    "weighted",
    "random",
    "least_request",
    "ring_hash",
    "maglev",
    "peak_ewma",
)

# Configured health of an endpoint. "degraded" endpoints take traffic only when
# no healthy one is left; "unhealthy" ones only in panic mode.
HEALTH_STATES: tuple[str, ...] = ("healthy", "degraded", "unhealthy")

# Listener protocols the data plane implements. New protocols are added here
# when their worker code lands, so a config never promises what cannot run.
PROTOCOLS: tuple[str, ...] = ("tcp", "http")

# HTTP routing vocabulary (csrc/router.h).
MATCH_KINDS: tuple[str, ...] = ("exact", "prefix", "regex", "present")
HASH_ON: tuple[str, ...] = ("", "header", "cookie", "source_ip", "path")
RETRY_ON: tuple[str, ...] = ("connect-failure", "reset", "gateway-error", "5xx", "retriable-status-codes")

# TLS (L4 and HTTP): listener modes, minimum versions and how a peer's SPIFFE ID is matched.
TLS_MODES: tuple[str, ...] = ("strict", "permissive")
TLS_VERSIONS: tuple[str, ...] = ("1.2", "1.3")
SPIFFE_MATCH_KINDS: tuple[str, ...] = ("spiffe_id", "spiffe_prefix", "trust_domain")
# Authorization rules of HTTP listeners: the methods a rule can name (csrc/tls.h keeps them as bits) and how a
# path is matched.
AUTHZ_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
AUTHZ_PATH_KINDS: tuple[str, ...] = ("exact", "prefix")
# x-forwarded-client-cert handling of HTTP listeners (Envoy's forward_client_cert_details).
XFCC_MODES: tuple[str, ...] = ("sanitize", "forward_only", "append_forward", "sanitize_set")
# What this hop's element may carry besides By, Hash and URI (Envoy's set_current_client_cert_details).
XFCC_DETAILS: tuple[str, ...] = ("cert", "chain", "subject", "dns")

# Active health check probes: "tcp" succeeds when the connect does, "http" when a GET answers with an
# expected status.
HEALTH_CHECK_TYPES: tuple[str, ...] = ("tcp", "http")


@dataclass(frozen=True)
class Endpoint:
    address: str  # numeric IPv4/IPv6 literal in canonical form (no brackets)
    port: int
    weight: int = 1
    priority: int = 0  # 0 = most preferred
    zone: str = ""
    health: str = "healthy"  # one of HEALTH_STATES


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_failures: int = 5  # 0 disables passive ejection
    base_ejection_time_ms: int = 30000
    max_ejection_time_ms: int = 300000
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class HealthCheck:
    """Active health checking of every endpoint of a cluster (zlbfast.health runs it)."""

    type: str = "tcp"  # one of HEALTH_CHECK_TYPES
    path: str = "/"  # http only: the GET target
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 399),)  # http only: inclusive status ranges
    interval_ms: int = 5000
    # Each wait adds up to this much at random, so that the many proxies of a ZeroLB mesh, all checking the same
    # endpoints, do not probe in lockstep.
    jitter_ms: int = 1000
    timeout_ms: int = 1000
    healthy_threshold: int = 2  # successes in a row that make an unhealthy endpoint healthy
    unhealthy_threshold: int = 3  # failures in a row that make a healthy endpoint unhealthy


@dataclass(frozen=True)
class CircuitBreakers:
    """Limits per cluster (HTTP): over one, requests get 503 with x-zlbfast-overflow naming it."""

    max_connections: int = 1024  # upstream connections, pooled ones included
    max_pending_requests: int = 1024  # requests waiting for an upstream connect
    max_requests: int = 1024  # requests in flight
    max_retries: int = 3  # retries in flight, used when retry_budget_percent is 0
    retry_budget_percent: int = 20  # retries in flight <= this % of active requests ...
    min_retry_concurrency: int = 3  # ... but always at least this many


@dataclass(frozen=True)
class PeerMatch:
    """Which SPIFFE IDs are accepted: the exact ID, an ID prefix (spiffe://td/ns/prod/) or a whole trust domain."""

    kind: str  # one of SPIFFE_MATCH_KINDS
    value: str


@dataclass(frozen=True)
class PathMatch:
    """A request path (the target without its query) in an authorization rule."""

    kind: str  # one of AUTHZ_PATH_KINDS
    value: str


@dataclass(frozen=True)
class AuthzRule:
    """An allow or deny rule of a TLS listener. methods and paths apply to HTTP listeners only."""

    peer: PeerMatch | None = None  # None: every peer, plaintext ones of a permissive listener included
    ports: tuple[int, ...] = ()  # destination ports; () = all
    methods: tuple[str, ...] = ()  # HTTP methods (AUTHZ_METHODS); () = all
    paths: tuple[PathMatch, ...] = ()  # HTTP paths; () = all


@dataclass(frozen=True)
class ListenerTls:
    """TLS termination on a TCP or HTTP listener. cert/key/bundle are files (spiffe-helper layout), watched for
    rotation; listeners and clusters naming the same three files share one identity. Instead of files, `identity`
    may name an identity that its source installs and rotates itself (xDS: from SDS secrets); cert/key/bundle are
    then empty."""

    cert: str
    key: str
    bundle: str
    mode: str = "strict"  # one of TLS_MODES: strict = mTLS only; permissive = mTLS or plaintext
    min_version: str = "1.3"  # one of TLS_VERSIONS
    alpn: tuple[str, ...] = ()
    peer: PeerMatch | None = None  # None: any SPIFFE ID that verifies against a bundle
    allow: tuple[AuthzRule, ...] = ()  # any allow rule makes the default deny
    deny: tuple[AuthzRule, ...] = ()  # deny rules win over allow rules
    handshake_timeout_ms: int = 10000
    identity: str = ""  # an installed identity by name, instead of the files


@dataclass(frozen=True)
class ClusterTls:
    """TLS origination to every endpoint of a cluster (mTLS with our SVID); cert/key/bundle or `identity` as for
    ListenerTls."""

    cert: str
    key: str
    bundle: str
    peer: PeerMatch | None = None  # None: any SPIFFE ID that verifies against a bundle
    min_version: str = "1.3"
    alpn: tuple[str, ...] = ()
    sni: str = ""
    identity: str = ""  # an installed identity by name, instead of the files


@dataclass(frozen=True)
class Cluster:
    name: str
    # A tuple, or (from EDS) a zlbfast._native.EndpointTable: the same Endpoints, stored compactly.
    endpoints: Sequence[Endpoint]
    policy: str = "round_robin"  # one of POLICIES
    connect_timeout_ms: int = 5000
    connect_retries: int = 2  # extra endpoints tried after a failed connect
    panic_threshold: int = 50  # percent, 0 disables
    ring_size: int = 1024  # ring_hash only
    maglev_table_size: int = 65537  # maglev only, prime
    overprovisioning: int = 140  # percent
    ewma_decay_ms: int = 10000  # peak_ewma only
    outlier: OutlierDetection = OutlierDetection()
    health_check: HealthCheck | None = None  # None: no active checks
    tls: ClusterTls | None = None  # None: plaintext to the endpoints
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    tcp_congestion: str = ""  # congestion control of upstream sockets; "" = the system default


@dataclass(frozen=True)
class ValueMatch:
    """A header (or query parameter) condition of a route."""

    name: str
    kind: str = "present"  # one of MATCH_KINDS
    value: str = ""
    invert: bool = False


@dataclass(frozen=True)
class WeightedCluster:
    name: str
    weight: int = 1


@dataclass(frozen=True)
class RetryPolicy:
    retry_on: tuple[str, ...] = ("connect-failure",)  # subset of RETRY_ON
    num_retries: int = 1
    per_try_timeout_ms: int = 0  # 0 = only the route timeout
    retriable_status_codes: tuple[int, ...] = ()
    retry_non_idempotent: bool = False  # POST/PATCH too (their bodies may have had effects)
    backoff_base_ms: int = 25  # retries after a response or reset wait rand(0, min(max, base * 2^n))
    backoff_max_ms: int = 250


@dataclass(frozen=True)
class HeaderOps:
    request_add: tuple[tuple[str, str], ...] = ()
    request_set: tuple[tuple[str, str], ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[tuple[str, str], ...] = ()
    response_set: tuple[tuple[str, str], ...] = ()
    response_remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Redirect:
    status: int = 302
    scheme: str = ""  # "" = http
    host: str = ""  # "" = the request's host is not kept: give one
    path: str = "/"


@dataclass(frozen=True)
class Route:
    """First matching route of a virtual host wins. Exactly one action:
    clusters (one or weighted), a direct response, or a redirect."""

    name: str = ""
    path_kind: str = "prefix"  # exact | prefix | regex
    path: str = "/"
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    peer: PeerMatch | None = None  # the client's verified SPIFFE ID (TLS listeners); None: any client
    clusters: tuple[WeightedCluster, ...] = ()
    direct_status: int = 0  # > 0: answer locally
    direct_body: str = ""
    redirect: Redirect | None = None
    prefix_rewrite: str = ""
    host_rewrite: str = ""
    header_ops: HeaderOps = HeaderOps()
    hash_on: str = ""  # one of HASH_ON, for ring_hash/maglev clusters
    hash_name: str = ""  # header or cookie name
    timeout_ms: int = 0  # whole exchange; 0 = the listener's request_timeout
    retry: RetryPolicy = RetryPolicy()


@dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...] = ("*",)  # exact names, "*.suffix" or "*"
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class HttpOptions:
    """Limits and timeouts of an HTTP listener (all explicit, all configurable)."""

    max_request_line: int = 8192  # 414 above
    max_head: int = 65536  # 431 above
    max_headers: int = 100  # 431 above
    header_timeout_ms: int = 10000  # the whole head must arrive within it: 408 (slowloris)
    request_timeout_ms: int = 15000  # default whole-exchange timeout: 504
    upstream_idle_ms: int = 60000  # pooled upstream connections close after this
    max_requests_per_conn: int = 0  # upstream reuse limit, 0 = unlimited
    max_idle_per_endpoint: int = 64  # pooled connections per endpoint and worker
    retry_buffer: int = 65536  # requests up to this size (head + body) can be retried
    forward_client_cert: str = "sanitize"  # one of XFCC_MODES
    client_cert_details: tuple[str, ...] = ()  # of XFCC_DETAILS, in this hop's element (append_forward, sanitize_set)
    append_x_forwarded_for: bool = True  # the client's address goes on x-forwarded-for (else it passes unchanged)


@dataclass(frozen=True)
class Listener:
    name: str
    address: str  # numeric IPv4/IPv6 literal in canonical form (no brackets)
    port: int  # 0 = ephemeral
    cluster: str
    max_connections: int = 10000
    idle_timeout_ms: int = 3600000
    protocol: str = "tcp"  # one of PROTOCOLS
    virtual_hosts: tuple[VirtualHost, ...] = ()  # http listeners: routing (cluster unused)
    # http listeners: the Host's port takes part in choosing a virtual host, and domains may name one ("a:8080"),
    # as in Envoy without ignore_port_in_host_matching; False: the port is ignored.
    match_host_port: bool = False
    http: HttpOptions = HttpOptions()
    tls: ListenerTls | None = None  # None = plaintext
    tcp_congestion: str = ""  # congestion control of accepted sockets; "" = the system default


@dataclass(frozen=True)
class Config:
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    workers: int = 0  # 0 = number of online CPUs
    local_zone: str = ""
    drain_timeout_ms: int = 30000
    source: str = "<memory>"  # where the config came from, for messages
