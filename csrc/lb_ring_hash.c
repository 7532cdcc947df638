/*
 * lb_ring_hash.c - consistent hashing on a ketama ring.
 *
 * build() (control thread) places every endpoint of the priority level on
 * the ring, healthy or not, so that availability changes never move the
 * other endpoints' points. Point j of an endpoint is zlb_hash64("<name>_<j>"),
 * so placement depends only on names and weights and every proxy builds the
 * same ring.
 *
 * Ring size: an endpoint of weight w gets max(1, round(w * 2^e)) points,
 * with e the smallest integer (possibly negative) such that total_weight *
 * 2^e >= ring_size: the ring holds between ring_size and 2 * ring_size
 * points. Why a power of two rather than exactly ring_size points: with an
 * exact total, adding a fifth endpoint to four takes points away from the
 * four others, and the keys on those points move to random successors -
 * about 32% of the keys move instead of the minimal 20%. With the per-weight
 * point count quantised to powers of two, adding or removing endpoints
 * leaves everybody else's points alone (only the new endpoint's keys move)
 * unless the total weight crosses a power of two.
 *
 * pick() (worker) finds the first point at or after the request hash and
 * walks forward to the first endpoint that is a member of the subset, so
 * an unavailable endpoint's keys spread over its ring successors.
 */
#include "lb.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct ring_point {
    uint64_t hash;
    uint32_t ep; /* index into prio->eps */
} ring_point;

typedef struct ring {
    uint32_t n;
    ring_point pts[]; /* sorted by hash */
} ring;

static int cmp_point(const void *a, const void *b)
{
    const ring_point *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return (x->ep > y->ep) - (x->ep < y->ep); /* deterministic on collisions */
}

/* Points per unit of weight as num/den, a power of two (see the top). */
typedef struct ring_scale {
    uint64_t num, den;
} ring_scale;

static ring_scale ring_scale_for(uint32_t ring_size, uint64_t total_w)
{
    ring_scale sc = {1, 1};
    while (total_w * sc.num < ring_size)
        sc.num *= 2;
    while (total_w / (sc.den * 2) >= ring_size)
        sc.den *= 2;
    return sc;
}

/* Points of an endpoint of weight w: w * num / den rounded, at least 1. */
static uint64_t ring_points(ring_scale sc, uint32_t w)
{
    uint64_t k = (w * sc.num * 2 + sc.den) / (2 * sc.den);
    return k ? k : 1;
}

/* Control thread. Allocates p->lb_data (freed by zlb_lb_free_data). */
static int ring_build(zlb_prio *p, const zlb_cluster_opts *o, char *err, size_t errlen)
{
    if (o->ring_size == 0) {
        snprintf(err, errlen, "ring_size must be > 0");
        return -1;
    }
    uint64_t total_w = 0, n_pts = 0;
    for (uint32_t i = 0; i < p->n; i++)
        total_w += p->eps[i]->weight;
    ring_scale sc = ring_scale_for(o->ring_size, total_w);
    for (uint32_t i = 0; i < p->n; i++)
        n_pts += ring_points(sc, p->eps[i]->weight);
    ring *r = n_pts <= UINT32_MAX ? malloc(sizeof(*r) + n_pts * sizeof(ring_point)) : NULL;
    if (!r) {
        snprintf(err, errlen, "ring of %llu points: out of memory", (unsigned long long)n_pts);
        return -1;
    }
    r->n = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        uint64_t k = ring_points(sc, p->eps[i]->weight);
        for (uint64_t j = 0; j < k; j++) {
            char buf[ZLB_ADDR_STR_MAX + 24];
            int len = snprintf(buf, sizeof(buf), "%s_%llu", p->eps[i]->name, (unsigned long long)j);
            r->pts[r->n].hash = zlb_hash64(buf, (size_t)len, 0);
            r->pts[r->n].ep = i;
            r->n++;
        }
    }
    qsort(r->pts, r->n, sizeof(ring_point), cmp_point);
    p->lb_data = r;
    return 0;
}

/* Worker thread. Without a hash key the request lands on a random point,
 * which is weighted random choice. */
static int32_t ring_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    if (s->n == 0)
        return -1;
    const ring *r = p->lb_data;
    uint64_t h = ctx->has_hash ? ctx->hash : zlb_rand64(ctx->rng);
    uint32_t lo = 0, hi = r->n; /* first point with hash >= h; n wraps to 0 */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->pts[mid].hash < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t t = 0; t < r->n; t++) {
        uint32_t e = r->pts[(lo + t) % r->n].ep;
        if (s->member[e])
            return (int32_t)e;
    }
    /* Not reached: every endpoint of the level owns at least one point. */
    return (int32_t)s->idx[0];
}

const zlb_lb_ops zlb_lb_ring_hash = {
    .name = "ring_hash",
    .build = ring_build,
    .destroy = zlb_lb_free_data,
    .pick = ring_pick,
};
