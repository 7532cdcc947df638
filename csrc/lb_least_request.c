/*
 * lb_least_request.c - power of two choices on outstanding requests,
 * weight-aware: of two random members the one with the lower
 * (active + 1) / weight wins (Envoy's least_request with equal active
 * request bias). Reads the shared `active` counters with relaxed loads: a
 * slightly stale count only makes one choice slightly worse.
 */
#include "lb.h"

static double lr_cost(const zlb_endpoint *ep)
{
    int64_t active = atomic_load_explicit(&ep->state->active, memory_order_relaxed);
    return (double)(active + 1) / (double)ep->weight;
}

/* Worker thread. */
static int32_t lr_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    return zlb_lb_p2c(p, s, ctx, lr_cost);
}

const zlb_lb_ops zlb_lb_least_request = {
    .name = "least_request",
    .pick = lr_pick,
};
