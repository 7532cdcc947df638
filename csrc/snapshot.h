/*
 * snapshot.h - the endpoint table: immutable snapshots of clusters and their
 * endpoints, plus the live per-endpoint state that survives snapshot swaps.
 *
 * Threads and ownership
 * ---------------------
 *  - A zlb_snapshot is built by one thread (the control thread) with a
 *    zlb_snap_builder and is immutable once zlb_snap_build() returns it.
 *    Workers read it without locks; it is freed through QSBR (qsbr.h) once no
 *    worker can still see it.
 *  - zlb_ep_state objects are refcounted. The registry holds one reference,
 *    every snapshot that lists the endpoint holds one, and every in-flight
 *    connection/request holds one. Workers only touch the atomics inside.
 *  - The registry (zlb_ep_registry) is used by the control thread only; its
 *    mutex exists so that builders on other Python threads stay safe.
 */
#ifndef ZLB_SNAPSHOT_H
#define ZLB_SNAPSHOT_H

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include "cluster_stats.h"
#include "tcpopts.h"
#include "zlb_common.h"

#define ZLB_NAME_MAX 128
#define ZLB_ADDR_STR_MAX 64

enum zlb_health {
    ZLB_HEALTHY = 0,
    ZLB_DEGRADED = 1,  /* used only when no healthy endpoint is left */
    ZLB_UNHEALTHY = 2, /* configured or actively health-checked as down */
};

/* Live state of one (cluster, address). Counters are updated by workers with
 * relaxed atomics; nothing here is protected by a lock. */
typedef struct zlb_ep_state {
    _Atomic int64_t refs;
    _Atomic int64_t active;               /* open connections / requests */
    _Atomic uint64_t ewma_ns;             /* peak-EWMA latency, 0 = unknown */
    _Atomic int64_t ewma_stamp_ns;        /* time of the last EWMA update */
    _Atomic uint32_t consecutive_failures;
    _Atomic uint32_t ejections;           /* times ejected (backoff exponent) */
    _Atomic int64_t ejected_until_ns;     /* 0 = not ejected */
    _Atomic uint8_t active_health;        /* zlb_health from active checks */
    _Atomic uint64_t total_picks;         /* times chosen (L4: connections) */
    _Atomic uint64_t total_failures;      /* connect failures / errors */
    struct zlb_ep_state *reg_next;        /* registry chain (control thread) */
    uint64_t key_hash;
    char key[];                           /* "cluster\0address" */
} zlb_ep_state;

void zlb_ep_state_ref(zlb_ep_state *st);
/* Drops one reference; frees the object when it was the last. Any thread. */
void zlb_ep_state_unref(zlb_ep_state *st);

typedef struct zlb_ep_registry {
    pthread_mutex_t lock;
    zlb_ep_state **buckets;
    uint32_t n_buckets;
    uint32_t n_entries;
    /* Bumped (release) whenever an endpoint's availability changes: ejection,
     * ejection expiry, active health change. Workers compare it (acquire)
     * with the value their cached views were built at. */
    _Atomic uint64_t health_gen;
    zlb_cs_table cstats;     /* per-cluster counters, keyed by cluster name */
} zlb_ep_registry;

zlb_ep_registry *zlb_ep_registry_new(void);
/* Frees the registry's own references; states still referenced elsewhere
 * live on until their last unref. */
void zlb_ep_registry_free(zlb_ep_registry *r);
/* Returns the state for (cluster, address) with a NEW reference for the
 * caller, creating it when absent. NULL on allocation failure. */
zlb_ep_state *zlb_ep_registry_get(zlb_ep_registry *r, const char *cluster, const char *address);
/* Drops registry entries that nobody else references any more (refs == 1).
 * Safe because workers only obtain references through live snapshots. */
void zlb_ep_registry_sweep(zlb_ep_registry *r);
size_t zlb_ep_registry_count(zlb_ep_registry *r);

/* One endpoint in compact form: what the EDS decoder (eds.h) produces and
 * zlb_snap_add_specs() takes, so that a large update never goes through one
 * call (or one Python object) per endpoint. */
typedef struct zlb_ep_spec {
    uint8_t addr[16];   /* network order; IPv4 uses the first 4 bytes */
    uint16_t port;      /* host order */
    uint8_t family;     /* 4 or 6 */
    uint8_t health;     /* zlb_health */
    uint32_t weight;
    uint16_t priority;
    uint16_t zone;      /* index into the zone ids given with the specs */
} zlb_ep_spec;

typedef struct zlb_endpoint {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t weight;        /* >= 1 */
    uint32_t priority;      /* 0 = most preferred */
    uint32_t zone_id;       /* index into zlb_snapshot.zones, 0 = "" */
    uint8_t health;         /* configured zlb_health */
    zlb_ep_state *state;    /* one reference held by the snapshot */
    char name[ZLB_ADDR_STR_MAX]; /* "ip:port" / "[ip6]:port" */
} zlb_endpoint;

struct zlb_lb_ops;
struct zlb_router;

/* One priority level of one cluster. eps point into cluster->endpoints. */
typedef struct zlb_prio {
    uint32_t priority;
    uint32_t n;
    zlb_endpoint **eps;
    void *lb_data;          /* immutable data built by ops->build */
} zlb_prio;

/* Passive outlier detection (ejection on consecutive failures). */
typedef struct zlb_outlier_opts {
    uint32_t consecutive_failures;  /* 0 disables; default 5 */
    uint32_t base_ejection_ms;      /* default 30000 */
    uint32_t max_ejection_ms;       /* default 300000 */
    uint32_t max_ejection_percent;  /* default 10 */
} zlb_outlier_opts;

/* Circuit breakers (HTTP): over a limit, requests get 503 with an
 * x-zlbfast-overflow header; retries beyond the budget are not attempted. */
typedef struct zlb_breaker_opts {
    uint32_t max_connections;       /* upstream connections, default 1024 */
    uint32_t max_pending;           /* requests waiting for a connect, default 1024 */
    uint32_t max_requests;          /* requests in flight, default 1024 */
    uint32_t max_retries;           /* retries in flight when the budget is off, default 3 */
    uint32_t retry_budget_percent;  /* retries <= this % of active requests, default 20; 0 = use max_retries */
    uint32_t min_retry_concurrency; /* retries always allowed up to this many, default 3 */
} zlb_breaker_opts;

typedef struct zlb_cluster_opts {
    char name[ZLB_NAME_MAX];
    char policy[32];                /* "round_robin", "maglev", ... */
    uint32_t connect_timeout_ms;    /* default 5000 */
    uint32_t connect_retries;       /* extra endpoints tried, default 2 */
    uint32_t panic_threshold;       /* percent, default 50; 0 disables */
    uint32_t ring_size;             /* ring_hash virtual nodes, default 1024 */
    uint32_t maglev_table_size;     /* prime, default 65537 */
    uint32_t overprovisioning;      /* percent, default 140 */
    uint32_t ewma_decay_ms;         /* peak_ewma decay, default 10000 */
    char tcp_congestion[ZLB_TCP_CA_NAME_MAX]; /* upstream sockets' congestion control; "" = system default */
    zlb_outlier_opts outlier;
    zlb_breaker_opts breakers;
} zlb_cluster_opts;

/* Fills opts with the documented defaults (name and policy left empty). */
void zlb_cluster_opts_defaults(zlb_cluster_opts *o);

typedef struct zlb_cluster {
    zlb_cluster_opts opts;
    const struct zlb_lb_ops *lb;
    uint32_t index;
    uint32_t n_endpoints;
    zlb_endpoint *endpoints;
    uint32_t n_prios;
    zlb_prio *prios;        /* sorted by priority */
    zlb_cluster_stats *stats; /* one reference held by the snapshot */
} zlb_cluster;

typedef struct zlb_snapshot {
    uint64_t version;
    uint32_t local_zone_id;  /* 0 = no zone preference */
    uint32_t n_zones;
    char **zones;            /* zones[0] = "" */
    uint32_t n_clusters;
    zlb_cluster *clusters;
    uint32_t n_routers;
    struct zlb_router **routers; /* HTTP route tables, owned (router.h) */
    zlb_ep_registry *registry; /* not owned */
} zlb_snapshot;

typedef struct zlb_snap_builder zlb_snap_builder;

/* All builder calls: control thread; err gets a message on failure. */
zlb_snap_builder *zlb_snap_builder_new(zlb_ep_registry *reg, const char *local_zone);
void zlb_snap_builder_free(zlb_snap_builder *b);
/* Returns the new cluster's index, or -1 (duplicate name, unknown policy). */
int zlb_snap_add_cluster(zlb_snap_builder *b, const zlb_cluster_opts *o, char *err, size_t errlen);
/* host is a numeric IPv4/IPv6 literal. Returns 0 or -1. */
int zlb_snap_add_endpoint(zlb_snap_builder *b, int cluster, const char *host, uint16_t port,
                          uint32_t weight, uint32_t priority, const char *zone, int health,
                          char *err, size_t errlen);
/* Id of zone name z in the snapshots this builder makes (added when new),
 * for zlb_snap_add_specs. -1 on allocation failure. */
int64_t zlb_snap_zone_id(zlb_snap_builder *b, const char *zone);
/* Adds n endpoints at once; spec zone k is zone id zone_ids[k] (k < n_zones).
 * Checks each like zlb_snap_add_endpoint. Needs no Python: callers release
 * the GIL around it. 0 or -1 (nothing added). */
int zlb_snap_add_specs(zlb_snap_builder *b, int cluster, const zlb_ep_spec *specs, uint32_t n,
                       const uint32_t *zone_ids, uint32_t n_zones, char *err, size_t errlen);
/* Adds an HTTP route table; ownership passes to the builder (freed on
 * failure too). Route clusters are cluster indices of this builder. 0/-1. */
int zlb_snap_add_router(zlb_snap_builder *b, struct zlb_router *r, char *err, size_t errlen);
/* Builds policy structures and returns the snapshot (the builder is emptied
 * and may be freed). NULL on failure. */
zlb_snapshot *zlb_snap_build(zlb_snap_builder *b, uint64_t version, char *err, size_t errlen);
/* Frees a snapshot that no worker can see any more (QSBR decided). */
void zlb_snapshot_free(zlb_snapshot *s);
/* Index of the named cluster or -1. Any thread. */
int zlb_snapshot_find_cluster(const zlb_snapshot *s, const char *name);
/* The named route table or NULL. Any thread. */
const struct zlb_router *zlb_snapshot_find_router(const zlb_snapshot *s, const char *name);

/* Debug counter: snapshots alive (built and not yet freed). */
int64_t zlb_debug_snapshots_alive(void);

#endif
