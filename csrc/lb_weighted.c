/*
 * lb_weighted.c - weighted round robin, smooth.
 *
 * Up to WRR_EXACT_MAX members: the nginx algorithm. Every pick adds each
 * member's weight to its current weight, takes the member with the largest
 * current weight and subtracts the total from it. Over any window of
 * total_weight picks each member is chosen exactly `weight` times, and heavy
 * members are interleaved with light ones rather than sent in bursts.
 *
 * Larger subsets: that is O(members) per pick (13 us for 10,000 endpoints),
 * so they use earliest-deadline-first scheduling instead (Envoy's approach):
 * a binary heap of each member's next deadline, advanced by 1/weight when
 * picked. O(log members) per pick, the same proportions, still interleaved.
 *
 * Either state lives in the subset scratch, so the schedule is per worker
 * and lock-free.
 */
#include "lb.h"

#include <stdlib.h>

#define WRR_EXACT_MAX 64

typedef struct edf_slot {
    double deadline;
    double step;   /* 1 / weight */
    uint32_t k;    /* member position */
} edf_slot;

static int edf_before(const edf_slot *a, const edf_slot *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->k < b->k);
}

static void edf_sift_down(edf_slot *h, uint32_t n, uint32_t i)
{
    edf_slot x = h[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && edf_before(&h[c + 1], &h[c]))
            c++;
        if (!edf_before(&h[c], &x))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

/* Worker thread: zeroed current weights, or the deadline heap. NULL only
 * when out of memory. */
static void *wrr_subset_init(const zlb_prio *p, const zlb_subset *s)
{
    if (s->n <= WRR_EXACT_MAX)
        return calloc(s->n, sizeof(int64_t));
    edf_slot *h = malloc(s->n * sizeof(*h));
    if (!h)
        return NULL;
    for (uint32_t k = 0; k < s->n; k++) {
        double step = 1.0 / p->eps[s->idx[k]]->weight;
        h[k] = (edf_slot){.deadline = step, .step = step, .k = k};
    }
    for (uint32_t i = s->n / 2; i-- > 0;)
        edf_sift_down(h, s->n, i);
    return h;
}

/* Worker thread. O(members) up to WRR_EXACT_MAX, O(log members) above. */
static int32_t wrr_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    ZLB_UNUSED(ctx);
    if (s->n == 0)
        return -1;
    if (s->n > WRR_EXACT_MAX) {
        edf_slot *h = s->scratch;
        uint32_t k = h[0].k;
        h[0].deadline += h[0].step;
        edf_sift_down(h, s->n, 0);
        return (int32_t)s->idx[k];
    }
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
