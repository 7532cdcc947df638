/*
 * test_snapshot.c - the builder (validation, names, zones, priorities),
 * option defaults, the endpoint-state registry (sharing across snapshots,
 * refcounts, sweep) and the snapshots-alive debug counter.
 */
#include <stdlib.h>

#include "helpers.h"
#include "zt.h"

static void test_defaults_and_names(void)
{
    zlb_cluster_opts o;
    memset(&o, 0xab, sizeof(o));
    zlb_cluster_opts_defaults(&o);
    ZT_CHECK(o.name[0] == 0 && o.policy[0] == 0);
    ZT_CHECK(o.connect_timeout_ms == 5000 && o.connect_retries == 2 && o.panic_threshold == 50);
    ZT_CHECK(o.ring_size == 1024 && o.maglev_table_size == 65537 && o.overprovisioning == 140);
    ZT_CHECK(o.ewma_decay_ms == 10000);
    ZT_CHECK(o.outlier.consecutive_failures == 5 && o.outlier.base_ejection_ms == 30000);
    ZT_CHECK(o.outlier.max_ejection_ms == 300000 && o.outlier.max_ejection_percent == 10);
    /* Every advertised policy name resolves, and to an ops of that name. */
    char names[256];
    zlb_strlcpy(names, zlb_lb_names(), sizeof(names));
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(names, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++) {
        const zlb_lb_ops *ops = zlb_lb_find(tok);
        ZT_CHECKF(ops && strcmp(ops->name, tok) == 0, "policy '%s'", tok);
    }
    ZT_CHECK(n == 7);
    ZT_CHECK(zlb_lb_find("least_conn") == NULL);
}

/* Builds one cluster with one endpoint and expects failure whose message
 * contains `want`. Returns 1 when it did. */
static int build_fails(const char *policy, uint32_t maglev_size, const char *host, uint16_t port, uint32_t weight,
                       int health, const char *want)
{
    zlb_ep_registry *reg = zlb_ep_registry_new();
    zlb_snap_builder *b = zlb_snap_builder_new(reg, NULL);
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    zlb_strlcpy(o.name, "web", sizeof(o.name));
    zlb_strlcpy(o.policy, policy, sizeof(o.policy));
    o.maglev_table_size = maglev_size;
    char err[256] = "";
    zlb_snapshot *s = NULL;
    int ci = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    if (ci >= 0 && zlb_snap_add_endpoint(b, ci, host, port, weight, 0, NULL, health, err, sizeof(err)) == 0)
        s = zlb_snap_build(b, 1, err, sizeof(err));
    int ok = !s && strstr(err, want) != NULL;
    if (!ok)
        fprintf(stderr, "expected an error with '%s', got '%s'\n", want, err);
    zlb_snapshot_free(s);
    zlb_snap_builder_free(b);
    zlb_ep_registry_free(reg);
    return ok;
}

static void test_builder_errors(void)
{
    ZT_CHECK(build_fails("nope", 65537, "10.0.0.1", 80, 1, 0, "cluster 'web': unknown lb policy 'nope'"));
    ZT_CHECK(build_fails("", 65537, "example.com", 80, 1, 0, "cluster 'web': endpoint 'example.com'"));
    ZT_CHECK(build_fails("", 65537, "10.0.0.1", 80, 0, 0, "endpoint '10.0.0.1:80': weight"));
    ZT_CHECK(build_fails("", 65537, "10.0.0.1", 0, 1, 0, "port 0"));
    ZT_CHECK(build_fails("", 65537, "10.0.0.1", 80, 1, 7, "bad health 7"));
    {
        zlb_ep_registry *r = zlb_ep_registry_new();
        zlb_snap_builder *b = zlb_snap_builder_new(r, NULL);
        zlb_cluster_opts o;
        zlb_cluster_opts_defaults(&o);
        memset(o.name, 'x', sizeof(o.name)); /* no terminator */
        char err[256] = "";
        int rc = zlb_snap_add_cluster(b, &o, err, sizeof(err));
        zlb_snap_builder_free(b);
        zlb_ep_registry_free(r);
        ZT_CHECK(rc == -1 && strstr(err, "longer than 127"));
    }
    ZT_CHECK(build_fails("maglev", 65536, "10.0.0.1", 80, 1, 0, "cluster 'web' (priority 0): maglev_table_size 65536 is not prime"));

    /* Duplicate cluster and duplicate endpoint (same address spelled
     * differently) are rejected; the builder stays usable. */
    zlb_ep_registry *reg = zlb_ep_registry_new();
    zlb_snap_builder *b = zlb_snap_builder_new(reg, NULL);
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    zlb_strlcpy(o.name, "web", sizeof(o.name));
    char err[256] = "";
    int ci = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    int dup = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    int dup_named = strstr(err, "duplicate cluster 'web'") != NULL;
    zlb_snap_add_endpoint(b, ci, "::1", 443, 1, 0, NULL, 0, err, sizeof(err));
    zlb_snap_add_endpoint(b, ci, "0::0001", 443, 1, 0, NULL, 0, err, sizeof(err));
    zlb_snapshot *s = zlb_snap_build(b, 1, err, sizeof(err));
    int dup_ep = !s && strstr(err, "cluster 'web': duplicate endpoint '[::1]:443'") != NULL;
    /* After a failed build: nothing leaked, the builder starts over. */
    int alive = (int)zlb_debug_snapshots_alive();
    ci = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    s = zlb_snap_build(b, 2, err, sizeof(err));
    int rebuilt = s && s->n_clusters == 1 && s->clusters[0].n_endpoints == 0;
    zlb_snapshot_free(s);
    zlb_snap_builder_free(b);
    zlb_ep_registry_sweep(reg);
    size_t left = zlb_ep_registry_count(reg);
    zlb_ep_registry_free(reg);
    ZT_CHECK(ci == 0 && dup == -1 && dup_named);
    ZT_CHECK(dup_ep);
    ZT_CHECK(alive == 0);
    ZT_CHECK(rebuilt);
    ZT_CHECK(left == 0);
}

static void test_builder_layout(void)
{
    zlb_ep_registry *reg = zlb_ep_registry_new();
    zlb_snap_builder *b = zlb_snap_builder_new(reg, "us-east-1b");
    zlb_cluster_opts o;
    zlb_cluster_opts_defaults(&o);
    char err[256] = "";
    zlb_strlcpy(o.name, "api", sizeof(o.name));
    int api = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    zlb_strlcpy(o.name, "db", sizeof(o.name));
    zlb_strlcpy(o.policy, "maglev", sizeof(o.policy));
    o.maglev_table_size = 251;
    int db = zlb_snap_add_cluster(b, &o, err, sizeof(err));
    zlb_snap_add_endpoint(b, api, "192.168.1.10", 8080, 3, 2, "us-east-1a", 0, err, sizeof(err));
    zlb_snap_add_endpoint(b, api, "2001:db8::10", 8443, 1, 0, "us-east-1b", 1, err, sizeof(err));
    zlb_snap_add_endpoint(b, api, "192.168.1.11", 8080, 1, 2, "", 0, err, sizeof(err));
    zlb_snap_add_endpoint(b, api, "192.168.1.12", 8080, 1, 1, "us-east-1a", 0, err, sizeof(err));
    zlb_snap_add_endpoint(b, db, "10.9.9.9", 5432, 1, 0, NULL, 0, err, sizeof(err));
    zlb_snapshot *s = zlb_snap_build(b, 77, err, sizeof(err));
    zlb_snap_builder_free(b);
    ZT_CHECKF(s, "%s", err);
    ZT_CHECK(zlb_debug_snapshots_alive() == 1);
    ZT_CHECK(s->version == 77 && s->n_clusters == 2 && s->registry == reg);
    ZT_CHECK(zlb_snapshot_find_cluster(s, "db") == db && zlb_snapshot_find_cluster(s, "api") == api);
    ZT_CHECK(zlb_snapshot_find_cluster(s, "nope") == -1);
    ZT_CHECK(strcmp(s->zones[0], "") == 0 && strcmp(s->zones[s->local_zone_id], "us-east-1b") == 0);
    const zlb_cluster *c = &s->clusters[api];
    ZT_CHECK(c->index == (uint32_t)api && c->lb == &zlb_lb_round_robin && strcmp(c->opts.policy, "round_robin") == 0);
    ZT_CHECK(s->clusters[db].lb == &zlb_lb_maglev && s->clusters[db].prios[0].lb_data != NULL);
    ZT_CHECK(c->n_endpoints == 4);
    ZT_CHECK(strcmp(c->endpoints[0].name, "192.168.1.10:8080") == 0);
    ZT_CHECK(strcmp(c->endpoints[1].name, "[2001:db8::10]:8443") == 0);
    ZT_CHECK(c->endpoints[1].addr.ss_family == AF_INET6 && c->endpoints[1].addrlen == sizeof(struct sockaddr_in6));
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)&c->endpoints[0].addr;
    ZT_CHECK(a4->sin_family == AF_INET && ntohs(a4->sin_port) == 8080 && ntohl(a4->sin_addr.s_addr) == 0xc0a8010a);
    ZT_CHECK(c->endpoints[0].weight == 3 && c->endpoints[1].health == ZLB_DEGRADED);
    ZT_CHECK(c->endpoints[2].zone_id == 0 && c->endpoints[0].zone_id == c->endpoints[3].zone_id);
    ZT_CHECK(strcmp(s->zones[c->endpoints[0].zone_id], "us-east-1a") == 0);
    ZT_CHECK(c->endpoints[1].zone_id == s->local_zone_id);
    /* Levels sorted ascending, insertion order inside a level. */
    ZT_CHECK(c->n_prios == 3);
    ZT_CHECK(c->prios[0].priority == 0 && c->prios[0].n == 1 && c->prios[0].eps[0] == &c->endpoints[1]);
    ZT_CHECK(c->prios[1].priority == 1 && c->prios[1].n == 1 && c->prios[1].eps[0] == &c->endpoints[3]);
    ZT_CHECK(c->prios[2].priority == 2 && c->prios[2].n == 2 && c->prios[2].eps[0] == &c->endpoints[0] &&
             c->prios[2].eps[1] == &c->endpoints[2]);
    /* State key: "cluster\0address". */
    ZT_CHECK(strcmp(c->endpoints[1].state->key, "api") == 0 &&
             strcmp(c->endpoints[1].state->key + 4, "[2001:db8::10]:8443") == 0);
    zlb_snapshot_free(s);
    ZT_CHECK(zlb_debug_snapshots_alive() == 0);
    zlb_ep_registry_free(reg);
}

static void test_registry_refcount_and_sweep(void)
{
    zlb_ep_registry *reg = zlb_ep_registry_new();
    /* Direct use: same key, same object, one new reference per get. */
    zlb_ep_state *a = zlb_ep_registry_get(reg, "c", "10.0.0.1:80");
    zlb_ep_state *a2 = zlb_ep_registry_get(reg, "c", "10.0.0.1:80");
    zlb_ep_state *other = zlb_ep_registry_get(reg, "d", "10.0.0.1:80");
    ZT_CHECK(a && a == a2 && other && other != a);
    ZT_CHECK(atomic_load(&a->refs) == 3 && zlb_ep_registry_count(reg) == 2);
    zlb_ep_state_unref(a2);
    zlb_ep_state_unref(other);
    zlb_ep_registry_sweep(reg); /* "d" is now only in the registry */
    ZT_CHECK(zlb_ep_registry_count(reg) == 1 && atomic_load(&a->refs) == 2);

    /* Snapshots: v1 has endpoints 1-3, v2 has 2-4. State survives the swap. */
    zlb_snapshot *v1 = mk_simple(reg, "least_request", NULL, 3, 1);
    ZT_CHECK(v1 && v1->clusters[0].endpoints[0].state == a && atomic_load(&a->refs) == 3);
    atomic_store(&v1->clusters[0].endpoints[1].state->active, 5);
    tep eps[3] = {{"10.0.0.2", 80, 1, 0, NULL, 0}, {"10.0.0.3", 80, 1, 0, NULL, 0}, {"10.0.0.4", 80, 1, 0, NULL, 0}};
    zlb_snapshot *v2 = mk_snap(reg, NULL, "least_request", NULL, eps, 3, 2);
    ZT_CHECK(v2 && v2->clusters[0].endpoints[0].state == v1->clusters[0].endpoints[1].state);
    ZT_CHECK(atomic_load(&v2->clusters[0].endpoints[0].state->active) == 5);
    ZT_CHECK(zlb_ep_registry_count(reg) == 4 && zlb_debug_snapshots_alive() == 2);
    /* An in-flight request keeps 10.0.0.1's state across v1's free. */
    zlb_snapshot_free(v1);
    zlb_ep_registry_sweep(reg);
    ZT_CHECK(zlb_ep_registry_count(reg) == 4); /* a is still ours */
    zlb_ep_state_unref(a);
    zlb_ep_registry_sweep(reg);
    ZT_CHECK(zlb_ep_registry_count(reg) == 3);
    /* A registry freed before its snapshots: the states live on in them. */
    zlb_ep_state *keep = v2->clusters[0].endpoints[2].state;
    zlb_ep_registry_free(reg);
    ZT_CHECK(atomic_load(&keep->refs) == 1);
    zlb_snapshot_free(v2);
    ZT_CHECK(zlb_debug_snapshots_alive() == 0);
}

/* Grows the registry through several resizes and finds every key again. */
static void test_registry_growth(void)
{
    zlb_ep_registry *reg = zlb_ep_registry_new();
    enum { N = 1000 };
    static zlb_ep_state *got[N];
    char addr[32];
    for (int i = 0; i < N; i++) {
        snprintf(addr, sizeof(addr), "10.%d.%d.1:80", i / 256, i % 256);
        got[i] = zlb_ep_registry_get(reg, "big", addr);
    }
    int same = 1;
    for (int i = 0; i < N; i++) {
        snprintf(addr, sizeof(addr), "10.%d.%d.1:80", i / 256, i % 256);
        zlb_ep_state *again = zlb_ep_registry_get(reg, "big", addr);
        same &= again == got[i];
        zlb_ep_state_unref(again);
        zlb_ep_state_unref(got[i]);
    }
    size_t before = zlb_ep_registry_count(reg);
    zlb_ep_registry_sweep(reg);
    size_t after = zlb_ep_registry_count(reg);
    zlb_ep_registry_free(reg);
    ZT_CHECK(same);
    ZT_CHECK(before == N && after == 0);
}

int main(void)
{
    ZT_RUN(test_defaults_and_names);
    ZT_RUN(test_builder_errors);
    ZT_RUN(test_builder_layout);
    ZT_RUN(test_registry_refcount_and_sweep);
    ZT_RUN(test_registry_growth);
    return zt_summary();
}
