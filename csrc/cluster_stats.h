/*
 * cluster_stats.h - per-cluster traffic counters and a latency histogram,
 * kept per worker (one cache-line-aligned slot each: no shared writes on
 * the hot path) and summed when Python reads them.
 *
 * Objects are refcounted and keyed by cluster name in a table owned by the
 * endpoint registry, so they survive configuration updates like endpoint
 * state does: a reload never resets a cluster's counters. Each snapshot
 * cluster holds one reference (zlb_cluster.stats).
 */
#ifndef ZLB_CLUSTER_STATS_H
#define ZLB_CLUSTER_STATS_H

#include <pthread.h>
#include "zlb_common.h"

enum zlb_cs_counter {
    ZLB_CS_RQ_1XX, ZLB_CS_RQ_2XX, ZLB_CS_RQ_3XX, ZLB_CS_RQ_4XX, ZLB_CS_RQ_5XX, /* HTTP responses by class */
    ZLB_CS_CONNECTIONS,        /* L4 connections balanced to the cluster */
    ZLB_CS_CONNECT_ATTEMPTS,
    ZLB_CS_CONNECT_FAILURES,
    ZLB_CS_CONNECT_TIMEOUTS,
    ZLB_CS_RETRIES,            /* attempts beyond the first (L4 connects, HTTP requests) */
    ZLB_CS_EXHAUSTED,          /* gave up: every attempt failed */
    ZLB_CS_TIMEOUTS,           /* HTTP request/per-try timeouts */
    ZLB_CS_OVERFLOW,           /* HTTP circuit-breaker rejections */
    ZLB_CS_BYTES_SENT,         /* to the upstream */
    ZLB_CS_BYTES_RECEIVED,     /* from the upstream */
    ZLB_CS_RETRY_OVERFLOW,     /* retries refused by the retry budget / max_retries */
    ZLB_CS_COUNTERS
};

/* Upper bounds (microseconds) of the latency buckets; the last is +Inf. */
#define ZLB_LAT_BUCKETS 15
extern const uint64_t zlb_lat_bounds_us[ZLB_LAT_BUCKETS - 1];

typedef struct zlb_cs_slot {
    _Atomic uint64_t c[ZLB_CS_COUNTERS];
    _Atomic uint64_t lat[ZLB_LAT_BUCKETS];
    _Atomic uint64_t lat_sum_us;
} __attribute__((aligned(ZLB_CACHELINE))) zlb_cs_slot;

typedef struct zlb_cluster_stats {
    _Atomic int64_t refs;
    /* Circuit-breaker gauges: shared by every worker (atomic read-modify-
     * write), since the limits are per cluster, not per worker. */
    _Atomic int64_t active_requests;
    _Atomic int64_t active_retries;
    _Atomic int64_t pending_requests;   /* waiting for an upstream connect */
    _Atomic int64_t active_connections; /* upstream HTTP connections, pooled ones included */
    struct zlb_cluster_stats *next;   /* table chain (table lock) */
    uint32_t n_slots;
    char name[128];
    zlb_cs_slot slots[];
} zlb_cluster_stats;

typedef struct zlb_cs_table {
    pthread_mutex_t lock;             /* control thread(s) only */
    uint32_t n_slots;                 /* workers; 1 until the engine sets it */
    zlb_cluster_stats *head;
} zlb_cs_table;

void zlb_cs_table_init(zlb_cs_table *t);
/* Drops the table's references (objects still referenced live on). */
void zlb_cs_table_destroy(zlb_cs_table *t);
/* The stats of `name` with a NEW reference for the caller, created when
 * absent. NULL on allocation failure. Control thread. */
zlb_cluster_stats *zlb_cs_get(zlb_cs_table *t, const char *name);
/* Drops objects only the table references (clusters gone from every snapshot). */
void zlb_cs_sweep(zlb_cs_table *t);
void zlb_cs_unref(zlb_cluster_stats *s);

/* Worker `slot` adds v to counter k (single writer per slot). */
static inline void zlb_cs_add(zlb_cluster_stats *s, uint32_t slot, int k, uint64_t v)
{
    _Atomic uint64_t *p = &s->slots[slot % s->n_slots].c[k];
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + v, memory_order_relaxed);
}

/* Worker `slot` records one latency sample. */
void zlb_cs_latency(zlb_cluster_stats *s, uint32_t slot, int64_t ns);

/* Sums every slot (any thread; values may be a little behind). */
void zlb_cs_read(const zlb_cluster_stats *s, uint64_t counters[ZLB_CS_COUNTERS], uint64_t lat[ZLB_LAT_BUCKETS],
                 uint64_t *lat_sum_us);

#endif
