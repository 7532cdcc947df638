/*
 * test_stress.c - snapshots published through QSBR while readers pick.
 *
 * One writer thread builds and publishes STRESS_SNAPSHOTS snapshots (the
 * endpoint set, policy and health change with every version) while
 * STRESS_READERS reader threads pick at full speed. Each reader announces a
 * quiescent state at the top of every loop iteration, picks from the
 * snapshot it read, and checks that the endpoint belongs to that
 * snapshot's cluster; it also reports outcomes, so ejections bump
 * health_gen and views are rebuilt concurrently. Under ASan any pick from a
 * freed snapshot or view is a use-after-free report.
 * Bounds: the writer stops after STRESS_SNAPSHOTS or STRESS_DEADLINE_S,
 * readers after the writer or STRESS_MAX_LOOPS each.
 * At the end every snapshot is freed (alive counter back to 0) and the
 * registry is empty after a sweep.
 */
#include <pthread.h>
#include <stdlib.h>

#include "helpers.h"
#include "qsbr.h"
#include "zt.h"

#define STRESS_SNAPSHOTS 10000
#define STRESS_READERS 3
#define STRESS_MAX_LOOPS 20000000L
#define STRESS_DEADLINE_S 40

static const char *const policies[] = {"round_robin", "weighted", "random", "least_request",
                                       "ring_hash",   "maglev",   "peak_ewma"};

typedef struct stress {
    zlb_qsbr q;
    zlb_ep_registry *reg;
    _Atomic int writer_done;
    _Atomic uint64_t published;
    int64_t deadline_ns;
} stress;

typedef struct reader {
    stress *st;
    uint32_t slot;
    uint64_t picks, bad, null_picks, snapshots_seen;
    pthread_t tid;
} reader;

/* Snapshot number v: clusters "s0" and "s1" with 1..8 endpoints drawn
 * from 12 addresses (so states are shared across versions and some die),
 * a rotating policy and a rotating unhealthy/degraded endpoint. */
static zlb_snapshot *make_version(zlb_ep_registry *reg, uint64_t v, char *err, size_t errlen)
{
    zlb_snap_builder *b = zlb_snap_builder_new(reg, (v & 1) ? "z1" : NULL);
    for (int ci = 0; ci < 2 && b; ci++) {
        zlb_cluster_opts o;
        zlb_cluster_opts_defaults(&o);
        snprintf(o.name, sizeof(o.name), "s%d", ci);
        zlb_strlcpy(o.policy, policies[(v + (uint64_t)ci) % 7], sizeof(o.policy));
        o.maglev_table_size = 17;
        o.ring_size = 64;
        o.outlier.consecutive_failures = 3;
        o.outlier.base_ejection_ms = 1;
        o.outlier.max_ejection_ms = 4;
        o.outlier.max_ejection_percent = 50;
        int c = zlb_snap_add_cluster(b, &o, err, errlen);
        uint32_t n = (uint32_t)((v * 7 + (uint64_t)ci * 3) % 8) + 1;
        for (uint32_t i = 0; c >= 0 && i < n; i++) {
            char host[32];
            snprintf(host, sizeof(host), "10.%d.0.%u", ci, (unsigned)((v + i) % 12) + 1);
            int health = i == v % 5 ? (int)(v % 3) : ZLB_HEALTHY;
            if (zlb_snap_add_endpoint(b, c, host, 80, (uint32_t)(i % 3) + 1, i % 2, (i % 3) ? "z1" : "z2",
                                      health, err, errlen) < 0)
                c = -1;
        }
    }
    zlb_snapshot *s = b ? zlb_snap_build(b, v, err, errlen) : NULL;
    zlb_snap_builder_free(b);
    return s;
}

static void *reader_main(void *arg)
{
    reader *r = arg;
    stress *st = r->st;
    zlb_lb_cache *cache = zlb_lb_cache_new();
    uint64_t rng = 0x9e3779b97f4a7c15ULL * (r->slot + 1);
    const zlb_snapshot *last = NULL;
    zlb_qsbr_online(&st->q, r->slot);
    for (long loop = 0; loop < STRESS_MAX_LOOPS && cache; loop++) {
        zlb_qsbr_quiescent(&st->q, r->slot);
        if (atomic_load(&st->writer_done))
            break;
        const zlb_snapshot *s = zlb_qsbr_current(&st->q);
        if (!s)
            continue;
        r->snapshots_seen += s != last;
        last = s;
        const zlb_cluster *c = &s->clusters[loop & 1];
        int64_t now = zlb_now_ns();
        zlb_pick_ctx ctx = {.rng = &rng, .has_hash = (int)(loop & 2), .hash = (uint64_t)loop, .now_ns = now};
        zlb_endpoint *ep = zlb_lb_pick(cache, s, c, &ctx, NULL);
        zlb_endpoint *retry = ep ? zlb_lb_pick(cache, s, c, &ctx, ep) : NULL;
        r->picks++;
        if (!ep || !retry) {
            r->null_picks++;
            continue;
        }
        /* Membership: the pointers lie in this snapshot's cluster and the
         * states are keyed by this cluster's name. */
        int inside = ep >= c->endpoints && ep < c->endpoints + c->n_endpoints && retry >= c->endpoints &&
                     retry < c->endpoints + c->n_endpoints;
        if (!inside || strcmp(ep->state->key, c->opts.name) != 0 || strcmp(retry->state->key, c->opts.name) != 0) {
            r->bad++;
            continue;
        }
        atomic_fetch_add(&ep->state->active, 1);
        zlb_lb_report(s, c, ep, (loop % 5) != 0, (int64_t)(loop % 1000) * 1000 + 1, now);
        atomic_fetch_sub(&ep->state->active, 1);
    }
    zlb_qsbr_offline(&st->q, r->slot);
    zlb_lb_cache_free(cache);
    return NULL;
}

static void snapshot_free_cb(void *p)
{
    zlb_snapshot_free(p);
}

static void test_publish_while_picking(void)
{
    stress st;
    memset(&st, 0, sizeof(st));
    st.reg = zlb_ep_registry_new();
    ZT_CHECK(st.reg && zlb_qsbr_init(&st.q, STRESS_READERS, snapshot_free_cb) == 0);
    st.deadline_ns = zlb_now_ns() + (int64_t)STRESS_DEADLINE_S * 1000000000LL;
    reader rd[STRESS_READERS];
    memset(rd, 0, sizeof(rd));
    char err[256] = "";
    /* First snapshot before the readers start, so they find one at once. */
    zlb_qsbr_publish(&st.q, make_version(st.reg, 1, err, sizeof(err)));
    for (uint32_t i = 0; i < STRESS_READERS; i++) {
        rd[i].st = &st;
        rd[i].slot = i;
        pthread_create(&rd[i].tid, NULL, reader_main, &rd[i]);
    }
    uint64_t published = 1, build_failures = 0;
    for (uint64_t v = 2; v <= STRESS_SNAPSHOTS && zlb_now_ns() < st.deadline_ns; v++) {
        zlb_snapshot *s = make_version(st.reg, v, err, sizeof(err));
        if (!s) {
            build_failures++;
            continue;
        }
        zlb_qsbr_publish(&st.q, s);
        published++;
        if (v % 256 == 0)
            zlb_ep_registry_sweep(st.reg); /* while readers hold views */
    }
    atomic_store(&st.writer_done, 1);
    uint64_t picks = 0, bad = 0, nulls = 0, seen = 0;
    for (uint32_t i = 0; i < STRESS_READERS; i++) {
        pthread_join(rd[i].tid, NULL);
        picks += rd[i].picks;
        bad += rd[i].bad;
        nulls += rd[i].null_picks;
        seen += rd[i].snapshots_seen;
    }
    int64_t alive_before = zlb_debug_snapshots_alive();
    zlb_qsbr_destroy(&st.q);
    int64_t alive_after = zlb_debug_snapshots_alive();
    zlb_ep_registry_sweep(st.reg);
    size_t left = zlb_ep_registry_count(st.reg);
    zlb_ep_registry_free(st.reg);
    printf("# stress: %llu snapshots published, %llu picks, %llu snapshot changes seen by readers\n",
           (unsigned long long)published, (unsigned long long)picks, (unsigned long long)seen);
    ZT_CHECKF(build_failures == 0, "%llu builds failed, last: %s", (unsigned long long)build_failures, err);
    ZT_CHECKF(published >= STRESS_SNAPSHOTS, "only %llu snapshots before the deadline",
              (unsigned long long)published);
    ZT_CHECKF(bad == 0 && nulls == 0, "%llu foreign endpoints, %llu NULL picks", (unsigned long long)bad,
              (unsigned long long)nulls);
    ZT_CHECK(picks > 0 && seen > STRESS_READERS);
    ZT_CHECK(alive_before >= 1);
    ZT_CHECKF(alive_after == 0, "%lld snapshots alive", (long long)alive_after);
    ZT_CHECKF(left == 0, "%zu states left in the registry", left);
}

int main(void)
{
    ZT_RUN(test_publish_while_picking);
    return zt_summary();
}
