/*
 * lb_round_robin.c - plain rotation over the members of a subset, ignoring
 * weights. The cursor lives in the subset scratch, so it is per worker and
 * needs no atomics; a view refresh starts the rotation over.
 */
#include "lb.h"

#include <stdlib.h>

typedef struct rr_scratch {
    uint32_t next; /* position in s->idx of the next pick */
} rr_scratch;

/* Worker thread. NULL only when out of memory. */
static void *rr_subset_init(const zlb_prio *p, const zlb_subset *s)
{
    ZLB_UNUSED(p), ZLB_UNUSED(s);
    return calloc(1, sizeof(rr_scratch));
}

/* Worker thread: exact rotation s->idx[0], idx[1], ..., idx[n-1], idx[0]... */
static int32_t rr_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    ZLB_UNUSED(p), ZLB_UNUSED(ctx);
    if (s->n == 0)
        return -1;
    rr_scratch *rr = s->scratch;
    uint32_t pos = rr->next < s->n ? rr->next : 0;
    rr->next = pos + 1;
    return (int32_t)s->idx[pos];
}

const zlb_lb_ops zlb_lb_round_robin = {
    .name = "round_robin",
    .subset_init = rr_subset_init,
    .subset_free = free,
    .pick = rr_pick,
};
