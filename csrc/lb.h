/*
 * lb.h - load balancing: one ops table per policy (lb_<policy>.c) and the
 * generic layer on top (lb.c) that handles priorities, zone preference,
 * health/ejection flags and the panic threshold for every policy.
 *
 * Split of work
 *  - Control thread: ops->build() computes immutable per-priority data
 *    (ring, maglev table) into zlb_prio.lb_data while a snapshot is built.
 *  - Worker thread: zlb_lb_pick() keeps a per-worker cache of "views"
 *    (which endpoints are available right now, grouped into subsets) and
 *    calls ops->pick() on one subset. Mutable policy state (round-robin
 *    cursor, smooth-WRR current weights) lives in the subset's scratch, so
 *    it is per worker and needs no atomics.
 */
#ifndef ZLB_LB_H
#define ZLB_LB_H

#include "snapshot.h"

/* A set of endpoints of one priority level that a policy may choose from.
 * Owned by one worker's cache; rebuilt when availability changes. */
typedef struct zlb_subset {
    uint32_t n;             /* members */
    uint32_t *idx;          /* member indices into prio->eps, ascending */
    uint8_t *member;        /* member[i] != 0 iff prio->eps[i] is a member (prio->n long) */
    uint64_t total_weight;  /* sum of member weights */
    void *scratch;          /* ops->subset_init() result, freed by ops->subset_free() */
} zlb_subset;

typedef struct zlb_pick_ctx {
    uint64_t *rng;          /* the worker's generator state (non-zero) */
    int has_hash;           /* hash policies: key present */
    uint64_t hash;          /* e.g. hash of the source IP */
    int64_t now_ns;
} zlb_pick_ctx;

typedef struct zlb_lb_ops {
    const char *name;
    /* Control thread, while the snapshot is built. May leave lb_data NULL.
     * Returns 0, or -1 with a message in err. build may be a NULL pointer
     * when the policy precomputes nothing; destroy is only called when
     * lb_data is non-NULL. */
    int (*build)(zlb_prio *p, const zlb_cluster_opts *o, char *err, size_t errlen);
    void (*destroy)(zlb_prio *p);
    /* Worker thread: per-subset mutable state. Called once after the
     * subset is filled in, only for non-empty subsets. A policy that keeps
     * no per-subset state leaves subset_init and subset_free NULL; one that
     * has them returns NULL only when out of memory. */
    void *(*subset_init)(const zlb_prio *p, const zlb_subset *s);
    void (*subset_free)(void *scratch);
    /* Worker thread: returns an index into p->eps that is a member of s, or
     * -1 when s is empty. Never blocks, never allocates. */
    int32_t (*pick)(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx);
} zlb_lb_ops;

extern const zlb_lb_ops zlb_lb_round_robin;
extern const zlb_lb_ops zlb_lb_weighted;
extern const zlb_lb_ops zlb_lb_random;
extern const zlb_lb_ops zlb_lb_least_request;
extern const zlb_lb_ops zlb_lb_ring_hash;
extern const zlb_lb_ops zlb_lb_maglev;
extern const zlb_lb_ops zlb_lb_peak_ewma;

/* Policy by name, NULL when unknown. */
const zlb_lb_ops *zlb_lb_find(const char *name);
/* Comma-separated list of the known policy names (for error messages). */
const char *zlb_lb_names(void);

/* ---- generic layer (lb.c) ------------------------------------------- */

typedef struct zlb_lb_cache zlb_lb_cache;

/* One per worker. */
zlb_lb_cache *zlb_lb_cache_new(void);
void zlb_lb_cache_free(zlb_lb_cache *c);

/* Picks an endpoint of cluster c of snapshot s, honouring priorities, zone
 * preference, health, ejection and the panic threshold. `exclude` (may be
 * NULL) is avoided when any other endpoint is available (a retry never goes
 * back to the endpoint that just failed). Returns NULL when the cluster has
 * no endpoint at all. The returned pointer is valid while the worker stays
 * on snapshot s; take a state reference to keep it longer.
 * Worker thread only; never blocks. */
zlb_endpoint *zlb_lb_pick(zlb_lb_cache *cache, const zlb_snapshot *s, const zlb_cluster *c,
                          zlb_pick_ctx *ctx, const zlb_endpoint *exclude);

/* Outcome reporting (worker thread). Failure counts towards outlier
 * ejection; success resets the consecutive-failure count. latency_ns > 0
 * feeds the peak-EWMA estimate. */
void zlb_lb_report(const zlb_snapshot *s, const zlb_cluster *c, zlb_endpoint *ep, int success,
                   int64_t latency_ns, int64_t now_ns);

/* True when the endpoint may take traffic now (not ejected, not unhealthy). */
int zlb_lb_endpoint_available(const zlb_endpoint *ep, int64_t now_ns);

/* Micro-benchmark hook (one thread, no worker involved): n picks from
 * cluster ci of s with a private cache and generator and a different hash
 * key each time, as a worker balancing n connections would. Returns how
 * many picks found an endpoint. s must stay alive for the call. */
uint64_t zlb_lb_pick_many(const zlb_snapshot *s, int ci, uint64_t n, uint64_t seed);

/* Test hook: counts ejections performed since start (all clusters). */
uint64_t zlb_lb_total_ejections(void);

/* ---- helpers for the policy files (defined in lb.c) ------------------ */

/* ops->destroy for policies whose lb_data is a single malloc'ed block. */
void zlb_lb_free_data(zlb_prio *p);
/* Power of two choices over the members of s: two distinct random members
 * (when s has two), the lower cost wins, equal costs are broken at random.
 * -1 when s is empty. Worker thread; never allocates. */
int32_t zlb_lb_p2c(const zlb_prio *p, const zlb_subset *s, zlb_pick_ctx *ctx,
                   double (*cost)(const zlb_endpoint *ep));

#endif
