/*
 * test_lb.c - the generic layer of lb.c: priority failover and the
 * overprovisioning split, zone preference, panic threshold, degraded
 * endpoints, outlier ejection with backoff and max-ejection-percent, and
 * exclude. Round robin is the policy under test unless stated, because its
 * exact rotation makes the subset visible.
 */
#include <stdlib.h>

#include "helpers.h"
#include "zt.h"

#define MS 1000000LL

static zlb_ep_registry *reg;

/* Picks `picks` times at time now and counts per endpoint index. */
static void count_at(zlb_lb_cache *cache, const zlb_snapshot *s, uint64_t *rng, int64_t now, uint32_t picks,
                     uint32_t *counts)
{
    zlb_pick_ctx ctx = {.rng = rng, .now_ns = now};
    count_picks(cache, s, &ctx, picks, counts);
}

/* Two levels of four endpoints: 10.1.0.1-4 at priority 0 (indices 0-3),
 * 10.1.1.1-4 at priority 1 (indices 4-7). Added in reverse priority order
 * to check that levels are sorted. */
static zlb_snapshot *mk_two_levels(const zlb_cluster_opts *o)
{
    tep eps[8] = {
        {"10.1.0.1", 80, 1, 0, NULL, 0}, {"10.1.0.2", 80, 1, 0, NULL, 0},
        {"10.1.0.3", 80, 1, 0, NULL, 0}, {"10.1.0.4", 80, 1, 0, NULL, 0},
        {"10.1.1.1", 80, 1, 1, NULL, 0}, {"10.1.1.2", 80, 1, 1, NULL, 0},
        {"10.1.1.3", 80, 1, 1, NULL, 0}, {"10.1.1.4", 80, 1, 1, NULL, 0},
    };
    return mk_snap(reg, NULL, "round_robin", o, eps, 8, 1);
}

static uint32_t sum(const uint32_t *c, int from, int to)
{
    uint32_t s = 0;
    for (int i = from; i < to; i++)
        s += c[i];
    return s;
}

static void test_priority_failover(void)
{
    zlb_snapshot *s = mk_two_levels(NULL);
    ZT_CHECK(s);
    zlb_cluster *c = &s->clusters[0];
    ZT_CHECK(c->n_prios == 2 && c->prios[0].priority == 0 && c->prios[1].priority == 1);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 11;
    uint32_t all_up[8], half[8], none[8];
    count_at(cache, s, &rng, 1, 10000, all_up);
    /* 2 of 4 up: h0 = 140% * 2/4 = 70%, the rest (30%) goes to level 1. */
    set_active_health(s, &c->endpoints[0], ZLB_UNHEALTHY);
    set_active_health(s, &c->endpoints[1], ZLB_UNHEALTHY);
    count_at(cache, s, &rng, 1, 10000, half);
    /* Level 0 entirely down: everything to level 1. */
    set_active_health(s, &c->endpoints[2], ZLB_UNHEALTHY);
    set_active_health(s, &c->endpoints[3], ZLB_UNHEALTHY);
    count_at(cache, s, &rng, 1, 10000, none);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECK(sum(all_up, 0, 4) == 10000);
    ZT_CHECK(half[0] == 0 && half[1] == 0);
    ZT_CHECKF(sum(half, 2, 4) > 6700 && sum(half, 2, 4) < 7300, "level 0 took %u of 10000", sum(half, 2, 4));
    ZT_CHECK(sum(none, 4, 8) == 10000);
}

/* Both levels 1/4 available: h = 35% each, 70% in total (above the 50%
 * panic threshold), so the loads are normalised to 50/50. */
static void test_priority_normalised(void)
{
    zlb_snapshot *s = mk_two_levels(NULL);
    ZT_CHECK(s);
    zlb_cluster *c = &s->clusters[0];
    for (int i = 1; i < 8; i++)
        if (i != 4)
            set_active_health(s, &c->endpoints[i], ZLB_UNHEALTHY);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 13;
    uint32_t counts[8];
    count_at(cache, s, &rng, 1, 10000, counts);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECK(counts[0] + counts[4] == 10000);
    ZT_CHECKF(counts[0] > 4700 && counts[0] < 5300, "level 0 took %u", counts[0]);
}

static void test_panic_threshold(void)
{
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    zlb_snapshot *s = mk_simple(reg, "round_robin", &o, 4, 1);
    o.panic_threshold = 0;
    zlb_snapshot *nopanic = mk_simple(reg, "round_robin", &o, 4, 2);
    ZT_CHECK(s && nopanic);
    /* Same registry, same names: the two snapshots share states. */
    ZT_CHECK(s->clusters[0].endpoints[1].state == nopanic->clusters[0].endpoints[1].state);
    for (int i = 1; i < 4; i++)
        set_active_health(s, &s->clusters[0].endpoints[i], ZLB_UNHEALTHY);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 17;
    uint32_t panic[4], trust[4], dark[4];
    /* 1 of 4: h = 35% < 50%: panic spreads over all four. */
    count_at(cache, s, &rng, 1, 400, panic);
    /* Panic disabled: only the available one. */
    count_at(cache, nopanic, &rng, 1, 400, trust);
    /* Nothing available, panic disabled: still picks (all of them). */
    set_active_health(s, &s->clusters[0].endpoints[0], ZLB_UNHEALTHY);
    count_at(cache, nopanic, &rng, 1, 400, dark);
    for (int i = 0; i < 4; i++)
        set_active_health(s, &s->clusters[0].endpoints[i], ZLB_HEALTHY);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    zlb_snapshot_free(nopanic);
    for (int i = 0; i < 4; i++)
        ZT_CHECKF(panic[i] == 100, "panic: endpoint %d got %u of 400", i, panic[i]);
    ZT_CHECK(trust[0] == 400);
    for (int i = 0; i < 4; i++)
        ZT_CHECK(dark[i] == 100);
}

/* Local zone "a": endpoints 0,1 in a, 2,3 in b, 4 in a at priority 1. */
static void test_zone_preference(void)
{
    tep eps[5] = {
        {"10.2.0.1", 80, 1, 0, "a", 0}, {"10.2.0.2", 80, 1, 0, "a", 0}, {"10.2.0.3", 80, 1, 0, "b", 0},
        {"10.2.0.4", 80, 1, 0, "b", 0}, {"10.2.1.1", 80, 1, 1, "a", 0},
    };
    zlb_snapshot *s = mk_snap(reg, "a", "round_robin", NULL, eps, 5, 1);
    zlb_snapshot *nozone = mk_snap(reg, NULL, "round_robin", NULL, eps, 5, 2);
    ZT_CHECK(s && nozone);
    zlb_cluster *c = &s->clusters[0];
    ZT_CHECK(s->local_zone_id != 0 && strcmp(s->zones[s->local_zone_id], "a") == 0);
    ZT_CHECK(nozone->local_zone_id == 0 && s->n_zones == 3);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 19;
    uint32_t local[5], spread[5], failover[5];
    count_at(cache, s, &rng, 1, 1000, local);
    count_at(cache, nozone, &rng, 1, 1000, spread);
    /* Zone a down at priority 0: 2 of 4 left (h0 = 70%); zone b takes
     * level 0's share, level 1 (zone a) the remaining 30%. */
    set_active_health(s, &c->endpoints[0], ZLB_UNHEALTHY);
    set_active_health(s, &c->endpoints[1], ZLB_UNHEALTHY);
    count_at(cache, s, &rng, 1, 10000, failover);
    set_active_health(s, &c->endpoints[0], ZLB_HEALTHY);
    set_active_health(s, &c->endpoints[1], ZLB_HEALTHY);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    zlb_snapshot_free(nozone);
    ZT_CHECK(local[0] == 500 && local[1] == 500);
    ZT_CHECK(spread[0] == 250 && spread[1] == 250 && spread[2] == 250 && spread[3] == 250);
    ZT_CHECK(failover[0] == 0 && failover[1] == 0);
    ZT_CHECKF(failover[2] + failover[3] > 6700 && failover[2] + failover[3] < 7300, "zone b took %u",
              failover[2] + failover[3]);
    ZT_CHECK(failover[2] + failover[3] + failover[4] == 10000);
}

/* Degraded endpoints only serve when the level has no healthy one. */
static void test_degraded(void)
{
    tep eps[3] = {{"10.3.0.1", 80, 1, 0, NULL, ZLB_DEGRADED}, {"10.3.0.2", 80, 1, 0, NULL, 0},
                  {"10.3.0.3", 80, 1, 0, NULL, 0}};
    zlb_snapshot *s = mk_snap(reg, NULL, "round_robin", NULL, eps, 3, 1);
    ZT_CHECK(s);
    zlb_cluster *c = &s->clusters[0];
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 23;
    uint32_t healthy[3], degraded[3];
    count_at(cache, s, &rng, 1, 300, healthy);
    set_active_health(s, &c->endpoints[1], ZLB_UNHEALTHY);
    set_active_health(s, &c->endpoints[2], ZLB_DEGRADED);
    count_at(cache, s, &rng, 1, 300, degraded);
    int avail2 = zlb_lb_endpoint_available(&c->endpoints[2], 1);
    set_active_health(s, &c->endpoints[1], ZLB_HEALTHY);
    set_active_health(s, &c->endpoints[2], ZLB_HEALTHY);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECK(healthy[0] == 0 && healthy[1] == 150 && healthy[2] == 150);
    ZT_CHECK(degraded[0] == 150 && degraded[1] == 0 && degraded[2] == 150);
    ZT_CHECK(avail2);
}

static void fail_n(const zlb_snapshot *s, zlb_endpoint *ep, int n, int64_t now)
{
    for (int i = 0; i < n; i++)
        zlb_lb_report(s, &s->clusters[0], ep, 0, 0, now);
}

static void test_ejection_backoff(void)
{
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    o.outlier.consecutive_failures = 3;
    o.outlier.base_ejection_ms = 1000;
    o.outlier.max_ejection_ms = 5000;
    o.outlier.max_ejection_percent = 50;
    zlb_snapshot *s = mk_simple(reg, "round_robin", &o, 4, 1);
    ZT_CHECK(s);
    zlb_cluster *c = &s->clusters[0];
    zlb_endpoint *ep = &c->endpoints[0];
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 29, before = zlb_lb_total_ejections();
    uint32_t counts[4];
    int64_t t = 1000 * MS;

    /* Two failures, a success, two failures: the run was reset, no ejection. */
    fail_n(s, ep, 2, t);
    zlb_lb_report(s, c, ep, 1, 0, t);
    fail_n(s, ep, 2, t);
    ZT_CHECK(zlb_lb_endpoint_available(ep, t));
    fail_n(s, ep, 1, t);
    ZT_CHECK(!zlb_lb_endpoint_available(ep, t));
    ZT_CHECK(atomic_load(&ep->state->total_failures) == 5);
    count_at(cache, s, &rng, t + 999 * MS, 300, counts);
    ZT_CHECK(counts[0] == 0);
    /* The ejection ends after exactly base (1 s): the cached view notices
     * without any health_gen bump. */
    count_at(cache, s, &rng, t + 1000 * MS, 400, counts);
    ZT_CHECK(counts[0] == 100);

    /* Backoff: 2 s, 4 s, then capped at 5 s. */
    int64_t expect_ms[3] = {2000, 4000, 5000};
    for (int k = 0; k < 3; k++) {
        t += 10000 * MS;
        fail_n(s, ep, 3, t);
        int64_t until = atomic_load(&ep->state->ejected_until_ns);
        ZT_CHECKF(until == t + expect_ms[k] * MS, "ejection %d lasted %lld ms", k + 2, (long long)((until - t) / MS));
    }
    ZT_CHECK(zlb_lb_total_ejections() - before == 4);
    ZT_CHECK(atomic_load(&ep->state->ejections) == 4);

    /* Max 50% of 4: a second endpoint may go ((1+1)*100 <= 200), a third
     * may not ((2+1)*100 > 200). */
    fail_n(s, &c->endpoints[1], 3, t);
    fail_n(s, &c->endpoints[2], 3, t);
    ZT_CHECK(!zlb_lb_endpoint_available(&c->endpoints[1], t));
    ZT_CHECK(zlb_lb_endpoint_available(&c->endpoints[2], t));
    count_at(cache, s, &rng, t, 300, counts);
    ZT_CHECK(counts[0] == 0 && counts[1] == 0 && counts[2] == 150 && counts[3] == 150);
    /* Once the others are back, the refused endpoint's next failure ejects. */
    t += 10000 * MS;
    fail_n(s, &c->endpoints[2], 1, t);
    ZT_CHECK(!zlb_lb_endpoint_available(&c->endpoints[2], t));
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
}

/* Envoy ejects at least one endpoint even when the percentage forbids it;
 * 0 consecutive failures disables ejection. */
static void test_ejection_floor_and_disable(void)
{
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    o.outlier.consecutive_failures = 2;
    o.outlier.max_ejection_percent = 0;
    zlb_snapshot *s = mk_simple(reg, "round_robin", &o, 4, 1);
    o.outlier.consecutive_failures = 0;
    zlb_snapshot *off = mk_simple(reg, "random", &o, 3, 2);
    ZT_CHECK(s && off);
    int64_t t = 5000 * MS;
    fail_n(s, &s->clusters[0].endpoints[3], 2, t);
    fail_n(s, &s->clusters[0].endpoints[2], 2, t);
    fail_n(off, &off->clusters[0].endpoints[0], 50, t + 1000000 * MS);
    int first = zlb_lb_endpoint_available(&s->clusters[0].endpoints[3], t);
    int second = zlb_lb_endpoint_available(&s->clusters[0].endpoints[2], t);
    int disabled = zlb_lb_endpoint_available(&off->clusters[0].endpoints[0], t + 1000000 * MS);
    zlb_snapshot_free(s);
    zlb_snapshot_free(off);
    ZT_CHECK(!first);
    ZT_CHECK(second);
    ZT_CHECK(disabled);
}

static void test_exclude(void)
{
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    o.panic_threshold = 0;
    zlb_snapshot *rr = mk_simple(reg, "round_robin", &o, 4, 1);
    zlb_snapshot *ring = mk_simple(reg, "ring_hash", &o, 4, 2);
    tep zeps[3] = {{"10.4.0.1", 80, 1, 0, "a", 0}, {"10.4.0.2", 80, 1, 0, "b", 0}, {"10.4.0.3", 80, 1, 0, "b", 0}};
    zlb_snapshot *zoned = mk_snap(reg, "a", "round_robin", &o, zeps, 3, 3);
    ZT_CHECK(rr && ring && zoned);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 31;
    zlb_pick_ctx ctx = {.rng = &rng, .now_ns = 1};
    int ok_rr = 1, ok_ring = 1;
    const zlb_cluster *c = &rr->clusters[0];
    /* Excluding the endpoint round robin is about to return skips it. */
    for (int i = 0; i < 8; i++) {
        zlb_endpoint *next = &rr->clusters[0].endpoints[(ep_index(c, zlb_lb_pick(cache, rr, c, &ctx, NULL)) + 1) % 4];
        ok_rr &= zlb_lb_pick(cache, rr, c, &ctx, next) != next;
    }
    /* A hash policy returns the excluded endpoint on every retry; the
     * next member in index order takes over. */
    const zlb_cluster *rc = &ring->clusters[0];
    ctx.has_hash = 1;
    for (uint32_t k = 0; k < 50; k++) {
        ctx.hash = zlb_hash64(&k, sizeof(k), 0);
        zlb_endpoint *home = zlb_lb_pick(cache, ring, rc, &ctx, NULL);
        zlb_endpoint *other = zlb_lb_pick(cache, ring, rc, &ctx, home);
        ok_ring &= other == &rc->endpoints[(ep_index(rc, home) + 1) % 4];
    }
    ctx.has_hash = 0;
    /* Only the local-zone endpoint is preferred; excluding it falls over
     * to the other zone instead of returning it. */
    const zlb_cluster *zc = &zoned->clusters[0];
    zlb_endpoint *local = zlb_lb_pick(cache, zoned, zc, &ctx, NULL);
    zlb_endpoint *away = zlb_lb_pick(cache, zoned, zc, &ctx, local);
    int local_idx = ep_index(zc, local);
    /* Only one endpoint available: it comes back even when excluded. */
    for (int i = 1; i < 4; i++)
        set_active_health(rr, &rr->clusters[0].endpoints[i], ZLB_UNHEALTHY);
    zlb_endpoint *only = &rr->clusters[0].endpoints[0];
    zlb_endpoint *again = zlb_lb_pick(cache, rr, c, &ctx, only);
    for (int i = 1; i < 4; i++)
        set_active_health(rr, &rr->clusters[0].endpoints[i], ZLB_HEALTHY);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(rr);
    zlb_snapshot_free(ring);
    zlb_snapshot_free(zoned);
    ZT_CHECK(ok_rr);
    ZT_CHECK(ok_ring);
    ZT_CHECK(local_idx == 0);
    ZT_CHECK(away && away != local);
    ZT_CHECK(again == only);
}

/* A cluster without endpoints yields NULL; picks count in total_picks. */
static void test_empty_cluster_and_pick_count(void)
{
    zlb_snapshot *empty = mk_simple(reg, "maglev", NULL, 0, 1);
    zlb_snapshot *s = mk_simple(reg, "weighted", NULL, 2, 2);
    ZT_CHECK(empty && s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 37;
    zlb_pick_ctx ctx = {.rng = &rng, .now_ns = 1};
    zlb_endpoint *none = zlb_lb_pick(cache, empty, &empty->clusters[0], &ctx, NULL);
    uint64_t before = atomic_load(&s->clusters[0].endpoints[0].state->total_picks);
    uint32_t counts[2];
    count_picks(cache, s, &ctx, 10, counts);
    uint64_t after = atomic_load(&s->clusters[0].endpoints[0].state->total_picks);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(empty);
    zlb_snapshot_free(s);
    ZT_CHECK(none == NULL);
    ZT_CHECK(after - before == counts[0] && counts[0] == 5);
}

/* Every test gets its own registry: endpoint states are keyed by name, so
 * a shared one would carry ejections and health from test to test. */
#define RUN(fn)                                  \
    do {                                         \
        reg = zlb_ep_registry_new();             \
        ZT_RUN(fn);                              \
        zlb_ep_registry_free(reg);               \
    } while (0)

int main(void)
{
    RUN(test_priority_failover);
    RUN(test_priority_normalised);
    RUN(test_panic_threshold);
    RUN(test_zone_preference);
    RUN(test_degraded);
    RUN(test_ejection_backoff);
    RUN(test_ejection_floor_and_disable);
    RUN(test_exclude);
    RUN(test_empty_cluster_and_pick_count);
    return zt_summary();
}
