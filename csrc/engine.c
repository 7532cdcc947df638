/*
 * engine.c - control-thread side of the engine: creating workers, binding
 * listeners, publishing snapshots, summing statistics. See engine.h.
 */
#include "sockaddr.h"
#include "tcpopts.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

static void snapshot_free_cb(void *p) { zlb_snapshot_free(p); }

void zlb_listener_unref(zlb_listener *l)
{
    if (atomic_fetch_sub(&l->refs, 1) == 1) {
        zlb_tls_policy_unref(l->tls);
        free(l);
    }
}

/* Upstream TLS of one cluster (engine table, guarded by tls_lock). */
typedef struct zlb_cluster_tls {
    char name[ZLB_NAME_MAX];
    zlb_tls_policy *policy;          /* one reference */
    struct zlb_cluster_tls *next;
} zlb_cluster_tls;

zlb_engine *zlb_engine_new(const zlb_engine_opts *o, char *err, size_t errlen)
{
    if (o->workers < 1 || o->workers > 1024) {
        snprintf(err, errlen, "workers must be between 1 and 1024, got %u", o->workers);
        return NULL;
    }
    zlb_engine *e = calloc(1, sizeof(*e));
    if (!e)
        goto oom;
    e->opts = *o;
    e->registry = zlb_ep_registry_new();
    e->workers = calloc(o->workers, sizeof(zlb_worker));
    if (!e->registry || !e->workers || zlb_qsbr_init(&e->qsbr, o->workers, snapshot_free_cb) != 0)
        goto oom;
    e->registry->cstats.n_slots = o->workers; /* one counter slot per worker */
    pthread_mutex_init(&e->listeners_lock, NULL);
    pthread_mutex_init(&e->tls_lock, NULL);
    pthread_mutex_init(&e->tls_ev_lock, NULL);
    e->alog_wake_fd = -1;
    for (uint32_t i = 0; i < o->workers; i++) {
        zlb_worker *w = &e->workers[i];
        w->eng = e;
        w->id = i;
        w->wake_io.kind = ZLB_IO_WAKE;
        w->epfd = -1;
        w->wake_fd = -1;
        /* The generator state must be non-zero: mix the seed and the id. */
        w->rng = (o->rng_seed + i) * 0x9E3779B97F4A7C15ULL | 1;
        w->alog.wake_fd = -1;
        pthread_mutex_init(&w->cmd_lock, NULL);
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->lb = zlb_lb_cache_new();
        w->scratch = malloc(ZLB_SCRATCH);
        if (w->epfd < 0 || w->wake_fd < 0 || !w->lb || !w->scratch) {
            snprintf(err, errlen, "cannot create worker %u: %s", i, strerror(errno));
            zlb_engine_free(e);
            return NULL;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->wake_io};
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake_fd, &ev);
    }
    e->tls_ev = calloc(ZLB_TLS_EVENT_RING, sizeof(zlb_tls_event));
    if (!e->tls_ev || zlb_tls_global_init() != 0) {
        snprintf(err, errlen, "cannot set up TLS state");
        zlb_engine_free(e);
        return NULL;
    }
    /* Set before the workers start and closed only after they are joined:
     * a producer never writes to a closed descriptor. */
    e->alog_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->alog_wake_fd < 0) {
        snprintf(err, errlen, "cannot create the access-log eventfd: %s", strerror(errno));
        zlb_engine_free(e);
        return NULL;
    }
    for (uint32_t i = 0; i < o->workers; i++)
        e->workers[i].alog.wake_fd = e->alog_wake_fd;
    return e;
oom:
    snprintf(err, errlen, "out of memory");
    if (e) {
        zlb_ep_registry_free(e->registry);
        free(e->workers);
        free(e);
    }
    return NULL;
}

int zlb_engine_start(zlb_engine *e, char *err, size_t errlen)
{
    for (uint32_t i = 0; i < e->opts.workers; i++) {
        int rc = pthread_create(&e->workers[i].thread, NULL, zlb_worker_main, &e->workers[i]);
        if (rc != 0) {
            snprintf(err, errlen, "cannot start worker %u: %s", i, strerror(rc));
            /* Stop the ones already running. */
            for (uint32_t j = 0; j < i; j++) {
                atomic_store(&e->workers[j].stop, 1);
                zlb_worker_wake(&e->workers[j]);
                pthread_join(e->workers[j].thread, NULL);
            }
            return -1;
        }
        e->started = (int)i + 1;
    }
    return 0;
}

static void free_cmds(zlb_cmd *c)
{
    while (c) {
        zlb_cmd *next = c->next;
        if (c->kind == ZLB_CMD_ADD_LISTENER) {
            close(c->fd);
            zlb_listener_unref(c->l);
        }
        free(c);
        c = next;
    }
}

void zlb_engine_free(zlb_engine *e)
{
    if (!e)
        return;
    /* The writer reads the rings: it goes (or is cut loose) first. */
    zlb_engine_access_log_stop(e, 0);
    for (int i = 0; i < e->started; i++) {
        atomic_store(&e->workers[i].stop, 1);
        zlb_worker_wake(&e->workers[i]);
    }
    for (int i = 0; i < e->started; i++)
        pthread_join(e->workers[i].thread, NULL);
    /* Workers are gone: their per-thread state can be torn down here. */
    for (uint32_t i = 0; i < e->opts.workers; i++) {
        zlb_worker *w = &e->workers[i];
        free_cmds(w->cmds);
        if (w->epfd >= 0)
            close(w->epfd);
        if (w->wake_fd >= 0)
            close(w->wake_fd);
        zlb_lb_cache_free(w->lb);
        free(w->scratch);
        free(w->alog.slots);
        zlb_tls_sessions_free(w->tls_sessions);
        pthread_mutex_destroy(&w->cmd_lock);
    }
    if (e->alog_wake_fd >= 0)
        close(e->alog_wake_fd);
    while (e->cluster_tls) {
        zlb_cluster_tls *ct = e->cluster_tls;
        e->cluster_tls = ct->next;
        zlb_tls_policy_unref(ct->policy);
        free(ct);
    }
    /* Listeners (and their policies) are released below; connections are
     * gone, so every slot reference left is the slot's own. */
    while (e->tls_slots) {
        zlb_tls_slot *s = e->tls_slots;
        e->tls_slots = s->next;
        zlb_tls_mat_unref(s->mat);
        pthread_mutex_destroy(&s->lock);
        free(s);
    }
    free(e->tls_ev);
    pthread_mutex_destroy(&e->tls_lock);
    pthread_mutex_destroy(&e->tls_ev_lock);
    for (int i = 0; i < e->n_listeners; i++)
        if (e->listeners[i])
            zlb_listener_unref(e->listeners[i]);
    free(e->listeners);
    zlb_qsbr_destroy(&e->qsbr);
    zlb_ep_registry_free(e->registry);
    pthread_mutex_destroy(&e->listeners_lock);
    free(e->workers);
    free(e);
}

zlb_ep_registry *zlb_engine_registry(zlb_engine *e) { return e->registry; }
uint32_t zlb_engine_workers(const zlb_engine *e) { return e->opts.workers; }

void zlb_engine_publish(zlb_engine *e, zlb_snapshot *s)
{
    zlb_qsbr_publish(&e->qsbr, s);
    zlb_ep_registry_sweep(e->registry);
}

const zlb_snapshot *zlb_engine_current(zlb_engine *e) { return zlb_qsbr_current(&e->qsbr); }

uint64_t zlb_engine_reclaim(zlb_engine *e)
{
    uint64_t left = zlb_qsbr_reclaim(&e->qsbr);
    zlb_ep_registry_sweep(e->registry);
    return left;
}

/* Queues a command for worker w and wakes it. The worker takes ownership. */
static void post_cmd(zlb_worker *w, zlb_cmd *c)
{
    pthread_mutex_lock(&w->cmd_lock);
    zlb_cmd **pp = &w->cmds; /* FIFO so add/remove of one id stay ordered */
    while (*pp)
        pp = &(*pp)->next;
    c->next = NULL;
    *pp = c;
    pthread_mutex_unlock(&w->cmd_lock);
    zlb_worker_wake(w);
}

/* Creates, binds and listens one SO_REUSEPORT socket. Returns fd or -1. */
static int bind_listener_socket(const zlb_listener_opts *o, uint16_t port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (zlb_sockaddr_parse(o->host, port, &ss, &len) != 0) {
        snprintf(err, errlen, "listener %s: address '%s' is not a numeric IP", o->name, o->host);
        return -1;
    }
    int family = ss.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listener %s: socket: %s", o->name, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (zlb_tcp_set_congestion(fd, o->tcp_congestion) != 0) {
        snprintf(err, errlen, "listener %s: congestion control '%s': %s", o->name, o->tcp_congestion,
                 strerror(errno));
        close(fd);
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, o->backlog > 0 ? o->backlog : 4096) != 0) {
        snprintf(err, errlen, "listener %s: cannot listen on %s:%u: %s", o->name, o->host, port,
                 strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static uint16_t socket_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* The slot named `name`, created empty when absent. Control thread; NULL on
 * allocation failure. Slots live until the engine is freed, so workers may
 * keep plain pointers to them inside policies. */
static zlb_tls_slot *slot_get_or_create(zlb_engine *e, const char *name)
{
    pthread_mutex_lock(&e->tls_lock);
    zlb_tls_slot *s = e->tls_slots;
    while (s && strcmp(s->name, name) != 0)
        s = s->next;
    if (!s && (s = calloc(1, sizeof(*s)))) {
        zlb_strlcpy(s->name, name, sizeof(s->name));
        pthread_mutex_init(&s->lock, NULL);
        s->next = e->tls_slots;
        e->tls_slots = s;
    }
    pthread_mutex_unlock(&e->tls_lock);
    return s;
}

int zlb_engine_add_listener(zlb_engine *e, const zlb_listener_opts *o, char *err, size_t errlen)
{
    uint32_t n = e->opts.workers;
    int *fds = calloc(n, sizeof(int));
    zlb_listener *l = calloc(1, sizeof(*l));
    if (!fds || !l) {
        free(fds);
        free(l);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    l->opts = *o;
    l->opts.tls = NULL;
    if (o->tls) {
        zlb_tls_slot *slot = slot_get_or_create(e, o->tls->identity);
        l->tls = slot ? zlb_tls_policy_new(o->tls, 1, slot, err, errlen) : NULL;
        if (l->tls && l->tls->http_rules && o->protocol != ZLB_PROTO_HTTP) {
            snprintf(err, errlen, "listener %s: authorization by HTTP methods or paths needs an http listener",
                     o->name);
            zlb_tls_policy_unref(l->tls);
            l->tls = NULL;
        }
        if (!l->tls) {
            if (!slot)
                snprintf(err, errlen, "out of memory");
            free(fds);
            free(l);
            return -1;
        }
    }
    /* Bind every worker's socket before handing any over, so a failure
     * leaves nothing half-installed. Port 0: the first bind picks the port
     * and the others share it through SO_REUSEPORT. */
    uint16_t port = o->port;
    for (uint32_t i = 0; i < n; i++) {
        fds[i] = bind_listener_socket(o, port, err, errlen);
        if (fds[i] < 0) {
            for (uint32_t j = 0; j < i; j++)
                close(fds[j]);
            free(fds);
            zlb_tls_policy_unref(l->tls);
            free(l);
            return -1;
        }
        if (port == 0)
            port = socket_port(fds[i]);
    }
    l->bound_port = port;
    pthread_mutex_lock(&e->listeners_lock);
    if (e->n_listeners == e->cap_listeners) {
        int cap = e->cap_listeners ? e->cap_listeners * 2 : 8;
        zlb_listener **arr = realloc(e->listeners, sizeof(*arr) * (size_t)cap);
        if (!arr) {
            pthread_mutex_unlock(&e->listeners_lock);
            for (uint32_t i = 0; i < n; i++)
                close(fds[i]);
            free(fds);
            zlb_tls_policy_unref(l->tls);
            free(l);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        e->listeners = arr;
        e->cap_listeners = cap;
    }
    l->id = e->n_listeners;
    e->listeners[e->n_listeners++] = l;
    atomic_store(&l->refs, 1 + (int64_t)n);
    pthread_mutex_unlock(&e->listeners_lock);
    for (uint32_t i = 0; i < n; i++) {
        zlb_cmd *c = calloc(1, sizeof(*c));
        if (!c) {
            /* Keep going: that worker simply does not accept on it. */
            close(fds[i]);
            zlb_listener_unref(l);
            continue;
        }
        c->kind = ZLB_CMD_ADD_LISTENER;
        c->fd = fds[i];
        c->l = l;
        post_cmd(&e->workers[i], c);
    }
    free(fds);
    return l->id;
}

static zlb_listener *listener_by_id(zlb_engine *e, int id)
{
    return (id >= 0 && id < e->n_listeners) ? e->listeners[id] : NULL;
}

int zlb_engine_listener_port(zlb_engine *e, int id)
{
    pthread_mutex_lock(&e->listeners_lock);
    zlb_listener *l = listener_by_id(e, id);
    int port = l ? l->bound_port : -1;
    pthread_mutex_unlock(&e->listeners_lock);
    return port;
}

int64_t zlb_engine_listener_active(zlb_engine *e, int id)
{
    pthread_mutex_lock(&e->listeners_lock);
    zlb_listener *l = listener_by_id(e, id);
    int64_t active = l ? atomic_load(&l->active) : -1;
    pthread_mutex_unlock(&e->listeners_lock);
    return active;
}

int zlb_engine_remove_listener(zlb_engine *e, int id)
{
    pthread_mutex_lock(&e->listeners_lock);
    zlb_listener *l = listener_by_id(e, id);
    if (l)
        e->listeners[id] = NULL;
    pthread_mutex_unlock(&e->listeners_lock);
    if (!l)
        return -1;
    for (uint32_t i = 0; i < e->opts.workers; i++) {
        zlb_cmd *c = calloc(1, sizeof(*c));
        if (!c)
            continue; /* that worker keeps accepting until shutdown */
        c->kind = ZLB_CMD_REMOVE_LISTENER;
        c->listener_id = id;
        post_cmd(&e->workers[i], c);
    }
    zlb_listener_unref(l);
    return 0;
}

int zlb_engine_set_active_health(zlb_engine *e, const char *cluster, const char *address, int health)
{
    const zlb_snapshot *s = zlb_qsbr_current(&e->qsbr);
    int ci = s ? zlb_snapshot_find_cluster(s, cluster) : -1;
    if (ci < 0)
        return -1;
    const zlb_cluster *c = &s->clusters[ci];
    for (uint32_t i = 0; i < c->n_endpoints; i++) {
        if (strcmp(c->endpoints[i].name, address) != 0)
            continue;
        uint8_t old = atomic_exchange(&c->endpoints[i].state->active_health, (uint8_t)health);
        if (old != (uint8_t)health)
            atomic_fetch_add_explicit(&e->registry->health_gen, 1, memory_order_release);
        return 0;
    }
    return -1;
}

int zlb_engine_set_access_log(zlb_engine *e, int on, uint32_t ring_records)
{
    if (on) {
        if (ring_records < ZLB_AL_RING_MIN || ring_records > ZLB_AL_RING_MAX || (ring_records & (ring_records - 1)))
            return -2;
        /* Slots exist before the flag is published (release), so a worker
         * that sees the flag also sees its ring. Never freed or resized while
         * running: a worker may hold a reserved slot. */
        for (uint32_t i = 0; i < e->opts.workers; i++) {
            zlb_access_ring *r = &e->workers[i].alog;
            if (r->slots)
                continue;
            if (!(r->slots = calloc(ring_records, sizeof(zlb_access_record))))
                return -1;
            r->mask = ring_records - 1;
            r->wake_at = ring_records / 2; /* room for as much again while the writer wakes */
        }
    }
    atomic_store_explicit(&e->access_log, on ? 1 : 0, memory_order_release);
    return 0;
}

int zlb_engine_access_log_start(zlb_engine *e, const zlb_alog_writer_opts *o, char *err, size_t errlen)
{
    if (e->alog_writer) {
        snprintf(err, errlen, "the access log is already being written");
        return -1;
    }
    zlb_access_ring **rings = malloc(e->opts.workers * sizeof(*rings));
    if (!rings) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < e->opts.workers; i++)
        rings[i] = &e->workers[i].alog;
    e->alog_writer = zlb_alog_writer_start(rings, e->opts.workers, e->alog_wake_fd, o, err, errlen);
    free(rings);
    return e->alog_writer ? 0 : -1;
}

int zlb_engine_access_log_stop(zlb_engine *e, uint32_t timeout_ms)
{
    if (!e->alog_writer)
        return 1;
    zlb_alog_writer_stats last;
    int rc = zlb_alog_writer_stop(e->alog_writer, timeout_ms, &last);
    e->alog_writer = NULL;
    e->alog_past.written += last.written;
    e->alog_past.sampled_out += last.sampled_out;
    e->alog_past.write_errors += last.write_errors + last.buffered; /* never written now */
    if (last.last_errno)
        e->alog_past.last_errno = last.last_errno;
    return rc;
}

void zlb_engine_access_log_stats(zlb_engine *e, zlb_alog_writer_stats *out, uint64_t *pending)
{
    *out = e->alog_past;
    out->buffered = 0;
    if (e->alog_writer) {
        zlb_alog_writer_stats now;
        zlb_alog_writer_stats_get(e->alog_writer, &now);
        out->written += now.written;
        out->sampled_out += now.sampled_out;
        out->write_errors += now.write_errors;
        out->buffered = now.buffered;
        if (now.last_errno)
            out->last_errno = now.last_errno;
    }
    *pending = 0;
    for (uint32_t i = 0; i < e->opts.workers; i++)
        if (e->workers[i].alog.slots)
            *pending += zlb_access_ring_pending(&e->workers[i].alog);
}

void zlb_engine_stats(zlb_engine *e, zlb_stats *out)
{
    uint64_t *acc = (uint64_t *)out;
    size_t n = sizeof(zlb_stats) / sizeof(uint64_t);
    memset(out, 0, sizeof(*out));
    for (uint32_t i = 0; i < e->opts.workers; i++)
        for (size_t k = 0; k < n; k++)
            acc[k] += atomic_load_explicit(&e->workers[i].stats.c[k], memory_order_relaxed);
}

/* ---- TLS ------------------------------------------------------------------ */

int zlb_engine_set_identity(zlb_engine *e, const char *name, const char *cert_pem, const char *key_pem,
                            const char *const *bundle_tds, const char *const *bundle_pems, size_t n_bundles,
                            char *err, size_t errlen)
{
    char why[384];
    /* Built (all parsing and crypto) before anything is swapped: a bad file
     * leaves the running identity in place. */
    zlb_tls_mat *m = zlb_tls_mat_new(cert_pem, key_pem, bundle_tds, bundle_pems, n_bundles, why, sizeof(why));
    if (!m) {
        snprintf(err, errlen, "identity %s: %s", name, why);
        return -1;
    }
    zlb_tls_slot *s = slot_get_or_create(e, name);
    if (!s) {
        zlb_tls_mat_unref(m);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    zlb_tls_slot_set(s, m);
    return 0;
}

int zlb_engine_identity_info(zlb_engine *e, const char *name, char *spiffe_id, size_t idlen, char *serial,
                             size_t seriallen, uint64_t *rotations)
{
    pthread_mutex_lock(&e->tls_lock);
    zlb_tls_slot *s = e->tls_slots;
    while (s && strcmp(s->name, name) != 0)
        s = s->next;
    pthread_mutex_unlock(&e->tls_lock);
    zlb_tls_mat *m = s ? zlb_tls_slot_get(s) : NULL;
    if (!m)
        return -1;
    zlb_strlcpy(spiffe_id, m->own_id, idlen);
    zlb_strlcpy(serial, m->serial, seriallen);
    pthread_mutex_lock(&s->lock);
    *rotations = s->rotations;
    pthread_mutex_unlock(&s->lock);
    zlb_tls_mat_unref(m);
    return 0;
}

int zlb_engine_set_cluster_tls(zlb_engine *e, const char *cluster, const zlb_tls_opts *o, char *err, size_t errlen)
{
    zlb_tls_policy *p = NULL;
    zlb_cluster_tls *fresh = NULL;
    if (o) {
        zlb_tls_slot *slot = slot_get_or_create(e, o->identity);
        p = slot ? zlb_tls_policy_new(o, 0, slot, err, errlen) : NULL;
        fresh = calloc(1, sizeof(*fresh));
        if (!p || !fresh) {
            if (!slot || (p && !fresh))
                snprintf(err, errlen, "out of memory");
            zlb_tls_policy_unref(p);
            free(fresh);
            return -1;
        }
        zlb_strlcpy(fresh->name, cluster, sizeof(fresh->name));
        fresh->policy = p;
    }
    zlb_cluster_tls *old = NULL;
    pthread_mutex_lock(&e->tls_lock);
    for (zlb_cluster_tls **pp = &e->cluster_tls; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->name, cluster) == 0) {
            old = *pp;
            *pp = old->next;
            atomic_fetch_sub(&e->n_cluster_tls, 1);
            break;
        }
    if (fresh) {
        fresh->next = e->cluster_tls;
        e->cluster_tls = fresh;
        atomic_fetch_add(&e->n_cluster_tls, 1);
    }
    /* Only a real change retires pooled upstream connections: a reload that
     * sets the same options again keeps them. */
    if ((old == NULL) != (fresh == NULL) || (old && old->policy->opts_hash != p->opts_hash))
        atomic_fetch_add_explicit(&e->cluster_tls_gen, 1, memory_order_relaxed);
    pthread_mutex_unlock(&e->tls_lock);
    if (old) {
        /* Connections hold their own policy references. */
        zlb_tls_policy_unref(old->policy);
        free(old);
    }
    return 0;
}

zlb_tls_policy *zlb_engine_cluster_tls(zlb_engine *e, const char *cluster)
{
    if (atomic_load_explicit(&e->n_cluster_tls, memory_order_relaxed) == 0)
        return NULL; /* plaintext-only engines never take the lock */
    zlb_tls_policy *p = NULL;
    pthread_mutex_lock(&e->tls_lock);
    for (zlb_cluster_tls *ct = e->cluster_tls; ct; ct = ct->next)
        if (strcmp(ct->name, cluster) == 0) {
            p = ct->policy;
            zlb_tls_policy_ref(p);
            break;
        }
    pthread_mutex_unlock(&e->tls_lock);
    return p;
}

int zlb_engine_tls_event(zlb_engine *e, const zlb_tls_event *ev)
{
    int rc = 0;
    pthread_mutex_lock(&e->tls_ev_lock);
    if (e->tls_ev_head - e->tls_ev_tail >= ZLB_TLS_EVENT_RING)
        rc = -1;
    else
        e->tls_ev[e->tls_ev_head++ % ZLB_TLS_EVENT_RING] = *ev;
    pthread_mutex_unlock(&e->tls_ev_lock);
    return rc;
}

size_t zlb_engine_drain_tls_events(zlb_engine *e, zlb_tls_event *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&e->tls_ev_lock);
    while (n < max && e->tls_ev_tail < e->tls_ev_head)
        out[n++] = e->tls_ev[e->tls_ev_tail++ % ZLB_TLS_EVENT_RING];
    pthread_mutex_unlock(&e->tls_ev_lock);
    return n;
}

void zlb_engine_set_tls_log_peers(zlb_engine *e, int on)
{
    atomic_store_explicit(&e->tls_log_peers, on ? 1 : 0, memory_order_relaxed);
}
