/*
 * test_policies.c - the contract of each policy, driven through
 * zlb_lb_pick on one healthy priority level (so the subset is every
 * endpoint) with a seeded generator.
 */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>

#include "helpers.h"
#include "zt.h"

/* chi-square critical value for 3 degrees of freedom at p = 0.001: a
 * correct policy fails this less than once in a thousand seeds, and the
 * seed is fixed. */
#define CHI2_DF3_P001 16.27

static zlb_ep_registry *reg;

static zlb_pick_ctx ctx_with(uint64_t *rng)
{
    return (zlb_pick_ctx){.rng = rng, .has_hash = 0, .hash = 0, .now_ns = 1000};
}

/* Endpoints with weights 1,2,3,4 at 10.0.0.1..4:80. */
static zlb_snapshot *mk_weighted(const char *policy)
{
    tep eps[4] = {
        {"10.0.0.1", 80, 1, 0, NULL, 0},
        {"10.0.0.2", 80, 2, 0, NULL, 0},
        {"10.0.0.3", 80, 3, 0, NULL, 0},
        {"10.0.0.4", 80, 4, 0, NULL, 0},
    };
    return mk_snap(reg, NULL, policy, NULL, eps, 4, 1);
}

static void test_round_robin_exact(void)
{
    zlb_snapshot *s = mk_simple(reg, "round_robin", NULL, 4, 1);
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 7;
    zlb_pick_ctx ctx = ctx_with(&rng);
    const zlb_cluster *c = &s->clusters[0];
    int first = ep_index(c, zlb_lb_pick(cache, s, c, &ctx, NULL)), ok = 1;
    for (int i = 1; i < 40 && ok; i++)
        ok = ep_index(c, zlb_lb_pick(cache, s, c, &ctx, NULL)) == (first + i) % 4;
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECK(ok);
}

static void test_weighted_smooth(void)
{
    zlb_snapshot *s = mk_weighted("weighted");
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 7;
    zlb_pick_ctx ctx = ctx_with(&rng);
    uint32_t counts[4], weights[4] = {1, 2, 3, 4};
    count_picks(cache, s, &ctx, 10000, counts);
    double chi = chi_square(counts, weights, 4, 10000);
    /* Smoothness: in any window of total_weight (10) picks the heaviest
     * endpoint never comes three times in a row. */
    const zlb_cluster *c = &s->clusters[0];
    int run = 0, max_run = 0;
    for (int i = 0; i < 100; i++) {
        run = ep_index(c, zlb_lb_pick(cache, s, c, &ctx, NULL)) == 3 ? run + 1 : 0;
        max_run = run > max_run ? run : max_run;
    }
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECKF(chi < CHI2_DF3_P001, "chi2 %.2f counts %u %u %u %u", chi, counts[0], counts[1], counts[2], counts[3]);
    ZT_CHECKF(max_run <= 2, "heaviest endpoint picked %d times in a row", max_run);
}

/* Above 64 members the weighted policy schedules by earliest deadline
 * (O(log n) per pick): the same proportions, every member served. */
static void test_weighted_large_edf(void)
{
    enum { N = 100, PICKS = 100000 };
    static char hosts[N][16];
    tep eps[N];
    uint32_t weights[N], counts[N];
    for (int i = 0; i < N; i++) {
        snprintf(hosts[i], sizeof(hosts[i]), "10.0.1.%d", i + 1);
        weights[i] = (uint32_t)(i % 4) + 1;
        eps[i] = (tep){hosts[i], 80, weights[i], 0, NULL, 0};
    }
    zlb_snapshot *s = mk_snap(reg, NULL, "weighted", NULL, eps, N, 1);
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 7;
    zlb_pick_ctx ctx = ctx_with(&rng);
    count_picks(cache, s, &ctx, PICKS, counts);
    const zlb_cluster *c = &s->clusters[0];
    /* counts are by endpoint position; weights by the order given. */
    uint32_t by_pos[N];
    for (uint32_t i = 0; i < c->n_endpoints; i++)
        by_pos[i] = c->endpoints[i].weight;
    double chi = chi_square(counts, by_pos, N, PICKS);
    uint32_t least = counts[0];
    for (int i = 1; i < N; i++)
        least = counts[i] < least ? counts[i] : least;
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    /* Chi-square critical value, 99 degrees of freedom, p = 0.001. */
    ZT_CHECKF(chi < 148.23, "chi2 %.2f", chi);
    ZT_CHECKF(least > 0, "an endpoint was never picked");
}

static void test_random_weighted(void)
{
    zlb_snapshot *s = mk_weighted("random");
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 12345;
    zlb_pick_ctx ctx = ctx_with(&rng);
    uint32_t counts[4], weights[4] = {1, 2, 3, 4};
    count_picks(cache, s, &ctx, 20000, counts);
    double chi = chi_square(counts, weights, 4, 20000);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECKF(chi < CHI2_DF3_P001, "chi2 %.2f counts %u %u %u %u", chi, counts[0], counts[1], counts[2], counts[3]);
}

static void test_random_uniform(void)
{
    zlb_snapshot *s = mk_simple(reg, "random", NULL, 4, 1);
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 99;
    zlb_pick_ctx ctx = ctx_with(&rng);
    uint32_t counts[4], weights[4] = {1, 1, 1, 1};
    count_picks(cache, s, &ctx, 20000, counts);
    double chi = chi_square(counts, weights, 4, 20000);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECKF(chi < CHI2_DF3_P001, "chi2 %.2f", chi);
}

static void test_least_request(void)
{
    zlb_snapshot *s = mk_simple(reg, "least_request", NULL, 4, 1);
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 5;
    zlb_pick_ctx ctx = ctx_with(&rng);
    zlb_cluster *c = &s->clusters[0];
    atomic_store(&c->endpoints[2].state->active, 1000);
    uint32_t counts[4];
    count_picks(cache, s, &ctx, 4000, counts);
    atomic_store(&c->endpoints[2].state->active, 0);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    /* Two distinct candidates: the loaded one always loses. */
    ZT_CHECKF(counts[2] == 0, "loaded endpoint picked %u times", counts[2]);
    ZT_CHECK(counts[0] > 0 && counts[1] > 0 && counts[3] > 0);
}

static void test_least_request_weight_aware(void)
{
    tep eps[2] = {{"10.0.1.1", 80, 1, 0, NULL, 0}, {"10.0.1.2", 80, 4, 0, NULL, 0}};
    zlb_snapshot *s = mk_snap(reg, NULL, "least_request", NULL, eps, 2, 1);
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 5;
    zlb_pick_ctx ctx = ctx_with(&rng);
    zlb_cluster *c = &s->clusters[0];
    /* (0+1)/1 = 1 vs (2+1)/4 = 0.75: the heavy one wins despite more load. */
    atomic_store(&c->endpoints[1].state->active, 2);
    int heavy = ep_index(c, zlb_lb_pick(cache, s, c, &ctx, NULL));
    /* (4+1)/4 = 1.25: now the light one wins. */
    atomic_store(&c->endpoints[1].state->active, 4);
    int light = ep_index(c, zlb_lb_pick(cache, s, c, &ctx, NULL));
    atomic_store(&c->endpoints[1].state->active, 0);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECK(heavy == 1);
    ZT_CHECK(light == 0);
}

static void test_peak_ewma(void)
{
    zlb_snapshot *s = mk_simple(reg, "peak_ewma", NULL, 4, 1);
    ZT_CHECK(s);
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 3;
    zlb_pick_ctx ctx = ctx_with(&rng);
    zlb_cluster *c = &s->clusters[0];
    /* Endpoint 1 is slow (100 ms); the others are unknown (1 ms default). */
    zlb_lb_report(s, c, &c->endpoints[1], 1, 100000000, 1000);
    uint32_t counts[4];
    count_picks(cache, s, &ctx, 2000, counts);
    /* Peak EWMA: 10 ms then 2 ms one decay period later gives
     * 10 e^-1 + 2 (1 - e^-1) ms; a higher sample replaces it at once. */
    zlb_ep_state *st = c->endpoints[0].state;
    const int64_t decay = (int64_t)c->opts.ewma_decay_ms * 1000000;
    zlb_lb_report(s, c, &c->endpoints[0], 1, 10000000, 1000);
    zlb_lb_report(s, c, &c->endpoints[0], 1, 2000000, 1000 + decay);
    double expect = 10e6 * exp(-1.0) + 2e6 * (1 - exp(-1.0));
    double got = (double)atomic_load(&st->ewma_ns);
    zlb_lb_report(s, c, &c->endpoints[0], 1, 20000000, 2000 + decay);
    uint64_t peak = atomic_load(&st->ewma_ns);
    zlb_lb_cache_free(cache);
    zlb_snapshot_free(s);
    ZT_CHECKF(counts[1] == 0, "slow endpoint picked %u times", counts[1]);
    ZT_CHECKF(fabs(got - expect) < expect * 0.001, "ewma %.0f expected %.0f", got, expect);
    ZT_CHECK(peak == 20000000);
}

/* Maps keys 0..n_keys-1 through a hash policy and stores endpoint NAMES'
 * index in `names` (a table of known names) in out[]. */
static void map_keys(const zlb_snapshot *s, uint32_t n_keys, int *out)
{
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 1;
    zlb_pick_ctx ctx = ctx_with(&rng);
    ctx.has_hash = 1;
    const zlb_cluster *c = &s->clusters[0];
    for (uint32_t k = 0; k < n_keys; k++) {
        ctx.hash = zlb_hash64(&k, sizeof(k), 42);
        out[k] = ep_index(c, zlb_lb_pick(cache, s, c, &ctx, NULL));
    }
    zlb_lb_cache_free(cache);
}

#define N_KEYS 10000

/* Consistency of a hash policy: the same key maps to the same endpoint
 * (also through a fresh cache and a rebuilt snapshot), adding a fifth
 * endpoint moves about a fifth of the keys and never more than a quarter,
 * and taking one endpoint out moves only that endpoint's keys. Endpoints
 * 10.0.0.1..4 keep their indices in the 5-endpoint snapshot. */
static void check_consistent_hash(const char *policy, const zlb_cluster_opts *o)
{
    static int a[N_KEYS], b[N_KEYS], five[N_KEYS], down[N_KEYS];
    zlb_snapshot *s4 = mk_simple(reg, policy, o, 4, 1);
    zlb_snapshot *s4b = mk_simple(reg, policy, o, 4, 2);
    zlb_snapshot *s5 = mk_simple(reg, policy, o, 5, 3);
    ZT_CHECK(s4 && s4b && s5);
    map_keys(s4, N_KEYS, a);
    map_keys(s4b, N_KEYS, b);
    map_keys(s5, N_KEYS, five);
    /* Endpoint 1 goes down: panic is off so only availability matters. */
    set_active_health(s4, &s4->clusters[0].endpoints[1], ZLB_UNHEALTHY);
    map_keys(s4, N_KEYS, down);
    set_active_health(s4, &s4->clusters[0].endpoints[1], ZLB_HEALTHY);
    uint32_t same = 0, moved = 0, moved_elsewhere = 0, bad_down = 0, per_ep[4] = {0};
    for (int k = 0; k < N_KEYS; k++) {
        same += a[k] == b[k];
        moved += a[k] != five[k];
        moved_elsewhere += a[k] != five[k] && five[k] != 4;
        bad_down += down[k] == 1 || (a[k] != 1 && down[k] != a[k]);
        per_ep[a[k]]++;
    }
    zlb_snapshot_free(s4);
    zlb_snapshot_free(s4b);
    zlb_snapshot_free(s5);
    ZT_CHECKF(same == N_KEYS, "%u of %d keys stable across rebuilds", same, N_KEYS);
    ZT_CHECKF(moved >= N_KEYS / 10 && moved <= N_KEYS / 4, "%s: adding a 5th endpoint moved %u of %d keys "
              "(%u not to the new one)", policy, moved, N_KEYS, moved_elsewhere);
    ZT_CHECKF(bad_down == 0, "%u keys misplaced with endpoint 1 down", bad_down);
    for (int i = 0; i < 4; i++)
        ZT_CHECKF(per_ep[i] > N_KEYS / 8, "endpoint %d owns only %u keys", i, per_ep[i]);
}

static void test_ring_hash(void)
{
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    o.panic_threshold = 0;
    check_consistent_hash("ring_hash", &o);
}

static void test_maglev(void)
{
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    o.panic_threshold = 0;
    check_consistent_hash("maglev", &o);
}

/* Weighted maglev: table shares follow the weights 1,2,3,4. */
static void test_maglev_weighted(void)
{
    zlb_snapshot *s = mk_weighted("maglev");
    ZT_CHECK(s);
    static int out[N_KEYS];
    map_keys(s, N_KEYS, out);
    uint32_t counts[4] = {0}, weights[4] = {1, 2, 3, 4};
    for (int k = 0; k < N_KEYS; k++)
        counts[out[k]]++;
    zlb_snapshot_free(s);
    double chi = chi_square(counts, weights, 4, N_KEYS);
    ZT_CHECKF(chi < CHI2_DF3_P001, "chi2 %.2f counts %u %u %u %u", chi, counts[0], counts[1], counts[2], counts[3]);
}

/* Every test gets its own registry so that no endpoint state (active
 * counts, EWMA, health) leaks from one test into the next. */
#define RUN(fn)                                  \
    do {                                         \
        reg = zlb_ep_registry_new();             \
        ZT_RUN(fn);                              \
        zlb_ep_registry_free(reg);               \
    } while (0)

int main(void)
{
    RUN(test_round_robin_exact);
    RUN(test_weighted_smooth);
    RUN(test_weighted_large_edf);
    RUN(test_random_weighted);
    RUN(test_random_uniform);
    RUN(test_least_request);
    RUN(test_least_request_weight_aware);
    RUN(test_peak_ewma);
    RUN(test_ring_hash);
    RUN(test_maglev);
    RUN(test_maglev_weighted);
    return zt_summary();
}
