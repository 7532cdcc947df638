/*
 * testbackend.c - built-in backends (see testbackend.h for the contract).
 *
 * All serving threads share the listening socket (EPOLLEXCLUSIVE, so one
 * thread wakes per connection) and a stop eventfd that is written once and
 * never read, so it stays readable and wakes every thread. A connection
 * belongs to the thread that accepted it for its whole life.
 *
 * Delayed responses: the due time of a response is
 *   max(request arrival + delay, stall_until)
 * Arrivals on one thread are increasing, delay is constant and stall_until
 * only grows, so due times come out in arrival order: a FIFO per thread is a
 * sorted timer queue and no heap is needed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, memmem, epoll_pwait2 */
#endif
#include "testbackend.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sockaddr.h"
#include "zlb_common.h"

#define IN_MAX 16384      /* per-connection input: a request head must fit */
#define MAX_EVENTS 128

typedef struct tb_conn {
    int fd;
    uint32_t events;
    uint32_t in_len, in_off;     /* unparsed input is in[in_off, in_len) */
    uint64_t body_left;          /* HTTP: request body bytes still to skip */
    const char *out;             /* bytes being written, NULL when none */
    size_t out_len, out_off;
    bool close_after;            /* HTTP: close once `out` is written */
    bool deferred;               /* HTTP: waiting in the delay FIFO */
    int64_t due_ns;
    struct tb_conn *next_deferred;
    struct tb_conn *prev, *next; /* all connections of the thread */
    char in[IN_MAX];
} tb_conn;

/* Counters written by one thread, read by any: relaxed atomics, one cache
 * line per thread so threads never share a line. */
typedef struct tb_thread {
    _Alignas(ZLB_CACHELINE) _Atomic uint64_t requests;
    _Atomic uint64_t bytes;
    _Atomic uint64_t conns_accepted;
    struct zlb_tb *tb;
    pthread_t tid;
    int epfd;
    tb_conn *conns;
    tb_conn *defer_head, *defer_tail;
    char scratch[IN_MAX];        /* sink reads land here */
} tb_thread;

struct zlb_tb {
    zlb_tb_config cfg;
    int lfd, stopfd;
    uint16_t port;
    _Atomic int64_t stall_until_ns;
    /* HTTP: the two prebuilt responses, indexed by close_after: a response
     * after which the connection closes says "Connection: close", so a
     * keep-alive client (wrk) reconnects instead of reading an EOF as an
     * error. */
    char *response[2];
    size_t response_len[2];
    int nthreads;                /* allocated thread slots */
    int running;                 /* of which started (and to be joined) */
    tb_thread *threads;
};

static const char BAD_REQUEST[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/* Single-writer increment: the owner thread is the only writer, so a load
 * and a store suffice and no locked instruction is paid per request. */
static inline void bump(_Atomic uint64_t *v, uint64_t by)
{
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + by, memory_order_relaxed);
}

/* Watch c for `events`; 0 takes c out of the epoll set altogether, because
 * a parked connection must not even see EPOLLHUP (level-triggered, it would
 * spin, and handling it would free c while the delay FIFO points at it). */
static void set_events(tb_thread *th, tb_conn *c, uint32_t events)
{
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    int op = events == 0 ? EPOLL_CTL_DEL : c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    epoll_ctl(th->epfd, op, c->fd, &ev);
    c->events = events;
}

/* Close c and free it. The caller must know c is not in the delay FIFO.
 * The explicit EPOLL_CTL_DEL matters: close() only drops the epoll
 * registration when the last reference to the socket goes, and a fork() in
 * another thread (Python's subprocess) briefly holds one - the stale
 * registration would then deliver events for freed memory. */
static void drop_conn(tb_thread *th, tb_conn *c)
{
    if (c->events)
        epoll_ctl(th->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        th->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void accept_all(tb_thread *th)
{
    for (;;) {
        int fd = accept4(th->tb->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN: another thread took it, or none left */
        tb_conn *c = malloc(sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        memset(c, 0, offsetof(tb_conn, in));
        c->fd = fd;
        c->events = EPOLLIN;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(th->epfd, EPOLL_CTL_ADD, fd, &ev);
        c->next = th->conns;
        if (th->conns)
            th->conns->prev = c;
        th->conns = c;
        bump(&th->conns_accepted, 1);
    }
}

/* Write the rest of c->out. Returns 1 when done, 0 when the socket is full
 * (EPOLLOUT armed), -1 when the peer is gone. */
static int write_out(tb_thread *th, tb_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            set_events(th, c, EPOLLOUT);
            return 0;
        } else {
            return -1;
        }
    }
    c->out = NULL;
    return 1;
}

static void start_response(tb_conn *c, const char *bytes, size_t len)
{
    c->out = bytes;
    c->out_len = len;
    c->out_off = 0;
}

/* Parse one request head from c->in. Returns 1 and consumes it (setting
 * body_left and close_after) when complete, 0 when more input is needed,
 * -1 when malformed or too large. */
static int parse_request(tb_conn *c)
{
    char *p = c->in + c->in_off;
    size_t avail = c->in_len - c->in_off;
    char *end = memmem(p, avail, "\r\n\r\n", 4);
    if (!end)
        return (c->in_off == 0 && c->in_len == IN_MAX) ? -1 : 0;
    size_t head_len = (size_t)(end - p) + 4;
    char *eol = memchr(p, '\n', head_len);
    /* The request line ends in "HTTP/1.x\r". */
    if (!eol || eol - p < 10 || memcmp(eol - 9, "HTTP/1.", 7) != 0)
        return -1;
    c->close_after = eol[-2] == '0';
    c->body_left = 0;
    for (char *line = eol + 1; line < p + head_len - 2;) {
        char *le = memchr(line, '\n', (size_t)(p + head_len - line));
        size_t n = (size_t)(le - line);
        if (n > 15 && strncasecmp(line, "content-length:", 15) == 0) {
            c->body_left = strtoull(line + 15, NULL, 10);
        } else if (n > 11 && strncasecmp(line, "connection:", 11) == 0) {
            /* Only the first token matters for the values clients send. */
            const char *v = line + 11;
            while (*v == ' ')
                v++;
            if (strncasecmp(v, "close", 5) == 0)
                c->close_after = true;
            else if (strncasecmp(v, "keep-alive", 10) == 0)
                c->close_after = false;
        }
        line = le + 1;
    }
    c->in_off += (uint32_t)head_len;
    return 1;
}

/* Count a response and start writing the prebuilt one that matches the
 * connection's fate. */
static void respond(tb_thread *th, tb_conn *c)
{
    bump(&th->requests, 1);
    start_response(c, th->tb->response[c->close_after], th->tb->response_len[c->close_after]);
}

/* Drive an HTTP connection as far as it can go without blocking: finish the
 * response being written, skip request bodies, parse the next request and
 * answer it (or park c in the delay FIFO). Returns false if c was dropped. */
static bool http_progress(tb_thread *th, tb_conn *c, int64_t now)
{
    struct zlb_tb *tb = th->tb;
    for (;;) {
        if (c->out) {
            int w = write_out(th, c);
            if (w < 0 || (w == 1 && c->close_after)) {
                drop_conn(th, c);
                return false;
            }
            if (w == 0)
                return true;
        }
        if (c->deferred)
            return true;
        uint64_t avail = c->in_len - c->in_off;
        uint64_t skip = avail < c->body_left ? avail : c->body_left;
        c->in_off += (uint32_t)skip;
        c->body_left -= skip;
        int rc = c->body_left ? 0 : parse_request(c);
        if (rc < 0) {
            c->close_after = true;
            start_response(c, BAD_REQUEST, sizeof BAD_REQUEST - 1);
            continue;
        }
        if (rc == 0) {
            /* Keep the partial request at the start of the buffer. */
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
            set_events(th, c, EPOLLIN);
            return true;
        }
        int64_t due = now + tb->cfg.delay_ns;
        int64_t stall = atomic_load_explicit(&tb->stall_until_ns, memory_order_relaxed);
        if (stall > due)
            due = stall;
        if (due > now) {
            /* Stop reading while parked: a pipelining client must not make
             * us buffer without bound, and level-triggered EPOLLIN would
             * otherwise spin on the unread bytes. */
            c->deferred = true;
            c->due_ns = due;
            c->next_deferred = NULL;
            if (th->defer_tail)
                th->defer_tail->next_deferred = c;
            else
                th->defer_head = c;
            th->defer_tail = c;
            set_events(th, c, 0);
            return true;
        }
        respond(th, c);
    }
}

/* Release the parked responses whose time has come. */
static void run_deferred(tb_thread *th, int64_t now)
{
    while (th->defer_head && th->defer_head->due_ns <= now) {
        tb_conn *c = th->defer_head;
        th->defer_head = c->next_deferred;
        if (!th->defer_head)
            th->defer_tail = NULL;
        c->deferred = false;
        respond(th, c);
        http_progress(th, c, now);
    }
}

static void on_conn_event(tb_thread *th, tb_conn *c, uint32_t ev, int64_t now)
{
    int kind = th->tb->cfg.kind;
    if (ev & EPOLLOUT) {
        if (kind == ZLB_TB_HTTP) {
            http_progress(th, c, now);
            return;
        }
        /* Echo: resume reading once the backlog is written. */
        int w = write_out(th, c);
        if (w < 0)
            drop_conn(th, c);
        else if (w == 1)
            set_events(th, c, EPOLLIN);
        return;
    }
    char *buf = kind == ZLB_TB_SINK ? th->scratch : c->in + c->in_len;
    size_t room = kind == ZLB_TB_SINK ? sizeof th->scratch : IN_MAX - c->in_len;
    ssize_t n = read(c->fd, buf, room);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        /* Parked connections are out of the epoll set, so c is in no FIFO. */
        drop_conn(th, c);
        return;
    }
    bump(&th->bytes, (uint64_t)n);
    if (kind == ZLB_TB_SINK)
        return;
    if (kind == ZLB_TB_ECHO) {
        start_response(c, c->in, (size_t)n);
        int w = write_out(th, c);
        if (w < 0)
            drop_conn(th, c);
        /* w == 0: EPOLLOUT armed instead of EPOLLIN, so `in` is not reused
         * before the backlog is written. */
        return;
    }
    c->in_len += (uint32_t)n;
    http_progress(th, c, now);
}

static void *serve_main(void *arg)
{
    tb_thread *th = arg;
    struct zlb_tb *tb = th->tb;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int timeout = -1;
        if (th->defer_head) {
            int64_t wait = th->defer_head->due_ns - zlb_now_ns();
            timeout = wait <= 0 ? 0 : (int)((wait + 999999) / 1000000);
        }
        int n = epoll_wait(th->epfd, evs, MAX_EVENTS, timeout);
        int64_t now = zlb_now_ns();
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &tb->stopfd)
                return NULL;
            if (p == &tb->lfd)
                accept_all(th);
            else
                on_conn_event(th, p, evs[i].events, now);
        }
        run_deferred(th, now);
    }
}

void zlb_tb_config_defaults(zlb_tb_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->kind = ZLB_TB_HTTP;
    zlb_strlcpy(cfg->host, "127.0.0.1", sizeof cfg->host);
    cfg->threads = 1;
    cfg->status = 200;
    cfg->body_size = 64;
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 404: return "Not Found";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

static int build_response(struct zlb_tb *tb)
{
    const zlb_tb_config *cfg = &tb->cfg;
    for (int close = 0; close < 2; close++) {
        char head[256];
        int hl = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Length: %u\r\n%s%s%s%s\r\n",
                          cfg->status, reason(cfg->status), cfg->body_size,
                          close ? "Connection: close\r\n" : "",
                          cfg->label[0] ? "x-backend: " : "", cfg->label, cfg->label[0] ? "\r\n" : "");
        tb->response_len[close] = (size_t)hl + cfg->body_size;
        tb->response[close] = malloc(tb->response_len[close]);
        if (!tb->response[close])
            return -1;
        memcpy(tb->response[close], head, (size_t)hl);
        memset(tb->response[close] + hl, 'x', cfg->body_size);
    }
    return 0;
}

static int open_listener(struct zlb_tb *tb, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t alen;
    if (zlb_sockaddr_parse(tb->cfg.host, tb->cfg.port, &ss, &alen) < 0) {
        snprintf(err, errlen, "host must be a numeric IPv4 or IPv6 address: %s", tb->cfg.host);
        return -1;
    }
    socklen_t sl = (socklen_t)alen;
    tb->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (tb->lfd < 0 || setsockopt(tb->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(tb->lfd, (struct sockaddr *)&ss, sl) < 0 || listen(tb->lfd, 4096) < 0 ||
        getsockname(tb->lfd, (struct sockaddr *)&ss, &sl) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%u: %s", tb->cfg.host, tb->cfg.port, strerror(errno));
        return -1;
    }
    tb->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                             : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

/* Free everything of a backend whose threads are not running (never started
 * or joined). */
static void destroy(struct zlb_tb *tb)
{
    for (int i = 0; i < tb->nthreads && tb->threads; i++) {
        tb_thread *th = &tb->threads[i];
        while (th->conns)
            drop_conn(th, th->conns);
        if (th->epfd >= 0)
            close(th->epfd);
    }
    free(tb->threads);
    if (tb->lfd >= 0)
        close(tb->lfd);
    if (tb->stopfd >= 0)
        close(tb->stopfd);
    free(tb->response[0]);
    free(tb->response[1]);
    free(tb);
}

zlb_tb *zlb_tb_start(const zlb_tb_config *cfg, char *err, size_t errlen)
{
    if (cfg->kind < ZLB_TB_HTTP || cfg->kind > ZLB_TB_SINK || cfg->threads < 1 || cfg->threads > 64 ||
        cfg->status < 100 || cfg->status > 599 || cfg->delay_ns < 0 || cfg->body_size > (64u << 20) ||
        strpbrk(cfg->label, "\r\n")) {
        snprintf(err, errlen, "invalid backend configuration (kind, threads 1..64, status 100..599, "
                              "delay >= 0, body <= 64 MiB, label without line breaks)");
        return NULL;
    }
    struct zlb_tb *tb = calloc(1, sizeof *tb);
    if (!tb) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    tb->cfg = *cfg;
    tb->lfd = tb->stopfd = -1;
    /* A tb_thread is cache-line aligned, so allocate it aligned. */
    size_t tsz = sizeof(tb_thread) * (size_t)cfg->threads;
    tb->threads = aligned_alloc(ZLB_CACHELINE, (tsz + ZLB_CACHELINE - 1) / ZLB_CACHELINE * ZLB_CACHELINE);
    if (!tb->threads) {
        snprintf(err, errlen, "out of memory");
        destroy(tb);
        return NULL;
    }
    memset(tb->threads, 0, tsz);
    tb->nthreads = cfg->threads;
    for (int i = 0; i < tb->nthreads; i++)
        tb->threads[i].epfd = -1;
    if (open_listener(tb, err, errlen) < 0) {
        destroy(tb);
        return NULL;
    }
    tb->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (tb->stopfd < 0 || (cfg->kind == ZLB_TB_HTTP && build_response(tb) < 0)) {
        snprintf(err, errlen, "cannot set up backend: %s", strerror(errno));
        destroy(tb);
        return NULL;
    }
    for (; tb->running < tb->nthreads; tb->running++) {
        tb_thread *th = &tb->threads[tb->running];
        th->tb = tb;
        th->epfd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event lev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &tb->lfd};
        struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &tb->stopfd};
        if (th->epfd < 0 || epoll_ctl(th->epfd, EPOLL_CTL_ADD, tb->lfd, &lev) < 0 ||
            epoll_ctl(th->epfd, EPOLL_CTL_ADD, tb->stopfd, &sev) < 0 ||
            pthread_create(&th->tid, NULL, serve_main, th) != 0)
            break;
    }
    if (tb->running < tb->nthreads) {
        snprintf(err, errlen, "cannot start backend threads: %s", strerror(errno));
        zlb_tb_stop(tb); /* joins the ones that run, frees everything */
        return NULL;
    }
    return tb;
}

uint16_t zlb_tb_port(const zlb_tb *tb)
{
    return tb->port;
}

void zlb_tb_stall(zlb_tb *tb, int64_t duration_ns)
{
    int64_t until = zlb_now_ns() + duration_ns;
    int64_t cur = atomic_load(&tb->stall_until_ns);
    while (cur < until && !atomic_compare_exchange_weak(&tb->stall_until_ns, &cur, until))
        ;
}

#define SUM_COUNTER(field)                                                                   \
    uint64_t total = 0;                                                                      \
    for (int i = 0; i < tb->nthreads; i++)                                                   \
        total += atomic_load_explicit(&tb->threads[i].field, memory_order_relaxed);          \
    return total

uint64_t zlb_tb_requests(const zlb_tb *tb) { SUM_COUNTER(requests); }
uint64_t zlb_tb_bytes(const zlb_tb *tb) { SUM_COUNTER(bytes); }
uint64_t zlb_tb_connections(const zlb_tb *tb) { SUM_COUNTER(conns_accepted); }

void zlb_tb_stop(zlb_tb *tb)
{
    uint64_t one = 1;
    if (write(tb->stopfd, &one, sizeof one) < 0) {
        /* Cannot happen for a fresh eventfd (counter far from overflow);
         * without the wake-up the joins below would hang, so say why. */
        perror("zlb_tb_stop: eventfd write");
    }
    for (int i = 0; i < tb->running; i++)
        pthread_join(tb->threads[i].tid, NULL);
    destroy(tb);
}
