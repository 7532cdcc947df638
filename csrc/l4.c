/*
 * l4.c - the TCP (L4) proxy state machine of a worker thread:
 *   accept -> pick endpoint -> non-blocking connect (timeout, retry on
 *   another endpoint) -> bidirectional splice(2) through a pipe pair, with a
 *   read/write fallback -> half-close propagation -> idle timeout -> close.
 *
 * Everything here runs on the owning worker thread. Sockets are registered
 * edge-triggered (EPOLLIN|EPOLLRDHUP). EPOLLOUT is asked for only while a
 * socket has refused bytes: on loopback every ACK would otherwise wake the
 * worker for nothing. So epoll_ctl runs only on back-pressure, never per
 * message.
 *
 * Adaptive splice (the idea of HAProxy's splice-auto): each burst of data
 * starts with recv(2) into the worker's scratch buffer and an immediate
 * send(2) - two syscalls for a small message, and a read shorter than the
 * buffer proves the socket drained, so no EAGAIN probe is needed (with edge
 * triggering any later arrival raises a new event). A read that fills the
 * whole buffer means bulk: that direction switches to splice(2) through its
 * pipe until the burst ends (EAGAIN). splice cannot use the short-read
 * shortcut, because it also stops early when the pipe runs out of slots.
 * Bytes a write could not take are parked in the direction's pipe, so no
 * connection owns a userspace buffer.
 *
 * TLS (tls.h): a listener with TLS first peeks at the client's first bytes
 * (a ClientHello starts 0x16 0x03): strict listeners close plaintext clients,
 * permissive ones proxy them as plaintext (splice as above). A TLS client is
 * handshaken inside the loop (non-blocking SSL_do_handshake driven by epoll),
 * verified by SPIFFE ID, authorized, and only then is an upstream picked. A
 * cluster with TLS gets the same after the TCP connect, with session tickets
 * kept per worker and endpoint. A connection with TLS on either side copies
 * through SSL_read/SSL_write with one 16 KiB buffer per direction (zlb_conn_tls,
 * allocated only for such connections); plaintext connections are unchanged.
 */
#define _GNU_SOURCE /* splice, pipe2, accept4, F_SETPIPE_SZ */
#include "tcpopts.h"
#include "tls_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <stdio.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define ZLB_PIPE_SIZE (256 * 1024)   /* bigger pipes: fewer splice calls on bulk */
#define ZLB_PIPE_POOL_MAX 256        /* empty pipes kept per worker */
#define ZLB_ACCEPT_BATCH 64          /* accepts per listener event (fairness) */

static _Atomic int64_t live_conns;
static _Atomic int64_t live_pipes;

int64_t zlb_debug_live_conns(void) { return atomic_load(&live_conns); }
int64_t zlb_debug_live_pipes(void) { return atomic_load(&live_pipes); }

enum conn_state {
    CONN_CONNECTING, /* picking / connecting upstream */
    CONN_OPEN,
    CONN_CLOSED,
    CONN_DETECT,     /* TLS listener: waiting for the first two bytes */
    CONN_HS_DOWN,    /* TLS handshake with the client */
    CONN_HS_UP,      /* TCP connected, TLS handshake with the upstream */
};

/* TLS state of a connection, side 0 = client, 1 = upstream; ssl[i] NULL means
 * that side is plaintext. Buffers: one per direction (as zlb_conn.d). */
typedef struct zlb_conn_tls {
    SSL *ssl[2];
    zlb_tls_peer peer[2];         /* peer[1].policy holds a reference; peer[i].mat one each */
    zlb_tls_session_sink sink;    /* upstream tickets go to the worker's cache */
    uint8_t read_wants_write[2];  /* SSL_read on side i returned WANT_WRITE */
    uint8_t blocked[2];           /* direction i could not write everything */
    uint32_t off[2], len[2];      /* unsent bytes of direction i: buf[i][off..len) */
    char buf[2][ZLB_SCRATCH];
} zlb_conn_tls;

/* One direction of a proxied connection: bytes read from `src` that `dst`
 * did not take yet wait in the pipe. */
typedef struct zlb_dir {
    int pipe[2];
    size_t pending;       /* bytes read but not yet written */
    uint8_t splicing;     /* in a bulk burst: read with splice into the pipe */
    uint8_t hup;          /* src reported RDHUP/HUP/ERR: read on to the EOF or error */
    uint8_t eof;          /* src reached end of stream */
    uint8_t done;         /* eof forwarded with shutdown(dst, SHUT_WR) */
    uint8_t readable;     /* src may have bytes: set by EPOLLIN, cleared by a short read */
} zlb_dir;

typedef struct zlb_conn {
    zlb_io down_io;               /* client side registration */
    zlb_io up_io;                 /* upstream side registration */
    zlb_worker *w;
    int down_fd, up_fd;
    uint8_t state;
    uint8_t no_splice;            /* splice(2) refused these sockets: copy only */
    uint32_t chunk;               /* bytes per splice: the pipes' real capacity */
    uint8_t want_write[2];        /* EPOLLOUT in the interest set: [0] client, [1] upstream */
    uint32_t attempts;
    zlb_listener *l;              /* reference held */
    /* The endpoint being used. `ep` is only valid while the worker is still
     * on the snapshot (pointer and version) it was picked from; the state
     * reference keeps the live counters valid regardless. */
    zlb_ep_state *ep_state;
    const zlb_endpoint *ep;
    const zlb_snapshot *ep_snap;
    uint64_t ep_snap_version;
    uint64_t src_hash;
    int64_t connect_start_ns;
    int64_t last_activity_ns;
    zlb_timer timer;              /* connect timeout, then idle timeout */
    /* Access-log facts, pushed to the worker's ring when the connection ends. */
    int64_t start_unix_ns;
    int64_t start_ns;
    struct sockaddr_in6 down_addr;
    struct sockaddr_in6 up_addr;
    uint64_t bytes[2];            /* per direction, as d[] */
    uint16_t flags;               /* ZLB_AL_* */
    uint8_t down_registered;      /* down_fd already in epoll (TLS listeners register at accept) */
    zlb_conn_tls *tls;            /* NULL unless TLS is used on a side */
    zlb_dir d[2];                 /* 0: client -> upstream, 1: upstream -> client */
    struct zlb_conn *prev, *next;
} zlb_conn;

#define CONN_OF(ptr, member) ((zlb_conn *)((char *)(ptr) - offsetof(zlb_conn, member)))

/* ---- pipes ------------------------------------------------------------ */

static int pipe_get(zlb_worker *w, int p[2])
{
    if (w->n_pipes > 0) {
        w->n_pipes--;
        p[0] = w->pipe_pool[w->n_pipes][0];
        p[1] = w->pipe_pool[w->n_pipes][1];
        return 0;
    }
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
        return -1;
    /* Best effort: the default 64 KiB works too, only slower on bulk. The
     * capacity actually granted is read back by the connection (F_GETPIPE_SZ). */
    fcntl(p[1], F_SETPIPE_SZ, ZLB_PIPE_SIZE);
    atomic_fetch_add(&live_pipes, 1);
    return 0;
}

static void pipe_close(int p[2])
{
    close(p[0]);
    close(p[1]);
    p[0] = p[1] = -1;
    atomic_fetch_sub(&live_pipes, 1);
}

/* Returns a pipe to the pool; a pipe that still holds data is closed since
 * its bytes belong to a dead connection. */
static void pipe_put(zlb_worker *w, int p[2], size_t pending)
{
    if (p[0] < 0)
        return;
    if (pending == 0 && w->n_pipes < ZLB_PIPE_POOL_MAX) {
        if (w->n_pipes == w->cap_pipes) {
            uint32_t cap = w->cap_pipes ? w->cap_pipes * 2 : 16;
            void *arr = realloc(w->pipe_pool, sizeof(*w->pipe_pool) * cap);
            if (!arr) {
                pipe_close(p);
                return;
            }
            w->pipe_pool = arr;
            w->cap_pipes = cap;
        }
        w->pipe_pool[w->n_pipes][0] = p[0];
        w->pipe_pool[w->n_pipes][1] = p[1];
        w->n_pipes++;
        p[0] = p[1] = -1;
        return;
    }
    pipe_close(p);
}

void zlb_l4_pipe_pool_free(zlb_worker *w)
{
    while (w->n_pipes > 0) {
        w->n_pipes--;
        pipe_close(w->pipe_pool[w->n_pipes]);
    }
    free(w->pipe_pool);
    w->pipe_pool = NULL;
    w->cap_pipes = 0;
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Drops the endpoint the connection is bound to (active count, reference). */
static void release_endpoint(zlb_conn *c)
{
    if (!c->ep_state)
        return;
    atomic_fetch_sub_explicit(&c->ep_state->active, 1, memory_order_relaxed);
    zlb_ep_state_unref(c->ep_state);
    c->ep_state = NULL;
}

static void set_rst_on_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

/* Pushes the connection's access-log record when logging is on; a full ring
 * drops it (counted) rather than making the worker wait. */
static void push_record(zlb_worker *w, const zlb_access_record *rec)
{
    zlb_access_record *slot = zlb_access_ring_reserve(&w->alog);
    if (!slot) {
        ZLB_STAT_ADD(w, access_log_dropped, 1);
        return;
    }
    *slot = *rec;
    zlb_access_ring_commit(&w->alog);
}

static void log_connection(zlb_conn *c)
{
    zlb_worker *w = c->w;
    if (!atomic_load_explicit(&w->eng->access_log, memory_order_acquire))
        return;
    zlb_access_record rec = {
        .start_unix_ns = c->start_unix_ns,
        .duration_ns = w->now_ns - c->start_ns,
        .down = c->down_addr,
        .up = c->up_addr,
        .bytes_received = c->bytes[0],
        .bytes_sent = c->bytes[1],
        .listener_id = c->l->id,
        .attempts = (uint16_t)c->attempts,
        .flags = c->flags,
    };
    zlb_strlcpy(rec.listener, c->l->opts.name, sizeof(rec.listener));
    zlb_strlcpy(rec.cluster, c->l->opts.cluster, sizeof(rec.cluster));
    if (c->tls)
        zlb_strlcpy(rec.peer_identity, c->tls->peer[0].id, sizeof(rec.peer_identity));
    push_record(w, &rec);
}

/* Drops one side's SSL and material (the socket is the caller's). Closing
 * sends no close_notify here: tls_pump forwards half-closes itself, and a
 * side that did not get one ended abnormally. */
static void tls_side_free(zlb_conn_tls *t, int side)
{
    zlb_tls_end(&t->ssl[side], &t->peer[side], ZLB_TLS_END_ABORT);
}

static void tls_free(zlb_conn *c)
{
    zlb_conn_tls *t = c->tls;
    if (!t)
        return;
    for (int i = 0; i < 2; i++)
        tls_side_free(t, i);
    /* The listener's policy (side 0) is the listener's; side 1 holds a reference. */
    zlb_tls_policy_unref((zlb_tls_policy *)t->peer[1].policy);
    free(t);
    c->tls = NULL;
    zlb_tls_live_add(-1);
}

static zlb_conn_tls *tls_state(zlb_conn *c)
{
    if (!c->tls && (c->tls = calloc(1, sizeof(*c->tls))))
        zlb_tls_live_add(1);
    return c->tls;
}

/* Closes both sockets and releases everything but the memory, which
 * zlb_l4_reap frees after the current event batch. `reset` makes the peers
 * see RST instead of FIN (an error on one side aborts the other). */
static void conn_close(zlb_conn *c, int reset)
{
    zlb_worker *w = c->w;
    if (c->state == CONN_CLOSED)
        return;
    zlb_timer_cancel(&w->timers, &c->timer);
    if (reset) {
        ZLB_STAT_ADD(w, resets, 1);
        if (!(c->flags & (ZLB_AL_UF | ZLB_AL_NR)))
            c->flags |= ZLB_AL_RS;
    }
    log_connection(c);
    if (c->down_fd >= 0) {
        if (reset)
            set_rst_on_close(c->down_fd);
        close(c->down_fd);
    }
    if (c->up_fd >= 0) {
        if (reset)
            set_rst_on_close(c->up_fd);
        close(c->up_fd);
    }
    c->down_fd = c->up_fd = -1;
    for (int i = 0; i < 2; i++) {
        pipe_put(w, c->d[i].pipe, c->d[i].pending);
    }
    tls_free(c);
    release_endpoint(c);
    atomic_fetch_sub(&c->l->active, 1);
    zlb_listener_unref(c->l);
    c->l = NULL;
    ZLB_STAT_SUB(w, conns_active, 1);
    c->state = CONN_CLOSED;
    /* Move from the open list to the closed list. */
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = NULL;
    c->next = w->closed;
    w->closed = c;
}

void zlb_l4_reap(zlb_worker *w)
{
    while (w->closed) {
        zlb_conn *c = w->closed;
        w->closed = c->next;
        free(c);
        atomic_fetch_sub(&live_conns, 1);
    }
}

void zlb_l4_close_all(zlb_worker *w)
{
    while (w->conns)
        conn_close(w->conns, 1);
    zlb_l4_reap(w);
}

/* ---- endpoint choice and connect --------------------------------------- */

static const zlb_cluster *conn_cluster(zlb_worker *w, zlb_conn *c)
{
    if (!w->snap)
        return NULL;
    int idx = zlb_snapshot_find_cluster(w->snap, c->l->opts.cluster);
    return idx < 0 ? NULL : &w->snap->clusters[idx];
}

/* The endpoint of the current snapshot that corresponds to the connection's
 * endpoint state, or NULL when the endpoint was removed by a config change. */
static zlb_endpoint *current_endpoint(zlb_worker *w, zlb_conn *c, const zlb_cluster *cl)
{
    if (c->ep_snap == w->snap && w->snap && c->ep_snap_version == w->snap->version)
        return (zlb_endpoint *)c->ep;
    for (uint32_t i = 0; cl && i < cl->n_endpoints; i++)
        if (cl->endpoints[i].state == c->ep_state)
            return &cl->endpoints[i];
    return NULL;
}

/* Feeds the outcome of a connect to outlier detection and the cluster's
 * counters (timed_out: a failure by connect timeout). */
static void report(zlb_worker *w, zlb_conn *c, int success, int timed_out, int64_t latency_ns)
{
    const zlb_cluster *cl = conn_cluster(w, c);
    if (cl)
        zlb_cs_add(cl->stats, w->id,
                   success ? ZLB_CS_CONNECTIONS : timed_out ? ZLB_CS_CONNECT_TIMEOUTS : ZLB_CS_CONNECT_FAILURES, 1);
    zlb_endpoint *ep = current_endpoint(w, c, cl);
    if (ep)
        zlb_lb_report(w->snap, cl, ep, success, latency_ns, w->now_ns);
}

#define ZLB_EV_BASE (EPOLLIN | EPOLLRDHUP | EPOLLET)

/* Sets whether the socket of `side` (0 client, 1 upstream) reports
 * EPOLLOUT. Adding it to a writable socket reports at once (MOD re-arms). */
static int want_write(zlb_conn *c, int side, int on)
{
    if (c->want_write[side] == on)
        return 0;
    struct epoll_event ev = {.events = ZLB_EV_BASE | (on ? EPOLLOUT : 0),
                             .data.ptr = side ? &c->up_io : &c->down_io};
    if (epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, side ? c->up_fd : c->down_fd, &ev) != 0)
        return -1;
    c->want_write[side] = (uint8_t)on;
    return 0;
}

static void pump_all(zlb_conn *c);
static void on_timer(zlb_timer *t, int64_t now_ns);
static void tls_event(zlb_conn *c, int kind, int fail_kind, int side, const char *reason);

static void arm_idle(zlb_conn *c)
{
    uint32_t idle = c->l->opts.idle_timeout_ms;
    if (idle)
        zlb_timer_arm(&c->w->timers, &c->timer, c->last_activity_ns + (int64_t)idle * 1000000);
    else
        zlb_timer_cancel(&c->w->timers, &c->timer);
}

static void tls_pump_all(zlb_conn *c);
static void start_up_tls(zlb_conn *c);
static void try_connect(zlb_conn *c);

/* The upstream is ready (TCP connected and, with TLS, handshaken and
 * verified): start moving bytes. */
static void conn_open(zlb_conn *c)
{
    zlb_worker *w = c->w;
    c->state = CONN_OPEN;
    c->last_activity_ns = w->now_ns;
    if (c->tls && !c->tls->ssl[0] && !c->tls->ssl[1])
        tls_free(c); /* permissive listener, plaintext both ways: splice path */
    if (!c->down_registered) {
        struct epoll_event ev = {.events = ZLB_EV_BASE, .data.ptr = &c->down_io};
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->down_fd, &ev) != 0) {
            conn_close(c, 1);
            return;
        }
        c->down_registered = 1;
    }
    /* The connect wait needed EPOLLOUT upstream; data transfer does not. */
    if (want_write(c, 1, 0) != 0) {
        conn_close(c, 1);
        return;
    }
    c->d[0].readable = c->d[1].readable = 1;
    arm_idle(c);
    if (c->tls)
        tls_pump_all(c);
    else
        pump_all(c);
}

/* TCP connect to the upstream completed. */
static void on_connected(zlb_conn *c)
{
    zlb_worker *w = c->w;
    int one = 1;
    setsockopt(c->up_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!(c->tls && c->tls->peer[1].policy)) {
        /* First connect of this connection: does the cluster want TLS? */
        zlb_tls_policy *p = zlb_engine_cluster_tls(w->eng, c->l->opts.cluster);
        if (p) {
            if (!tls_state(c)) {
                zlb_tls_policy_unref(p);
                conn_close(c, 1);
                return;
            }
            c->tls->peer[1].policy = p;
        }
    }
    if (c->tls && c->tls->peer[1].policy) {
        start_up_tls(c);
        return;
    }
    report(w, c, 1, 0, w->now_ns - c->connect_start_ns);
    conn_open(c);
}

/* Drops a failed upstream socket and counts the failure. */
static void connect_failed(zlb_conn *c, int timed_out)
{
    zlb_worker *w = c->w;
    if (timed_out) {
        ZLB_STAT_ADD(w, connect_timeouts, 1);
        c->flags |= ZLB_AL_UT;
    }
    else
        ZLB_STAT_ADD(w, connect_failures, 1);
    report(w, c, 0, timed_out, 0);
    zlb_timer_cancel(&w->timers, &c->timer);
    if (c->tls)
        tls_side_free(c->tls, 1);
    if (c->up_fd >= 0)
        close(c->up_fd);
    c->up_fd = -1;
    c->state = CONN_CONNECTING;
    /* Keep ep/ep_snap so the next pick can exclude this endpoint. */
    release_endpoint(c);
}

/* Picks an endpoint and starts connecting; on immediate failure tries the
 * next one, up to 1 + connect_retries attempts, then closes the client. */
static void try_connect(zlb_conn *c)
{
    zlb_worker *w = c->w;
    for (;;) {
        const zlb_cluster *cl = conn_cluster(w, c);
        if (!cl) {
            ZLB_STAT_ADD(w, no_cluster, 1);
            c->flags |= ZLB_AL_NR;
            conn_close(c, 1);
            return;
        }
        if (c->attempts > cl->opts.connect_retries) {
            ZLB_STAT_ADD(w, upstream_exhausted, 1);
            zlb_cs_add(cl->stats, w->id, ZLB_CS_EXHAUSTED, 1);
            c->flags |= ZLB_AL_UF;
            conn_close(c, 1);
            return;
        }
        zlb_pick_ctx ctx = {.rng = &w->rng, .has_hash = 1, .hash = c->src_hash, .now_ns = w->now_ns};
        const zlb_endpoint *exclude =
            (c->ep_snap == w->snap && c->ep_snap_version == w->snap->version) ? c->ep : NULL;
        zlb_endpoint *ep = zlb_lb_pick(w->lb, w->snap, cl, &ctx, exclude);
        if (!ep) {
            ZLB_STAT_ADD(w, upstream_exhausted, 1);
            zlb_cs_add(cl->stats, w->id, ZLB_CS_EXHAUSTED, 1);
            c->flags |= ZLB_AL_UF;
            conn_close(c, 1);
            return;
        }
        if (c->attempts > 0) {
            ZLB_STAT_ADD(w, retries, 1);
            zlb_cs_add(cl->stats, w->id, ZLB_CS_RETRIES, 1);
        }
        c->attempts++;
        ZLB_STAT_ADD(w, connect_attempts, 1);
        zlb_cs_add(cl->stats, w->id, ZLB_CS_CONNECT_ATTEMPTS, 1);
        c->ep = ep;
        c->ep_snap = w->snap;
        c->ep_snap_version = w->snap->version;
        c->ep_state = ep->state;
        zlb_ep_state_ref(ep->state);
        atomic_fetch_add_explicit(&ep->state->active, 1, memory_order_relaxed);
        c->connect_start_ns = w->now_ns;
        memcpy(&c->up_addr, &ep->addr, ep->addrlen < sizeof(c->up_addr) ? ep->addrlen : sizeof(c->up_addr));

        c->up_fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->up_fd < 0) {
            connect_failed(c, 0);
            continue;
        }
        /* Validated when the config was applied; should the kernel refuse it
         * now (module unloaded), the connection goes on with the default. */
        zlb_tcp_set_congestion(c->up_fd, cl->opts.tcp_congestion);
        struct epoll_event ev = {.events = ZLB_EV_BASE | EPOLLOUT, .data.ptr = &c->up_io};
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->up_fd, &ev) != 0) {
            connect_failed(c, 0);
            continue;
        }
        c->want_write[1] = 1;
        int rc = connect(c->up_fd, (const struct sockaddr *)&ep->addr, ep->addrlen);
        if (rc == 0) {
            on_connected(c);
            return;
        }
        if (errno == EINPROGRESS) {
            zlb_timer_arm(&w->timers, &c->timer,
                          w->now_ns + (int64_t)cl->opts.connect_timeout_ms * 1000000);
            return;
        }
        connect_failed(c, 0);
    }
}

static void on_timer(zlb_timer *t, int64_t now_ns)
{
    zlb_conn *c = CONN_OF(t, timer);
    if (c->state == CONN_CONNECTING || c->state == CONN_HS_UP) {
        connect_failed(c, 1);
        try_connect(c);
        return;
    }
    if (c->state == CONN_DETECT || c->state == CONN_HS_DOWN) {
        ZLB_STAT_ADD(c->w, tls_handshake_timeouts, 1);
        tls_event(c, ZLB_TLS_EV_TIMEOUT, ZLB_TLS_FAIL_PROTOCOL, 0, "client did not complete the TLS handshake in time");
        conn_close(c, 0);
        return;
    }
    int64_t idle_ns = (int64_t)c->l->opts.idle_timeout_ms * 1000000;
    if (now_ns - c->last_activity_ns >= idle_ns) {
        ZLB_STAT_ADD(c->w, idle_timeouts, 1);
        c->flags |= ZLB_AL_IT;
        conn_close(c, 0);
    } else {
        arm_idle(c);
    }
}

/* Pipes for the splice path. 0, or -1 when out of file descriptors: the
 * caller refuses the connection rather than proxy without a place to park
 * unsent bytes. */
static int take_pipes(zlb_conn *c)
{
    zlb_worker *w = c->w;
    if (pipe_get(w, c->d[0].pipe) != 0 || pipe_get(w, c->d[1].pipe) != 0)
        return -1;
    int cap0 = fcntl(c->d[0].pipe[1], F_GETPIPE_SZ);
    int cap1 = fcntl(c->d[1].pipe[1], F_GETPIPE_SZ);
    int cap = cap0 < cap1 ? cap0 : cap1;
    c->chunk = cap > 0 ? (uint32_t)cap : 65536;
    return 0;
}

/* ---- TLS: detection, handshakes, verification, authorization ------------- */

/* Where side `side` of the connection is, for TLS events (tls_worker.h). */
static zlb_tls_where tls_where(const zlb_conn *c, int side)
{
    return (zlb_tls_where){.listener_id = c->l->id, .port = c->l->bound_port,
                           .addr = side ? &c->up_addr : &c->down_addr, .cluster = c->l->opts.cluster};
}

/* Queues a TLS event for the control plane's log; side picks the address. */
static void tls_event(zlb_conn *c, int kind, int fail_kind, int side, const char *reason)
{
    zlb_tls_where at = tls_where(c, side);
    zlb_tls_report(c->w, &at, kind, fail_kind, c->tls ? c->tls->peer[side].id : "", reason);
}

/* Applies the listener's authorization rules to the peer ("" = plaintext).
 * Returns 1 to go on; 0 when the connection was closed. */
static int authorize_conn(zlb_conn *c, const char *peer_id)
{
    if (zlb_tls_authorize(c->l->tls, peer_id, c->l->bound_port))
        return 1;
    ZLB_STAT_ADD(c->w, authz_denied, 1);
    tls_event(c, ZLB_TLS_EV_DENIED, ZLB_TLS_FAIL_NONE, 0,
              peer_id[0] ? "denied by the listener's authorization rules"
                         : "plaintext peer denied by the listener's authorization rules");
    conn_close(c, 0);
    return 0;
}

/* The upstream handshake failed (already counted and reported): like a
 * refused connect, outlier detection sees it and another endpoint is tried. */
static void up_tls_retry(zlb_conn *c)
{
    connect_failed(c, 0);
    try_connect(c);
}

/* Advances the handshake of `side` (0 client, 1 upstream). Returns 1 once
 * it completed with the peer verified (counted, logged, handshake timer
 * cancelled); 0 while it waits for I/O, or after a failure (whose path,
 * close or retry, has already run). */
static int hs_advance(zlb_conn *c, int side)
{
    zlb_conn_tls *t = c->tls;
    zlb_tls_where at = tls_where(c, side);
    int r = zlb_tls_handshake(c->w, &at, t->ssl[side], &t->peer[side]);
    if (r == ZLB_HS_WANT_READ || r == ZLB_HS_WANT_WRITE) {
        if (want_write(c, side, r == ZLB_HS_WANT_WRITE) == 0)
            return 0;
        zlb_tls_failed(c->w, &at, &t->peer[side], "cannot wait for the socket (epoll)");
    }
    if (r != ZLB_HS_DONE) {
        if (side)
            up_tls_retry(c);
        else
            conn_close(c, 0); /* a FIN, not a RST: the alert OpenSSL queued must reach the client */
        return 0;
    }
    zlb_timer_cancel(&c->w->timers, &c->timer);
    return 1;
}

static void hs_down_step(zlb_conn *c)
{
    if (!hs_advance(c, 0))
        return;
    if (want_write(c, 0, 0) != 0) {
        conn_close(c, 1);
        return;
    }
    if (!authorize_conn(c, c->tls->peer[0].id))
        return;
    c->state = CONN_CONNECTING;
    try_connect(c);
}

static void start_down_tls(zlb_conn *c)
{
    zlb_conn_tls *t = c->tls;
    zlb_tls_where at = tls_where(c, 0);
    t->ssl[0] = zlb_tls_start(c->w, &at, &t->peer[0], c->down_fd, NULL, NULL);
    if (!t->ssl[0]) {
        conn_close(c, 0);
        return;
    }
    c->state = CONN_HS_DOWN;
    hs_down_step(c);
}

/* First bytes of a TLS listener's connection (zlb_tls_detect). */
static void detect(zlb_conn *c)
{
    switch (zlb_tls_detect(c->down_fd)) {
    case ZLB_DETECT_WAIT:
        return;
    case ZLB_DETECT_ERROR:
        conn_close(c, 1);
        return;
    case ZLB_DETECT_EOF:
        conn_close(c, 0); /* the client left without a byte */
        return;
    case ZLB_DETECT_TLS:
        start_down_tls(c);
        return;
    default:
        break;
    }
    if (c->l->tls->mode == ZLB_TLS_PERMISSIVE) {
        ZLB_STAT_ADD(c->w, tls_permissive_plaintext, 1);
        zlb_timer_cancel(&c->w->timers, &c->timer);
        if (!authorize_conn(c, ""))
            return;
        if (take_pipes(c) != 0) {
            conn_close(c, 1);
            return;
        }
        c->state = CONN_CONNECTING;
        try_connect(c);
        return;
    }
    ZLB_STAT_ADD(c->w, tls_plaintext_rejected, 1);
    tls_event(c, ZLB_TLS_EV_PLAINTEXT_REJECTED, ZLB_TLS_FAIL_PROTOCOL, 0,
              "plaintext connection on a strict mTLS listener");
    conn_close(c, 0);
}

static void start_detect(zlb_conn *c)
{
    zlb_worker *w = c->w;
    if (!tls_state(c)) {
        conn_close(c, 1);
        return;
    }
    c->tls->peer[0].policy = c->l->tls;
    c->state = CONN_DETECT;
    struct epoll_event ev = {.events = ZLB_EV_BASE, .data.ptr = &c->down_io};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->down_fd, &ev) != 0) {
        conn_close(c, 1);
        return;
    }
    c->down_registered = 1;
    zlb_timer_arm(&w->timers, &c->timer, w->now_ns + (int64_t)c->l->tls->handshake_timeout_ms * 1000000);
    /* No peek now: the ClientHello rarely beats accept, and the edge of
     * its arrival (or of data already there, on EPOLL_CTL_ADD) wakes us. */
}

static void hs_up_step(zlb_conn *c)
{
    zlb_worker *w = c->w;
    if (!hs_advance(c, 1))
        return;
    report(w, c, 1, 0, w->now_ns - c->connect_start_ns);
    conn_open(c);
}

static void start_up_tls(zlb_conn *c)
{
    zlb_worker *w = c->w;
    zlb_conn_tls *t = c->tls;
    /* Plaintext client: the pipes go back to the pool, TLS copies. */
    for (int i = 0; i < 2; i++)
        pipe_put(w, c->d[i].pipe, c->d[i].pending);
    zlb_tls_where at = tls_where(c, 1);
    t->ssl[1] = zlb_tls_start(w, &at, &t->peer[1], c->up_fd, c->ep_state, &t->sink);
    if (!t->ssl[1]) {
        up_tls_retry(c);
        return;
    }
    c->state = CONN_HS_UP;
    const zlb_cluster *cl = conn_cluster(w, c);
    uint32_t ms = cl ? cl->opts.connect_timeout_ms : 5000;
    zlb_timer_arm(&w->timers, &c->timer, w->now_ns + (int64_t)ms * 1000000);
    hs_up_step(c);
}

void zlb_l4_accept(zlb_worker *w, zlb_wlistener *wl)
{
    zlb_listener *l = wl->l;
    for (int i = 0; i < ZLB_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(wl->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or EMFILE: the level-triggered socket retries */
        }
        ZLB_STAT_ADD(w, conns_accepted, 1);
        if ((uint64_t)atomic_fetch_add(&l->active, 1) >= l->opts.max_connections) {
            /* Over the limit: accepted then closed so the client learns at
             * once instead of waiting in the backlog. */
            atomic_fetch_sub(&l->active, 1);
            ZLB_STAT_ADD(w, conns_overflow, 1);
            if (atomic_load_explicit(&w->eng->access_log, memory_order_acquire)) {
                zlb_access_record rec = {.start_unix_ns = zlb_worker_unix_ns(w), .listener_id = l->id,
                                         .flags = ZLB_AL_UO};
                memcpy(&rec.down, &ss, len < sizeof(rec.down) ? len : sizeof(rec.down));
                zlb_strlcpy(rec.listener, l->opts.name, sizeof(rec.listener));
                zlb_strlcpy(rec.cluster, l->opts.cluster, sizeof(rec.cluster));
                push_record(w, &rec);
            }
            set_rst_on_close(fd);
            close(fd);
            continue;
        }
        zlb_conn *c = calloc(1, sizeof(*c));
        if (!c) {
            atomic_fetch_sub(&l->active, 1);
            close(fd);
            continue;
        }
        atomic_fetch_add(&live_conns, 1);
        ZLB_STAT_ADD(w, conns_active, 1);
        atomic_fetch_add(&l->refs, 1);
        c->w = w;
        c->l = l;
        c->down_io.kind = ZLB_IO_DOWN;
        c->up_io.kind = ZLB_IO_UP;
        c->down_fd = fd;
        c->up_fd = -1;
        c->state = CONN_CONNECTING;
        c->start_ns = w->now_ns;
        c->start_unix_ns = zlb_worker_unix_ns(w);
        memcpy(&c->down_addr, &ss, len < sizeof(c->down_addr) ? len : sizeof(c->down_addr));
        zlb_timer_init(&c->timer, on_timer);
        for (int k = 0; k < 2; k++)
            c->d[k].pipe[0] = c->d[k].pipe[1] = -1;
        /* Hash key for ring_hash/maglev on L4: the source IP (not the port). */
        if (ss.ss_family == AF_INET)
            c->src_hash = zlb_hash64(&((struct sockaddr_in *)&ss)->sin_addr, 4, 0);
        else
            c->src_hash = zlb_hash64(&((struct sockaddr_in6 *)&ss)->sin6_addr, 16, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->next = w->conns;
        if (w->conns)
            w->conns->prev = c;
        w->conns = c;
        if (l->tls) {
            start_detect(c); /* plaintext or TLS is known from the first bytes */
            continue;
        }
        if (take_pipes(c) != 0) {
            conn_close(c, 1);
            continue;
        }
        try_connect(c);
    }
}

/* ---- data transfer ------------------------------------------------------ */

static void count_bytes(zlb_conn *c, int dir, size_t n)
{
    zlb_worker *w = c->w;
    c->bytes[dir] += n;
    if (dir == 0)
        ZLB_STAT_ADD(w, bytes_down_up, (uint64_t)n);
    else
        ZLB_STAT_ADD(w, bytes_up_down, (uint64_t)n);
}

/* Small-message path: read into the worker's scratch buffer and write at
 * once; whatever dst does not take is parked in the (empty) pipe. Returns
 * bytes read (0 = EOF), or -1 with errno. */
static ssize_t copy_once(zlb_conn *c, int dir, int src, int dst)
{
    zlb_worker *w = c->w;
    zlb_dir *d = &c->d[dir];
    ssize_t n = recv(src, w->scratch, ZLB_SCRATCH, 0);
    if (n <= 0)
        return n;
    if (n == ZLB_SCRATCH && !c->no_splice)
        d->splicing = 1;      /* more is likely waiting: bulk */
    else if (n < ZLB_SCRATCH && !d->hup)
        d->readable = 0;      /* short read: drained (a FIN already queued is not a new edge, hence hup) */
    ssize_t m = send(dst, w->scratch, (size_t)n, MSG_NOSIGNAL);
    if (m < 0) {
        if (errno != EAGAIN)
            return -1;
        m = 0;
    }
    count_bytes(c, dir, (size_t)m);
    if (m < n) {
        /* The pipe is empty and holds at least 64 KiB > ZLB_SCRATCH. */
        ssize_t parked = write(d->pipe[1], w->scratch + m, (size_t)(n - m));
        if (parked != n - m)
            return -1;
        d->pending = (size_t)parked;
    }
    return n;
}

/* Moves bytes in one direction until the kernel would block or the source
 * is known to be drained. Returns 0 to keep going, -1 to reset. */
static int pump(zlb_conn *c, int dir)
{
    zlb_worker *w = c->w;
    zlb_dir *d = &c->d[dir];
    int src = dir == 0 ? c->down_fd : c->up_fd;
    int dst = dir == 0 ? c->up_fd : c->down_fd;
    for (;;) {
        if (d->pending > 0) {
            ssize_t n = splice(d->pipe[0], NULL, dst, NULL, d->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0) {
                if (errno == EAGAIN)
                    return want_write(c, 1 - dir, 1);
                if (errno == EINTR)
                    continue;
                return -1;
            }
            d->pending -= (size_t)n;
            count_bytes(c, dir, (size_t)n);
            if (d->pending == 0 && want_write(c, 1 - dir, 0) != 0)
                return -1;
            continue;
        }
        if (d->done)
            return 0;
        if (d->eof) {
            /* Half-close: the peer sees our FIN only after every byte. */
            shutdown(dst, SHUT_WR);
            d->done = 1;
            return 0;
        }
        if (!d->readable)
            return 0;
        ssize_t n;
        if (d->splicing) {
            n = splice(src, NULL, d->pipe[1], NULL, c->chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n > 0)
                d->pending = (size_t)n;
            else if (n < 0 && errno == EINVAL) {
                c->no_splice = 1;   /* not spliceable: copy from now on */
                d->splicing = 0;
                ZLB_STAT_ADD(w, splice_fallbacks, 1);
                continue;
            }
        } else {
            n = copy_once(c, dir, src, dst);
        }
        if (n == 0) {
            d->eof = 1;
            continue;
        }
        if (n < 0) {
            if (errno == EAGAIN) {
                d->readable = 0;
                d->splicing = 0;    /* burst over: the next one starts copying */
                return 0;
            }
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->last_activity_ns = w->now_ns;
    }
}

static void pump_all(zlb_conn *c)
{
    if (pump(c, 0) != 0 || pump(c, 1) != 0) {
        conn_close(c, 1);
        return;
    }
    if (c->d[0].done && c->d[1].done)
        conn_close(c, 0);
}

/* ---- TLS data path --------------------------------------------------------- */

static void count_tls_bytes(zlb_conn *c, int dir, size_t n)
{
    count_bytes(c, dir, n);
    if (dir == 0)
        ZLB_STAT_ADD(c->w, tls_bytes_down_up, (uint64_t)n);
    else
        ZLB_STAT_ADD(c->w, tls_bytes_up_down, (uint64_t)n);
}

/* Moves bytes of direction `dir` (side dir -> side 1-dir) through the
 * direction's buffer with SSL_read/SSL_write on TLS sides and read/write on
 * plaintext ones, until a call would block. Each iteration moves bytes or
 * returns, so the loop ends. Returns 0, or -1 to reset the connection. */
static int tls_pump(zlb_conn *c, int dir)
{
    zlb_conn_tls *t = c->tls;
    zlb_dir *d = &c->d[dir];
    SSL *src_ssl = t->ssl[dir], *dst_ssl = t->ssl[1 - dir];
    int src = dir == 0 ? c->down_fd : c->up_fd;
    int dst = dir == 0 ? c->up_fd : c->down_fd;
    char *buf = t->buf[dir];
    for (;;) {
        if (t->len[dir] > t->off[dir]) {
            size_t want = t->len[dir] - t->off[dir];
            ssize_t n;
            if (dst_ssl) {
                ERR_clear_error();
                int r = SSL_write(dst_ssl, buf + t->off[dir], (int)want);
                if (r <= 0) {
                    int e = SSL_get_error(dst_ssl, r);
                    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                        t->blocked[dir] = 1;
                        return 0;
                    }
                    return -1;
                }
                n = r;
            } else {
                n = send(dst, buf + t->off[dir], want, MSG_NOSIGNAL);
                if (n < 0) {
                    if (errno == EAGAIN) {
                        t->blocked[dir] = 1;
                        return 0;
                    }
                    if (errno == EINTR)
                        continue;
                    return -1;
                }
            }
            t->off[dir] += (uint32_t)n;
            count_tls_bytes(c, dir, (size_t)n);
            if (t->off[dir] == t->len[dir])
                t->off[dir] = t->len[dir] = 0;
            continue;
        }
        t->blocked[dir] = 0;
        if (d->done)
            return 0;
        if (d->eof) {
            /* Half-close: close_notify on a TLS side, then the FIN. */
            if (dst_ssl) {
                ERR_clear_error();
                int r = SSL_shutdown(dst_ssl);
                if (r < 0 && SSL_get_error(dst_ssl, r) == SSL_ERROR_WANT_WRITE) {
                    t->blocked[dir] = 1; /* retried on EPOLLOUT */
                    return 0;
                }
            }
            shutdown(dst, SHUT_WR);
            d->done = 1;
            return 0;
        }
        if (!d->readable)
            return 0;
        ssize_t n;
        if (src_ssl) {
            ERR_clear_error();
            int r = SSL_read(src_ssl, buf, ZLB_SCRATCH);
            t->read_wants_write[dir] = 0;
            if (r > 0) {
                n = r;
            } else {
                int e = SSL_get_error(src_ssl, r);
                if (e == SSL_ERROR_ZERO_RETURN) {
                    n = 0; /* close_notify, or a bare EOF (SSL_OP_IGNORE_UNEXPECTED_EOF) */
                } else if (e == SSL_ERROR_WANT_READ) {
                    d->readable = 0;
                    return 0;
                } else if (e == SSL_ERROR_WANT_WRITE) {
                    t->read_wants_write[dir] = 1; /* e.g. a KeyUpdate reply; EPOLLOUT resumes */
                    return 0;
                } else {
                    return -1;
                }
            }
        } else {
            n = recv(src, buf, ZLB_SCRATCH, 0);
            if (n < 0) {
                if (errno == EAGAIN) {
                    d->readable = 0;
                    return 0;
                }
                if (errno == EINTR)
                    continue;
                return -1;
            }
        }
        if (n == 0) {
            d->eof = 1;
            continue;
        }
        t->off[dir] = 0;
        t->len[dir] = (uint32_t)n;
        c->last_activity_ns = c->w->now_ns;
    }
}

/* Both directions, then EPOLLOUT on exactly the sides that wait for it:
 * a direction blocked on writing to that side, or an SSL_read there that
 * needs to write. Closes the connection when it is finished or failed. */
static void tls_pump_all(zlb_conn *c)
{
    zlb_conn_tls *t = c->tls;
    if (tls_pump(c, 0) != 0 || tls_pump(c, 1) != 0) {
        conn_close(c, 1);
        return;
    }
    if (c->d[0].done && c->d[1].done) {
        conn_close(c, 0);
        return;
    }
    for (int side = 0; side < 2; side++) {
        int need = t->blocked[1 - side] || t->read_wants_write[side];
        if (want_write(c, side, need) != 0) {
            conn_close(c, 1);
            return;
        }
    }
}

static void tls_on_event(zlb_conn *c, int side, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        c->d[side].readable = 1;
    if ((events & EPOLLOUT) && c->tls->read_wants_write[side])
        c->d[side].readable = 1;
    tls_pump_all(c);
}

void zlb_l4_on_event(zlb_worker *w, zlb_io *io, uint32_t events)
{
    zlb_conn *c = io->kind == ZLB_IO_DOWN ? CONN_OF(io, down_io) : CONN_OF(io, up_io);
    int side = io->kind == ZLB_IO_DOWN ? 0 : 1;
    ZLB_UNUSED(w);
    switch (c->state) {
    case CONN_CLOSED:
        return;
    case CONN_DETECT:
        if (side == 0)
            detect(c);
        return;
    case CONN_HS_DOWN:
        if (side == 0)
            hs_down_step(c);
        return;
    case CONN_HS_UP:
        if (side == 1)
            hs_up_step(c);
        return;
    default:
        break;
    }
    if (c->state == CONN_OPEN && c->tls) {
        tls_on_event(c, side, events);
        return;
    }
    if (c->state == CONN_CONNECTING) {
        if (io->kind != ZLB_IO_UP)
            return;
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        getsockopt(c->up_fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        if (soerr == 0 && (events & EPOLLOUT)) {
            zlb_timer_cancel(&c->w->timers, &c->timer);
            on_connected(c);
        } else if (soerr != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            connect_failed(c, 0);
            try_connect(c);
        }
        return;
    }
    /* Pump only what this event can have changed: readable input on this
     * socket feeds one direction, writability drains the other's backlog.
     * Errors and hang-ups count as readable so the next read reports them. */
    int dir_from = io->kind == ZLB_IO_DOWN ? 0 : 1;
    int dir_to = 1 - dir_from;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        c->d[dir_from].readable = 1;
    if (events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        c->d[dir_from].hup = 1;
    int rc = 0;
    if (c->d[dir_from].readable)
        rc = pump(c, dir_from);
    if (rc == 0 && (events & EPOLLOUT) && c->d[dir_to].pending > 0)
        rc = pump(c, dir_to);
    if (rc != 0)
        conn_close(c, 1);
    else if (c->d[0].done && c->d[1].done)
        conn_close(c, 0);
}
