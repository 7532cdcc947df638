/*
 * lb_random.c - weighted random choice over the members of a subset, drawn
 * from the worker's seeded generator (deterministic in tests). The subset
 * scratch holds the prefix sums of the member weights, so a pick is one
 * draw and a binary search.
 */
#include "lb.h"

#include <stdlib.h>

/* Worker thread: prefix[k] = weight of members 0..k. NULL only when out of
 * memory. */
static void *rnd_subset_init(const zlb_prio *p, const zlb_subset *s)
{
    uint64_t *prefix = malloc(s->n * sizeof(*prefix));
    if (!prefix)
        return NULL;
    uint64_t sum = 0;
    for (uint32_t k = 0; k < s->n; k++)
        prefix[k] = sum += p->eps[s->idx[k]]->weight;
    return prefix;
}

/* Worker thread. */
static int32_t rnd_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    ZLB_UNUSED(p);
    if (s->n == 0)
        return -1;
    const uint64_t *prefix = s->scratch;
    /* Multiply-shift maps the draw onto [0, total) without the modulo bias
     * (the total may exceed 32 bits, hence 128-bit). */
    uint64_t r = (uint64_t)(((unsigned __int128)zlb_rand64(ctx->rng) * s->total_weight) >> 64);
    uint32_t lo = 0, hi = s->n - 1; /* first k with prefix[k] > r */
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (prefix[mid] > r)
            hi = mid;
        else
            lo = mid + 1;
    }
    return (int32_t)s->idx[lo];
}

const zlb_lb_ops zlb_lb_random = {
    .name = "random",
    .subset_init = rnd_subset_init,
    .subset_free = free,
    .pick = rnd_pick,
};
