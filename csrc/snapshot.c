/*
 * snapshot.c - the endpoint-state registry, the snapshot builder and
 * snapshot teardown. See snapshot.h for the threading model.
 *
 * Memory layout of a built snapshot (all owned by the snapshot):
 *   snapshot->zones[i]            strdup'ed zone names, zones[0] = ""
 *   snapshot->clusters[c]         one array
 *     .endpoints                  one array, in the order they were added
 *     .prios                      one array, sorted by priority
 *     .prios[0].eps               ONE pointer array for the whole cluster;
 *                                 prios[k].eps are slices of it
 *     .prios[k].lb_data           owned by the policy (ops->destroy)
 *   endpoints[i].state            one registry reference per endpoint
 */
#include "snapshot.h"
#include "lb.h"
#include "router.h"
#include "sockaddr.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors --------------------------------------------------------- */

/* Writes a message into err when the caller gave a buffer. Control thread. */
static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- endpoint state ------------------------------------------------- */

/* Any thread. The caller already owns a reference, so the count cannot be
 * zero here and a relaxed increment is enough (as for shared_ptr copies). */
void zlb_ep_state_ref(zlb_ep_state *st)
{
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
}

/* Any thread. acq_rel so that every write made through other references
 * happens-before the free performed by whoever drops the last one. */
void zlb_ep_state_unref(zlb_ep_state *st)
{
    if (atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) == 1)
        free(st);
}

/* ---- registry ------------------------------------------------------- */

#define REG_INITIAL_BUCKETS 64u

/* Control thread (or any thread; the registry has its own lock).
 * Returns NULL on allocation failure. */
zlb_ep_registry *zlb_ep_registry_new(void)
{
    zlb_ep_registry *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->buckets = calloc(REG_INITIAL_BUCKETS, sizeof(*r->buckets));
    if (!r->buckets) {
        free(r);
        return NULL;
    }
    r->n_buckets = REG_INITIAL_BUCKETS;
    pthread_mutex_init(&r->lock, NULL);
    zlb_cs_table_init(&r->cstats);
    atomic_init(&r->health_gen, 1);
    return r;
}

/* Drops the registry's reference on every state and frees the table.
 * States still referenced by snapshots or connections stay alive until
 * their last unref (their reg_next is then stale but never read). */
void zlb_ep_registry_free(zlb_ep_registry *r)
{
    if (!r)
        return;
    for (uint32_t b = 0; b < r->n_buckets; b++) {
        zlb_ep_state *st = r->buckets[b];
        while (st) {
            zlb_ep_state *next = st->reg_next;
            zlb_ep_state_unref(st);
            st = next;
        }
    }
    pthread_mutex_destroy(&r->lock);
    zlb_cs_table_destroy(&r->cstats);
    free(r->buckets);
    free(r);
}

/* Doubles the bucket array; keeps the old one when allocation fails (the
 * table then just gets longer chains). Lock held. */
static void registry_grow_locked(zlb_ep_registry *r)
{
    uint32_t nb = r->n_buckets * 2;
    zlb_ep_state **buckets = calloc(nb, sizeof(*buckets));
    if (!buckets)
        return;
    for (uint32_t b = 0; b < r->n_buckets; b++) {
        zlb_ep_state *st = r->buckets[b];
        while (st) {
            zlb_ep_state *next = st->reg_next;
            uint32_t nbk = (uint32_t)(st->key_hash & (nb - 1));
            st->reg_next = buckets[nbk];
            buckets[nbk] = st;
            st = next;
        }
    }
    free(r->buckets);
    r->buckets = buckets;
    r->n_buckets = nb;
}

/* See snapshot.h. The key is "cluster\0address" so that no choice of names
 * can make two different pairs collide. Takes the registry lock. */
zlb_ep_state *zlb_ep_registry_get(zlb_ep_registry *r, const char *cluster, const char *address)
{
    size_t cl = strlen(cluster), al = strlen(address);
    size_t keylen = cl + 1 + al; /* without the final NUL */
    char stackkey[ZLB_NAME_MAX + ZLB_ADDR_STR_MAX + 2];
    char *key = keylen < sizeof(stackkey) ? stackkey : malloc(keylen + 1);
    if (!key)
        return NULL;
    memcpy(key, cluster, cl + 1);
    memcpy(key + cl + 1, address, al + 1);
    uint64_t h = zlb_hash64(key, keylen, 0);

    pthread_mutex_lock(&r->lock);
    zlb_ep_state *st = r->buckets[h & (r->n_buckets - 1)];
    for (; st; st = st->reg_next) {
        if (st->key_hash == h && memcmp(st->key, key, keylen + 1) == 0) {
            zlb_ep_state_ref(st);
            break;
        }
    }
    if (!st) {
        st = calloc(1, sizeof(*st) + keylen + 1);
        if (st) {
            atomic_init(&st->refs, 2); /* registry + caller */
            atomic_init(&st->active_health, ZLB_HEALTHY);
            st->key_hash = h;
            memcpy(st->key, key, keylen + 1);
            if (r->n_entries >= r->n_buckets)
                registry_grow_locked(r);
            uint32_t b = (uint32_t)(h & (r->n_buckets - 1));
            st->reg_next = r->buckets[b];
            r->buckets[b] = st;
            r->n_entries++;
        }
    }
    pthread_mutex_unlock(&r->lock);
    if (key != stackkey)
        free(key);
    return st;
}

/* See snapshot.h. refs == 1 means only the registry holds the state: no
 * snapshot lists it, so no worker can obtain a new reference, and builders
 * only get references through this (locked) table. */
void zlb_ep_registry_sweep(zlb_ep_registry *r)
{
    pthread_mutex_lock(&r->lock);
    for (uint32_t b = 0; b < r->n_buckets; b++) {
        zlb_ep_state **pp = &r->buckets[b];
        while (*pp) {
            zlb_ep_state *st = *pp;
            if (atomic_load_explicit(&st->refs, memory_order_acquire) == 1) {
                *pp = st->reg_next;
                r->n_entries--;
                zlb_ep_state_unref(st);
            } else {
                pp = &st->reg_next;
            }
        }
    }
    pthread_mutex_unlock(&r->lock);
    zlb_cs_sweep(&r->cstats);
}

/* Number of states the registry holds. Takes the lock. */
size_t zlb_ep_registry_count(zlb_ep_registry *r)
{
    pthread_mutex_lock(&r->lock);
    size_t n = r->n_entries;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* ---- options -------------------------------------------------------- */

/* The documented defaults; name and policy are left empty (an empty policy
 * means round_robin). */
void zlb_cluster_opts_defaults(zlb_cluster_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->connect_timeout_ms = 5000;
    o->connect_retries = 2;
    o->panic_threshold = 50;
    o->ring_size = 1024;
    o->maglev_table_size = 65537;
    o->overprovisioning = 140;
    o->ewma_decay_ms = 10000;
    o->outlier.consecutive_failures = 5;
    o->outlier.base_ejection_ms = 30000;
    o->outlier.max_ejection_ms = 300000;
    o->outlier.max_ejection_percent = 10;
    o->breakers.max_connections = 1024;
    o->breakers.max_pending = 1024;
    o->breakers.max_requests = 1024;
    o->breakers.max_retries = 3;
    o->breakers.retry_budget_percent = 20;
    o->breakers.min_retry_concurrency = 3;
}

/* ---- builder -------------------------------------------------------- */

typedef struct bcluster {
    zlb_cluster_opts opts;
    const zlb_lb_ops *lb;
    zlb_endpoint *eps; /* state == NULL until zlb_snap_build */
    uint32_t n, cap;
} bcluster;

struct zlb_snap_builder {
    zlb_ep_registry *reg;
    uint32_t local_zone_id;
    char **zones;         /* zones[0] = ""; kept across builds */
    uint32_t n_zones, cap_zones;
    bcluster *clusters;
    uint32_t n_clusters, cap_clusters;
    zlb_router **routers;  /* owned until handed to a snapshot */
    uint32_t n_routers, cap_routers;
};

/* Grows *arr (elements of size sz) so that one more fits. 0 or -1. */
static int grow(void **arr, uint32_t *cap, uint32_t n, size_t sz)
{
    if (n < *cap)
        return 0;
    uint32_t nc = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, nc * sz);
    if (!p)
        return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

/* Id of zone name z, adding it when new; "" and NULL are zone 0.
 * Returns -1 on allocation failure. Linear: snapshots have few zones. */
static int64_t intern_zone(zlb_snap_builder *b, const char *z)
{
    if (!z)
        z = "";
    for (uint32_t i = 0; i < b->n_zones; i++)
        if (strcmp(b->zones[i], z) == 0)
            return i;
    if (grow((void **)&b->zones, &b->cap_zones, b->n_zones, sizeof(char *)) < 0)
        return -1;
    char *dup = strdup(z);
    if (!dup)
        return -1;
    b->zones[b->n_zones] = dup;
    return b->n_zones++;
}

/* Releases the builder's clusters (endpoints carry no state reference
 * before zlb_snap_build, so there is nothing to unref). Zones are kept so
 * that zone ids stay stable from one snapshot to the next. */
static void builder_clear_clusters(zlb_snap_builder *b)
{
    for (uint32_t i = 0; i < b->n_clusters; i++)
        free(b->clusters[i].eps);
    free(b->clusters);
    b->clusters = NULL;
    b->n_clusters = b->cap_clusters = 0;
    for (uint32_t i = 0; i < b->n_routers; i++)
        zlb_router_free(b->routers[i]);
    free(b->routers);
    b->routers = NULL;
    b->n_routers = b->cap_routers = 0;
}

int zlb_snap_add_router(zlb_snap_builder *b, zlb_router *r, char *err, size_t errlen)
{
    for (uint32_t v = 0; v < r->n_vhosts; v++)
        for (uint32_t k = 0; k < r->vhosts[v].n_routes; k++)
            for (uint32_t c = 0; c < r->vhosts[v].routes[k].n_clusters; c++)
                if ((uint32_t)r->vhosts[v].routes[k].clusters[c].cluster >= b->n_clusters) {
                    set_err(err, errlen, "route table '%s': route '%s' names an unknown cluster", r->name.p,
                            r->vhosts[v].routes[k].name.p);
                    zlb_router_free(r);
                    return -1;
                }
    if (grow((void **)&b->routers, &b->cap_routers, b->n_routers, sizeof(*b->routers)) != 0) {
        set_err(err, errlen, "out of memory");
        zlb_router_free(r);
        return -1;
    }
    b->routers[b->n_routers++] = r;
    return 0;
}

/* Control thread. reg must outlive every snapshot built from it.
 * local_zone NULL or "" disables zone preference. NULL on failure. */
zlb_snap_builder *zlb_snap_builder_new(zlb_ep_registry *reg, const char *local_zone)
{
    if (!reg)
        return NULL;
    zlb_snap_builder *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->reg = reg;
    int64_t local = 0;
    if (intern_zone(b, "") < 0 || (local_zone && (local = intern_zone(b, local_zone)) < 0)) {
        zlb_snap_builder_free(b);
        return NULL;
    }
    b->local_zone_id = (uint32_t)local;
    return b;
}

void zlb_snap_builder_free(zlb_snap_builder *b)
{
    if (!b)
        return;
    builder_clear_clusters(b);
    for (uint32_t i = 0; i < b->n_zones; i++)
        free(b->zones[i]);
    free(b->zones);
    free(b);
}

/* Control thread. Copies *o. An empty policy means round_robin. Options
 * that every policy relies on are checked here; policy-specific ones
 * (ring_size, maglev_table_size) are checked by ops->build. */
int zlb_snap_add_cluster(zlb_snap_builder *b, const zlb_cluster_opts *o, char *err, size_t errlen)
{
    /* Fixed-size fields filled by foreign code: never read past them. */
    if (!memchr(o->name, 0, sizeof(o->name)) || !memchr(o->policy, 0, sizeof(o->policy))) {
        set_err(err, errlen, "cluster name or policy longer than %zu/%zu bytes", sizeof(o->name) - 1,
                sizeof(o->policy) - 1);
        return -1;
    }
    if (!o->name[0]) {
        set_err(err, errlen, "cluster with an empty name");
        return -1;
    }
    const char *policy = o->policy[0] ? o->policy : "round_robin";
    const zlb_lb_ops *lb = zlb_lb_find(policy);
    if (!lb) {
        set_err(err, errlen, "cluster '%s': unknown lb policy '%s' (known: %s)", o->name, policy,
                zlb_lb_names());
        return -1;
    }
    if (o->panic_threshold > 100) {
        set_err(err, errlen, "cluster '%s': panic_threshold %u is above 100", o->name, o->panic_threshold);
        return -1;
    }
    if (o->overprovisioning == 0) {
        set_err(err, errlen, "cluster '%s': overprovisioning must be > 0", o->name);
        return -1;
    }
    for (uint32_t i = 0; i < b->n_clusters; i++) {
        if (strcmp(b->clusters[i].opts.name, o->name) == 0) {
            set_err(err, errlen, "duplicate cluster '%s'", o->name);
            return -1;
        }
    }
    if (grow((void **)&b->clusters, &b->cap_clusters, b->n_clusters, sizeof(bcluster)) < 0) {
        set_err(err, errlen, "cluster '%s': out of memory", o->name);
        return -1;
    }
    bcluster *bc = &b->clusters[b->n_clusters];
    memset(bc, 0, sizeof(*bc));
    bc->opts = *o;
    zlb_strlcpy(bc->opts.policy, policy, sizeof(bc->opts.policy));
    bc->lb = lb;
    return (int)b->n_clusters++;
}

/* Checks the values of one endpoint (ep->name already set) and fills them
 * in. Both ways of adding endpoints go through here. 0 or -1. */
static int set_values(zlb_endpoint *ep, const char *cn, uint16_t port, uint32_t weight, uint32_t priority,
                      uint32_t zone_id, int health, char *err, size_t errlen)
{
    if (port == 0) {
        set_err(err, errlen, "cluster '%s': endpoint '%s': port 0", cn, ep->name);
        return -1;
    }
    if (weight == 0) {
        set_err(err, errlen, "cluster '%s': endpoint '%s': weight must be >= 1", cn, ep->name);
        return -1;
    }
    if (health < ZLB_HEALTHY || health > ZLB_UNHEALTHY) {
        set_err(err, errlen, "cluster '%s': endpoint '%s': bad health %d", cn, ep->name, health);
        return -1;
    }
    ep->weight = weight;
    ep->priority = priority;
    ep->zone_id = zone_id;
    ep->health = (uint8_t)health;
    return 0;
}

static bcluster *builder_cluster(zlb_snap_builder *b, int cluster, char *err, size_t errlen)
{
    if (cluster < 0 || (uint32_t)cluster >= b->n_clusters) {
        set_err(err, errlen, "no cluster with index %d", cluster);
        return NULL;
    }
    return &b->clusters[cluster];
}

/* Control thread. Validates and records one endpoint; the state reference
 * is taken by zlb_snap_build. */
int zlb_snap_add_endpoint(zlb_snap_builder *b, int cluster, const char *host, uint16_t port,
                          uint32_t weight, uint32_t priority, const char *zone, int health,
                          char *err, size_t errlen)
{
    bcluster *bc = builder_cluster(b, cluster, err, errlen);
    if (!bc)
        return -1;
    const char *cn = bc->opts.name;
    zlb_endpoint ep;
    memset(&ep, 0, sizeof(ep));
    if (zlb_sockaddr_parse(host, port, &ep.addr, &ep.addrlen) != 0) {
        set_err(err, errlen, "cluster '%s': endpoint '%s': not a numeric IPv4/IPv6 address", cn, host);
        return -1;
    }
    zlb_sockaddr_format((const struct sockaddr *)&ep.addr, ep.name, sizeof(ep.name));
    int64_t zid = intern_zone(b, zone);
    if (zid < 0 || grow((void **)&bc->eps, &bc->cap, bc->n, sizeof(zlb_endpoint)) < 0) {
        set_err(err, errlen, "cluster '%s': endpoint '%s': out of memory", cn, ep.name);
        return -1;
    }
    if (set_values(&ep, cn, port, weight, priority, (uint32_t)zid, health, err, errlen) < 0)
        return -1;
    bc->eps[bc->n++] = ep;
    return 0;
}

int64_t zlb_snap_zone_id(zlb_snap_builder *b, const char *zone)
{
    return intern_zone(b, zone);
}

/* Control thread, GIL not needed. See snapshot.h. */
int zlb_snap_add_specs(zlb_snap_builder *b, int cluster, const zlb_ep_spec *specs, uint32_t n,
                       const uint32_t *zone_ids, uint32_t n_zones, char *err, size_t errlen)
{
    bcluster *bc = builder_cluster(b, cluster, err, errlen);
    if (!bc)
        return -1;
    const char *cn = bc->opts.name;
    if (n > UINT32_MAX - bc->n) {
        set_err(err, errlen, "cluster '%s': too many endpoints", cn);
        return -1;
    }
    if (bc->n + n > bc->cap) {
        zlb_endpoint *eps = realloc(bc->eps, (size_t)(bc->n + n) * sizeof(*eps));
        if (!eps) {
            set_err(err, errlen, "cluster '%s': out of memory", cn);
            return -1;
        }
        bc->eps = eps;
        bc->cap = bc->n + n;
    }
    for (uint32_t i = 0; i < n; i++) {
        const zlb_ep_spec *sp = &specs[i];
        zlb_endpoint *ep = &bc->eps[bc->n + i];
        memset(ep, 0, sizeof(*ep));
        if (sp->family == 4) {
            struct sockaddr_in *a4 = (struct sockaddr_in *)&ep->addr;
            a4->sin_family = AF_INET;
            a4->sin_port = htons(sp->port);
            memcpy(&a4->sin_addr, sp->addr, 4);
            ep->addrlen = sizeof(*a4);
        } else if (sp->family == 6) {
            struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ep->addr;
            a6->sin6_family = AF_INET6;
            a6->sin6_port = htons(sp->port);
            memcpy(&a6->sin6_addr, sp->addr, 16);
            ep->addrlen = sizeof(*a6);
        } else {
            set_err(err, errlen, "cluster '%s': endpoint %u: address family %u", cn, i, (unsigned)sp->family);
            return -1;
        }
        zlb_sockaddr_format((const struct sockaddr *)&ep->addr, ep->name, sizeof(ep->name));
        if (sp->zone >= n_zones) {
            set_err(err, errlen, "cluster '%s': endpoint '%s': zone %u of %u", cn, ep->name, (unsigned)sp->zone,
                    n_zones);
            return -1;
        }
        if (set_values(ep, cn, sp->port, sp->weight, sp->priority, zone_ids[sp->zone], sp->health, err,
                       errlen) < 0)
            return -1;
    }
    bc->n += n; /* only now: on failure nothing was added */
    return 0;
}

/* qsort comparator for endpoint pointers. Pointer order is insertion
 * order (they point into one array), which keeps the grouping stable. */
static int cmp_ep_prio(const void *a, const void *b)
{
    const zlb_endpoint *x = *(zlb_endpoint *const *)a, *y = *(zlb_endpoint *const *)b;
    if (x->priority != y->priority)
        return x->priority < y->priority ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Sets *dup to an endpoint of c that shares its registry state with an
 * earlier one, i.e. has the same name, or NULL. States are unique per
 * (cluster, name), so comparing pointers in a hash set replaces sorting
 * names. 0, or -1 on allocation failure. */
static int find_shared_state(const zlb_cluster *c, const zlb_endpoint **dup)
{
    *dup = NULL;
    if (c->n_endpoints < 2)
        return 0;
    size_t size = 16;
    while (size < 2 * (size_t)c->n_endpoints)
        size *= 2;
    const zlb_ep_state **set = calloc(size, sizeof(*set));
    if (!set)
        return -1;
    for (uint32_t i = 0; i < c->n_endpoints && !*dup; i++) {
        const zlb_ep_state *st = c->endpoints[i].state;
        size_t k = (size_t)(st->key_hash & (size - 1));
        for (; set[k]; k = (k + 1) & (size - 1))
            if (set[k] == st)
                *dup = &c->endpoints[i];
        set[k] = st;
    }
    free(set);
    return 0;
}

static _Atomic int64_t snapshots_alive;

int64_t zlb_debug_snapshots_alive(void)
{
    return atomic_load(&snapshots_alive);
}

/* Fills c->prios from c->endpoints (taking state references first) and
 * builds every priority's lb_data. On failure c holds only what
 * zlb_snapshot_free can release. */
static int build_cluster(zlb_cluster *c, zlb_ep_registry *reg, char *err, size_t errlen)
{
    const char *cn = c->opts.name;
    if (!(c->stats = zlb_cs_get(&reg->cstats, cn))) {
        set_err(err, errlen, "cluster '%s': out of memory", cn);
        return -1;
    }
    for (uint32_t i = 0; i < c->n_endpoints; i++) {
        zlb_endpoint *ep = &c->endpoints[i];
        if (!(ep->state = zlb_ep_registry_get(reg, cn, ep->name))) {
            set_err(err, errlen, "cluster '%s': endpoint '%s': out of memory", cn, ep->name);
            return -1;
        }
    }
    if (c->n_endpoints == 0)
        return 0;
    zlb_endpoint **all = malloc(c->n_endpoints * sizeof(*all));
    if (!all) {
        set_err(err, errlen, "cluster '%s': out of memory", cn);
        return -1;
    }
    /* Duplicates would share one state and skew every policy: reject. */
    const zlb_endpoint *dup = NULL;
    if (find_shared_state(c, &dup) < 0) {
        set_err(err, errlen, "cluster '%s': out of memory", cn);
        free(all);
        return -1;
    }
    if (dup) {
        set_err(err, errlen, "cluster '%s': duplicate endpoint '%s'", cn, dup->name);
        free(all);
        return -1;
    }
    int sorted = 1;
    for (uint32_t i = 0; i < c->n_endpoints; i++) {
        all[i] = &c->endpoints[i];
        sorted &= i == 0 || all[i - 1]->priority <= all[i]->priority;
    }
    if (!sorted) /* most clusters have one priority, or list them in order */
        qsort(all, c->n_endpoints, sizeof(*all), cmp_ep_prio);
    uint32_t np = 1;
    for (uint32_t i = 1; i < c->n_endpoints; i++)
        np += all[i]->priority != all[i - 1]->priority;
    if (!(c->prios = calloc(np, sizeof(*c->prios)))) {
        set_err(err, errlen, "cluster '%s': out of memory", cn);
        free(all);
        return -1;
    }
    c->n_prios = np;
    /* prios[0].eps owns `all`; later levels are slices of it. */
    for (uint32_t i = 0, k = 0; i < c->n_endpoints; k++) {
        zlb_prio *p = &c->prios[k];
        p->priority = all[i]->priority;
        p->eps = &all[i];
        while (i < c->n_endpoints && all[i]->priority == p->priority) {
            p->n++;
            i++;
        }
    }
    for (uint32_t k = 0; k < np && c->lb->build; k++) {
        char perr[200] = "";
        if (c->lb->build(&c->prios[k], &c->opts, perr, sizeof(perr)) < 0) {
            set_err(err, errlen, "cluster '%s' (priority %u): %s", cn, c->prios[k].priority, perr);
            return -1;
        }
    }
    return 0;
}

/* Control thread. Moves the builder's clusters into a new snapshot; on
 * success and on failure alike the builder is left without clusters, ready
 * for the next snapshot (same registry, local zone and zone ids). */
zlb_snapshot *zlb_snap_build(zlb_snap_builder *b, uint64_t version, char *err, size_t errlen)
{
    zlb_snapshot *s = calloc(1, sizeof(*s));
    if (!s) {
        set_err(err, errlen, "snapshot: out of memory");
        builder_clear_clusters(b);
        return NULL;
    }
    atomic_fetch_add(&snapshots_alive, 1);
    s->version = version;
    s->registry = b->reg;
    s->local_zone_id = b->local_zone_id;
    s->zones = calloc(b->n_zones, sizeof(char *));
    s->clusters = b->n_clusters ? calloc(b->n_clusters, sizeof(zlb_cluster)) : NULL;
    int rc = (s->zones && (s->clusters || !b->n_clusters)) ? 0 : -1;
    for (uint32_t z = 0; rc == 0 && z < b->n_zones; z++, s->n_zones++)
        if (!(s->zones[z] = strdup(b->zones[z])))
            rc = -1;
    if (rc < 0)
        set_err(err, errlen, "snapshot: out of memory");
    if (s->clusters) {
        /* Endpoint arrays move over even on failure so that one free path
         * (zlb_snapshot_free) releases them. */
        s->n_clusters = b->n_clusters;
        for (uint32_t i = 0; i < b->n_clusters; i++) {
            zlb_cluster *c = &s->clusters[i];
            c->opts = b->clusters[i].opts;
            c->lb = b->clusters[i].lb;
            c->index = i;
            c->n_endpoints = b->clusters[i].n;
            c->endpoints = b->clusters[i].eps;
            b->clusters[i].eps = NULL;
        }
    }
    /* Route tables move over too (same single free path). */
    s->routers = b->routers;
    s->n_routers = b->n_routers;
    b->routers = NULL;
    b->n_routers = b->cap_routers = 0;
    builder_clear_clusters(b);
    for (uint32_t i = 0; i < s->n_clusters && rc == 0; i++)
        rc = build_cluster(&s->clusters[i], s->registry, err, errlen);
    if (rc < 0) {
        zlb_snapshot_free(s);
        return NULL;
    }
    return s;
}

/* Control thread (QSBR free callback): no worker can see s any more.
 * Also frees snapshots that zlb_snap_build abandoned half-way. */
void zlb_snapshot_free(zlb_snapshot *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->n_clusters; i++) {
        zlb_cluster *c = &s->clusters[i];
        for (uint32_t k = 0; k < c->n_prios; k++)
            if (c->prios[k].lb_data)
                c->lb->destroy(&c->prios[k]);
        if (c->n_prios)
            free(c->prios[0].eps);
        free(c->prios);
        for (uint32_t e = 0; e < c->n_endpoints; e++)
            if (c->endpoints[e].state)
                zlb_ep_state_unref(c->endpoints[e].state);
        free(c->endpoints);
        zlb_cs_unref(c->stats);
    }
    free(s->clusters);
    for (uint32_t i = 0; i < s->n_routers; i++)
        zlb_router_free(s->routers[i]);
    free(s->routers);
    for (uint32_t z = 0; z < s->n_zones; z++)
        free(s->zones[z]); /* n_zones counts only the copied ones */
    free(s->zones);
    free(s);
    atomic_fetch_sub(&snapshots_alive, 1);
}

/* Any thread (reads immutable data). Linear: routes resolve cluster names
 * to indices when the snapshot is compiled, not per request. */
int zlb_snapshot_find_cluster(const zlb_snapshot *s, const char *name)
{
    for (uint32_t i = 0; i < s->n_clusters; i++)
        if (strcmp(s->clusters[i].opts.name, name) == 0)
            return (int)i;
    return -1;
}

const zlb_router *zlb_snapshot_find_router(const zlb_snapshot *s, const char *name)
{
    for (uint32_t i = 0; i < s->n_routers; i++)
        if (strcmp(s->routers[i]->name.p, name) == 0)
            return s->routers[i];
    return NULL;
}
