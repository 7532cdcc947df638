/*
 * http1_proxy.c - the HTTP/1.1 (L7) proxy of a worker thread: per-request
 * routing and balancing, upstream keep-alive pools, streamed bodies,
 * retries, timeouts and upgrades (tunnels).
 *
 * Threads and ownership: everything here runs on the owning worker. A client
 * connection (hconn) owns at most one upstream connection (hup) while a
 * request is in flight; idle hups sit in the worker's pool. Like the L4
 * path, nothing survives a loop iteration that points into a snapshot: a
 * request copies what it needs from its route (cluster name, retry policy,
 * response header operations) and holds an endpoint-state reference.
 *
 * Shape of the code: events only set readiness flags; run() then calls the
 * steps (read, parse, forward, flush) until none makes progress. Each step
 * moves bytes between a socket and an hbuf or between two hbufs, so
 * back-pressure is simply "do not read while the next buffer is full".
 *
 * TLS (tls.h, tls_worker.h): a listener with TLS starts each connection in
 * HS_TLS: the first bytes tell a ClientHello from plaintext (strict
 * listeners close plaintext clients, permissive ones serve them as
 * plaintext), the handshake runs non-blocking from the socket's events and
 * verifies the client's SPIFFE ID; only then does the HTTP state machine
 * start. An upstream connection of a cluster with TLS handshakes after its
 * TCP connect (still "connecting", under the same connect timeout; a failed
 * handshake is a failed connect), resuming a ticket from the worker's cache.
 * All socket I/O goes through io_read/io_write: recv(2)/send(2), or
 * SSL_read/SSL_write when the socket has an SSL, one predictable branch per
 * call, so plaintext connections keep their syscalls and buffers.
 * Authorization (by peer ID, port, method, path) runs per request: a denied
 * request is answered 403. The verified peer ID goes to the access log and,
 * by the listener's forward_client_cert, into x-forwarded-client-cert.
 */
#define _GNU_SOURCE
#include "hbuf.h"
#include "http1_parser.h"
#include "router.h"
#include "sockaddr.h"
#include "tcpopts.h"
#include "tls_worker.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

#define HWM (256 * 1024)        /* stop reading a side while its next buffer holds this much */
#define READ_CHUNK (64 * 1024)
#define LINGER_MS 2000          /* longest lingering close (see hc_linger) */
#define EV_BASE (EPOLLIN | EPOLLRDHUP | EPOLLET)

enum hstate {
    HS_TLS,        /* TLS listener: first bytes, then the handshake (see hc_tls_step) */
    HS_HEAD,       /* reading a request head */
    HS_EXCHANGE,   /* request dispatched: forwarding body / waiting for and forwarding the response */
    HS_TUNNEL,     /* after 101 Switching Protocols: bytes both ways */
    HS_CLOSING,    /* final bytes being flushed, then a lingering close (see hc_linger) */
};

typedef struct zlb_hup zlb_hup;

/* A socket with its buffers and readiness, shared by both sides. */
typedef struct hsock {
    int fd;
    hbuf in, out;
    uint8_t readable;   /* may have bytes (cleared by a short read or EAGAIN) */
    uint8_t hup;        /* RDHUP/HUP/ERR seen: read on to EOF */
    uint8_t eof;        /* read returned 0 */
    uint8_t want_out;   /* EPOLLOUT in the interest set */
    uint8_t blocked;    /* last write hit EAGAIN */
    uint8_t rd_wants_wr;/* TLS: the last read must write first: EPOLLOUT makes it readable again */
    uint8_t wr_wants_rd;/* TLS: the last write must read first: input makes it writable again */
    uint8_t tls_dead;   /* TLS: a fatal error: no close_notify may be sent */
    uint64_t rx, tx;    /* bytes read / written over the socket's life (plaintext bytes on TLS) */
    SSL *ssl;           /* NULL: plaintext */
} hsock;

/* TLS state of a connection (client or upstream side), allocated only when
 * that side uses TLS. */
typedef struct htls {
    zlb_tls_peer peer;               /* client side: the listener's policy (borrowed: the listener
                                        reference keeps it); upstream: one policy reference.
                                        mat: one reference each */
    zlb_tls_session_sink sink;       /* upstream: where tickets go */
    uint32_t xfcc_len;               /* client side: this hop's x-forwarded-client-cert element */
    char *xfcc;                      /* (malloc'd, NULL when the listener does not add one) */
} htls;

typedef struct zlb_hconn {
    zlb_io io;
    zlb_worker *w;
    zlb_listener *l;                 /* reference held */
    hsock s;
    int state;
    uint8_t closed, close_after, client_10;
    struct sockaddr_in6 peer;
    char peer_ip[64];
    zlb_timer timer;
    /* idle_deadline is the handshake deadline while state is HS_TLS (the
     * connection is not idle in the HTTP sense yet). */
    int64_t idle_deadline, head_deadline, req_deadline, try_deadline, backoff_deadline, linger_deadline;
    uint8_t ready;                   /* on the worker's ready list (see hc_run) */
    struct zlb_hconn *ready_next;
    uint8_t shut_wr;                 /* closing: our FIN sent, now discarding input */
    htls *tls;                       /* TLS listeners only (set at accept, even for permissive plaintext) */

    zlb_h1_parser rp;                /* request head */
    zlb_h1_head rq;
    zlb_h1_parser sp;                /* response head */
    zlb_h1_head rs;

    /* The request in flight, copied out of the snapshot (see the top). */
    char cluster[ZLB_NAME_MAX];      /* "" when no cluster was chosen (local answers) */
    zlb_cluster_stats *cs;           /* the cluster's counters and breakers (reference held) */
    uint8_t holds_request, holds_retry, holds_pending; /* breaker gauges this request counts in */
    uint64_t up_rx0, up_tx0;         /* upstream socket totals when the try started */
    zlb_breaker_opts breakers;
    char al_method[16], al_authority[96], al_path[192]; /* for the access log */
    uint16_t al_flags;
    int64_t req_start_unix_ns;
    uint64_t req_rx0, resp_tx0;      /* client socket totals (consumed / queued) when the request began */
    struct sockaddr_in6 up_addr;     /* endpoint of the last try */
    zlb_retry_policy retry;
    uint32_t timeout_ms;
    uint64_t hash;
    uint8_t has_hash, idempotent, is_head, replayable, upgrade;
    hbuf resp_ops;                   /* serialized response header operations */
    hbuf replay;                     /* the whole upstream request, kept for retries */
    int req_body;                    /* zlb_h1_body of the request */
    uint64_t req_left;               /* Content-Length bytes still to forward */
    zlb_h1_chunked req_chunks;
    uint8_t req_done;                /* every request byte handed to the upstream buffer */
    uint32_t attempts;
    zlb_ep_state *failed;            /* endpoint of the last failed try (exclude) */
    zlb_hup *up;
    uint8_t resp_started;            /* response head forwarded to the client */
    int resp_body;
    uint64_t resp_left;
    zlb_h1_chunked resp_chunks;
    int status;
    int64_t req_start_ns;

    struct zlb_hconn *prev, *next;
} zlb_hconn;

struct zlb_hup {
    zlb_io io;
    zlb_worker *w;
    hsock s;
    uint8_t connecting, closed, pooled;
    uint8_t handshaking;             /* TLS: TCP connected, handshake running (connecting stays 1) */
    htls *tls;                       /* clusters with TLS only */
    uint64_t tls_gen;                /* engine cluster_tls_gen when connected (see pool_take) */
    zlb_ep_state *st;                /* reference held */
    zlb_cluster_stats *cs;           /* counts in active_connections (reference held) */
    zlb_hconn *owner;
    uint32_t served;
    int64_t connect_start_ns;
    int64_t idle_deadline;
    zlb_timer timer;                 /* connect timeout or pool idle timeout */
    struct zlb_hup *prev, *next;     /* w->hups */
    struct zlb_hup *idle_prev, *idle_next; /* w->idle_hups while pooled */
};

/* Objects closed during a batch wait here until zlb_http_reap (see worker.c). */
typedef struct graveyard {
    void *obj;
    struct graveyard *next;
} graveyard;

static void hc_run(zlb_hconn *c);
static void hc_release_cluster(zlb_hconn *c);
static void hc_fail_try(zlb_hconn *c, int connect_failure, int timed_out);

/* ---- small helpers ------------------------------------------------------ */

static void bury(zlb_worker *w, void *obj)
{
    graveyard *g = malloc(sizeof(*g));
    if (!g) {
        /* Leak rather than free memory a later event may still name. */
        return;
    }
    g->obj = obj;
    g->next = w->hclosed;
    w->hclosed = g;
}

int zlb_http_run_ready(zlb_worker *w)
{
    /* Take the whole list: connections that use up their rounds again go
     * on a fresh list for the next pass. Closed ones are only skipped; their
     * memory lives until zlb_http_reap, which runs after this. */
    zlb_hconn *c = w->hready;
    w->hready = NULL;
    while (c) {
        zlb_hconn *next = c->ready_next;
        c->ready = 0;
        c->ready_next = NULL;
        if (!c->closed)
            hc_run(c);
        c = next;
    }
    return w->hready != NULL;
}

void zlb_http_reap(zlb_worker *w)
{
    graveyard *g = w->hclosed;
    w->hclosed = NULL;
    while (g) {
        graveyard *next = g->next;
        free(g->obj);
        free(g);
        g = next;
    }
}

static int set_want_out(zlb_worker *w, hsock *s, zlb_io *io, int on)
{
    if (s->want_out == on)
        return 0;
    struct epoll_event ev = {.events = EV_BASE | (on ? EPOLLOUT : 0), .data.ptr = io};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, s->fd, &ev) != 0)
        return -1;
    s->want_out = (uint8_t)on;
    return 0;
}

/* ---- socket I/O: recv(2)/send(2), or SSL_read/SSL_write ------------------
 * io_read and io_write keep the contract of read(2) and write(2): > 0 bytes,
 * 0 end of stream (reads), -1 with errno, EAGAIN meaning "wait for the
 * socket's readiness". Plaintext sockets pay one predictable branch: the
 * TLS functions stay out of line (noinline, cold), so that sock_read and
 * sock_flush, called several times per request, keep their small frames. */

/* Fills as much of p[0..n) as OpenSSL can give without blocking: one
 * SSL_read returns at most one record (16 KiB), and a read shorter than n
 * must keep meaning "the socket is drained" for sock_read. So the loop stops
 * early only on WANT_READ (drained indeed); on anything else after some
 * bytes it returns them with `hup` set, so the caller reads on and meets the
 * end of stream or the error at the next call. */
__attribute__((noinline, cold)) static ssize_t tls_read(hsock *s, char *p, size_t n)
{
    size_t got = 0;
    s->rd_wants_wr = 0;
    while (got < n) {
        ERR_clear_error();
        int r = SSL_read(s->ssl, p + got, (int)(n - got));
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            if (got)
                return (ssize_t)got;
            errno = EAGAIN;
            return -1;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            s->rd_wants_wr = 1; /* e.g. a KeyUpdate answer: on_events retries on EPOLLOUT */
            if (got)
                return (ssize_t)got;
            errno = EAGAIN;
            return -1;
        }
        if (got) {
            s->hup = 1;
            return (ssize_t)got;
        }
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0; /* close_notify, or a bare EOF (SSL_OP_IGNORE_UNEXPECTED_EOF) */
        s->tls_dead = 1;
        ERR_clear_error();
        errno = ECONNRESET;
        return -1;
    }
    return (ssize_t)got;
}

/* Writes all of p[0..n) that the socket takes: one SSL_write writes one
 * record at a time (SSL_MODE_ENABLE_PARTIAL_WRITE). After WANT_WRITE the
 * next call must start at the same bytes, which the caller's buffer
 * guarantees (it consumes only what was written; moving is allowed). */
__attribute__((noinline, cold)) static ssize_t tls_write(hsock *s, const char *p, size_t n)
{
    size_t put = 0;
    s->wr_wants_rd = 0;
    while (put < n) {
        ERR_clear_error();
        int r = SSL_write(s->ssl, p + put, n - put > INT_MAX ? INT_MAX : (int)(n - put));
        if (r > 0) {
            put += (size_t)r;
            continue;
        }
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            s->wr_wants_rd = e == SSL_ERROR_WANT_READ;
            if (put)
                return (ssize_t)put;
            errno = EAGAIN;
            return -1;
        }
        s->tls_dead = 1;
        ERR_clear_error();
        if (put)
            return (ssize_t)put;
        errno = EPIPE;
        return -1;
    }
    return (ssize_t)put;
}

static inline ssize_t io_read(hsock *s, char *p, size_t n)
{
    return ZLB_LIKELY(!s->ssl) ? recv(s->fd, p, n, 0) : tls_read(s, p, n);
}

static inline ssize_t io_write(hsock *s, const char *p, size_t n)
{
    return ZLB_LIKELY(!s->ssl) ? send(s->fd, p, n, MSG_NOSIGNAL) : tls_write(s, p, n);
}

/* Our half-close: close_notify first on TLS (unless the session is dead). */
static void io_shutdown_wr(hsock *s)
{
    if (s->ssl && !s->tls_dead) {
        ERR_clear_error();
        SSL_shutdown(s->ssl);
        ERR_clear_error();
    }
    shutdown(s->fd, SHUT_WR);
}

/* Reads what the socket has, up to `limit` buffered bytes. Returns 1 if
 * bytes or EOF arrived, 0 if nothing, -1 on error. */
static int sock_read(zlb_worker *w, hsock *s, zlb_io *io, uint32_t limit)
{
    if (!s->readable || s->eof || hbuf_size(&s->in) >= limit)
        return 0;
    if (hbuf_reserve(&s->in, READ_CHUNK) != 0)
        return -1;
    ssize_t n = io_read(s, s->in.p + s->in.len, READ_CHUNK);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            s->readable = errno == EINTR;
            /* A TLS read that has to write first waits for EPOLLOUT. */
            return s->rd_wants_wr && set_want_out(w, s, io, 1) != 0 ? -1 : 0;
        }
        return -1;
    }
    if (n == 0) {
        s->eof = 1;
        return 1;
    }
    s->in.len += (uint32_t)n;
    s->rx += (uint64_t)n;
    if (n < READ_CHUNK && !s->hup)
        s->readable = 0; /* short read: drained (edge triggering reports new bytes) */
    return 1;
}

/* Writes buffered bytes. Returns 1 on progress, 0 if none, -1 on error. */
static int sock_flush(zlb_worker *w, hsock *s, zlb_io *io)
{
    if (hbuf_size(&s->out) == 0 || s->blocked)
        return 0;
    ssize_t n = io_write(s, hbuf_data(&s->out), hbuf_size(&s->out));
    if (n < 0) {
        if (errno == EAGAIN) {
            s->blocked = 1;
            /* A TLS write that has to read first waits for input instead. */
            return s->wr_wants_rd ? 0 : set_want_out(w, s, io, 1);
        }
        return errno == EINTR ? 0 : -1;
    }
    hbuf_consume(&s->out, (uint32_t)n);
    s->tx += (uint64_t)n;
    if (hbuf_size(&s->out) == 0 && set_want_out(w, s, io, 0) != 0)
        return -1;
    return 1;
}

/* Readiness into flags. On a TLS socket also the cross-wishes: a read
 * that waited for writability, a write that waited for input. */
static inline __attribute__((always_inline)) void on_events(hsock *s, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        s->readable = 1;
    if (events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        s->hup = 1;
    if (events & EPOLLOUT)
        s->blocked = 0;
    if (ZLB_UNLIKELY(s->ssl != NULL)) {
        if ((events & EPOLLOUT) && s->rd_wants_wr)
            s->readable = 1;
        if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) && s->wr_wants_rd)
            s->blocked = 0;
    }
}

static void rst_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

static void count_status(zlb_worker *w, int status)
{
    switch (status / 100) {
    case 1: ZLB_STAT_ADD(w, http_1xx, 1); break;
    case 2: ZLB_STAT_ADD(w, http_2xx, 1); break;
    case 3: ZLB_STAT_ADD(w, http_3xx, 1); break;
    case 4: ZLB_STAT_ADD(w, http_4xx, 1); break;
    default: ZLB_STAT_ADD(w, http_5xx, 1); break;
    }
}

/* ---- TLS state ------------------------------------------------------------ */

static htls *htls_new(void)
{
    htls *t = calloc(1, sizeof(*t));
    if (t)
        zlb_tls_live_add(1);
    return t;
}

/* Ends the TLS of a socket that is about to close: close_notify on a clean
 * close; on our own reset no alert, but the session stays resumable (a
 * connection dropped after max_requests_per_conn must not cost the next one
 * a full handshake); after a fatal TLS error, neither. Then the SSL, the
 * material and (an upstream's) policy reference. The socket stays the
 * caller's. */
static void htls_free(hsock *s, htls *t, int reset)
{
    zlb_tls_end(&s->ssl, &t->peer,
                s->tls_dead ? ZLB_TLS_END_ABORT : reset ? ZLB_TLS_END_QUIET : ZLB_TLS_END_NOTIFY);
    if (!t->peer.policy->is_server)
        zlb_tls_policy_unref((zlb_tls_policy *)t->peer.policy);
    free(t->xfcc);
    free(t);
    zlb_tls_live_add(-1);
}

/* ---- upstream connections and the pool ---------------------------------- */

static void hup_on_timer(zlb_timer *t, int64_t now_ns);
static void pool_unlink(zlb_hup *u);

static void hup_close(zlb_hup *u, int reset)
{
    zlb_worker *w = u->w;
    if (u->closed)
        return;
    u->closed = 1;
    if (u->pooled)
        pool_unlink(u);
    zlb_timer_cancel(&w->timers, &u->timer);
    if (u->tls)
        htls_free(&u->s, u->tls, reset);
    if (reset)
        rst_close(u->s.fd);
    else
        close(u->s.fd);
    u->tls = NULL;
    hbuf_free(&u->s.in);
    hbuf_free(&u->s.out);
    if (u->st) {
        atomic_fetch_sub_explicit(&u->st->active, 1, memory_order_relaxed);
        zlb_ep_state_unref(u->st);
    }
    if (u->cs) {
        atomic_fetch_sub(&u->cs->active_connections, 1);
        zlb_cs_unref(u->cs);
    }
    if (u->prev)
        u->prev->next = u->next;
    else
        w->hups = u->next;
    if (u->next)
        u->next->prev = u->prev;
    bury(w, u);
}

/* An idle pooled connection to the same endpoint, taken out of the pool. */
/* The pool is its own list, so taking and returning connections costs time
 * in the number of idle connections, not of all upstream connections. */
static void pool_unlink(zlb_hup *u)
{
    zlb_worker *w = u->w;
    if (u->idle_prev)
        u->idle_prev->idle_next = u->idle_next;
    else
        w->idle_hups = u->idle_next;
    if (u->idle_next)
        u->idle_next->idle_prev = u->idle_prev;
    u->idle_prev = u->idle_next = NULL;
    u->pooled = 0;
    w->n_idle_hups--;
}

static zlb_hup *pool_take(zlb_worker *w, zlb_ep_state *st)
{
    uint64_t tls_gen = atomic_load_explicit(&w->eng->cluster_tls_gen, memory_order_relaxed);
    for (zlb_hup *u = w->idle_hups, *next; u; u = next) {
        next = u->idle_next;
        if (u->st != st || u->s.eof || u->s.hup)
            continue; /* another endpoint, or closed by the upstream (its own event closes it) */
        if (ZLB_UNLIKELY(u->tls_gen != tls_gen)) {
            /* Connected before a change of some cluster's upstream TLS: it may
             * be plaintext where TLS is now wanted, or verified another peer. */
            hup_close(u, 0);
            continue;
        }
        pool_unlink(u);
        zlb_timer_cancel(&w->timers, &u->timer);
        return u;
    }
    return NULL;
}

static void pool_put(zlb_hup *u, const zlb_http_opts *o)
{
    zlb_worker *w = u->w;
    uint32_t idle = 0;
    /* Counting per endpoint is only needed once the whole pool could be at
     * the limit. */
    for (zlb_hup *v = w->n_idle_hups >= o->max_idle_per_endpoint ? w->idle_hups : NULL; v; v = v->idle_next)
        idle += v->st == u->st;
    if (idle >= o->max_idle_per_endpoint || u->s.eof || u->s.hup || hbuf_size(&u->s.in) > 0
        || (u->s.ssl && SSL_has_pending(u->s.ssl))) {
        hup_close(u, 0);
        return;
    }
    u->owner = NULL;
    u->pooled = 1;
    u->idle_prev = NULL;
    u->idle_next = w->idle_hups;
    if (w->idle_hups)
        w->idle_hups->idle_prev = u;
    w->idle_hups = u;
    w->n_idle_hups++;
    if (o->upstream_idle_ms)
        zlb_timer_arm(&w->timers, &u->timer, w->now_ns + (int64_t)o->upstream_idle_ms * 1000000);
}

/* Opens a connection to ep for the cluster with options `co` (whose upstream
 * TLS policy, if any, is taken now and used once the TCP connect completes). */
static zlb_hup *hup_connect(zlb_worker *w, zlb_endpoint *ep, zlb_cluster_stats *cs, const zlb_cluster_opts *co)
{
    zlb_hup *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->io.kind = ZLB_IO_HTTP_UP;
    u->w = w;
    /* The generation first: a change racing with the lookup below makes the
     * connection look older than it is (not reused), never newer. */
    u->tls_gen = atomic_load_explicit(&w->eng->cluster_tls_gen, memory_order_relaxed);
    zlb_tls_policy *tp = zlb_engine_cluster_tls(w->eng, co->name);
    if (tp && !(u->tls = htls_new())) {
        zlb_tls_policy_unref(tp);
        free(u);
        return NULL;
    }
    if (tp)
        u->tls->peer.policy = tp;
    u->s.fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->s.fd < 0) {
        if (u->tls)
            htls_free(&u->s, u->tls, 1);
        free(u);
        return NULL;
    }
    int one = 1;
    setsockopt(u->s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* As for L4 (l4.c): validated at apply time, the default if refused now. */
    zlb_tcp_set_congestion(u->s.fd, co->tcp_congestion);
    struct epoll_event ev = {.events = EV_BASE | EPOLLOUT, .data.ptr = &u->io};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, u->s.fd, &ev) != 0) {
        if (u->tls)
            htls_free(&u->s, u->tls, 1);
        close(u->s.fd);
        free(u);
        return NULL;
    }
    u->s.want_out = 1;
    u->st = ep->state;
    zlb_ep_state_ref(u->st);
    atomic_fetch_add_explicit(&u->st->active, 1, memory_order_relaxed);
    u->cs = cs;
    atomic_fetch_add(&cs->refs, 1);
    atomic_fetch_add(&cs->active_connections, 1);
    zlb_timer_init(&u->timer, hup_on_timer);
    u->next = w->hups;
    if (w->hups)
        w->hups->prev = u;
    w->hups = u;
    u->connect_start_ns = w->now_ns;
    u->connecting = 1;
    u->s.blocked = 1; /* nothing is written before the connect completes */
    int rc = connect(u->s.fd, (const struct sockaddr *)&ep->addr, ep->addrlen);
    if (rc != 0 && errno != EINPROGRESS) {
        hup_close(u, 0);
        return NULL;
    }
    zlb_timer_arm(&w->timers, &u->timer, w->now_ns + (int64_t)co->connect_timeout_ms * 1000000);
    return u;
}

static void hup_on_timer(zlb_timer *t, int64_t now_ns)
{
    zlb_hup *u = (zlb_hup *)((char *)t - offsetof(zlb_hup, timer));
    ZLB_UNUSED(now_ns);
    if (u->connecting && u->owner) {
        zlb_hconn *c = u->owner;
        hc_fail_try(c, 1, 1);
        hc_run(c);
        return;
    }
    hup_close(u, 0); /* pool idle timeout */
}

/* ---- client connections ---------------------------------------------------- */

static void hc_arm_timer(zlb_hconn *c)
{
    int64_t d = 0;
    int64_t cand[6] = {c->idle_deadline, c->head_deadline, c->req_deadline, c->try_deadline, c->backoff_deadline,
                       c->linger_deadline};
    for (int i = 0; i < 6; i++)
        if (cand[i] && (!d || cand[i] < d))
            d = cand[i];
    if (d)
        zlb_timer_arm(&c->w->timers, &c->timer, d);
    else
        zlb_timer_cancel(&c->w->timers, &c->timer);
}

static void hc_release_up(zlb_hconn *c, int reusable)
{
    zlb_hup *u = c->up;
    if (!u)
        return;
    c->up = NULL;
    u->owner = NULL;
    if (c->holds_pending) {
        atomic_fetch_sub(&c->cs->pending_requests, 1);
        c->holds_pending = 0;
    }
    if (c->cs) {
        zlb_cs_add(c->cs, c->w->id, ZLB_CS_BYTES_SENT, u->s.tx + hbuf_size(&u->s.out) - c->up_tx0);
        zlb_cs_add(c->cs, c->w->id, ZLB_CS_BYTES_RECEIVED, u->s.rx - c->up_rx0);
    }
    if (reusable && !u->connecting)
        pool_put(u, &c->l->opts.http);
    else
        hup_close(u, !reusable);
}

static void hc_close(zlb_hconn *c, int reset)
{
    zlb_worker *w = c->w;
    if (c->closed)
        return;
    c->closed = 1;
    zlb_timer_cancel(&w->timers, &c->timer);
    hc_release_up(c, 0);
    hc_release_cluster(c);
    if (c->tls) {
        htls_free(&c->s, c->tls, reset);
        c->tls = NULL;
    }
    if (reset)
        rst_close(c->s.fd);
    else
        close(c->s.fd);
    hbuf_free(&c->s.in);
    hbuf_free(&c->s.out);
    hbuf_free(&c->resp_ops);
    hbuf_free(&c->replay);
    if (c->failed)
        zlb_ep_state_unref(c->failed);
    atomic_fetch_sub(&c->l->active, 1);
    zlb_listener_unref(c->l);
    ZLB_STAT_SUB(w, conns_active, 1);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->hconns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    bury(w, c);
}

void zlb_http_close_all(zlb_worker *w)
{
    while (w->hconns)
        hc_close(w->hconns, 1);
    while (w->hups)
        hup_close(w->hups, 1);
    zlb_http_reap(w);
}

/* Starts reading the next request head (keep-alive). */
static void hc_next_request(zlb_hconn *c)
{
    const zlb_http_opts *o = &c->l->opts.http;
    zlb_h1_limits lim = {o->max_request_line, o->max_head, o->max_headers};
    zlb_h1_parser_init_request(&c->rp, &lim);
    memset(&c->rq, 0, offsetof(zlb_h1_head, headers));
    c->state = HS_HEAD;
    c->attempts = 0;
    c->resp_started = 0;
    c->status = 0;
    c->al_flags = 0;
    c->al_method[0] = c->al_authority[0] = c->al_path[0] = '\0';
    c->up_addr.sin6_family = 0;
    c->req_rx0 = c->s.rx - hbuf_size(&c->s.in);
    c->resp_tx0 = c->s.tx + hbuf_size(&c->s.out);
    c->req_start_ns = c->w->now_ns;
    c->req_start_unix_ns = 0;
    c->req_deadline = c->try_deadline = 0;
    c->head_deadline = 0;
    if (c->failed) {
        zlb_ep_state_unref(c->failed);
        c->failed = NULL;
    }
    hbuf_clear(&c->replay);
    hbuf_clear(&c->resp_ops);
    uint32_t idle = c->l->opts.idle_timeout_ms;
    c->idle_deadline = idle ? c->w->now_ns + (int64_t)idle * 1000000 : 0;
    hc_arm_timer(c);
}

/* Releases the circuit-breaker gauges and the cluster reference the
 * request holds. */
static void hc_release_cluster(zlb_hconn *c)
{
    zlb_cluster_stats *cs = c->cs;
    if (!cs)
        return;
    if (c->holds_request)
        atomic_fetch_sub(&cs->active_requests, 1);
    if (c->holds_retry)
        atomic_fetch_sub(&cs->active_retries, 1);
    if (c->holds_pending)
        atomic_fetch_sub(&cs->pending_requests, 1);
    c->holds_request = c->holds_retry = c->holds_pending = 0;
    zlb_cs_unref(cs);
    c->cs = NULL;
}

static void copy_trunc(char *dst, size_t cap, const char *src, uint32_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Accounting at the end of every request, proxied or answered locally:
 * global and per-cluster counters, latency, the access-log record. */
static void hc_request_done(zlb_hconn *c, int status)
{
    zlb_worker *w = c->w;
    ZLB_STAT_ADD(w, http_requests, 1);
    count_status(w, status);
    int64_t took = w->now_ns - c->req_start_ns;
    if (c->cs) {
        int cls = status / 100;
        zlb_cs_add(c->cs, w->id, ZLB_CS_RQ_1XX + (cls < 1 ? 0 : cls > 5 ? 4 : cls - 1), 1);
        zlb_cs_latency(c->cs, w->id, took);
    }
    zlb_access_record *rec = atomic_load_explicit(&w->eng->access_log, memory_order_acquire)
        ? zlb_access_ring_reserve(&w->alog) : NULL;
    if (rec) {
        /* Filled in place, field by field: no stack copy, no memset of the
         * string buffers (each is NUL-terminated by its copy). */
        rec->start_unix_ns = c->req_start_unix_ns;
        rec->duration_ns = took;
        rec->down = c->peer;
        rec->up = c->up_addr; /* family 0 when no upstream was tried */
        rec->bytes_received = c->s.rx - hbuf_size(&c->s.in) - c->req_rx0;
        rec->bytes_sent = c->s.tx + hbuf_size(&c->s.out) - c->resp_tx0;
        rec->listener_id = c->l->id;
        rec->attempts = (uint16_t)c->attempts;
        rec->flags = c->al_flags;
        rec->status = (uint16_t)status;
        zlb_strlcpy(rec->method, c->al_method, sizeof(rec->method));
        zlb_strlcpy(rec->authority, c->al_authority, sizeof(rec->authority));
        zlb_strlcpy(rec->path, c->al_path, sizeof(rec->path));
        zlb_strlcpy(rec->cluster, c->cluster, sizeof(rec->cluster));
        zlb_strlcpy(rec->listener, c->l->opts.name, sizeof(rec->listener));
        if (c->tls)
            zlb_strlcpy(rec->peer_identity, c->tls->peer.id, sizeof(rec->peer_identity));
        else
            rec->peer_identity[0] = '\0';
        zlb_access_ring_commit(&w->alog);
    } else if (atomic_load_explicit(&w->eng->access_log, memory_order_relaxed)) {
        ZLB_STAT_ADD(w, access_log_dropped, 1);
    }
    hc_release_cluster(c);
    c->cluster[0] = '\0';
}

/* Queues a complete response generated by the proxy itself. */
static void hc_local_reply(zlb_hconn *c, int status, const char *extra_headers, const char *body, int close_conn);

/* Answers a request whose head is complete without asking an upstream; the
 * body, if any, is not read, so the connection closes after the answer. */
static void hc_answer_locally(zlb_hconn *c, int status, const char *extra_headers, const char *body)
{
    hbuf_consume(&c->s.in, c->rq.head_len);
    if (!c->req_done)
        c->close_after = 1;
    hc_local_reply(c, status, extra_headers, body, c->close_after);
    if (!c->close_after && !c->closed)
        hc_next_request(c);
}

/* A circuit breaker of the request's cluster is open: 503 at once, with the
 * breaker named in x-zlbfast-overflow, and counted. */
static void hc_overflow(zlb_hconn *c, const char *which)
{
    char hdr[64];
    snprintf(hdr, sizeof(hdr), "x-zlbfast-overflow: %s\r\n", which);
    ZLB_STAT_ADD(c->w, http_overflow, 1);
    zlb_cs_add(c->cs, c->w->id, ZLB_CS_OVERFLOW, 1);
    c->al_flags |= ZLB_AL_UO;
    if (c->state == HS_EXCHANGE && c->rq.head_len && hbuf_size(&c->replay) == 0) {
        hc_answer_locally(c, 503, hdr, "upstream overflow\n");
        return;
    }
    c->close_after = 1;
    hc_local_reply(c, 503, hdr, "upstream overflow\n", 1);
}

/* Queues a complete response generated by the proxy itself. */
static void hc_local_reply(zlb_hconn *c, int status, const char *extra_headers, const char *body, int close_conn)
{
    char head[512];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\ncontent-length: %zu\r\ncontent-type: text/plain\r\n%s%s\r\n",
                     status, reason(status), blen, extra_headers ? extra_headers : "",
                     close_conn ? "connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head) || hbuf_append(&c->s.out, head, (uint32_t)n) != 0 ||
        (blen && hbuf_append(&c->s.out, body, (uint32_t)blen) != 0)) {
        hc_close(c, 1);
        return;
    }
    hc_request_done(c, status);
    if (close_conn) {
        c->state = HS_CLOSING;
        c->close_after = 1;
    }
}

/* ---- building the upstream request ------------------------------------------ */

static int name_in_list(const char *buf, zlb_span name, const char *list, uint32_t len)
{
    /* `list` is a Connection header value: comma-separated tokens. */
    uint32_t i = 0;
    while (i < len) {
        while (i < len && (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
            i++;
        uint32_t start = i;
        while (i < len && list[i] != ',' && list[i] != ' ' && list[i] != '\t')
            i++;
        if (i - start == name.len && strncasecmp(list + start, buf + name.off, name.len) == 0)
            return 1;
    }
    return 0;
}

/* Is field f of head h hop-by-hop (RFC 9110 7.6.1), i.e. not to be
 * forwarded? The standard hop-by-hop names are known by their id; the
 * Connection lists are searched only when the parser saw one naming
 * something besides keep-alive and upgrade (ZLB_H1_F_CONN_TOKENS). */
static int is_hop_by_hop(const char *buf, const zlb_h1_head *h, const zlb_h1_header *f, int keep_upgrade)
{
    switch (f->id) {
    case ZLB_H1_HDR_CONNECTION:
    case ZLB_H1_HDR_KEEP_ALIVE:
    case ZLB_H1_HDR_PROXY_CONNECTION:
    case ZLB_H1_HDR_TE:
    case ZLB_H1_HDR_TRAILER:
        return 1;
    case ZLB_H1_HDR_UPGRADE:
        /* On an upgrade the Upgrade field travels on; Connection never
         * does: the caller writes its own "connection: upgrade", and
         * passing the peer's too would send two Connection fields (one
         * maybe listing keep-alive or other hop-by-hop names). */
        return !keep_upgrade;
    default:
        break;
    }
    if (!(h->flags & ZLB_H1_F_CONN_TOKENS))
        return 0;
    for (uint32_t i = 0; i < h->n_headers; i++)
        if (h->headers[i].id == ZLB_H1_HDR_CONNECTION &&
            name_in_list(buf, f->name, buf + h->headers[i].value.off, h->headers[i].value.len))
            return 1;
    return 0;
}

/* Does one of the route's header operations name this field? Names of ops
 * are lowercase (router.c), so only those of the field's length are
 * compared. */
static int op_named(const zlb_header_op *ops, uint32_t n, const char *buf, zlb_span name)
{
    for (uint32_t i = 0; i < n; i++)
        if (ops[i].name.len == name.len && zlb_h1_name_is(buf, name, ops[i].name.p))
            return 1;
    return 0;
}

/* Eight values 0..15, one per byte of v, as eight lowercase hex digits at
 * out: '0' + v, plus 39 more ('a' - '0' - 10) in the bytes where v > 9
 * (there v + 6 reaches bit 4). No byte carries into the next. */
static void nibbles_to_hex(uint64_t v, char *out)
{
    const uint64_t ones = 0x0101010101010101ull;
    uint64_t above9 = ((v + 6 * ones) >> 4) & ones;
    uint64_t digits = v + '0' * ones + 39 * above9;
    memcpy(out, &digits, 8);
}

/* Writes 16 * n lowercase hex digits of fresh randomness at out (no NUL):
 * each 64-bit draw gives 16 digits, its low and its high nibbles, computed
 * eight at a time. Random bits need no particular digit order. */
static void hex_random(uint64_t *rng, char *out, int n)
{
    const uint64_t low_nibbles = 0x0f0f0f0f0f0f0f0full;
    for (int i = 0; i < n; i++) {
        uint64_t r = zlb_rand64(rng);
        nibbles_to_hex(r & low_nibbles, out + 16 * i);
        nibbles_to_hex((r >> 4) & low_nibbles, out + 16 * i + 8);
    }
}

/* Appends the field line "name: value\r\n" to b: one room check for the
 * whole line (it runs for every forwarded field). 0, or -1 when out of
 * memory (b unchanged). Both lengths come from heads and route config,
 * far below 2^31, so their sum cannot wrap. */
static int append_header(hbuf *b, const char *name, uint32_t nlen, const char *value, uint32_t vlen)
{
    if (hbuf_reserve(b, nlen + vlen + 4) != 0)
        return -1;
    char *p = b->p + b->len;
    memcpy(p, name, nlen);
    memcpy(p + nlen, ": ", 2);
    memcpy(p + nlen + 2, value, vlen);
    memcpy(p + nlen + 2 + vlen, "\r\n", 2);
    b->len += nlen + vlen + 4;
    return 0;
}

/* Writes the upstream request head into c->replay. */
static int build_request_head(zlb_hconn *c, const zlb_route *rt)
{
    const char *buf = hbuf_data(&c->s.in);
    const zlb_h1_head *h = &c->rq;
    hbuf *b = &c->replay;
    int rc = 0;
    rc |= hbuf_append(b, buf + h->method.off, h->method.len);
    rc |= hbuf_append(b, " ", 1);
    const char *target = buf + h->target.off;
    uint32_t tlen = h->target.len;
    if (rt->prefix_rewrite.p && rt->path_kind == ZLB_MATCH_PREFIX && tlen >= rt->path.len) {
        rc |= hbuf_append(b, rt->prefix_rewrite.p, rt->prefix_rewrite.len);
        rc |= hbuf_append(b, target + rt->path.len, tlen - rt->path.len);
    } else {
        rc |= hbuf_append(b, target, tlen);
    }
    rc |= hbuf_puts(b, c->client_10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
    const zlb_header_op *set = rt->ops[ZLB_REQ_SET], *rem = rt->ops[ZLB_REQ_REMOVE];
    uint32_t n_set = rt->n_ops[ZLB_REQ_SET], n_rem = rt->n_ops[ZLB_REQ_REMOVE];
    int have_rid = 0, have_tp = 0;
    /* x-forwarded-client-cert by the listener's mode; a request that did not
     * come over mutual TLS is sanitized whatever the mode (as Envoy does). */
    const htls *t = c->tls;
    int xfcc = t && t->peer.id[0] ? c->l->opts.http.forward_client_cert : ZLB_XFCC_SANITIZE;
    /* Several X-Forwarded-For fields form one list (RFC 9110 5.3): the
     * client goes once, after the last of them; likewise this hop's XFCC
     * element in append_forward mode. */
    uint32_t last_xfcc = UINT32_MAX, last_xff = UINT32_MAX;
    int add_xff = c->l->opts.http.append_x_forwarded_for;
    for (uint32_t i = 0; i < h->n_headers; i++) {
        if (h->headers[i].id == ZLB_H1_HDR_X_FORWARDED_FOR && add_xff)
            last_xff = i;
        else if (h->headers[i].id == ZLB_H1_HDR_X_FORWARDED_CLIENT_CERT && xfcc == ZLB_XFCC_APPEND_FORWARD)
            last_xfcc = i;
    }
    for (uint32_t i = 0; i < h->n_headers; i++) {
        const zlb_h1_header *f = &h->headers[i];
        zlb_span name = f->name, value = f->value;
        if (is_hop_by_hop(buf, h, f, c->upgrade) || op_named(set, n_set, buf, name) ||
            op_named(rem, n_rem, buf, name))
            continue;
        switch (f->id) {
        case ZLB_H1_HDR_X_FORWARDED_PROTO:
            continue; /* ours replaces it */
        case ZLB_H1_HDR_X_FORWARDED_CLIENT_CERT:
            if (xfcc == ZLB_XFCC_SANITIZE || xfcc == ZLB_XFCC_SANITIZE_SET)
                continue;
            if (i == last_xfcc && t->xfcc_len) {
                /* append_forward: this hop's element ends the list (when
                 * there is one: see hc_xfcc_prepare). */
                rc |= hbuf_append(b, buf + name.off, name.len) | hbuf_append(b, ": ", 2);
                rc |= hbuf_append(b, buf + value.off, value.len) | hbuf_append(b, ",", 1);
                rc |= hbuf_append(b, t->xfcc, t->xfcc_len) | hbuf_append(b, "\r\n", 2);
                continue;
            }
            break;
        case ZLB_H1_HDR_HOST:
            if (rt->host_rewrite.len) {
                rc |= append_header(b, "host", 4, rt->host_rewrite.p, rt->host_rewrite.len);
                continue;
            }
            break;
        case ZLB_H1_HDR_X_FORWARDED_FOR:
            if (i == last_xff) {
                /* Append the client to the chain, Envoy/nginx style. */
                rc |= hbuf_append(b, buf + name.off, name.len) | hbuf_append(b, ": ", 2);
                rc |= hbuf_append(b, buf + value.off, value.len) | hbuf_puts(b, ", ") | hbuf_puts(b, c->peer_ip);
                rc |= hbuf_append(b, "\r\n", 2);
                continue;
            }
            break;
        case ZLB_H1_HDR_X_REQUEST_ID:
            have_rid = 1;
            break;
        case ZLB_H1_HDR_TRACEPARENT:
            have_tp = 1;
            break;
        default:
            break;
        }
        rc |= append_header(b, buf + name.off, name.len, buf + value.off, value.len);
    }
    if (add_xff && last_xff == UINT32_MAX)
        rc |= append_header(b, "x-forwarded-for", 15, c->peer_ip, (uint32_t)strlen(c->peer_ip));
    if ((xfcc == ZLB_XFCC_SANITIZE_SET || (xfcc == ZLB_XFCC_APPEND_FORWARD && last_xfcc == UINT32_MAX)) &&
        t->xfcc_len)
        rc |= append_header(b, "x-forwarded-client-cert", 23, t->xfcc, t->xfcc_len);
    /* The scheme the client used to reach us: a permissive listener serves
     * both, so it is per connection, not per listener. */
    rc |= hbuf_puts(b, c->s.ssl ? "x-forwarded-proto: https\r\n" : "x-forwarded-proto: http\r\n");
    if (!have_rid) {
        char id[32];
        hex_random(&c->w->rng, id, 2);
        rc |= append_header(b, "x-request-id", 12, id, 32);
    }
    if (!have_tp) {
        /* W3C trace context: version 00, 16-byte trace id, 8-byte parent id, sampled. */
        char tp[55] = "00-";
        hex_random(&c->w->rng, tp + 3, 2);
        tp[35] = '-';
        hex_random(&c->w->rng, tp + 36, 1);
        memcpy(tp + 52, "-01", 3);
        rc |= append_header(b, "traceparent", 11, tp, 55);
    }
    for (int k = ZLB_REQ_ADD; k <= ZLB_REQ_SET; k++)
        for (uint32_t i = 0; i < rt->n_ops[k]; i++)
            rc |= append_header(b, rt->ops[k][i].name.p, rt->ops[k][i].name.len, rt->ops[k][i].value.p,
                                rt->ops[k][i].value.len);
    if (c->upgrade)
        rc |= hbuf_puts(b, "connection: upgrade\r\n");
    rc |= hbuf_append(b, "\r\n", 2);
    return rc ? -1 : 0;
}

/* Records the route's response header operations: [op][nlen u16][vlen u16][name][value]... */
static int save_resp_ops(zlb_hconn *c, const zlb_route *rt)
{
    for (int k = ZLB_RESP_ADD; k <= ZLB_RESP_REMOVE; k++) {
        for (uint32_t i = 0; i < rt->n_ops[k]; i++) {
            const zlb_header_op *op = &rt->ops[k][i];
            unsigned char hdr[5] = {(unsigned char)k, (unsigned char)(op->name.len >> 8),
                                    (unsigned char)op->name.len, (unsigned char)(op->value.len >> 8),
                                    (unsigned char)op->value.len};
            if (hbuf_append(&c->resp_ops, hdr, 5) || hbuf_append(&c->resp_ops, op->name.p, op->name.len) ||
                hbuf_append(&c->resp_ops, op->value.p, op->value.len))
                return -1;
        }
    }
    return 0;
}

/* Iterates the saved response ops: returns 0 at the end. */
static int next_resp_op(const hbuf *ops, uint32_t *pos, int *kind, const char **name, uint32_t *nlen,
                        const char **value, uint32_t *vlen)
{
    if (*pos + 5 > hbuf_size(ops))
        return 0;
    const unsigned char *h = (const unsigned char *)hbuf_data(ops) + *pos;
    *kind = h[0];
    *nlen = (uint32_t)(h[1] << 8 | h[2]);
    *vlen = (uint32_t)(h[3] << 8 | h[4]);
    *name = (const char *)h + 5;
    *value = *name + *nlen;
    *pos += 5 + *nlen + *vlen;
    return 1;
}

/* Is this upstream response header replaced or removed by the route? */
static int resp_op_names(const zlb_hconn *c, const char *buf, zlb_span name)
{
    uint32_t pos = 0, nl, vl;
    int kind;
    const char *n, *v;
    while (next_resp_op(&c->resp_ops, &pos, &kind, &n, &nl, &v, &vl))
        if ((kind == ZLB_RESP_SET || kind == ZLB_RESP_REMOVE) && name.len == nl &&
            strncasecmp(buf + name.off, n, nl) == 0)
            return 1;
    return 0;
}

/* Writes the client response head from the parsed upstream head. */
static int forward_response_head(zlb_hconn *c, const char *buf)
{
    const zlb_h1_head *h = &c->rs;
    hbuf *b = &c->s.out;
    int rc = 0;
    /* The parser guarantees a 3-digit status; no printf on the hot path. */
    char line[13] = {'H', 'T', 'T', 'P', '/', '1', '.', c->client_10 ? '0' : '1', ' ',
                     (char)('0' + h->status / 100), (char)('0' + h->status / 10 % 10), (char)('0' + h->status % 10),
                     ' '};
    rc |= hbuf_append(b, line, sizeof(line));
    rc |= hbuf_append(b, buf + h->reason.off, h->reason.len);
    rc |= hbuf_append(b, "\r\n", 2);
    int upgrade = h->status == 101;
    for (uint32_t i = 0; i < h->n_headers; i++) {
        zlb_span name = h->headers[i].name, value = h->headers[i].value;
        if (is_hop_by_hop(buf, h, &h->headers[i], upgrade) || resp_op_names(c, buf, name))
            continue;
        rc |= append_header(b, buf + name.off, name.len, buf + value.off, value.len);
    }
    uint32_t pos = 0, nl, vl;
    int kind;
    const char *nm, *v;
    while (next_resp_op(&c->resp_ops, &pos, &kind, &nm, &nl, &v, &vl))
        if (kind == ZLB_RESP_ADD || kind == ZLB_RESP_SET)
            rc |= append_header(b, nm, nl, v, vl);
    if (upgrade)
        rc |= hbuf_puts(b, "connection: upgrade\r\n");
    else if (c->close_after)
        rc |= hbuf_puts(b, "connection: close\r\n");
    else if (c->client_10)
        rc |= hbuf_puts(b, "connection: keep-alive\r\n");
    rc |= hbuf_append(b, "\r\n", 2);
    return rc ? -1 : 0;
}

/* ---- request dispatch --------------------------------------------------------- */

static int status_retriable(const zlb_retry_policy *p, int status)
{
    if ((p->retry_on & ZLB_RETRY_5XX) && status >= 500)
        return 1;
    if ((p->retry_on & ZLB_RETRY_GATEWAY) && (status == 502 || status == 503 || status == 504))
        return 1;
    if (p->retry_on & ZLB_RETRY_CODES)
        for (int i = 0; i < p->n_codes; i++)
            if (p->codes[i] == status)
                return 1;
    return 0;
}

/* The request's cluster in the current snapshot, or NULL when a config
 * change removed it. */
static const zlb_cluster *hc_cluster(const zlb_hconn *c)
{
    const zlb_snapshot *snap = c->w->snap;
    int ci = snap && c->cluster[0] ? zlb_snapshot_find_cluster(snap, c->cluster) : -1;
    return ci >= 0 ? &snap->clusters[ci] : NULL;
}

/* Outcome of a try for outlier detection (and peak-EWMA latency). */
static void hc_report(zlb_hconn *c, zlb_ep_state *st, int success, int64_t latency_ns)
{
    const zlb_cluster *cl = hc_cluster(c);
    for (uint32_t i = 0; cl && i < cl->n_endpoints; i++)
        if (cl->endpoints[i].state == st)
            zlb_lb_report(c->w->snap, cl, &cl->endpoints[i], success, latency_ns, c->w->now_ns);
}

/* May this request be tried again after a failed try? Policy first, then
 * the cluster's retry budget (Envoy's: retries in flight stay below
 * budget% of active requests, but at least min_retry_concurrency), so that
 * retries cannot storm an overloaded cluster. */
static int may_retry(zlb_hconn *c, int connect_failure)
{
    if (!c->replayable || c->resp_started || !c->cs)
        return 0;
    const zlb_cluster *cl = hc_cluster(c);
    if (connect_failure) {
        /* No byte reached an upstream: safe for any method. */
        uint32_t limit = (c->retry.retry_on & ZLB_RETRY_CONNECT_FAILURE) ? c->retry.num_retries
                                                                        : (cl ? cl->opts.connect_retries : 0);
        if (c->attempts > limit)
            return 0;
    } else if ((!c->idempotent && !c->retry.retry_non_idempotent) || c->attempts > c->retry.num_retries) {
        return 0;
    }
    if (c->holds_retry)
        return 1; /* already counted as one retry in flight */
    const zlb_breaker_opts *b = &c->breakers;
    int64_t active = atomic_load(&c->cs->active_requests);
    int64_t limit = b->retry_budget_percent ? active * b->retry_budget_percent / 100 : b->max_retries;
    if (b->retry_budget_percent && limit < b->min_retry_concurrency)
        limit = b->min_retry_concurrency;
    if (atomic_fetch_add(&c->cs->active_retries, 1) >= limit) {
        atomic_fetch_sub(&c->cs->active_retries, 1);
        zlb_cs_add(c->cs, c->w->id, ZLB_CS_RETRY_OVERFLOW, 1);
        return 0;
    }
    c->holds_retry = 1;
    return 1;
}

static void hc_dispatch(zlb_hconn *c);

/* Sends the request again: at once after a connect failure (nothing reached
 * an upstream), else after an exponential backoff with full jitter. */
static void hc_retry(zlb_hconn *c, int connect_failure)
{
    zlb_worker *w = c->w;
    ZLB_STAT_ADD(w, http_retries, 1);
    zlb_cs_add(c->cs, w->id, ZLB_CS_RETRIES, 1);
    uint32_t base = c->retry.backoff_base_ms, max = c->retry.backoff_max_ms;
    if (connect_failure || !base) {
        hc_dispatch(c);
        return;
    }
    uint64_t cap = (uint64_t)base << (c->attempts > 10 ? 10 : c->attempts - 1);
    if (max && cap > max)
        cap = max;
    uint64_t ms = zlb_rand64(&w->rng) % (cap + 1);
    c->backoff_deadline = w->now_ns + (int64_t)ms * 1000000 + 1;
    hc_arm_timer(c);
}

/* Ends the current try with a failure, then retries or answers 502/503/504. */
static void hc_fail_try(zlb_hconn *c, int connect_failure, int timed_out)
{
    zlb_worker *w = c->w;
    zlb_hup *u = c->up;
    if (u) {
        if (c->failed)
            zlb_ep_state_unref(c->failed);
        c->failed = u->st;
        zlb_ep_state_ref(c->failed);
        hc_report(c, u->st, 0, 0);
        if (connect_failure) {
            if (timed_out)
                ZLB_STAT_ADD(w, connect_timeouts, 1);
            else
                ZLB_STAT_ADD(w, connect_failures, 1);
            zlb_cs_add(c->cs, w->id, timed_out ? ZLB_CS_CONNECT_TIMEOUTS : ZLB_CS_CONNECT_FAILURES, 1);
        } else if (timed_out) {
            zlb_cs_add(c->cs, w->id, ZLB_CS_TIMEOUTS, 1);
        }
        hc_release_up(c, 0);
    }
    c->try_deadline = 0;
    c->al_flags |= timed_out ? ZLB_AL_UT : connect_failure ? ZLB_AL_UF : ZLB_AL_UC;
    int reset_ok = connect_failure || (c->retry.retry_on & (ZLB_RETRY_RESET | ZLB_RETRY_5XX)) || timed_out;
    if (reset_ok && may_retry(c, connect_failure)) {
        hc_retry(c, connect_failure);
        return;
    }
    if (c->resp_started) {
        hc_close(c, 1);
        return;
    }
    if (c->cs)
        zlb_cs_add(c->cs, w->id, ZLB_CS_EXHAUSTED, 1);
    c->close_after = 1;
    hc_local_reply(c, timed_out ? 504 : connect_failure ? 503 : 502, NULL,
                   timed_out ? "upstream timeout\n" : "upstream unavailable\n", 1);
}

/* Picks an endpoint for the request and sends it (again). */
static void hc_dispatch(zlb_hconn *c)
{
    zlb_worker *w = c->w;
    c->backoff_deadline = 0;
    const zlb_cluster *cl = hc_cluster(c);
    if (!cl) {
        c->al_flags |= ZLB_AL_NR;
        c->close_after = 1;
        hc_local_reply(c, 503, NULL, "no such cluster\n", 1);
        return;
    }
    const zlb_endpoint *exclude = NULL;
    for (uint32_t i = 0; c->failed && i < cl->n_endpoints; i++)
        if (cl->endpoints[i].state == c->failed)
            exclude = &cl->endpoints[i];
    zlb_pick_ctx ctx = {.rng = &w->rng, .has_hash = c->has_hash, .hash = c->hash, .now_ns = w->now_ns};
    zlb_endpoint *ep = zlb_lb_pick(w->lb, w->snap, cl, &ctx, exclude);
    if (!ep) {
        c->al_flags |= ZLB_AL_UF;
        c->close_after = 1;
        hc_local_reply(c, 503, NULL, "no healthy upstream\n", 1);
        return;
    }
    c->attempts++;
    memcpy(&c->up_addr, &ep->addr, ep->addrlen < sizeof(c->up_addr) ? ep->addrlen : sizeof(c->up_addr));
    zlb_hup *u = pool_take(w, ep->state);
    if (u) {
        ZLB_STAT_ADD(w, http_upstream_reused, 1);
    } else {
        if ((uint64_t)atomic_load(&c->cs->active_connections) >= c->breakers.max_connections) {
            hc_overflow(c, "connections");
            return;
        }
        if ((uint64_t)atomic_load(&c->cs->pending_requests) >= c->breakers.max_pending) {
            hc_overflow(c, "pending");
            return;
        }
        ZLB_STAT_ADD(w, connect_attempts, 1);
        zlb_cs_add(c->cs, w->id, ZLB_CS_CONNECT_ATTEMPTS, 1);
        u = hup_connect(w, ep, c->cs, &cl->opts);
        if (!u) {
            ZLB_STAT_ADD(w, connect_failures, 1);
            zlb_cs_add(c->cs, w->id, ZLB_CS_CONNECT_FAILURES, 1);
            zlb_lb_report(w->snap, cl, ep, 0, 0, w->now_ns);
            c->al_flags |= ZLB_AL_UF;
            if (may_retry(c, 1)) {
                hc_retry(c, 1);
                return;
            }
            c->close_after = 1;
            hc_local_reply(c, 503, NULL, "upstream connect failed\n", 1);
            return;
        }
        atomic_fetch_add(&c->cs->pending_requests, 1);
        c->holds_pending = 1;
    }
    u->owner = c;
    c->up = u;
    c->up_rx0 = u->s.rx;
    c->up_tx0 = u->s.tx + hbuf_size(&u->s.out);
    zlb_h1_parser_init_response(&c->sp, NULL, c->is_head);
    memset(&c->rs, 0, offsetof(zlb_h1_head, headers));
    if (hbuf_append(&u->s.out, hbuf_data(&c->replay), hbuf_size(&c->replay)) != 0) {
        hc_close(c, 1);
        return;
    }
    uint32_t per_try = c->retry.per_try_timeout_ms;
    c->try_deadline = per_try ? w->now_ns + (int64_t)per_try * 1000000 : 0;
    hc_arm_timer(c);
}

/* Hashes the request for ring_hash/maglev by the route's hash policy. */
static void request_hash(zlb_hconn *c, const zlb_route *rt, const char *buf)
{
    const char *v = NULL;
    uint32_t len = 0;
    c->has_hash = 1;
    switch (rt->hash) {
    case ZLB_HASH_HEADER:
        v = zlb_h1_find_header(buf, &c->rq, rt->hash_name.p, rt->hash_name.len, &len);
        break;
    case ZLB_HASH_COOKIE: {
        uint32_t clen = 0;
        const char *ck = zlb_h1_find_header(buf, &c->rq, "cookie", 6, &clen);
        for (uint32_t i = 0; ck && i < clen;) {
            while (i < clen && (ck[i] == ' ' || ck[i] == ';'))
                i++;
            uint32_t s = i;
            while (i < clen && ck[i] != '=' && ck[i] != ';')
                i++;
            if (i < clen && ck[i] == '=' && i - s == rt->hash_name.len &&
                memcmp(ck + s, rt->hash_name.p, i - s) == 0) {
                uint32_t vs = ++i;
                while (i < clen && ck[i] != ';')
                    i++;
                v = ck + vs;
                len = i - vs;
                break;
            }
            while (i < clen && ck[i] != ';')
                i++;
        }
        break;
    }
    case ZLB_HASH_SOURCE_IP:
        v = c->peer_ip;
        len = (uint32_t)strlen(c->peer_ip);
        break;
    case ZLB_HASH_PATH:
        v = buf + c->rq.target.off;
        len = c->rq.target.len;
        break;
    default:
        break;
    }
    if (v)
        c->hash = zlb_hash64(v, len, 0);
    else
        c->has_hash = 0; /* no key: the policy picks at random */
}

/* Re-frames chunked body bytes from src into dst. Returns the bytes of
 * src consumed, or -1 on malformed framing or no memory.
 *
 * The body is re-encoded rather than copied: each payload piece goes out as
 * one chunk with a canonical size line, and the body ends in a bare
 * last-chunk. Whatever the sender wrote around the payload (leading zeros,
 * chunk extensions, trailer fields) never reaches the next hop, so a peer
 * whose chunk parser is laxer or stricter than ours reads the same message:
 * e.g. a size line of 100 zeros and a 5 is valid hex to us, while a peer that
 * keeps only the first 16 digits would read a last-chunk and take the rest
 * of the body for a second request. Trailers are dropped, as Envoy does for
 * HTTP/1 by default. */
static int64_t rechunk(hbuf *src, hbuf *dst, zlb_h1_chunked *ch, uint8_t *done)
{
    uint32_t avail = hbuf_size(src), take = 0;
    for (;;) {
        size_t consumed = 0, off = 0, dlen = 0;
        const char *p = hbuf_data(src) + take;
        int r = zlb_h1_chunked_step(ch, p, avail - take, &consumed, &off, &dlen);
        if (r == ZLB_H1_CHUNK_ERROR)
            return -1;
        if (r == ZLB_H1_CHUNK_DATA && dlen) {
            char line[24];
            int n = snprintf(line, sizeof(line), "%zx\r\n", dlen);
            if (hbuf_append(dst, line, (uint32_t)n) || hbuf_append(dst, p + off, (uint32_t)dlen) ||
                hbuf_append(dst, "\r\n", 2))
                return -1;
        }
        take += (uint32_t)consumed;
        if (r == ZLB_H1_CHUNK_DONE) {
            if (hbuf_append(dst, "0\r\n\r\n", 5))
                return -1;
            *done = 1;
            break;
        }
        if (r == ZLB_H1_CHUNK_AGAIN || consumed == 0 || take == avail)
            break;
    }
    return take;
}

/* Consumes request body bytes from the client buffer into dst (the replay
 * buffer while retrying is possible, else the upstream's), or response body
 * bytes from the upstream buffer into the client's. Returns 1 on progress,
 * 0 if none, -1 on a malformed body. */
static int move_body(hbuf *src, hbuf *dst, int kind, uint64_t *left, zlb_h1_chunked *ch, uint8_t *done,
                     uint32_t limit)
{
    if (*done || hbuf_size(src) == 0 || hbuf_size(dst) >= limit)
        return 0;
    uint32_t avail = hbuf_size(src);
    uint32_t take;
    if (kind == ZLB_H1_BODY_CHUNKED) {
        int64_t n = rechunk(src, dst, ch, done);
        if (n < 0)
            return -1;
        hbuf_consume(src, (uint32_t)n);
        return n > 0;
    }
    if (kind == ZLB_H1_BODY_LENGTH) {
        take = *left < avail ? (uint32_t)*left : avail;
        *left -= take;
        *done = *left == 0;
    } else { /* close-delimited (responses only) */
        take = avail;
    }
    if (take == 0)
        return 0;
    if (hbuf_append(dst, hbuf_data(src), take) != 0)
        return -1;
    hbuf_consume(src, take);
    return 1;
}

/* Where the client connection is, for TLS events (tls_worker.h). */
static zlb_tls_where hc_where(const zlb_hconn *c)
{
    return (zlb_tls_where){.listener_id = c->l->id, .port = c->l->bound_port, .addr = &c->peer,
                           .cluster = c->l->opts.cluster};
}

/* The listener's allow/deny rules for this request (peer ID, "" for a
 * plaintext client of a permissive listener; port; method; path without the
 * query). Returns 1 to go on; 0 after answering 403 (counted in
 * authz_denied and reported as a "denied" event with the peer's ID). */
static int hc_authorize(zlb_hconn *c, const char *buf)
{
    const zlb_tls_policy *p = c->l->tls;
    if (!p->n_allow && !p->n_deny)
        return 1;
    const char *target = buf + c->rq.target.off;
    const char *q = memchr(target, '?', c->rq.target.len);
    zlb_authz_req req = {.method = zlb_http_method_bit(buf + c->rq.method.off, c->rq.method.len),
                         .path = target, .path_len = q ? (size_t)(q - target) : c->rq.target.len};
    const char *why = "denied by the listener's authorization rules";
    if (p->path_rules && !zlb_authz_path_canonical(req.path, req.path_len))
        why = "path not in canonical form, refused by the listener's path rules";
    else if (zlb_tls_authorize_req(p, c->tls->peer.id, c->l->bound_port, &req))
        return 1;
    ZLB_STAT_ADD(c->w, authz_denied, 1);
    char reason[ZLB_TLS_REASON_MAX];
    snprintf(reason, sizeof(reason), "%s%s: %.*s %.*s", c->tls->peer.id[0] ? "" : "plaintext peer ", why,
             (int)(c->rq.method.len > 32 ? 32 : c->rq.method.len), buf + c->rq.method.off,
             (int)(req.path_len > 256 ? 256 : req.path_len), req.path);
    zlb_tls_where at = hc_where(c);
    zlb_tls_report(c->w, &at, ZLB_TLS_EV_DENIED, ZLB_TLS_FAIL_NONE, c->tls->peer.id, reason);
    hc_answer_locally(c, 403, NULL, "access denied\n");
    return 0;
}

/* A complete request head is in c->s.in: route it and start the exchange. */
static void hc_start_request(zlb_hconn *c)
{
    zlb_worker *w = c->w;
    const zlb_http_opts *o = &c->l->opts.http;
    const char *buf = hbuf_data(&c->s.in);
    c->head_deadline = c->idle_deadline = 0;
    c->req_start_ns = w->now_ns;
    c->req_start_unix_ns = zlb_worker_unix_ns(w);
    if (atomic_load_explicit(&w->eng->access_log, memory_order_relaxed)) {
        /* Kept for the record: the head leaves the buffer before the end. */
        copy_trunc(c->al_method, sizeof(c->al_method), buf + c->rq.method.off, c->rq.method.len);
        copy_trunc(c->al_authority, sizeof(c->al_authority), buf + c->rq.host.off, c->rq.host.len);
        copy_trunc(c->al_path, sizeof(c->al_path), buf + c->rq.target.off, c->rq.target.len);
    }
    c->client_10 = c->rq.version_minor == 0;
    c->close_after = (c->rq.flags & ZLB_H1_F_CLOSE) || (c->client_10 && !(c->rq.flags & ZLB_H1_F_KEEP_ALIVE));
    c->upgrade = (c->rq.flags & ZLB_H1_F_UPGRADE) != 0;
    c->is_head = c->rq.method.len == 4 && memcmp(buf + c->rq.method.off, "HEAD", 4) == 0;
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", NULL};
    c->idempotent = 0;
    for (int i = 0; idem[i]; i++)
        if (c->rq.method.len == strlen(idem[i]) && memcmp(buf + c->rq.method.off, idem[i], c->rq.method.len) == 0)
            c->idempotent = 1;

    const zlb_router *r = w->snap ? zlb_snapshot_find_router(w->snap, o->route_table) : NULL;
    const zlb_route *rt = r ? zlb_router_match(r, buf, &c->rq, c->tls ? c->tls->peer.id : "") : NULL;
    uint32_t head_len = c->rq.head_len;
    c->req_body = c->rq.body;
    c->req_left = c->rq.content_length;
    c->req_done = c->rq.body == ZLB_H1_BODY_NONE || (c->rq.body == ZLB_H1_BODY_LENGTH && c->req_left == 0);
    zlb_h1_chunked_init(&c->req_chunks);
    c->state = HS_EXCHANGE;
    if (ZLB_UNLIKELY(c->l->tls != NULL) && !hc_authorize(c, buf))
        return;
    if (!rt) {
        c->al_flags |= ZLB_AL_NR;
        hc_answer_locally(c, 404, NULL, "no route\n");
        return;
    }
    if (rt->action == ZLB_ACTION_DIRECT) {
        hc_answer_locally(c, rt->status, NULL, rt->body.p);
        return;
    }
    if (rt->action == ZLB_ACTION_REDIRECT) {
        char loc[1024];
        snprintf(loc, sizeof(loc), "location: %s://%s%s\r\n", rt->redirect_scheme.len ? rt->redirect_scheme.p : "http",
                 rt->redirect_host.len ? rt->redirect_host.p : "", rt->redirect_path.p);
        hc_answer_locally(c, rt->status, loc, NULL);
        return;
    }
    const zlb_cluster *cl = &w->snap->clusters[zlb_route_pick_cluster(rt, &w->rng)];
    zlb_strlcpy(c->cluster, cl->opts.name, sizeof(c->cluster));
    c->cs = cl->stats;
    atomic_fetch_add(&c->cs->refs, 1);
    c->breakers = cl->opts.breakers;
    if ((uint64_t)atomic_fetch_add(&c->cs->active_requests, 1) >= c->breakers.max_requests) {
        atomic_fetch_sub(&c->cs->active_requests, 1);
        hc_overflow(c, "requests");
        return;
    }
    c->holds_request = 1;
    c->retry = rt->retry;
    c->timeout_ms = rt->timeout_ms ? rt->timeout_ms : o->request_timeout_ms;
    request_hash(c, rt, buf);
    hbuf_clear(&c->replay);
    hbuf_clear(&c->resp_ops);
    if (build_request_head(c, rt) != 0 || save_resp_ops(c, rt) != 0) {
        hc_close(c, 1);
        return;
    }
    hbuf_consume(&c->s.in, head_len);
    /* Body bytes that are already here go into the replay copy; a request
     * that fits the retry buffer entirely can be sent again. */
    if (move_body(&c->s.in, &c->replay, c->req_body, &c->req_left, &c->req_chunks, &c->req_done,
                  o->retry_buffer) < 0) {
        c->close_after = 1;
        hc_local_reply(c, 400, NULL, "bad request body\n", 1);
        return;
    }
    c->replayable = c->req_done && hbuf_size(&c->replay) <= o->retry_buffer && !c->upgrade;
    if (c->timeout_ms)
        c->req_deadline = w->now_ns + (int64_t)c->timeout_ms * 1000000;
    hc_dispatch(c);
}

/* ---- response handling ---------------------------------------------------------- */

static void hc_finish_exchange(zlb_hconn *c, int upstream_reusable)
{
    zlb_worker *w = c->w;
    if (c->up) {
        /* 5xx counts as a failure for outlier detection (consecutive 5xx). */
        hc_report(c, c->up->st, c->status < 500, w->now_ns - c->req_start_ns);
        c->up->served++;
        uint32_t max = c->l->opts.http.max_requests_per_conn;
        hc_release_up(c, upstream_reusable && !(c->rs.flags & ZLB_H1_F_CLOSE) && !c->client_10 &&
                             (!max || c->up->served < max));
    }
    hc_request_done(c, c->status);
    c->req_deadline = c->try_deadline = 0;
    if (c->close_after) {
        c->state = HS_CLOSING;
        hc_arm_timer(c);
    } else {
        hc_next_request(c);
    }
}

/* Handles bytes from the upstream. Returns 1 on progress. */
static int hc_upstream_data(zlb_hconn *c)
{
    zlb_hup *u = c->up;
    if (!u || u->connecting)
        return 0;
    if (!c->resp_started) {
        if (hbuf_size(&u->s.in) == 0) {
            if (u->s.eof) {
                /* Closed before any response byte: a reset for retry purposes. */
                hc_fail_try(c, 0, 0);
                return 1;
            }
            return 0;
        }
        int r = zlb_h1_parse(&c->sp, hbuf_data(&u->s.in), hbuf_size(&u->s.in), &c->rs);
        if (r == ZLB_H1_AGAIN) {
            if (u->s.eof) {
                hc_fail_try(c, 0, 0);
                return 1;
            }
            return 0;
        }
        if (r == ZLB_H1_ERROR) {
            hc_release_up(c, 0);
            c->close_after = 1;
            hc_local_reply(c, 502, NULL, "invalid upstream response\n", 1);
            return 1;
        }
        c->status = c->rs.status;
        if (c->status >= 100 && c->status < 200 && c->status != 101) {
            /* Interim (100 Continue etc.): forward, then wait for the final one. */
            if (forward_response_head(c, hbuf_data(&u->s.in)) != 0)
                return hc_close(c, 1), 1;
            hbuf_consume(&u->s.in, c->rs.head_len);
            zlb_h1_parser_init_response(&c->sp, NULL, c->is_head);
            memset(&c->rs, 0, offsetof(zlb_h1_head, headers));
            return 1;
        }
        if (status_retriable(&c->retry, c->status) && may_retry(c, 0)) {
            /* The answer is dropped unread, so its connection cannot be reused. */
            hc_report(c, u->st, c->status < 500, c->w->now_ns - c->req_start_ns);
            if (c->failed)
                zlb_ep_state_unref(c->failed);
            c->failed = u->st;
            zlb_ep_state_ref(c->failed);
            hc_release_up(c, 0);
            hc_retry(c, 0);
            return 1;
        }
        if (c->status == 101 && !c->upgrade) {
            hc_release_up(c, 0);
            c->close_after = 1;
            hc_local_reply(c, 502, NULL, "unexpected upgrade\n", 1);
            return 1;
        }
        if (forward_response_head(c, hbuf_data(&u->s.in)) != 0)
            return hc_close(c, 1), 1;
        hbuf_consume(&u->s.in, c->rs.head_len);
        c->resp_started = 1;
        c->try_deadline = 0;
        if (c->status == 101) {
            ZLB_STAT_ADD(c->w, http_upgrades, 1);
            hc_request_done(c, 101);
            c->state = HS_TUNNEL;
            c->req_deadline = c->idle_deadline = c->head_deadline = 0;
            hc_arm_timer(c);
            return 1;
        }
        c->resp_body = c->rs.body;
        c->resp_left = c->rs.content_length;
        zlb_h1_chunked_init(&c->resp_chunks);
        if (c->resp_body == ZLB_H1_BODY_CLOSE)
            c->close_after = 1; /* the client learns the end from our close */
    }
    uint8_t done = c->resp_body == ZLB_H1_BODY_NONE ||
                   (c->resp_body == ZLB_H1_BODY_LENGTH && c->resp_left == 0);
    int progress = 0;
    if (!done) {
        int r = move_body(&u->s.in, &c->s.out, c->resp_body, &c->resp_left, &c->resp_chunks, &done, HWM);
        if (r < 0)
            return hc_close(c, 1), 1;
        progress = r;
        if (c->resp_body == ZLB_H1_BODY_CLOSE && u->s.eof && hbuf_size(&u->s.in) == 0)
            done = 1;
        else if (!done && u->s.eof && hbuf_size(&u->s.in) == 0)
            return hc_close(c, 1), 1; /* truncated: the client must not take it as complete */
    }
    if (done && c->req_done) {
        hc_finish_exchange(c, c->resp_body != ZLB_H1_BODY_CLOSE);
        return 1;
    }
    return progress;
}

/* ---- the driver ----------------------------------------------------------------- */

static int hc_step_head(zlb_hconn *c)
{
    const zlb_http_opts *o = &c->l->opts.http;
    if (hbuf_size(&c->s.in) == 0)
        return 0;
    if (!c->head_deadline && o->header_timeout_ms) {
        c->head_deadline = c->w->now_ns + (int64_t)o->header_timeout_ms * 1000000;
        c->idle_deadline = 0;
        hc_arm_timer(c);
    }
    int r = zlb_h1_parse(&c->rp, hbuf_data(&c->s.in), hbuf_size(&c->s.in), &c->rq);
    if (r == ZLB_H1_AGAIN)
        return 0;
    if (r == ZLB_H1_ERROR) {
        ZLB_STAT_ADD(c->w, http_bad_requests, 1);
        char msg[160];
        snprintf(msg, sizeof(msg), "%s\n", c->rq.error ? c->rq.error : "bad request");
        hc_local_reply(c, c->rq.error_status ? c->rq.error_status : 400, NULL, msg, 1);
        return 1;
    }
    hc_start_request(c);
    return 1;
}

static int hc_step_request_body(zlb_hconn *c)
{
    if (c->req_done || !c->up)
        return 0;
    /* Past the retry buffer: stream straight to the upstream, no replays. */
    c->replayable = 0;
    int r = move_body(&c->s.in, &c->up->s.out, c->req_body, &c->req_left, &c->req_chunks, &c->req_done, HWM);
    if (r < 0) {
        hc_close(c, 1);
        return 1;
    }
    return r;
}

static int hc_step_tunnel(zlb_hconn *c)
{
    zlb_hup *u = c->up;
    int progress = 0;
    if (!u)
        return 0;
    if (hbuf_size(&u->s.in) && hbuf_size(&c->s.out) < HWM) {
        progress |= hbuf_append(&c->s.out, hbuf_data(&u->s.in), hbuf_size(&u->s.in)) == 0;
        hbuf_clear(&u->s.in);
    }
    if (hbuf_size(&c->s.in) && hbuf_size(&u->s.out) < HWM) {
        progress |= hbuf_append(&u->s.out, hbuf_data(&c->s.in), hbuf_size(&c->s.in)) == 0;
        hbuf_clear(&c->s.in);
    }
    if ((u->s.eof && !hbuf_size(&c->s.out)) || (c->s.eof && !hbuf_size(&u->s.out))) {
        hc_close(c, 0);
        return 1;
    }
    return progress;
}

/* Lingering close: once the last response byte is out, send FIN and
 * discard what the client still sends, for at most LINGER_MS. Closing with
 * unread input would make the kernel send RST, which can destroy an error
 * reply (400, 408, 413...) the client has not read yet. Returns 1 when c
 * is closed. */
static int hc_linger(zlb_hconn *c)
{
    if (!c->shut_wr) {
        io_shutdown_wr(&c->s);
        c->shut_wr = 1;
        c->idle_deadline = c->head_deadline = c->req_deadline = c->try_deadline = c->backoff_deadline = 0;
        c->linger_deadline = c->w->now_ns + (int64_t)LINGER_MS * 1000000;
        hc_arm_timer(c);
    }
    hbuf_clear(&c->s.in);
    if (c->s.eof) {
        hc_close(c, 0);
        return 1;
    }
    return 0;
}

/* Moves everything that can move now. At most HC_RUN_ROUNDS rounds per
 * call, so one bulk transfer cannot starve the worker's other connections;
 * when that budget runs out with bytes still moving, the connection goes on
 * the worker's ready list and runs again after the current event batch:
 * with edge triggering no event would come for bytes already buffered or
 * sockets already known to be ready. */
#define HC_RUN_ROUNDS 64

static void hc_run(zlb_hconn *c)
{
    zlb_worker *w = c->w;
    for (int round = 0; !c->closed; round++) {
        if (round == HC_RUN_ROUNDS) {
            if (!c->ready) {
                c->ready = 1;
                c->ready_next = w->hready;
                w->hready = c;
            }
            return;
        }
        int progress = 0;
        uint32_t in_limit = c->state == HS_HEAD ? c->l->opts.http.max_head + 1 : HWM;
        int r = sock_read(w, &c->s, &c->io, in_limit);
        if (r < 0)
            return hc_close(c, 1);
        progress |= r;
        switch (c->state) {
        case HS_HEAD:
            progress |= hc_step_head(c);
            break;
        case HS_EXCHANGE:
            progress |= hc_step_request_body(c);
            progress |= hc_upstream_data(c);
            break;
        case HS_TUNNEL:
            progress |= hc_step_tunnel(c);
            break;
        default:
            break;
        }
        if (c->closed)
            return;
        zlb_hup *u = c->up;
        if (u && !u->closed && !u->connecting) {
            if ((r = sock_flush(w, &u->s, &u->io)) < 0) {
                if (c->resp_started || c->state == HS_TUNNEL)
                    return hc_close(c, 1);
                hc_fail_try(c, 0, 0);
                continue;
            }
            progress |= r;
            /* Back-pressure: leave upstream bytes in the kernel while the
             * client has not taken the previous ones. */
            r = hbuf_size(&c->s.out) < HWM ? sock_read(w, &u->s, &u->io, HWM) : 0;
            if (r < 0) {
                if (c->resp_started || c->state == HS_TUNNEL)
                    return hc_close(c, 1);
                hc_fail_try(c, 0, 0);
                continue;
            }
            progress |= r;
        }
        if ((r = sock_flush(w, &c->s, &c->io)) < 0)
            return hc_close(c, 1);
        progress |= r;
        if (c->state == HS_CLOSING && hbuf_size(&c->s.out) == 0 && hc_linger(c))
            return;
        if (c->s.eof && c->state == HS_HEAD && hbuf_size(&c->s.in) == 0)
            return hc_close(c, 0); /* client closed between requests */
        if (c->s.eof && c->state == HS_EXCHANGE && !c->req_done)
            return hc_close(c, 1); /* client vanished mid-request */
        if (!progress)
            break;
    }
}

static void hc_on_timer(zlb_timer *t, int64_t now)
{
    zlb_hconn *c = (zlb_hconn *)((char *)t - offsetof(zlb_hconn, timer));
    zlb_worker *w = c->w;
    if (ZLB_UNLIKELY(c->state == HS_TLS)) {
        if (now < c->idle_deadline) {
            hc_arm_timer(c);
            return;
        }
        ZLB_STAT_ADD(w, tls_handshake_timeouts, 1);
        zlb_tls_where at = hc_where(c);
        zlb_tls_report(w, &at, ZLB_TLS_EV_TIMEOUT, ZLB_TLS_FAIL_PROTOCOL, "",
                       "client did not complete the TLS handshake in time");
        return hc_close(c, 0);
    }
    if (c->head_deadline && now >= c->head_deadline) {
        ZLB_STAT_ADD(w, http_header_timeouts, 1);
        c->head_deadline = 0;
        hc_local_reply(c, 408, NULL, "request header timeout\n", 1);
    } else if (c->idle_deadline && now >= c->idle_deadline) {
        ZLB_STAT_ADD(w, idle_timeouts, 1);
        return hc_close(c, 0);
    } else if (c->linger_deadline && now >= c->linger_deadline) {
        return hc_close(c, 0);
    } else if (c->req_deadline && now >= c->req_deadline) {
        ZLB_STAT_ADD(w, http_request_timeouts, 1);
        if (c->cs)
            zlb_cs_add(c->cs, w->id, ZLB_CS_TIMEOUTS, 1);
        c->al_flags |= ZLB_AL_UT;
        c->req_deadline = c->backoff_deadline = 0;
        if (c->resp_started)
            return hc_close(c, 1);
        hc_release_up(c, 0);
        c->close_after = 1;
        hc_local_reply(c, 504, NULL, "upstream request timeout\n", 1);
    } else if (c->backoff_deadline && now >= c->backoff_deadline) {
        hc_dispatch(c);
    } else if (c->try_deadline && now >= c->try_deadline) {
        ZLB_STAT_ADD(w, http_request_timeouts, 1);
        hc_fail_try(c, 0, 1);
    } else {
        hc_arm_timer(c);
        return;
    }
    if (!c->closed) {
        hc_arm_timer(c);
        hc_run(c);
    }
}

/* ---- TLS listeners: first bytes and the handshake ----------------------------- */

/* The connection is ready for HTTP: TLS verified, or a permissive listener's
 * plaintext client. */
static void hc_tls_ready(zlb_hconn *c)
{
    c->s.readable = 1; /* the request may already wait behind the handshake */
    hc_next_request(c);
    hc_run(c);
}

/* The longest element this hop adds; one that would be longer (a client
 * certificate with a very long subject or very many names) is left out, as
 * an element that does not fit is. */
#define ZLB_XFCC_MAX 16384

typedef struct xfcc_buf {
    size_t len; /* past sizeof(p) once something did not fit */
    char p[ZLB_XFCC_MAX];
} xfcc_buf;

static void xfcc_put(xfcc_buf *b, const char *s, size_t n)
{
    if (b->len + n <= sizeof(b->p))
        memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void xfcc_puts(xfcc_buf *b, const char *s) { xfcc_put(b, s, strlen(s)); }

static void xfcc_append(const char *s, size_t len, void *arg) { xfcc_put(arg, s, len); }

/* Percent-encodes all but RFC 3986's unreserved characters, as Envoy does
 * with the PEM in Cert and Chain. */
static void xfcc_urlencoded(const char *pem, size_t len, void *arg)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)pem[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.' || ch == '_' || ch == '~') {
            xfcc_put(arg, pem + i, 1);
        } else {
            char esc[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            xfcc_put(arg, esc, 3);
        }
    }
}

/* Closes the quoted value of the key written from `mark` on, or takes the
 * key back when its writer failed (rc != 0: no certificate, or no memory). */
static void xfcc_end_quoted(xfcc_buf *b, size_t mark, int rc)
{
    if (rc != 0)
        b->len = mark;
    else
        xfcc_put(b, "\"", 1);
}

static void xfcc_dns(const char *name, size_t len, void *arg)
{
    xfcc_puts(arg, ";DNS=");
    xfcc_put(arg, name, len);
}

/* This hop's x-forwarded-client-cert element, once per connection and only
 * when the listener appends or sets it, in Envoy's keys and order: By (our
 * SPIFFE ID), Hash (SHA-256 of the client's certificate), Cert and Chain
 * (quoted URL-encoded PEM), Subject (quoted;
 * its RFC 2253 form already escapes '"' and '\\' with a backslash), URI (the
 * client's SPIFFE ID), DNS (each name). SPIFFE IDs and DNS names hold none of
 * ",;=\"", so they need no quoting. */
static void hc_xfcc_prepare(zlb_hconn *c)
{
    htls *t = c->tls;
    int mode = c->l->opts.http.forward_client_cert;
    uint32_t details = c->l->opts.http.xfcc_details;
    if (mode != ZLB_XFCC_APPEND_FORWARD && mode != ZLB_XFCC_SANITIZE_SET)
        return;
    xfcc_buf b; /* 16 KiB on the worker's stack, once per connection */
    b.len = 0;
    xfcc_puts(&b, "By=");
    xfcc_puts(&b, t->peer.mat->own_id);
    char hash[65];
    if (zlb_tls_peer_cert_sha256(c->s.ssl, hash) == 0) {
        xfcc_puts(&b, ";Hash=");
        xfcc_put(&b, hash, 64);
    }
    for (int chain = 0; chain <= 1; chain++) {
        if (!(details & (chain ? ZLB_XFCC_CHAIN : ZLB_XFCC_CERT)))
            continue;
        size_t mark = b.len;
        xfcc_puts(&b, chain ? ";Chain=\"" : ";Cert=\"");
        xfcc_end_quoted(&b, mark, zlb_tls_peer_pem(c->s.ssl, chain, xfcc_urlencoded, &b));
    }
    if (details & ZLB_XFCC_SUBJECT) {
        size_t mark = b.len;
        xfcc_puts(&b, ";Subject=\"");
        xfcc_end_quoted(&b, mark, zlb_tls_peer_subject(c->s.ssl, xfcc_append, &b));
    }
    xfcc_puts(&b, ";URI=");
    xfcc_puts(&b, t->peer.id);
    if (details & ZLB_XFCC_DNS)
        zlb_tls_peer_dns_names(c->s.ssl, xfcc_dns, &b);
    if (b.len > sizeof(b.p) || !(t->xfcc = malloc(b.len)))
        return; /* xfcc_len stays 0: no element */
    memcpy(t->xfcc, b.p, b.len);
    t->xfcc_len = (uint32_t)b.len;
}

/* HS_TLS: runs on every event of the client socket until the connection is
 * ready for HTTP (hc_tls_ready) or closed. The handshake deadline (in
 * idle_deadline, see hc_on_timer) bounds both steps. */
static void hc_tls_step(zlb_hconn *c)
{
    zlb_worker *w = c->w;
    htls *t = c->tls;
    zlb_tls_where at = hc_where(c);
    if (!c->s.ssl) {
        switch (zlb_tls_detect(c->s.fd)) {
        case ZLB_DETECT_WAIT:
            return;
        case ZLB_DETECT_ERROR:
            return hc_close(c, 1);
        case ZLB_DETECT_EOF:
            return hc_close(c, 0); /* the client left without a byte */
        case ZLB_DETECT_PLAIN:
            if (c->l->tls->mode == ZLB_TLS_PERMISSIVE) {
                ZLB_STAT_ADD(w, tls_permissive_plaintext, 1);
                return hc_tls_ready(c);
            }
            ZLB_STAT_ADD(w, tls_plaintext_rejected, 1);
            zlb_tls_report(w, &at, ZLB_TLS_EV_PLAINTEXT_REJECTED, ZLB_TLS_FAIL_PROTOCOL, "",
                           "plaintext connection on a strict mTLS listener");
            return hc_close(c, 0);
        default:
            break;
        }
        c->s.ssl = zlb_tls_start(w, &at, &t->peer, c->s.fd, NULL, NULL);
        if (!c->s.ssl)
            return hc_close(c, 0);
    }
    int r = zlb_tls_handshake(w, &at, c->s.ssl, &t->peer);
    if (r == ZLB_HS_WANT_READ || r == ZLB_HS_WANT_WRITE) {
        if (set_want_out(w, &c->s, &c->io, r == ZLB_HS_WANT_WRITE) == 0)
            return;
        zlb_tls_failed(w, &at, &t->peer, "cannot wait for the socket (epoll)");
        r = ZLB_HS_FAILED;
    }
    if (r != ZLB_HS_DONE)
        return hc_close(c, 0); /* a FIN, not a RST: the alert OpenSSL queued must reach the client */
    if (set_want_out(w, &c->s, &c->io, 0) != 0)
        return hc_close(c, 1);
    hc_xfcc_prepare(c);
    hc_tls_ready(c);
}

/* A TLS listener's new connection waits for its first bytes (no peek now:
 * the ClientHello rarely beats accept, and its arrival is an edge). */
static void hc_tls_begin(zlb_hconn *c)
{
    if (!(c->tls = htls_new()))
        return hc_close(c, 1);
    c->tls->peer.policy = c->l->tls;
    c->state = HS_TLS;
    c->idle_deadline = c->w->now_ns + (int64_t)c->l->tls->handshake_timeout_ms * 1000000;
    hc_arm_timer(c);
}

void zlb_http_accept(zlb_worker *w, zlb_wlistener *wl)
{
    zlb_listener *l = wl->l;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(wl->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;
        }
        ZLB_STAT_ADD(w, conns_accepted, 1);
        if ((uint64_t)atomic_fetch_add(&l->active, 1) >= l->opts.max_connections) {
            atomic_fetch_sub(&l->active, 1);
            ZLB_STAT_ADD(w, conns_overflow, 1);
            rst_close(fd);
            continue;
        }
        zlb_hconn *c = calloc(1, sizeof(*c));
        struct epoll_event ev = {.events = EV_BASE, .data.ptr = c};
        if (!c || epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            free(c);
            atomic_fetch_sub(&l->active, 1);
            close(fd);
            continue;
        }
        ZLB_STAT_ADD(w, conns_active, 1);
        atomic_fetch_add(&l->refs, 1);
        c->io.kind = ZLB_IO_HTTP_DOWN;
        c->w = w;
        c->l = l;
        c->s.fd = fd;
        c->s.readable = 1;
        memcpy(&c->peer, &ss, len < sizeof(c->peer) ? len : sizeof(c->peer));
        zlb_sockaddr_format((const struct sockaddr *)&ss, c->peer_ip, sizeof(c->peer_ip));
        /* XFF carries the address without the port. */
        char *colon = strrchr(c->peer_ip, ':');
        if (colon)
            *colon = '\0';
        if (c->peer_ip[0] == '[') {
            memmove(c->peer_ip, c->peer_ip + 1, strlen(c->peer_ip));
            c->peer_ip[strlen(c->peer_ip) - 1] = '\0';
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        zlb_timer_init(&c->timer, hc_on_timer);
        c->next = w->hconns;
        if (w->hconns)
            w->hconns->prev = c;
        w->hconns = c;
        if (l->tls) {
            hc_tls_begin(c);
            continue;
        }
        hc_next_request(c);
        hc_run(c);
    }
}

/* ---- upstream connect and TLS origination ---------------------------------------- */

/* The upstream is ready for requests (TCP connected and, with TLS,
 * handshaken and verified). */
static void hup_connected(zlb_hup *u)
{
    u->connecting = 0;
    u->s.blocked = 0;
    zlb_timer_cancel(&u->w->timers, &u->timer);
    zlb_hconn *c = u->owner;
    if (c && c->holds_pending) { /* no longer waiting for a connection */
        atomic_fetch_sub(&c->cs->pending_requests, 1);
        c->holds_pending = 0;
    }
}

/* The connect or the handshake failed (a TLS failure is already counted and
 * reported): the owner's try fails like a refused connect and may go to
 * another endpoint. */
static void hup_connect_failed(zlb_hup *u)
{
    zlb_hconn *c = u->owner;
    if (!c)
        return hup_close(u, 0);
    hc_fail_try(c, 1, 0);
    hc_run(c);
}

/* A connecting upstream always has its owner (hc_release_up closes a
 * connecting one), whose try names the endpoint and the cluster. */
static zlb_tls_where hup_where(const zlb_hup *u)
{
    const zlb_hconn *c = u->owner;
    return (zlb_tls_where){.listener_id = c ? c->l->id : -1, .port = c ? c->l->bound_port : 0,
                           .addr = c ? &c->up_addr : NULL, .cluster = c ? c->cluster : ""};
}

/* One handshake step of a connecting upstream; the connect timer bounds it. */
static void hup_handshake(zlb_hup *u)
{
    zlb_worker *w = u->w;
    zlb_tls_where at = hup_where(u);
    int r = zlb_tls_handshake(w, &at, u->s.ssl, &u->tls->peer);
    if (r == ZLB_HS_WANT_READ || r == ZLB_HS_WANT_WRITE) {
        if (set_want_out(w, &u->s, &u->io, r == ZLB_HS_WANT_WRITE) == 0)
            return;
        zlb_tls_failed(w, &at, &u->tls->peer, "cannot wait for the socket (epoll)");
        r = ZLB_HS_FAILED;
    }
    if (r != ZLB_HS_DONE)
        return hup_connect_failed(u);
    u->handshaking = 0;
    hup_connected(u);
    if (u->owner)
        hc_run(u->owner);
}

static void hup_start_tls(zlb_hup *u)
{
    zlb_tls_where at = hup_where(u);
    u->s.ssl = zlb_tls_start(u->w, &at, &u->tls->peer, u->s.fd, u->st, &u->tls->sink);
    if (!u->s.ssl)
        return hup_connect_failed(u);
    u->handshaking = 1;
    hup_handshake(u);
}

/* A pooled TLS connection got input. Post-handshake messages (a session
 * ticket that came late) leave it reusable: 1. Application bytes, an alert
 * or the end of the stream end its reuse: 0. */
static int hup_idle_input_harmless(zlb_hup *u)
{
    char byte;
    ssize_t n = io_read(&u->s, &byte, 1);
    if (n < 0 && errno == EAGAIN && !u->s.rd_wants_wr) {
        u->s.readable = 0;
        return 1;
    }
    return 0;
}

void zlb_http_on_event(zlb_worker *w, zlb_io *io, uint32_t events)
{
    ZLB_UNUSED(w);
    if (io->kind == ZLB_IO_HTTP_DOWN) {
        zlb_hconn *c = (zlb_hconn *)io;
        if (c->closed)
            return;
        on_events(&c->s, events);
        if (ZLB_UNLIKELY(c->state == HS_TLS))
            return hc_tls_step(c);
        hc_run(c);
        return;
    }
    zlb_hup *u = (zlb_hup *)io;
    if (u->closed)
        return;
    on_events(&u->s, events);
    if (u->connecting) {
        if (u->handshaking)
            return hup_handshake(u);
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        getsockopt(u->s.fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        if (soerr == 0 && (events & EPOLLOUT)) {
            if (u->tls)
                return hup_start_tls(u);
            hup_connected(u);
        } else if (soerr != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            return hup_connect_failed(u);
        } else {
            return;
        }
    }
    if (u->owner) {
        hc_run(u->owner);
    } else if (u->s.hup || (events & EPOLLIN)) {
        /* Pooled and idle: bytes or a close from the upstream end its reuse. */
        if (u->s.ssl && !u->s.hup && hup_idle_input_harmless(u))
            return;
        hup_close(u, 0);
    }
}
