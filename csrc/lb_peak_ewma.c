/*
 * lb_peak_ewma.c - latency-aware power of two choices (Finagle/linkerd's
 * peak EWMA): cost = ewma latency * (active + 1) / weight, where an endpoint
 * without a latency sample yet counts as 1 ms so that new endpoints are
 * tried but not flooded. The EWMA itself is maintained by zlb_lb_report().
 */
#include "lb.h"

#define PEWMA_DEFAULT_NS 1000000.0 /* 1 ms */

static double pewma_cost(const zlb_endpoint *ep)
{
    uint64_t ewma = atomic_load_explicit(&ep->state->ewma_ns, memory_order_relaxed);
    int64_t active = atomic_load_explicit(&ep->state->active, memory_order_relaxed);
    double lat = ewma ? (double)ewma : PEWMA_DEFAULT_NS;
    return lat * (double)(active + 1) / (double)ep->weight;
}

/* Worker thread. */
static int32_t pewma_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    return zlb_lb_p2c(p, s, ctx, pewma_cost);
}

const zlb_lb_ops zlb_lb_peak_ewma = {
    .name = "peak_ewma",
    .pick = pewma_pick,
};
