# cython: language_level=3
"""The one boundary between Python and the C data plane (see DESIGN.md).

Everything here is a thin wrapper: the C side owns threads, sockets and
snapshots; Python only builds configuration and reads counters. No function
of this module is called by a worker thread, so nothing here needs the GIL
released except the deliberate busy-wait used by tests.
"""

from libc.stdint cimport int64_t, uint64_t
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memset

from zlbfast._native cimport *

_ERRLEN = 512

# Must follow the field order of zlb_stats in csrc/engine.h.
STAT_FIELDS = (
    "conns_accepted", "conns_active", "conns_overflow", "connect_attempts", "connect_failures",
    "connect_timeouts", "retries", "upstream_exhausted", "no_cluster", "idle_timeouts", "resets",
    "bytes_down_up", "bytes_up_down", "splice_fallbacks", "access_log_dropped",
    "http_requests", "http_1xx", "http_2xx", "http_3xx", "http_4xx", "http_5xx", "http_retries",
    "http_bad_requests", "http_header_timeouts", "http_request_timeouts", "http_overflow",
    "http_upstream_reused", "http_upgrades",
    "tls_handshakes_down", "tls_handshakes_up", "tls_resumed_up", "tls_handshake_failures_down",
    "tls_handshake_failures_up", "tls_handshake_timeouts", "tls_verify_untrusted", "tls_verify_expired",
    "tls_verify_spiffe_id", "tls_no_peer_cert", "tls_plaintext_rejected", "tls_permissive_plaintext",
    "tls_bytes_down_up", "tls_bytes_up_down", "authz_denied", "tls_events_dropped",
)
# Must follow enum zlb_cs_counter in csrc/cluster_stats.h.
CLUSTER_STAT_FIELDS = (
    "rq_1xx", "rq_2xx", "rq_3xx", "rq_4xx", "rq_5xx", "connections", "connect_attempts", "connect_failures",
    "connect_timeouts", "retries", "exhausted", "timeouts", "overflow", "bytes_sent", "bytes_received",
    "retry_overflow",
)
# Vocabulary of csrc/router.h, by the names the model uses.
MATCH_KINDS = {"exact": 0, "prefix": 1, "regex": 2, "present": 3}
HASH_KINDS = {"": 0, "header": 1, "cookie": 2, "source_ip": 3, "path": 4}
HEADER_OPS = {"request_add": 0, "request_set": 1, "request_remove": 2, "response_add": 3, "response_set": 4,
              "response_remove": 5}
RETRY_ON = {"connect-failure": 1, "reset": 2, "gateway-error": 4, "5xx": 8, "retriable-status-codes": 16}
HEALTH = {"healthy": 0, "degraded": 1, "unhealthy": 2}
_HEALTH_NAMES = {v: k for k, v in HEALTH.items()}


# TLS vocabulary (csrc/tls.h, csrc/engine.h).
TLS_MODES = {"strict": 1, "permissive": 2}
# Records per worker in the access-log rings (csrc/accesslog.h).
ACCESS_LOG_RING_DEFAULT = ZLB_AL_RING_DEFAULT
ACCESS_LOG_RING_MIN = ZLB_AL_RING_MIN
ACCESS_LOG_RING_MAX = ZLB_AL_RING_MAX
SPIFFE_MATCH_KINDS = {"": 0, "spiffe_id": 1, "spiffe_prefix": 2, "trust_domain": 3}
TLS_EVENT_KINDS = {1: "downstream_handshake_failed", 2: "upstream_handshake_failed", 3: "plaintext_rejected",
                   4: "denied", 5: "handshake_timeout", 6: "downstream_verified", 7: "upstream_verified"}
TLS_FAIL_KINDS = {0: "", 1: "untrusted", 2: "expired", 3: "spiffe_id", 4: "no_certificate", 5: "protocol"}
# Authorization of HTTP requests (zlb_http_method_bit, zlb_authz_path_kind in csrc/tls.h).
AUTHZ_METHODS = {"GET": 1, "HEAD": 2, "POST": 4, "PUT": 8, "DELETE": 16, "CONNECT": 32, "OPTIONS": 64,
                 "TRACE": 128, "PATCH": 256}
AUTHZ_PATH_KINDS = {"exact": 1, "prefix": 2}
# x-forwarded-client-cert handling (enum zlb_xfcc in csrc/engine.h).
XFCC_MODES = {"sanitize": 0, "forward_only": 1, "append_forward": 2, "sanitize_set": 3}
XFCC_DETAILS = {"subject": 1, "dns": 2, "cert": 4, "chain": 8}  # zlb_xfcc_detail


class NativeError(Exception):
    """A failure reported by the C data plane (message from C)."""


cdef bytes _b(s, int limit):
    cdef bytes b = s.encode()
    if len(b) >= limit:
        raise NativeError(f"value too long (max {limit - 1} bytes): {s!r}")
    return b


cdef _raise_if(int rc, char *err):
    if rc < 0:
        raise NativeError(err.decode(errors="replace"))


cdef _fill_match(zlb_spiffe_match *m, match):
    """match: None (any verified peer) or (kind, value) with kind in SPIFFE_MATCH_KINDS."""
    if match is None:
        m.kind = 0
        m.value[0] = 0
        return
    kind, value = match
    if kind not in SPIFFE_MATCH_KINDS:
        raise NativeError(f"unknown SPIFFE match kind {kind!r}")
    m.kind = SPIFFE_MATCH_KINDS[kind]
    zlb_strlcpy(m.value, _b(value, 256), sizeof(m.value))


cdef _fill_rules(zlb_authz_rule *rules, uint32_t *n, list specs):
    if len(specs) > ZLB_TLS_MAX_RULES:
        raise NativeError(f"at most {ZLB_TLS_MAX_RULES} allow and deny rules each")
    for i, spec in enumerate(specs):
        _fill_match(&rules[i].peer, spec.get("peer"))
        ports = list(spec.get("ports", ()))
        if len(ports) > ZLB_TLS_MAX_PORTS:
            raise NativeError(f"at most {ZLB_TLS_MAX_PORTS} ports per rule")
        for j, port in enumerate(ports):
            rules[i].ports[j] = port
        rules[i].n_ports = len(ports)
        rules[i].methods = 0
        for method in spec.get("methods", ()):
            if method not in AUTHZ_METHODS:
                raise NativeError(f"unknown HTTP method {method!r} in an authorization rule")
            rules[i].methods |= AUTHZ_METHODS[method]
        paths = list(spec.get("paths", ()))
        if len(paths) > ZLB_AUTHZ_MAX_PATHS:
            raise NativeError(f"at most {ZLB_AUTHZ_MAX_PATHS} paths per rule")
        for j, (kind, value) in enumerate(paths):
            if kind not in AUTHZ_PATH_KINDS:
                raise NativeError(f"unknown path match kind {kind!r}")
            rules[i].paths[j].kind = AUTHZ_PATH_KINDS[kind]
            zlb_strlcpy(rules[i].paths[j].value, _b(value, ZLB_AUTHZ_PATH_MAX), sizeof(rules[i].paths[j].value))
        rules[i].n_paths = len(paths)
    n[0] = len(specs)


cdef zlb_tls_opts *_tls_opts(dict d) except NULL:
    """A heap zlb_tls_opts from the runtime's dict (free with PyMem_Free).

    Keys: identity, mode (listeners), min_version ("1.2"/"1.3"), handshake_timeout_ms, alpn (list), sni,
    peer (None or (kind, value)), allow/deny (lists of {"peer": ..., "ports": [...], "methods": [...],
    "paths": [(kind, value), ...]}; methods and paths only on HTTP listeners).
    """
    cdef zlb_tls_opts *o = <zlb_tls_opts *>PyMem_Malloc(sizeof(zlb_tls_opts))
    if o == NULL:
        raise MemoryError()
    memset(o, 0, sizeof(zlb_tls_opts))
    try:
        zlb_strlcpy(o.identity, _b(d["identity"], 128), sizeof(o.identity))
        o.mode = TLS_MODES[d.get("mode", "strict")]
        o.min_version = {"1.2": 12, "1.3": 13}[d.get("min_version", "1.3")]
        o.handshake_timeout_ms = d.get("handshake_timeout_ms", 10000)
        zlb_strlcpy(o.alpn, _b(",".join(d.get("alpn", ())), 256), sizeof(o.alpn))
        zlb_strlcpy(o.sni, _b(d.get("sni", ""), 256), sizeof(o.sni))
        _fill_match(&o.peer, d.get("peer"))
        _fill_rules(o.allow, &o.n_allow, list(d.get("allow", ())))
        _fill_rules(o.deny, &o.n_deny, list(d.get("deny", ())))
    except KeyError as exc:
        PyMem_Free(o)
        raise NativeError(f"bad TLS option value: {exc}") from None
    except BaseException:
        PyMem_Free(o)
        raise
    return o


cdef class RouteTable:
    """An HTTP route table under construction (csrc/router.h); handed to a
    SnapshotBuilder with add_route_table(), which takes ownership."""
    cdef zlb_router *r

    def __cinit__(self, str name, bint match_host_port=False):
        self.r = zlb_router_new(_b(name, 128))
        if self.r == NULL:
            raise MemoryError()
        zlb_router_set_match_host_port(self.r, match_host_port)

    def __dealloc__(self):
        if self.r != NULL:
            zlb_router_free(self.r)

    cdef zlb_router *_live(self) except NULL:
        if self.r == NULL:
            raise NativeError("route table already handed to a snapshot")
        return self.r

    def add_vhost(self, str name, domains):
        cdef char err[512]
        vh = zlb_router_add_vhost(self._live(), _b(name, 4096), err, sizeof(err))
        _raise_if(vh, err)
        for d in domains:
            _raise_if(zlb_router_add_domain(self.r, vh, _b(d, 4096), err, sizeof(err)), err)
        return vh

    def add_route(self, int vh, str name, str path_kind, str path):
        cdef char err[512]
        nb, pb = _b(name, 4096), _b(path, 8192)
        rt = zlb_router_add_route(self._live(), vh, nb, MATCH_KINDS[path_kind], pb, err, sizeof(err))
        _raise_if(rt, err)
        return rt

    def add_match(self, int vh, int rt, bint is_query, str name, str kind, str value, bint invert):
        cdef char err[512]
        nb, vb = _b(name, 4096), _b(value, 8192)
        _raise_if(zlb_route_add_match(self._live(), vh, rt, is_query, nb, MATCH_KINDS[kind], vb, invert, err,
                                      sizeof(err)), err)

    def add_cluster(self, int vh, int rt, int cluster, int weight):
        cdef char err[512]
        _raise_if(zlb_route_add_cluster(self._live(), vh, rt, cluster, weight, err, sizeof(err)), err)

    def set_direct(self, int vh, int rt, int status, str body):
        cdef char err[512]
        _raise_if(zlb_route_set_direct(self._live(), vh, rt, status, _b(body, 1 << 20), err, sizeof(err)), err)

    def set_redirect(self, int vh, int rt, int status, str scheme, str host, str path):
        cdef char err[512]
        sb, hb, pb = _b(scheme, 64), _b(host, 4096), _b(path, 8192)
        _raise_if(zlb_route_set_redirect(self._live(), vh, rt, status, sb, hb, pb, err, sizeof(err)), err)

    def set_rewrite(self, int vh, int rt, str prefix, str host):
        cdef char err[512]
        cdef bytes pb = _b(prefix, 8192)
        cdef bytes hb = _b(host, 4096)
        cdef const char *p = NULL
        cdef const char *h = NULL
        if prefix:
            p = pb
        if host:
            h = hb
        _raise_if(zlb_route_set_rewrite(self._live(), vh, rt, p, h, err, sizeof(err)), err)

    def add_header_op(self, int vh, int rt, str op, str name, str value=""):
        cdef char err[512]
        nb, vb = _b(name, 4096), _b(value, 8192)
        _raise_if(zlb_route_add_header_op(self._live(), vh, rt, HEADER_OPS[op], nb, vb, err, sizeof(err)), err)

    def set_peer(self, int vh, int rt, str kind, str value):
        cdef char err[512]
        _raise_if(zlb_route_set_peer(self._live(), vh, rt, MATCH_KINDS[kind], _b(value, 4096), err, sizeof(err)), err)

    def set_hash(self, int vh, int rt, str kind, str name):
        cdef char err[512]
        _raise_if(zlb_route_set_hash(self._live(), vh, rt, HASH_KINDS[kind], _b(name, 4096), err, sizeof(err)), err)

    def set_policy(self, int vh, int rt, int timeout_ms, retry_on, int num_retries, int per_try_timeout_ms,
                   codes, bint retry_non_idempotent, int backoff_base_ms=25, int backoff_max_ms=250):
        cdef char err[512]
        cdef zlb_retry_policy p
        memset(&p, 0, sizeof(p))
        for name in retry_on:
            p.retry_on |= RETRY_ON[name]
        p.num_retries = num_retries
        p.per_try_timeout_ms = per_try_timeout_ms
        p.retry_non_idempotent = retry_non_idempotent
        p.backoff_base_ms = backoff_base_ms
        p.backoff_max_ms = backoff_max_ms
        if len(codes) > 8:
            raise NativeError("at most 8 retriable status codes")
        for i, code in enumerate(codes):
            p.codes[i] = code
        p.n_codes = len(codes)
        _raise_if(zlb_route_set_policy(self._live(), vh, rt, timeout_ms, &p, err, sizeof(err)), err)


cdef class SnapshotBuilder:
    """Collects clusters and endpoints, then builds an immutable snapshot.

    A builder is consumed by NativeEngine.publish(); it cannot be reused.
    """
    cdef zlb_snap_builder *b
    cdef NativeEngine engine

    def __cinit__(self, NativeEngine engine not None, str local_zone=""):
        self.engine = engine
        self.b = zlb_snap_builder_new(zlb_engine_registry(engine._live()), _b(local_zone, 128))
        if self.b == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.b != NULL:
            zlb_snap_builder_free(self.b)

    def add_cluster(self, str name, str policy="round_robin", *, int connect_timeout_ms=5000,
                    int connect_retries=2, int panic_threshold=50, int ring_size=1024,
                    int maglev_table_size=65537, int overprovisioning=140, int ewma_decay_ms=10000,
                    int consecutive_failures=5, int base_ejection_ms=30000, int max_ejection_ms=300000,
                    int max_ejection_percent=10, int max_connections=1024, int max_pending_requests=1024,
                    int max_requests=1024, int max_retries=3, int retry_budget_percent=20,
                    int min_retry_concurrency=3, str tcp_congestion=""):
        cdef zlb_cluster_opts o
        cdef char err[512]
        zlb_cluster_opts_defaults(&o)
        zlb_strlcpy(o.name, _b(name, 128), sizeof(o.name))
        zlb_strlcpy(o.policy, _b(policy, 32), sizeof(o.policy))
        o.connect_timeout_ms = connect_timeout_ms
        o.connect_retries = connect_retries
        o.panic_threshold = panic_threshold
        o.ring_size = ring_size
        o.maglev_table_size = maglev_table_size
        o.overprovisioning = overprovisioning
        o.ewma_decay_ms = ewma_decay_ms
        zlb_strlcpy(o.tcp_congestion, _b(tcp_congestion, 16), sizeof(o.tcp_congestion))
        o.outlier.consecutive_failures = consecutive_failures
        o.outlier.base_ejection_ms = base_ejection_ms
        o.outlier.max_ejection_ms = max_ejection_ms
        o.outlier.max_ejection_percent = max_ejection_percent
        o.breakers.max_connections = max_connections
        o.breakers.max_pending = max_pending_requests
        o.breakers.max_requests = max_requests
        o.breakers.max_retries = max_retries
        o.breakers.retry_budget_percent = retry_budget_percent
        o.breakers.min_retry_concurrency = min_retry_concurrency
        idx = zlb_snap_add_cluster(self.b, &o, err, sizeof(err))
        if idx < 0:
            raise NativeError(err.decode(errors="replace"))
        return idx

    def add_route_table(self, RouteTable table not None):
        """Moves the route table into the snapshot being built."""
        cdef char err[512]
        cdef zlb_router *r = table._live()
        table.r = NULL
        _raise_if(zlb_snap_add_router(self.b, r, err, sizeof(err)), err)

    def add_endpoints(self, int cluster, endpoints):
        """add_endpoint for each object with address, port, weight, priority, zone and health
        attributes (zlbfast.model.Endpoint): one call for a whole cluster. An EndpointTable (EDS)
        goes in as one array, without the GIL."""
        cdef char err[512]
        cdef bytes host, zone
        if isinstance(endpoints, EndpointTable):
            self._add_table(cluster, <EndpointTable>endpoints)
            return
        for ep in endpoints:
            host = _b(ep.address, 64)
            zone = _b(ep.zone, 128)
            if zlb_snap_add_endpoint(self.b, cluster, host, ep.port, ep.weight, ep.priority, zone,
                                     HEALTH[ep.health], err, sizeof(err)) != 0:
                raise NativeError(err.decode(errors="replace"))

    cdef _add_table(self, int cluster, EndpointTable table):
        cdef char err[512]
        cdef int rc
        cdef uint32_t n_zones = len(table.zones)
        cdef uint32_t *zone_ids = <uint32_t *>PyMem_Malloc(max(n_zones, 1) * sizeof(uint32_t))
        if zone_ids == NULL:
            raise MemoryError()
        try:
            for k, zone in enumerate(table.zones):
                zid = zlb_snap_zone_id(self.b, _b(zone, 128))
                if zid < 0:
                    raise MemoryError()
                zone_ids[k] = zid
            with nogil:
                rc = zlb_snap_add_specs(self.b, cluster, table.eps, table.n, zone_ids, n_zones, err, sizeof(err))
            _raise_if(rc, err)
        finally:
            PyMem_Free(zone_ids)

    def add_endpoint(self, int cluster, str host, int port, *, int weight=1, int priority=0,
                     str zone="", str health="healthy"):
        cdef char err[512]
        if health not in HEALTH:
            raise NativeError(f"unknown health {health!r}")
        if zlb_snap_add_endpoint(self.b, cluster, _b(host, 64), port, weight, priority,
                                 _b(zone, 128), HEALTH[health], err, sizeof(err)) != 0:
            raise NativeError(err.decode(errors="replace"))


cdef class NativeEngine:
    """Worker threads, listeners and the published snapshot (csrc/engine.h)."""
    cdef zlb_engine *e
    cdef uint64_t version
    cdef dict listener_names    # native id -> (name, cluster)
    cdef uint64_t seed          # also seeds access-log sampling

    def __cinit__(self, int workers, unsigned long long seed=0x5eed):
        cdef zlb_engine_opts o
        cdef char err[512]
        memset(&o, 0, sizeof(o))
        o.workers = workers
        o.rng_seed = seed
        self.listener_names = {}
        self.seed = seed
        self.e = zlb_engine_new(&o, err, sizeof(err))
        if self.e == NULL:
            raise NativeError(err.decode(errors="replace"))
        if zlb_engine_start(self.e, err, sizeof(err)) != 0:
            zlb_engine_free(self.e)
            self.e = NULL
            raise NativeError(err.decode(errors="replace"))

    def __dealloc__(self):
        self.close()

    cdef zlb_engine *_live(self) except NULL:
        if self.e == NULL:
            raise NativeError("engine is closed")
        return self.e

    def close(self):
        """Stops the workers and closes every listener and connection."""
        if self.e != NULL:
            with nogil:
                zlb_engine_free(self.e)
            self.e = NULL

    @property
    def workers(self):
        return zlb_engine_workers(self._live())

    def publish(self, SnapshotBuilder builder not None):
        """Builds the snapshot and makes it the one workers use."""
        cdef char err[512]
        cdef zlb_engine *e = self._live()
        cdef zlb_snap_builder *b = builder.b
        cdef zlb_snapshot *s
        self.version += 1
        cdef uint64_t version = self.version
        # Building takes milliseconds for large clusters (registry lookups, policy tables): other Python
        # threads may run meanwhile.
        with nogil:
            s = zlb_snap_build(b, version, err, sizeof(err))
            if s != NULL:
                zlb_engine_publish(e, s)
        if s == NULL:
            raise NativeError(err.decode(errors="replace"))
        return self.version

    def reclaim(self):
        """Frees retired snapshots no worker can see; returns how many wait."""
        return zlb_engine_reclaim(self._live())

    def add_listener(self, str name, str cluster, str host, int port, *, int max_connections=10000,
                     int idle_timeout_ms=3600000, int backlog=4096, dict http=None, dict tls=None,
                     str tcp_congestion=""):
        """http: None for a TCP listener, else the HTTP options (route table = name).
        tls: None for plaintext, else the listener's TLS options (see _tls_opts)."""
        cdef zlb_listener_opts o
        cdef char err[512]
        memset(&o, 0, sizeof(o))
        if http is not None:
            o.protocol = 1
            zlb_strlcpy(o.http.route_table, _b(name, 128), sizeof(o.http.route_table))
            o.http.max_request_line = http["max_request_line"]
            o.http.max_head = http["max_head"]
            o.http.max_headers = http["max_headers"]
            o.http.header_timeout_ms = http["header_timeout_ms"]
            o.http.request_timeout_ms = http["request_timeout_ms"]
            o.http.upstream_idle_ms = http["upstream_idle_ms"]
            o.http.max_requests_per_conn = http["max_requests_per_conn"]
            o.http.max_idle_per_endpoint = http["max_idle_per_endpoint"]
            o.http.retry_buffer = http["retry_buffer"]
            mode = http.get("forward_client_cert", "sanitize")
            if mode not in XFCC_MODES:
                raise NativeError(f"unknown forward_client_cert {mode!r}")
            o.http.forward_client_cert = XFCC_MODES[mode]
            for detail in http.get("client_cert_details", ()):
                if detail not in XFCC_DETAILS:
                    raise NativeError(f"unknown client_cert_details entry {detail!r}")
                o.http.xfcc_details |= XFCC_DETAILS[detail]
            o.http.append_x_forwarded_for = 1 if http.get("append_x_forwarded_for", True) else 0
        zlb_strlcpy(o.name, _b(name, 128), sizeof(o.name))
        zlb_strlcpy(o.cluster, _b(cluster, 128), sizeof(o.cluster))
        zlb_strlcpy(o.host, _b(host, 64), sizeof(o.host))
        o.port = port
        o.max_connections = max_connections
        o.idle_timeout_ms = idle_timeout_ms
        o.backlog = backlog
        zlb_strlcpy(o.tcp_congestion, _b(tcp_congestion, 16), sizeof(o.tcp_congestion))
        if tls is not None:
            o.tls = _tls_opts(tls)  # last: nothing above may raise while it is held
        try:
            lid = zlb_engine_add_listener(self._live(), &o, err, sizeof(err))
        finally:
            PyMem_Free(<void *>o.tls)
        if lid < 0:
            raise NativeError(err.decode(errors="replace"))
        self.listener_names[lid] = (name, cluster)
        return lid

    def listener_port(self, int lid):
        port = zlb_engine_listener_port(self._live(), lid)
        if port < 0:
            raise NativeError(f"unknown listener id {lid}")
        return port

    def listener_active(self, int lid):
        return zlb_engine_listener_active(self._live(), lid)

    def remove_listener(self, int lid):
        if zlb_engine_remove_listener(self._live(), lid) != 0:
            raise NativeError(f"unknown listener id {lid}")

    def stats(self):
        """Counters summed over workers, as a dict named by STAT_FIELDS."""
        cdef uint64_t buf[64]
        zlb_engine_stats(self._live(), <zlb_stats *>buf)
        return {name: buf[i] for i, name in enumerate(STAT_FIELDS)}

    def set_access_log(self, bint on, unsigned int ring_records=ACCESS_LOG_RING_DEFAULT):
        """Starts or stops per-connection access-log records in the workers (they wait in the
        workers' rings for start_access_log's thread). The first start sizes each worker's ring:
        ring_records, a power of two from ACCESS_LOG_RING_MIN to ACCESS_LOG_RING_MAX."""
        rc = zlb_engine_set_access_log(self._live(), on, ring_records)
        if rc == -2:
            raise ValueError(f"access-log ring size must be a power of two from {ACCESS_LOG_RING_MIN} to "
                             f"{ACCESS_LOG_RING_MAX} records, got {ring_records}")
        if rc != 0:
            raise MemoryError()

    def start_access_log(self, int fd, *, double sample=1.0, unsigned int flush_interval_ms=100,
                         unsigned int buffer_bytes=262144):
        """Starts the engine's access-log thread (csrc/accesslog_writer.h): the records of every
        worker, a random `sample` share of them, written to fd as JSON lines at least every
        flush_interval_ms, buffer_bytes at most per write. The engine owns fd from here on and
        closes it when the log stops."""
        cdef zlb_alog_writer_opts o
        cdef char err[512]
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample rate must be between 0 and 1, got {sample}")
        memset(&o, 0, sizeof(o))
        o.fd = fd
        # Kept when zlb_rand64 < threshold; 0 keeps everything, 1 (sample 0) keeps nothing but
        # with probability 2^-64.
        o.sample_threshold = 0 if sample >= 1.0 else (
            1 if sample <= 0.0 else <uint64_t>(sample * 18446744073709551615.0))
        o.rng_seed = self.seed
        o.flush_interval_ms = flush_interval_ms
        o.buffer_bytes = buffer_bytes
        if zlb_engine_access_log_start(self._live(), &o, err, sizeof(err)) != 0:
            raise NativeError(err.decode(errors="replace"))

    def stop_access_log(self, double timeout_s=5.0):
        """Stops the access-log thread after it has written what the rings and its buffer hold
        (call set_access_log(False) first to have every record). Blocks up to timeout_s without the
        GIL. True when done (or none ran), False when the destination stayed blocked: the thread
        is then left to finish its write alone, with the records it held."""
        cdef zlb_engine *e = self._live()
        cdef uint32_t ms = <uint32_t>(max(timeout_s, 0.0) * 1000)
        cdef int rc
        with nogil:
            rc = zlb_engine_access_log_stop(e, ms)
        return rc >= 0

    def access_log_stats(self):
        """Access-log thread counters since the engine started: written, sampled_out, write_errors
        (lines lost to failed writes, and lines left behind by a blocked writer), queued (in the
        rings and the writer's buffer now) and last_errno (of the latest failed write, 0 if none).
        Records dropped by full rings are stats()["access_log_dropped"]."""
        cdef zlb_alog_writer_stats st
        cdef uint64_t pending
        zlb_engine_access_log_stats(self._live(), &st, &pending)
        return {"written": st.written, "sampled_out": st.sampled_out, "write_errors": st.write_errors,
                "queued": st.buffered + pending, "last_errno": st.last_errno}

    def endpoints(self):
        """Live state of every endpoint of the current snapshot, per cluster."""
        cdef const zlb_snapshot *s = zlb_engine_current(self._live())
        cdef zlb_cluster *c
        cdef zlb_endpoint *ep
        out = {}
        if s == NULL:
            return out
        for i in range(s.n_clusters):
            c = <zlb_cluster *>&s.clusters[i]
            eps = []
            for j in range(c.n_endpoints):
                ep = &c.endpoints[j]
                eps.append({
                    "address": ep.name.decode(),
                    "weight": ep.weight,
                    "priority": ep.priority,
                    "zone": s.zones[ep.zone_id].decode(),
                    "health": _HEALTH_NAMES.get(ep.health, "unknown"),
                    "active": ep.state.active,
                    "picks": ep.state.total_picks,
                    "failures": ep.state.total_failures,
                    "ejections": ep.state.ejections,
                    "ejected_until_ns": ep.state.ejected_until_ns,
                    "ewma_ns": ep.state.ewma_ns,
                })
            out[c.opts.name.decode()] = eps
        return out

    def pick_many(self, str cluster, unsigned long long n):
        """Micro-benchmark hook: n picks from `cluster` of the current snapshot in C, without the GIL
        (zlb_lb_pick_many); returns how many found an endpoint. Time the call."""
        cdef const zlb_snapshot *s = zlb_engine_current(self._live())
        cdef int ci = -1
        cdef uint64_t found
        if s != NULL:
            for i in range(s.n_clusters):
                if s.clusters[i].opts.name.decode() == cluster:
                    ci = i
        if ci < 0:
            raise NativeError(f"no cluster {cluster!r}")
        with nogil:
            found = zlb_lb_pick_many(s, ci, n, 0x5EED)
        return found

    def cluster_stats(self):
        """Per-cluster counters and request-latency histogram of the current
        configuration's clusters (kept across reloads), summed over workers.
        latency_buckets: cumulative (upper bound in seconds, count), last +Inf."""
        cdef const zlb_snapshot *s = zlb_engine_current(self._live())
        cdef uint64_t counters[ZLB_CS_COUNTERS]
        cdef uint64_t lat[ZLB_LAT_BUCKETS]
        cdef uint64_t lat_sum_us
        out = {}
        if s == NULL:
            return out
        for i in range(s.n_clusters):
            if s.clusters[i].stats == NULL:
                continue
            zlb_cs_read(s.clusters[i].stats, counters, lat, &lat_sum_us)
            entry = {name: counters[k] for k, name in enumerate(CLUSTER_STAT_FIELDS)}
            buckets = []
            running = 0
            for b in range(ZLB_LAT_BUCKETS):
                running += lat[b]
                bound = zlb_lat_bounds_us[b] / 1e6 if b < ZLB_LAT_BUCKETS - 1 else float("inf")
                buckets.append((bound, running))
            entry["latency_buckets"] = buckets
            entry["latency_sum_s"] = lat_sum_us / 1e6
            out[s.clusters[i].opts.name.decode()] = entry
        return out

    # -- TLS -------------------------------------------------------------------

    def set_identity(self, str name, cert_pem, key_pem, bundles):
        """Installs (or rotates) identity `name`: PEM text of the SVID (leaf first, then intermediates), its key,
        and trust bundles as {trust_domain: pem} ("" = the SVID's own trust domain). New handshakes use it at once;
        established connections keep the identity they started with. The key never appears in errors."""
        cdef char err[512]
        cdef bytes cert_b = cert_pem.encode() if isinstance(cert_pem, str) else bytes(cert_pem)
        cdef bytes key_b = key_pem.encode() if isinstance(key_pem, str) else bytes(key_pem)
        items = [(_b(td, 256), pem.encode() if isinstance(pem, str) else bytes(pem)) for td, pem in bundles.items()]
        cdef size_t n = len(items)
        cdef const char **tds = <const char **>PyMem_Malloc((n + 1) * sizeof(char *))
        cdef const char **pems = <const char **>PyMem_Malloc((n + 1) * sizeof(char *))
        cdef int rc
        if tds == NULL or pems == NULL:
            PyMem_Free(tds)
            PyMem_Free(pems)
            raise MemoryError()
        try:
            for i in range(n):
                tds[i] = <const char *>items[i][0]
                pems[i] = <const char *>items[i][1]
            rc = zlb_engine_set_identity(self._live(), _b(name, 128), cert_b, key_b, tds, pems, n, err, sizeof(err))
        finally:
            PyMem_Free(tds)
            PyMem_Free(pems)
        if rc != 0:
            raise NativeError(err.decode(errors="replace"))

    def identity_info(self, str name):
        """{"spiffe_id", "serial" (hex), "rotations"} of an installed identity, or None."""
        cdef char sid[256]
        cdef char serial[80]
        cdef uint64_t rotations = 0
        if zlb_engine_identity_info(self._live(), _b(name, 128), sid, sizeof(sid), serial, sizeof(serial),
                                    &rotations) != 0:
            return None
        return {"spiffe_id": sid.decode(), "serial": serial.decode(), "rotations": rotations}

    def set_cluster_tls(self, str cluster, dict tls):
        """Upstream TLS of a cluster (None: plaintext). Applies to new connections."""
        cdef char err[512]
        cdef zlb_tls_opts *o = NULL
        cdef int rc
        if tls is not None:
            o = _tls_opts(tls)
        try:
            rc = zlb_engine_set_cluster_tls(self._live(), _b(cluster, 128), o, err, sizeof(err))
        finally:
            PyMem_Free(o)
        if rc != 0:
            raise NativeError(err.decode(errors="replace"))

    def set_tls_log_peers(self, bint on):
        """Also report every verified peer (not only failures) through drain_tls_events()."""
        zlb_engine_set_tls_log_peers(self._live(), on)

    def drain_tls_events(self, int max_events=1024):
        """TLS failures, plaintext rejections, authorization denials (and verified peers while enabled)."""
        cdef zlb_tls_event *evs = <zlb_tls_event *>PyMem_Malloc(max_events * sizeof(zlb_tls_event))
        cdef size_t n
        cdef char addr[64]
        if evs == NULL:
            raise MemoryError()
        try:
            n = zlb_engine_drain_tls_events(self._live(), evs, max_events)
            out = []
            for i in range(n):
                name, _ = self.listener_names.get(evs[i].listener_id, ("", ""))
                zlb_sockaddr_format(<sockaddr_t *>&evs[i].peer, addr, sizeof(addr))
                out.append({
                    "time": evs[i].unix_ns / 1e9,
                    "event": TLS_EVENT_KINDS.get(evs[i].kind, "unknown"),
                    "cause": TLS_FAIL_KINDS.get(evs[i].fail_kind, ""),
                    "listener": name,
                    "cluster": evs[i].cluster.decode(errors="replace"),
                    "port": evs[i].port,
                    "peer_address": addr.decode(),
                    "peer_id": evs[i].peer_id.decode(errors="replace"),
                    "reason": evs[i].reason.decode(errors="replace"),
                })
            return out
        finally:
            PyMem_Free(evs)

    def set_active_health(self, str cluster, str address, str health):
        """Active health-check verdict for one endpoint (kept across reloads)."""
        if health not in HEALTH:
            raise NativeError(f"unknown health {health!r}")
        if zlb_engine_set_active_health(self._live(), _b(cluster, 128), _b(address, 64), HEALTH[health]) != 0:
            raise NativeError(f"no endpoint {address} in cluster {cluster}")


cdef extern from *:
    """
    static void zlb_py_spin_holding_gil(double seconds) {
        int64_t end = zlb_now_ns() + (int64_t)(seconds * 1e9);
        while (zlb_now_ns() < end) { }
    }
    """
    void zlb_py_spin_holding_gil(double seconds)


def hold_gil(double seconds):
    """Test hook: busy-waits WITHOUT releasing the GIL (proves workers never need it)."""
    zlb_py_spin_holding_gil(seconds)


cdef extern from *:
    """
    #ifdef __GLIBC__
    #include <malloc.h>
    static int zlb_py_trim_heap(void) { return malloc_trim(0); }
    #else
    static int zlb_py_trim_heap(void) { return 0; }
    #endif
    """
    int zlb_py_trim_heap() nogil


def trim_heap():
    """Gives the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere) and returns whether
    any were. Startup (imports, the YAML parse) frees megabytes that glibc would otherwise keep for later
    allocations that a proxy, whose data path allocates little, never makes. Any thread; it briefly takes
    each malloc arena's lock, so a worker allocating at that moment waits for that arena's trim."""
    cdef int released
    with nogil:
        released = zlb_py_trim_heap()
    return released != 0


def debug_counters():
    """Process-wide live objects; tests assert they return to zero."""
    return {
        "conns": zlb_debug_live_conns(),
        "pipes": zlb_debug_live_pipes(),
        "snapshots": zlb_debug_snapshots_alive(),
    }


def debug_live_tls():
    """Connections holding TLS state (process-wide); returns to zero when all are closed."""
    return zlb_debug_live_tls()


def policy_names():
    return zlb_lb_names().decode().split(",")


def total_ejections():
    return zlb_lb_total_ejections()


include "_eds.pxi"
include "_loadgen.pxi"
include "_http1.pxi"
