/*
 * lb.c - the generic load-balancing layer shared by every policy.
 *
 * Semantics (quoted by the README)
 * --------------------------------
 *  Available: an endpoint is available when its configured health is not
 *    UNHEALTHY, its active-health-check state is not UNHEALTHY and it is not
 *    ejected by outlier detection (ejected_until_ns > now). An endpoint that
 *    is DEGRADED by either source is used only when its priority level has
 *    no available HEALTHY endpoint.
 *  Priority load (Envoy style, by endpoint counts): for each level p with
 *    n_p endpoints of which a_p are available (healthy or degraded),
 *    h_p = min(100%, overprovisioning% * a_p / n_p). Level 0 takes
 *    min(100%, h_0) of the traffic, level 1 min(what is left, h_1), and so
 *    on. When the h_p add up to less than 100% the loads are h_p / sum(h),
 *    i.e. normalised over the levels that have an available endpoint. Loads
 *    are kept in parts per million, so a single available endpoint among
 *    thousands still counts. Each pick draws the level with the worker's
 *    generator.
 *  Panic: when panic_threshold > 0 and min(100%, sum h_p) is below it, the
 *    pick balances over EVERY endpoint of the first priority level, ignoring
 *    health and ejection: a proxy that trusts its health data too much would
 *    otherwise pile all traffic onto the few endpoints left. The same set is
 *    used when no endpoint is available at all and panic is disabled: a
 *    connect attempt is the only way to learn that an endpoint recovered,
 *    and refusing to pick would turn a health-data glitch into an outage.
 *  Zone preference: when the snapshot has a local zone and the chosen level
 *    has at least one available endpoint in it, only those are used;
 *    otherwise all available endpoints of the level (failover to the other
 *    zones; once the level's share shrinks, the next priority takes over).
 *  Exclude: when the policy returns `exclude` and the set has another
 *    member, the policy is asked twice more, then the next member in index
 *    order is taken. When the chosen set has no other member, the level's
 *    whole available set, then the other levels, then (in panic) the first
 *    level's endpoints are tried; `exclude` comes back only when nothing
 *    else is available. `exclude` is compared by pointer, so it must be an
 *    endpoint of the same snapshot (a retry after a snapshot swap may
 *    therefore land on the same address again).
 *  Outlier ejection: see zlb_lb_report().
 *
 * Per-worker cache
 * ----------------
 *  The cache is keyed by (snapshot pointer, version); each cluster's view is
 *  built on its first pick and refreshed when registry->health_gen changes
 *  or when the earliest ejection deadline seen in the view has passed
 *  (expiry is not announced through health_gen). A view never dereferences
 *  an old snapshot: after a swap the old snapshot may already be freed, so a
 *  view keeps its own copy of everything it needs to free itself.
 */
#include "lb.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const zlb_lb_ops *const policies[] = {
    &zlb_lb_round_robin, &zlb_lb_weighted, &zlb_lb_random,    &zlb_lb_least_request,
    &zlb_lb_ring_hash,   &zlb_lb_maglev,   &zlb_lb_peak_ewma,
};

/* Any thread. */
const zlb_lb_ops *zlb_lb_find(const char *name)
{
    for (size_t i = 0; i < sizeof(policies) / sizeof(policies[0]); i++)
        if (strcmp(policies[i]->name, name) == 0)
            return policies[i];
    return NULL;
}

/* Any thread. A literal rather than a string built from `policies` so that
 * no lazy initialisation (and no race) is needed; a unit test checks that
 * it matches the table. */
const char *zlb_lb_names(void)
{
    return "round_robin,weighted,random,least_request,ring_hash,maglev,peak_ewma";
}

/* ---- availability --------------------------------------------------- */

#define LOAD_SCALE 1000000u /* priority loads in parts per million */

enum { EP_UNAVAILABLE = 0, EP_HEALTHY = 1, EP_DEGRADED = 2 };

/* Classifies ep at time now and lowers *next_expiry to its ejection
 * deadline when it is ejected. Relaxed loads: a stale value is corrected by
 * the health_gen bump that follows every change. */
static int ep_class(const zlb_endpoint *ep, int64_t now, int64_t *next_expiry)
{
    int64_t until = atomic_load_explicit(&ep->state->ejected_until_ns, memory_order_relaxed);
    if (until > now) {
        if (until < *next_expiry)
            *next_expiry = until;
        return EP_UNAVAILABLE;
    }
    uint8_t active = atomic_load_explicit(&ep->state->active_health, memory_order_relaxed);
    if (ep->health == ZLB_UNHEALTHY || active == ZLB_UNHEALTHY)
        return EP_UNAVAILABLE;
    return (ep->health == ZLB_DEGRADED || active == ZLB_DEGRADED) ? EP_DEGRADED : EP_HEALTHY;
}

/* Any thread. */
int zlb_lb_endpoint_available(const zlb_endpoint *ep, int64_t now_ns)
{
    int64_t ignored = INT64_MAX;
    return ep_class(ep, now_ns, &ignored) != EP_UNAVAILABLE;
}

/* ---- subsets -------------------------------------------------------- */

/* Allocates an empty subset able to hold n members. 0 or -1. */
static int subset_alloc(zlb_subset *s, uint32_t n)
{
    memset(s, 0, sizeof(*s));
    s->idx = malloc((n ? n : 1) * sizeof(*s->idx));
    s->member = calloc(n ? n : 1, 1);
    return s->idx && s->member ? 0 : -1;
}

/* Drops the members and the policy scratch, keeping the arrays. */
static void subset_clear(zlb_subset *s, const zlb_lb_ops *ops, uint32_t n)
{
    if (s->scratch && ops->subset_free)
        ops->subset_free(s->scratch);
    s->scratch = NULL;
    s->n = 0;
    s->total_weight = 0;
    if (s->member)
        memset(s->member, 0, n);
}

static void subset_free(zlb_subset *s, const zlb_lb_ops *ops)
{
    subset_clear(s, ops, 0);
    free(s->idx);
    free(s->member);
}

/* Appends p->eps[i]; callers add in ascending i, keeping idx sorted. */
static void subset_add(zlb_subset *s, const zlb_prio *p, uint32_t i)
{
    s->idx[s->n++] = i;
    s->member[i] = 1;
    s->total_weight += p->eps[i]->weight;
}

/* Creates the policy scratch of a filled-in subset. 0 or -1 (no memory). */
static int subset_seal(zlb_subset *s, const zlb_lb_ops *ops, const zlb_prio *p)
{
    if (s->n == 0 || !ops->subset_init)
        return 0;
    s->scratch = ops->subset_init(p, s);
    return s->scratch ? 0 : -1;
}

/* ---- views ---------------------------------------------------------- */

typedef struct lb_level {
    uint32_t n;         /* endpoints in the level (sizes the arrays) */
    zlb_subset avail;   /* healthy available, or degraded when no healthy */
    zlb_subset local;   /* avail restricted to the local zone */
    uint32_t health;    /* h_p in ppm */
    uint32_t cum_load;  /* ppm; loads of levels 0..k added up */
} lb_level;

typedef struct lb_view {
    const zlb_lb_ops *ops;  /* copied: the cluster may be gone at free time */
    int valid;              /* 0 until a refresh completed */
    int use_all;            /* panic, or nothing available */
    uint64_t health_gen;    /* registry->health_gen the view was built at */
    int64_t next_expiry_ns; /* earliest ejection deadline seen */
    zlb_subset all;         /* every endpoint of the first level */
    uint32_t n_all;
    uint32_t n_levels;
    lb_level levels[];
} lb_view;

struct zlb_lb_cache {
    const zlb_snapshot *snap;
    uint64_t version;
    uint32_t n_views;
    lb_view **views; /* by cluster index, built lazily */
};

static void view_free(lb_view *v)
{
    if (!v)
        return;
    for (uint32_t k = 0; k < v->n_levels; k++) {
        subset_free(&v->levels[k].avail, v->ops);
        subset_free(&v->levels[k].local, v->ops);
    }
    subset_free(&v->all, v->ops);
    free(v);
}

/* Allocates a view for cluster c (which has at least one endpoint) with
 * the constant `all` subset filled in. NULL when out of memory. */
static lb_view *view_new(const zlb_cluster *c)
{
    lb_view *v = calloc(1, sizeof(*v) + c->n_prios * sizeof(lb_level));
    if (!v)
        return NULL;
    v->ops = c->lb;
    v->n_levels = c->n_prios;
    int rc = subset_alloc(&v->all, c->prios[0].n);
    v->n_all = c->prios[0].n;
    for (uint32_t k = 0; k < c->n_prios; k++) {
        v->levels[k].n = c->prios[k].n;
        rc |= subset_alloc(&v->levels[k].avail, c->prios[k].n);
        rc |= subset_alloc(&v->levels[k].local, c->prios[k].n);
    }
    if (rc == 0) {
        for (uint32_t i = 0; i < c->prios[0].n; i++)
            subset_add(&v->all, &c->prios[0], i);
        rc = subset_seal(&v->all, v->ops, &c->prios[0]);
    }
    if (rc != 0) {
        view_free(v);
        return NULL;
    }
    return v;
}

/* Recomputes availability, subsets and priority loads of v (see the
 * semantics at the top of this file). 0, or -1 when a policy scratch could
 * not be allocated (the view then stays invalid and is retried). */
static int view_refresh(lb_view *v, const zlb_snapshot *s, const zlb_cluster *c, uint64_t gen,
                        int64_t now)
{
    uint64_t sum_h = 0;
    v->valid = 0;
    v->health_gen = gen;
    v->next_expiry_ns = INT64_MAX;
    for (uint32_t k = 0; k < v->n_levels; k++) {
        const zlb_prio *p = &c->prios[k];
        lb_level *L = &v->levels[k];
        subset_clear(&L->avail, v->ops, L->n);
        subset_clear(&L->local, v->ops, L->n);
        /* Pass 1 stores each endpoint's class in avail.member so that both
         * passes see the same (racy) atomics. */
        uint32_t n_healthy = 0, n_degraded = 0;
        for (uint32_t i = 0; i < p->n; i++) {
            int cls = ep_class(p->eps[i], now, &v->next_expiry_ns);
            L->avail.member[i] = (uint8_t)cls;
            n_healthy += cls == EP_HEALTHY;
            n_degraded += cls == EP_DEGRADED;
        }
        uint8_t want = n_healthy ? EP_HEALTHY : EP_DEGRADED;
        for (uint32_t i = 0; i < p->n; i++) {
            int in = L->avail.member[i] == want;
            L->avail.member[i] = 0;
            if (!in)
                continue;
            subset_add(&L->avail, p, i);
            if (s->local_zone_id != 0 && p->eps[i]->zone_id == s->local_zone_id)
                subset_add(&L->local, p, i);
        }
        uint64_t a = n_healthy + n_degraded;
        uint64_t h = (uint64_t)c->opts.overprovisioning * a * (LOAD_SCALE / 100) / p->n;
        if (h > LOAD_SCALE)
            h = LOAD_SCALE;
        if (a && !h)
            h = 1; /* a level with an available endpoint always counts */
        L->health = (uint32_t)h;
        sum_h += h;
    }
    uint64_t health = sum_h < LOAD_SCALE ? sum_h : LOAD_SCALE;
    v->use_all = sum_h == 0 ||
                 (c->opts.panic_threshold > 0 && health < (uint64_t)c->opts.panic_threshold * (LOAD_SCALE / 100));
    if (!v->use_all) {
        /* cum_load first holds each level's own load, then the running sum. */
        uint64_t left = LOAD_SCALE, cum = 0;
        uint32_t last = 0;
        for (uint32_t k = 0; k < v->n_levels; k++) {
            uint64_t h = v->levels[k].health;
            uint64_t load = sum_h >= LOAD_SCALE ? (h < left ? h : left) : h * LOAD_SCALE / sum_h;
            v->levels[k].cum_load = (uint32_t)load;
            left -= load;
            if (load)
                last = k;
        }
        /* Normalising rounds down: the last level with traffic absorbs the
         * rest so that every draw in [0, LOAD_SCALE) lands on a level. */
        v->levels[last].cum_load += (uint32_t)left;
        for (uint32_t k = 0; k < v->n_levels; k++) {
            cum += v->levels[k].cum_load;
            v->levels[k].cum_load = (uint32_t)cum;
        }
    }
    for (uint32_t k = 0; k < v->n_levels; k++) {
        if (subset_seal(&v->levels[k].avail, v->ops, &c->prios[k]) < 0 ||
            subset_seal(&v->levels[k].local, v->ops, &c->prios[k]) < 0)
            return -1;
    }
    v->valid = 1;
    return 0;
}

/* Worker thread. */
zlb_lb_cache *zlb_lb_cache_new(void)
{
    return calloc(1, sizeof(zlb_lb_cache));
}

/* Frees every view; never touches the snapshot the cache was keyed on. */
static void cache_drop(zlb_lb_cache *c)
{
    for (uint32_t i = 0; i < c->n_views; i++)
        view_free(c->views[i]);
    free(c->views);
    c->views = NULL;
    c->n_views = 0;
    c->snap = NULL;
}

/* Worker thread (the owner), or any thread once the worker has stopped. */
void zlb_lb_cache_free(zlb_lb_cache *c)
{
    if (!c)
        return;
    cache_drop(c);
    free(c);
}

/* The up-to-date view of cluster cl, building or refreshing it as needed.
 * NULL when out of memory. */
static lb_view *get_view(zlb_lb_cache *c, const zlb_snapshot *s, const zlb_cluster *cl, int64_t now)
{
    if (c->snap != s || c->version != s->version) {
        cache_drop(c);
        if (!(c->views = calloc(s->n_clusters ? s->n_clusters : 1, sizeof(*c->views))))
            return NULL;
        c->n_views = s->n_clusters;
        c->snap = s;
        c->version = s->version;
    }
    lb_view **slot = &c->views[cl->index];
    if (!*slot && !(*slot = view_new(cl)))
        return NULL;
    lb_view *v = *slot;
    /* Acquire pairs with the release bump in zlb_lb_report / the health
     * checker, so the state changes behind the new generation are seen. */
    uint64_t gen = atomic_load_explicit(&s->registry->health_gen, memory_order_acquire);
    if (!v->valid || v->health_gen != gen || now >= v->next_expiry_ns)
        if (view_refresh(v, s, cl, gen, now) < 0)
            return NULL;
    return v;
}

/* True when s offers an endpoint other than ex. */
static int usable(const zlb_prio *p, const zlb_subset *s, const zlb_endpoint *ex)
{
    return s->n > 1 || (s->n == 1 && p->eps[s->idx[0]] != ex);
}

/* Asks the policy for a member of the non-empty subset s, steering away
 * from ex as described at the top of this file. */
static zlb_endpoint *pick_in(const zlb_lb_ops *ops, const zlb_prio *p, zlb_subset *s,
                             zlb_pick_ctx *ctx, const zlb_endpoint *ex)
{
    int32_t i = ops->pick(p, s, ctx);
    for (int tries = 0; tries < 2 && p->eps[i] == ex && s->n > 1; tries++)
        i = ops->pick(p, s, ctx);
    if (p->eps[i] == ex && s->n > 1) {
        uint32_t lo = 0, hi = s->n - 1; /* position of i in the sorted idx */
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (s->idx[mid] < (uint32_t)i)
                lo = mid + 1;
            else
                hi = mid;
        }
        i = (int32_t)s->idx[(lo + 1) % s->n];
    }
    return p->eps[i];
}

static zlb_endpoint *view_pick(lb_view *v, const zlb_cluster *c, zlb_pick_ctx *ctx,
                               const zlb_endpoint *ex)
{
    const zlb_lb_ops *ops = v->ops;
    if (v->use_all && usable(&c->prios[0], &v->all, ex))
        return pick_in(ops, &c->prios[0], &v->all, ctx, ex);
    uint32_t k = 0;
    if (!v->use_all) {
        uint32_t r = zlb_rand_below(ctx->rng, LOAD_SCALE);
        while (k + 1 < v->n_levels && v->levels[k].cum_load <= r)
            k++;
        lb_level *L = &v->levels[k];
        if (usable(&c->prios[k], &L->local, ex))
            return pick_in(ops, &c->prios[k], &L->local, ctx, ex);
        if (usable(&c->prios[k], &L->avail, ex))
            return pick_in(ops, &c->prios[k], &L->avail, ctx, ex);
    }
    /* Only reached with an exclude (or in panic with a one-endpoint first
     * level): any other level that offers something else. */
    for (uint32_t j = 0; j < v->n_levels; j++)
        if (usable(&c->prios[j], &v->levels[j].avail, ex))
            return pick_in(ops, &c->prios[j], &v->levels[j].avail, ctx, ex);
    /* Nothing but ex is available: hand it back. */
    return v->use_all ? pick_in(ops, &c->prios[0], &v->all, ctx, ex)
                      : pick_in(ops, &c->prios[k], &v->levels[k].avail, ctx, ex);
}

/* See lb.h. Also counts the pick in state->total_picks. */
zlb_endpoint *zlb_lb_pick(zlb_lb_cache *cache, const zlb_snapshot *s, const zlb_cluster *c,
                          zlb_pick_ctx *ctx, const zlb_endpoint *exclude)
{
    if (c->n_endpoints == 0)
        return NULL;
    lb_view *v = get_view(cache, s, c, ctx->now_ns);
    /* Out of memory: a uniformly random endpoint keeps traffic flowing. */
    zlb_endpoint *ep = v ? view_pick(v, c, ctx, exclude)
                         : c->prios[0].eps[zlb_rand_below(ctx->rng, c->prios[0].n)];
    atomic_fetch_add_explicit(&ep->state->total_picks, 1, memory_order_relaxed);
    return ep;
}

/* ---- outcome reporting ---------------------------------------------- */

static _Atomic uint64_t total_ejections;

uint64_t zlb_lb_total_ejections(void)
{
    return atomic_load(&total_ejections);
}

/* Peak-EWMA: a sample above the estimate replaces it at once (react to
 * slowness immediately), lower samples pull it down with weight
 * w = exp(-dt / decay). Concurrent updates from two workers may lose one
 * sample; the estimate is a hint, not an account. */
static void ewma_update(zlb_ep_state *st, uint32_t decay_ms, int64_t sample, int64_t now)
{
    uint64_t old = atomic_load_explicit(&st->ewma_ns, memory_order_relaxed);
    int64_t stamp = atomic_load_explicit(&st->ewma_stamp_ns, memory_order_relaxed);
    uint64_t v = (uint64_t)sample;
    if (old != 0 && v <= old) {
        double dt = now > stamp ? (double)(now - stamp) : 0.0;
        double w = decay_ms ? exp(-dt / ((double)decay_ms * 1e6)) : 0.0;
        v = (uint64_t)((double)old * w + (double)sample * (1.0 - w) + 0.5);
    }
    atomic_store_explicit(&st->ewma_ns, v, memory_order_relaxed);
    atomic_store_explicit(&st->ewma_stamp_ns, now, memory_order_relaxed);
}

/* Number of endpoints of c ejected at time now. */
static uint32_t count_ejected(const zlb_cluster *c, int64_t now)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->n_endpoints; i++)
        n += atomic_load_explicit(&c->endpoints[i].state->ejected_until_ns, memory_order_relaxed) > now;
    return n;
}

/* Worker thread; lock-free. Outlier detection:
 *  - failure: consecutive_failures++ and total_failures++. Once the run
 *    reaches opts.outlier.consecutive_failures (0 disables) and ep is not
 *    already ejected, ep is ejected if no endpoint of the cluster is
 *    ejected (at least one may always go, as in Envoy) or if
 *    (ejected + 1) * 100 <= max_ejection_percent * n_endpoints. A refused
 *    ejection keeps the run, so the next failure tries again.
 *    Duration = base_ejection_ms * 2^(previous ejections), capped at
 *    max_ejection_ms. The ejection count never decays.
 *    The percentage check is not atomic with the ejection: workers ejecting
 *    different endpoints at the same instant may overshoot it by one each.
 *    A CAS on the deadline makes sure one endpoint is ejected only once.
 *  - success: resets the run.
 *  - latency_ns > 0: feeds the peak-EWMA (ewma_update).
 * Every ejection bumps registry->health_gen (release) so that the workers'
 * cached views are rebuilt. */
void zlb_lb_report(const zlb_snapshot *s, const zlb_cluster *c, zlb_endpoint *ep, int success,
                   int64_t latency_ns, int64_t now_ns)
{
    zlb_ep_state *st = ep->state;
    if (latency_ns > 0)
        ewma_update(st, c->opts.ewma_decay_ms, latency_ns, now_ns);
    if (success) {
        atomic_store_explicit(&st->consecutive_failures, 0, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&st->total_failures, 1, memory_order_relaxed);
    uint32_t run = atomic_fetch_add_explicit(&st->consecutive_failures, 1, memory_order_relaxed) + 1;
    const zlb_outlier_opts *o = &c->opts.outlier;
    if (o->consecutive_failures == 0 || run < o->consecutive_failures)
        return;
    int64_t until = atomic_load_explicit(&st->ejected_until_ns, memory_order_relaxed);
    if (until > now_ns)
        return;
    uint32_t ejected = count_ejected(c, now_ns);
    if (ejected > 0 && (uint64_t)(ejected + 1) * 100 > (uint64_t)o->max_ejection_percent * c->n_endpoints)
        return;
    uint32_t times = atomic_load_explicit(&st->ejections, memory_order_relaxed);
    uint64_t ms = times >= 32 ? UINT64_MAX : (uint64_t)o->base_ejection_ms << times;
    if (ms > o->max_ejection_ms)
        ms = o->max_ejection_ms;
    if (!atomic_compare_exchange_strong_explicit(&st->ejected_until_ns, &until, now_ns + (int64_t)ms * 1000000,
                                                 memory_order_relaxed, memory_order_relaxed))
        return; /* another worker ejected it first */
    atomic_fetch_add_explicit(&st->ejections, 1, memory_order_relaxed);
    atomic_store_explicit(&st->consecutive_failures, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&total_ejections, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->registry->health_gen, 1, memory_order_release);
}

/* ---- helpers for policy files ---------------------------------------- */

void zlb_lb_free_data(zlb_prio *p)
{
    free(p->lb_data);
    p->lb_data = NULL;
}

/* See lb.h. The first candidate is drawn uniformly, so keeping it on a tie
 * breaks ties at random without another draw. */
int32_t zlb_lb_p2c(const zlb_prio *p, const zlb_subset *s, zlb_pick_ctx *ctx,
                   double (*cost)(const zlb_endpoint *ep))
{
    if (s->n == 0)
        return -1;
    if (s->n == 1)
        return (int32_t)s->idx[0];
    uint32_t a = zlb_rand_below(ctx->rng, s->n);
    uint32_t b = zlb_rand_below(ctx->rng, s->n - 1);
    b += b >= a; /* distinct from a, uniform over the rest */
    double ca = cost(p->eps[s->idx[a]]), cb = cost(p->eps[s->idx[b]]);
    return (int32_t)s->idx[cb < ca ? b : a];
}

uint64_t zlb_lb_pick_many(const zlb_snapshot *s, int ci, uint64_t n, uint64_t seed)
{
    if (ci < 0 || (uint32_t)ci >= s->n_clusters)
        return 0;
    zlb_lb_cache *cache = zlb_lb_cache_new();
    if (!cache)
        return 0;
    uint64_t rng = seed | 1, found = 0;
    int64_t now = zlb_now_ns();
    for (uint64_t i = 0; i < n; i++) {
        zlb_pick_ctx ctx = {.rng = &rng, .has_hash = 1, .hash = (i + 1) * 0x9E3779B97F4A7C15ULL, .now_ns = now};
        found += zlb_lb_pick(cache, s, &s->clusters[ci], &ctx, NULL) != NULL;
    }
    zlb_lb_cache_free(cache);
    return found;
}
