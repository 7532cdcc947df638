/*
 * lb_weighted.c - smooth weighted round robin (the nginx algorithm).
 *
 * Every pick adds each member's weight to its current weight, takes the
 * member with the largest current weight and subtracts the total from it.
 * Over any window of total_weight picks each member is chosen exactly
 * `weight` times, and heavy members are interleaved with light ones rather
 * than sent in bursts. Current weights live in the subset scratch (one per
 * member position), so the schedule is per worker and lock-free.
 */
#include "lb.h"

#include <stdlib.h>

/* Worker thread: current weights, all zero. NULL only when out of memory. */
static void *wrr_subset_init(const zlb_prio *p, const zlb_subset *s)
{
    ZLB_UNUSED(p);
    return calloc(s->n, sizeof(int64_t));
}

/* Worker thread. O(members) per pick, like nginx. */
static int32_t wrr_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    ZLB_UNUSED(ctx);
    if (s->n == 0)
        return -1;
    int64_t *cur = s->scratch;
    uint32_t best = 0;
    for (uint32_t k = 0; k < s->n; k++) {
        cur[k] += p->eps[s->idx[k]]->weight;
        if (cur[k] > cur[best])
            best = k;
    }
    cur[best] -= (int64_t)s->total_weight;
    return (int32_t)s->idx[best];
}

const zlb_lb_ops zlb_lb_weighted = {
    .name = "weighted",
    .subset_init = wrr_subset_init,
    .subset_free = free,
    .pick = wrr_pick,
};
