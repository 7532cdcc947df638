/*
 * helpers.h - fixtures shared by the C unit tests: one-cluster snapshots
 * from a table of endpoints, and pick counting.
 */
#ifndef ZT_HELPERS_H
#define ZT_HELPERS_H

#include <stdio.h>
#include <string.h>

#include "lb.h"
#include "snapshot.h"

typedef struct tep {
    const char *host;
    uint16_t port;
    uint32_t weight;   /* 0 means 1 */
    uint32_t priority;
    const char *zone;
    int health;
} tep;

/* Builds a snapshot with one cluster "c" of policy `policy` (opts may be
 * NULL for defaults) holding eps[0..n). Prints the error and returns NULL
 * on failure. */
static inline zlb_snapshot *mk_snap(zlb_ep_registry *reg, const char *local_zone, const char *policy,
                                    const zlb_cluster_opts *opts, const tep *eps, size_t n, uint64_t version)
{
    char err[256] = "";
    zlb_cluster_opts o;
    if (opts)
        o = *opts;
    else
        zlb_cluster_opts_defaults(&o);
    zlb_strlcpy(o.name, "c", sizeof(o.name));
    zlb_strlcpy(o.policy, policy, sizeof(o.policy));
    zlb_snap_builder *b = zlb_snap_builder_new(reg, local_zone);
    zlb_snapshot *s = NULL;
    int ci = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    for (size_t i = 0; ci >= 0 && i < n; i++)
        if (zlb_snap_add_endpoint(b, ci, eps[i].host, eps[i].port, eps[i].weight ? eps[i].weight : 1,
                                  eps[i].priority, eps[i].zone, eps[i].health, err, sizeof(err)) < 0)
            ci = -1;
    if (ci >= 0)
        s = zlb_snap_build(b, version, err, sizeof(err));
    if (!s)
        fprintf(stderr, "mk_snap: %s\n", err);
    zlb_snap_builder_free(b);
    return s;
}

/* n endpoints 10.0.0.1..n:80, weight 1, priority 0, no zone. */
static inline zlb_snapshot *mk_simple(zlb_ep_registry *reg, const char *policy, const zlb_cluster_opts *o,
                                      uint32_t n, uint64_t version)
{
    tep eps[64];
    char hosts[64][32];
    for (uint32_t i = 0; i < n && i < 64; i++) {
        snprintf(hosts[i], sizeof(hosts[i]), "10.0.0.%u", i + 1);
        eps[i] = (tep){hosts[i], 80, 1, 0, NULL, ZLB_HEALTHY};
    }
    return mk_snap(reg, NULL, policy, o, eps, n, version);
}

/* Index of ep within its cluster's endpoint array (insertion order). */
static inline int ep_index(const zlb_cluster *c, const zlb_endpoint *ep)
{
    return ep ? (int)(ep - c->endpoints) : -1;
}

/* Makes `picks` picks of cluster 0 and adds them up per endpoint index into
 * counts (c->n_endpoints long, zeroed here). */
static inline void count_picks(zlb_lb_cache *cache, const zlb_snapshot *s, zlb_pick_ctx *ctx, uint32_t picks,
                               uint32_t *counts)
{
    const zlb_cluster *c = &s->clusters[0];
    memset(counts, 0, c->n_endpoints * sizeof(*counts));
    for (uint32_t i = 0; i < picks; i++)
        counts[ep_index(c, zlb_lb_pick(cache, s, c, ctx, NULL))]++;
}

/* Sets an endpoint's active-health state the way the health checker must:
 * store, then bump the generation (release). */
static inline void set_active_health(const zlb_snapshot *s, zlb_endpoint *ep, int health)
{
    atomic_store(&ep->state->active_health, (uint8_t)health);
    atomic_fetch_add_explicit(&s->registry->health_gen, 1, memory_order_release);
}

/* Pearson's chi-square of counts against expected shares weights/sum. */
static inline double chi_square(const uint32_t *counts, const uint32_t *weights, uint32_t n, uint32_t total)
{
    double wsum = 0, chi = 0;
    for (uint32_t i = 0; i < n; i++)
        wsum += weights[i];
    for (uint32_t i = 0; i < n; i++) {
        double expect = total * weights[i] / wsum;
        chi += (counts[i] - expect) * (counts[i] - expect) / expect;
    }
    return chi;
}

#endif
