# The C API of the data plane (csrc/engine.h, csrc/snapshot.h), as Cython sees it.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "zlb_common.h" nogil:
    void zlb_strlcpy(char *dst, const char *src, size_t dst_size)
    uint64_t zlb_rand64(uint64_t *state)


cdef extern from "cluster_stats.h" nogil:
    ctypedef struct zlb_cluster_stats:
        pass

    enum:
        ZLB_CS_COUNTERS
        ZLB_LAT_BUCKETS

    const uint64_t zlb_lat_bounds_us[]
    void zlb_cs_read(const zlb_cluster_stats *s, uint64_t *counters, uint64_t *lat, uint64_t *lat_sum_us)


cdef extern from "snapshot.h" nogil:
    ctypedef struct zlb_ep_state:
        int64_t active
        uint64_t ewma_ns
        uint32_t consecutive_failures
        uint32_t ejections
        int64_t ejected_until_ns
        uint8_t active_health
        uint64_t total_picks
        uint64_t total_failures

    ctypedef struct zlb_ep_registry:
        pass

    ctypedef struct zlb_outlier_opts:
        uint32_t consecutive_failures
        uint32_t base_ejection_ms
        uint32_t max_ejection_ms
        uint32_t max_ejection_percent

    ctypedef struct zlb_breaker_opts:
        uint32_t max_connections
        uint32_t max_pending
        uint32_t max_requests
        uint32_t max_retries
        uint32_t retry_budget_percent
        uint32_t min_retry_concurrency

    ctypedef struct zlb_cluster_opts:
        char name[128]
        char policy[32]
        uint32_t connect_timeout_ms
        uint32_t connect_retries
        uint32_t panic_threshold
        uint32_t ring_size
        uint32_t maglev_table_size
        uint32_t overprovisioning
        uint32_t ewma_decay_ms
        char tcp_congestion[16]
        zlb_outlier_opts outlier
        zlb_breaker_opts breakers

    ctypedef struct zlb_ep_spec:
        uint8_t addr[16]
        uint16_t port
        uint8_t family
        uint8_t health
        uint32_t weight
        uint16_t priority
        uint16_t zone

    ctypedef struct zlb_endpoint:
        uint32_t weight
        uint32_t priority
        uint32_t zone_id
        uint8_t health
        zlb_ep_state *state
        char name[64]

    ctypedef struct zlb_cluster:
        zlb_cluster_opts opts
        zlb_cluster_stats *stats
        uint32_t n_endpoints
        zlb_endpoint *endpoints

    ctypedef struct zlb_snapshot:
        uint64_t version
        uint32_t n_zones
        char **zones
        uint32_t n_clusters
        zlb_cluster *clusters

    ctypedef struct zlb_snap_builder:
        pass

    void zlb_cluster_opts_defaults(zlb_cluster_opts *o)
    zlb_snap_builder *zlb_snap_builder_new(zlb_ep_registry *reg, const char *local_zone)
    void zlb_snap_builder_free(zlb_snap_builder *b)
    int zlb_snap_add_cluster(zlb_snap_builder *b, const zlb_cluster_opts *o, char *err, size_t errlen)
    int zlb_snap_add_endpoint(zlb_snap_builder *b, int cluster, const char *host, uint16_t port,
                              uint32_t weight, uint32_t priority, const char *zone, int health,
                              char *err, size_t errlen)
    int64_t zlb_snap_zone_id(zlb_snap_builder *b, const char *zone)
    int zlb_snap_add_specs(zlb_snap_builder *b, int cluster, const zlb_ep_spec *specs, uint32_t n,
                           const uint32_t *zone_ids, uint32_t n_zones, char *err, size_t errlen)
    int zlb_snap_add_router(zlb_snap_builder *b, zlb_router *r, char *err, size_t errlen)
    zlb_snapshot *zlb_snap_build(zlb_snap_builder *b, uint64_t version, char *err, size_t errlen)
    void zlb_snapshot_free(zlb_snapshot *s)
    int64_t zlb_debug_snapshots_alive()


cdef extern from "eds.h" nogil:
    ctypedef struct zlb_eds_limits:
        uint32_t max_weight
        uint32_t max_priority
        uint32_t max_zone_len
        uint8_t health_of[6]
        uint8_t health_other

    ctypedef struct zlb_eds_span:
        const char *p
        uint32_t len

    ctypedef struct zlb_eds:
        zlb_eds_span name
        int64_t overprovisioning
        zlb_ep_spec *eps
        uint32_t n
        zlb_eds_span *zones
        uint32_t n_zones

    enum:
        ZLB_EDS_NOMEM
        ZLB_EDS_SLOW
        ZLB_EDS_OK

    int zlb_eds_decode(const uint8_t *buf, size_t len, const zlb_eds_limits *lim, zlb_eds *out)
    void zlb_eds_free(zlb_eds *out)


cdef extern from "router.h" nogil:
    ctypedef struct zlb_router:
        pass

    ctypedef struct zlb_retry_policy:
        uint32_t retry_on
        uint32_t num_retries
        uint32_t per_try_timeout_ms
        uint32_t backoff_base_ms
        uint32_t backoff_max_ms
        uint8_t retry_non_idempotent
        uint8_t n_codes
        uint16_t codes[8]

    zlb_router *zlb_router_new(const char *name)
    void zlb_router_free(zlb_router *r)
    void zlb_router_set_match_host_port(zlb_router *r, int on)
    int zlb_router_add_vhost(zlb_router *r, const char *name, char *err, size_t errlen)
    int zlb_router_add_domain(zlb_router *r, int vh, const char *domain, char *err, size_t errlen)
    int zlb_router_add_route(zlb_router *r, int vh, const char *name, int path_kind, const char *path,
                             char *err, size_t errlen)
    int zlb_route_add_match(zlb_router *r, int vh, int rt, int is_query, const char *name, int kind,
                            const char *value, int invert, char *err, size_t errlen)
    int zlb_route_add_cluster(zlb_router *r, int vh, int rt, int cluster, uint32_t weight, char *err, size_t errlen)
    int zlb_route_set_direct(zlb_router *r, int vh, int rt, int status, const char *body, char *err, size_t errlen)
    int zlb_route_set_redirect(zlb_router *r, int vh, int rt, int status, const char *scheme, const char *host,
                               const char *path, char *err, size_t errlen)
    int zlb_route_set_rewrite(zlb_router *r, int vh, int rt, const char *prefix, const char *host, char *err,
                              size_t errlen)
    int zlb_route_add_header_op(zlb_router *r, int vh, int rt, int op, const char *name, const char *value,
                                char *err, size_t errlen)
    int zlb_route_set_hash(zlb_router *r, int vh, int rt, int kind, const char *name, char *err, size_t errlen)
    int zlb_route_set_peer(zlb_router *r, int vh, int rt, int kind, const char *value, char *err, size_t errlen)
    int zlb_route_set_policy(zlb_router *r, int vh, int rt, uint32_t timeout_ms, const zlb_retry_policy *retry,
                             char *err, size_t errlen)


cdef extern from "lb.h" nogil:
    const char *zlb_lb_names()
    uint64_t zlb_lb_pick_many(const zlb_snapshot *s, int ci, uint64_t n, uint64_t seed)
    uint64_t zlb_lb_total_ejections()


cdef extern from "sockaddr.h" nogil:
    ctypedef struct sockaddr_t "struct sockaddr":
        pass

    ctypedef struct sockaddr_in6_t "struct sockaddr_in6":
        pass

    void zlb_sockaddr_format(const sockaddr_t *sa, char *out, size_t outlen)


cdef extern from "tls.h" nogil:
    ctypedef struct zlb_spiffe_match:
        int kind
        char value[256]

    ctypedef struct zlb_authz_path:
        int kind
        char value[128]

    ctypedef struct zlb_authz_rule:
        zlb_spiffe_match peer
        uint16_t ports[16]
        uint32_t n_ports
        uint32_t methods
        uint32_t n_paths
        zlb_authz_path paths[8]

    ctypedef struct zlb_tls_opts:
        char identity[128]
        int mode
        int min_version
        uint32_t handshake_timeout_ms
        char alpn[256]
        char sni[256]
        zlb_spiffe_match peer
        zlb_authz_rule allow[32]
        uint32_t n_allow
        zlb_authz_rule deny[32]
        uint32_t n_deny

    enum:
        ZLB_TLS_MAX_RULES
        ZLB_TLS_MAX_PORTS
        ZLB_AUTHZ_MAX_PATHS
        ZLB_AUTHZ_PATH_MAX


cdef extern from "accesslog.h" nogil:
    enum:
        ZLB_AL_RING_DEFAULT
        ZLB_AL_RING_MIN
        ZLB_AL_RING_MAX


cdef extern from "accesslog_writer.h" nogil:
    ctypedef struct zlb_alog_writer_opts:
        int fd
        uint64_t sample_threshold
        uint64_t rng_seed
        uint32_t flush_interval_ms
        uint32_t buffer_bytes
    ctypedef struct zlb_alog_writer_stats:
        uint64_t written
        uint64_t sampled_out
        uint64_t write_errors
        uint64_t buffered
        int last_errno

cdef extern from "engine.h" nogil:
    ctypedef struct zlb_engine:
        pass

    ctypedef struct zlb_engine_opts:
        uint32_t workers
        uint64_t rng_seed

    ctypedef struct zlb_http_opts:
        char route_table[128]
        uint32_t max_request_line
        uint32_t max_head
        uint32_t max_headers
        uint32_t header_timeout_ms
        uint32_t request_timeout_ms
        uint32_t upstream_idle_ms
        uint32_t max_requests_per_conn
        uint32_t max_idle_per_endpoint
        uint32_t retry_buffer
        int forward_client_cert
        uint32_t xfcc_details
        int append_x_forwarded_for

    ctypedef struct zlb_listener_opts:
        char name[128]
        char cluster[128]
        int protocol
        zlb_http_opts http
        char host[64]
        uint16_t port
        uint32_t max_connections
        uint32_t idle_timeout_ms
        int backlog
        char tcp_congestion[16]
        const zlb_tls_opts *tls

    ctypedef struct zlb_stats:
        pass

    zlb_engine *zlb_engine_new(const zlb_engine_opts *o, char *err, size_t errlen)
    int zlb_engine_start(zlb_engine *e, char *err, size_t errlen)
    void zlb_engine_free(zlb_engine *e)
    zlb_ep_registry *zlb_engine_registry(zlb_engine *e)
    uint32_t zlb_engine_workers(const zlb_engine *e)
    void zlb_engine_publish(zlb_engine *e, zlb_snapshot *s)
    const zlb_snapshot *zlb_engine_current(zlb_engine *e)
    uint64_t zlb_engine_reclaim(zlb_engine *e)
    int zlb_engine_add_listener(zlb_engine *e, const zlb_listener_opts *o, char *err, size_t errlen)
    int zlb_engine_listener_port(zlb_engine *e, int id)
    int64_t zlb_engine_listener_active(zlb_engine *e, int id)
    int zlb_engine_remove_listener(zlb_engine *e, int id)
    int zlb_engine_set_active_health(zlb_engine *e, const char *cluster, const char *address, int health)
    void zlb_engine_stats(zlb_engine *e, zlb_stats *out)
    int zlb_engine_set_access_log(zlb_engine *e, int on, uint32_t ring_records)
    int zlb_engine_access_log_start(zlb_engine *e, const zlb_alog_writer_opts *o, char *err, size_t errlen)
    int zlb_engine_access_log_stop(zlb_engine *e, uint32_t timeout_ms)
    void zlb_engine_access_log_stats(zlb_engine *e, zlb_alog_writer_stats *out, uint64_t *pending)
    int64_t zlb_debug_live_conns()
    int64_t zlb_debug_live_pipes()
    # TLS (csrc/engine.h, csrc/tls.h)
    ctypedef struct zlb_tls_event:
        int64_t unix_ns
        int32_t kind
        int32_t fail_kind
        int32_t listener_id
        uint16_t port
        sockaddr_in6_t peer
        char cluster[128]
        char peer_id[256]
        char reason[512]

    int zlb_engine_set_identity(zlb_engine *e, const char *name, const char *cert_pem, const char *key_pem,
                                const char *const *bundle_tds, const char *const *bundle_pems, size_t n_bundles,
                                char *err, size_t errlen)
    int zlb_engine_identity_info(zlb_engine *e, const char *name, char *spiffe_id, size_t idlen, char *serial,
                                 size_t seriallen, uint64_t *rotations)
    int zlb_engine_set_cluster_tls(zlb_engine *e, const char *cluster, const zlb_tls_opts *o, char *err,
                                   size_t errlen)
    size_t zlb_engine_drain_tls_events(zlb_engine *e, zlb_tls_event *out, size_t max)
    void zlb_engine_set_tls_log_peers(zlb_engine *e, int on)
    int64_t zlb_debug_live_tls()
