/*
 * loadgen.c - the native load generator (see loadgen.h for the contract).
 *
 * Each worker thread owns: an epoll fd, its connections, a FIFO ring of idle
 * connections, a FIFO list of connections backing off after an error, its
 * histogram and label table. Nothing is shared between workers except the
 * read-only request bytes and the start time, so no locks on the hot path.
 *
 * A connection is in exactly one place at a time: the idle ring (connected or
 * not - an idle connection without a socket connects when it is next used),
 * the backoff list, or in flight (connecting, sending, receiving).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, memmem, epoll_pwait2 */
#endif
#include "loadgen.h"
#include "sockaddr.h"

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
#include <sys/socket.h>
#include <unistd.h>

#include "zlb_common.h"

#define RBUF_SIZE 65536                /* per-thread read scratch */
#define HEAD_MAX 8192                  /* per-connection response head buffer */
#define BACKOFF_NS (10 * 1000000LL)    /* pause after an error: no hot spin on refusals */
#define SCAN_NS (10 * 1000000LL)       /* timeout check period */
#define MAX_EVENTS 256

enum conn_state { C_IDLE, C_CONNECTING, C_SENDING, C_RECEIVING };
enum body_kind { B_NONE, B_LENGTH, B_CHUNKED, B_UNTIL_CLOSE };
enum chunk_state { CH_SIZE, CH_EXT, CH_DATA, CH_DATA_END, CH_TRAILER };

typedef struct lg_conn {
    int fd;                      /* -1 when not connected */
    int state;                   /* enum conn_state */
    uint32_t events;             /* what epoll currently watches for fd */
    int64_t due_ns;              /* latency origin of the current request */
    int64_t sent_ns;             /* when it was handed to the socket: timeouts */
    int64_t retry_ns;            /* end of backoff */
    size_t send_off;
    /* response framing */
    bool in_head;
    bool close_after;
    int status;
    int body;                    /* enum body_kind */
    int chunk;                   /* enum chunk_state */
    uint64_t remaining;          /* body/chunk bytes left; TCP: echo bytes left */
    uint32_t line_len;           /* chunk trailer: bytes in the current line */
    uint32_t head_len;
    const char *label;           /* points into head while the response is parsed */
    uint32_t label_len;
    char *head;                  /* HEAD_MAX bytes; unused in TCP mode */
    struct lg_conn *next_backoff;
} lg_conn;

typedef struct lg_shared {
    const zlb_lg_config *cfg;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    const char *req;             /* the request bytes, identical for all */
    size_t req_len;
    size_t label_name_len;
    /* Start gate: workers wait until gate != 0; 1 = go (start_ns is set),
     * -1 = abort (another worker could not be created). */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int gate;
    int64_t start_ns;
} lg_shared;

typedef struct lg_thread {
    lg_shared *sh;
    pthread_t tid;
    int epfd;
    uint32_t nconns;
    lg_conn *conns;
    lg_conn **ring;              /* idle FIFO: spreads requests over connections */
    uint32_t ring_head, ring_count;
    lg_conn *backoff_head, *backoff_tail;
    uint64_t budget, issued;
    uint32_t inflight;
    int64_t interval_ns;         /* open loop: time between due requests; 0 = closed */
    int64_t next_due_ns;
    int64_t end_ns;
    bool have_pwait2;
    char *rbuf;
    zlb_lg_result res;           /* this thread's part, merged at the end */
} lg_thread;

/* ---- connection bookkeeping (owner thread only) ------------------------- */

static void ring_push(lg_thread *t, lg_conn *c)
{
    t->ring[(t->ring_head + t->ring_count) % t->nconns] = c;
    t->ring_count++;
}

static lg_conn *ring_pop(lg_thread *t)
{
    lg_conn *c = t->ring[t->ring_head];
    t->ring_head = (t->ring_head + 1) % t->nconns;
    t->ring_count--;
    return c;
}

static void set_events(lg_thread *t, lg_conn *c, uint32_t events)
{
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(t->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->events = events;
}

/* Drop c's socket. Deregister first: close() alone leaves the epoll
 * registration alive while a fork() elsewhere in the process still holds the
 * socket, and events would then arrive for a connection we reuse. */
static void close_conn(lg_thread *t, lg_conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->events = 0;
}

/* The request in flight on c failed: count it, drop the connection, and park
 * c in the backoff FIFO. Backoff is the same for all, so the FIFO stays sorted
 * by retry time and needs no heap. */
static void fail_request(lg_thread *t, lg_conn *c, int kind, int64_t now)
{
    t->res.errors[kind]++;
    t->inflight--;
    close_conn(t, c);
    c->state = C_IDLE;
    c->retry_ns = now + BACKOFF_NS;
    c->next_backoff = NULL;
    if (t->backoff_tail)
        t->backoff_tail->next_backoff = c;
    else
        t->backoff_head = c;
    t->backoff_tail = c;
}

static void count_label(lg_thread *t, const char *v, uint32_t len)
{
    zlb_lg_result *r = &t->res;
    if (!v) {
        r->labels_missing++;
        return;
    }
    for (uint32_t i = 0; i < r->nlabels; i++) {
        if (strlen(r->labels[i].value) == len && memcmp(r->labels[i].value, v, len) == 0) {
            r->labels[i].count++;
            return;
        }
    }
    if (r->nlabels == ZLB_LG_LABELS || len >= ZLB_LG_LABEL_MAX) {
        r->labels_other++;
        return;
    }
    memcpy(r->labels[r->nlabels].value, v, len);
    r->labels[r->nlabels].value[len] = '\0';
    r->labels[r->nlabels].count = 1;
    r->nlabels++;
}

/* A complete response arrived on c: record it and return c to the idle ring,
 * still connected unless the server asked to close. */
static void complete_request(lg_thread *t, lg_conn *c, int64_t now)
{
    const zlb_lg_config *cfg = t->sh->cfg;
    zlb_hist_record(&t->res.latency, (uint64_t)(now - c->due_ns));
    t->res.requests++;
    if (cfg->mode == ZLB_LG_HTTP) {
        if (c->status < 200 || c->status >= 400)
            t->res.errors[ZLB_LG_ERR_BAD_STATUS]++;
        if (cfg->label_header[0])
            count_label(t, c->label, c->label_len);
    }
    t->inflight--;
    if (c->close_after)
        close_conn(t, c);
    else
        set_events(t, c, EPOLLIN);
    c->state = C_IDLE;
    ring_push(t, c);
}

/* ---- sending ------------------------------------------------------------ */

static void reset_response(const lg_shared *sh, lg_conn *c)
{
    c->in_head = sh->cfg->mode == ZLB_LG_HTTP;
    c->head_len = 0;
    c->close_after = false;
    c->label = NULL;
    c->remaining = sh->cfg->mode == ZLB_LG_TCP ? sh->req_len : 0;
}

/* Write what is left of the request; wait for EPOLLOUT if the socket is full. */
static void send_more(lg_thread *t, lg_conn *c, int64_t now)
{
    const lg_shared *sh = t->sh;
    while (c->send_off < sh->req_len) {
        ssize_t n = send(c->fd, sh->req + c->send_off, sh->req_len - c->send_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->send_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            c->state = C_SENDING;
            set_events(t, c, EPOLLIN | EPOLLOUT);
            return;
        } else {
            fail_request(t, c, ZLB_LG_ERR_RESET, now);
            return;
        }
    }
    c->state = C_RECEIVING;
    set_events(t, c, EPOLLIN);
}

/* Start a non-blocking connect for c. Returns false (and counts a connect
 * error) when it fails at once, e.g. ECONNREFUSED on loopback. */
static bool start_connect(lg_thread *t, lg_conn *c, int64_t now)
{
    const lg_shared *sh = t->sh;
    c->fd = socket(sh->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail_request(t, c, ZLB_LG_ERR_CONNECT, now);
        return false;
    }
    int one = 1;
    /* Requests are small and latency-measured: never let Nagle hold them. */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(c->fd, (const struct sockaddr *)&sh->addr, sh->addrlen);
    if (rc < 0 && errno != EINPROGRESS) {
        fail_request(t, c, ZLB_LG_ERR_CONNECT, now);
        return false;
    }
    c->events = EPOLLOUT;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->state = C_CONNECTING;
    return true;
}

/* Issue one request on idle connection c; its latency runs from due_ns. */
static void dispatch(lg_thread *t, lg_conn *c, int64_t due_ns, int64_t now)
{
    t->issued++;
    t->inflight++;
    c->due_ns = due_ns;
    c->sent_ns = now;
    c->send_off = 0;
    reset_response(t->sh, c);
    if (c->fd < 0) {
        start_connect(t, c, now); /* the request goes out once connected */
        return;
    }
    send_more(t, c, now);
}

/* ---- response parsing --------------------------------------------------- */

/* Case-insensitive "does header line [p, p+n) have this name"; returns a
 * pointer to the trimmed value or NULL. */
static const char *header_value(const char *p, size_t n, const char *name, size_t name_len,
                                size_t *vlen)
{
    if (n <= name_len || p[name_len] != ':' || strncasecmp(p, name, name_len) != 0)
        return NULL;
    const char *v = p + name_len + 1, *end = p + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *vlen = (size_t)(end - v);
    return v;
}

static bool contains_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++)
        if (strncasecmp(v + i, tok, tl) == 0)
            return true;
    return false;
}

/* Parse the complete head c->head[0, len). Returns false if malformed.
 * Sets status, body framing and close_after; the label value (if any) points
 * into c->head, which stays untouched until the response completes. */
static bool parse_head(const lg_shared *sh, lg_conn *c, uint32_t len)
{
    const char *h = c->head, *end = h + len;
    /* "HTTP/1.x SSS ..." */
    if (len < 12 || memcmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ')
        return false;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (h[i] < '0' || h[i] > '9')
            return false;
        st = st * 10 + (h[i] - '0');
    }
    c->status = st;
    c->close_after = h[7] == '0'; /* HTTP/1.0 closes unless it says keep-alive */
    bool chunked = false, have_len = false;
    uint64_t clen = 0;
    const char *line = memchr(h, '\n', len);
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        size_t n = (size_t)(eol - line);
        if (n && line[n - 1] == '\r')
            n--;
        size_t vl;
        const char *v;
        if ((v = header_value(line, n, "content-length", 14, &vl))) {
            clen = 0;
            if (vl == 0 || vl > 19)
                return false;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return false;
                clen = clen * 10 + (uint64_t)(v[i] - '0');
            }
            have_len = true;
        } else if ((v = header_value(line, n, "transfer-encoding", 17, &vl))) {
            chunked = contains_token(v, vl, "chunked");
        } else if ((v = header_value(line, n, "connection", 10, &vl))) {
            if (contains_token(v, vl, "close"))
                c->close_after = true;
            else if (contains_token(v, vl, "keep-alive"))
                c->close_after = false;
        } else if (sh->label_name_len &&
                   (v = header_value(line, n, sh->cfg->label_header, sh->label_name_len, &vl))) {
            c->label = v;
            c->label_len = (uint32_t)vl;
        }
        line = eol;
    }
    /* RFC 9112 6.3: no body for 1xx/204/304; chunked wins over length. */
    if (st < 200 || st == 204 || st == 304) {
        c->body = B_NONE;
    } else if (chunked) {
        c->body = B_CHUNKED;
        c->chunk = CH_SIZE;
        c->remaining = 0;
    } else if (have_len) {
        c->body = clen ? B_LENGTH : B_NONE;
        c->remaining = clen;
    } else {
        c->body = B_UNTIL_CLOSE;
        c->close_after = true;
    }
    return true;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch |= 0x20;
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Consume chunked body bytes. Returns 1 when the last chunk and trailer are
 * done, 0 for more, -1 on a malformed size line. *used = bytes consumed. */
static int feed_chunked(lg_conn *c, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    while (i < n) {
        char ch = p[i];
        switch (c->chunk) {
        case CH_SIZE: {
            int hv = hexval(ch);
            if (hv >= 0) {
                if (c->remaining >> 59)
                    return -1; /* absurd size: would overflow */
                c->remaining = c->remaining * 16 + (uint64_t)hv;
                i++;
                break;
            }
            if (ch != ';' && ch != '\r' && ch != '\n' && ch != ' ' && ch != '\t')
                return -1;
            c->chunk = CH_EXT; /* extensions and the line end are skipped */
            break;
        }
        case CH_EXT:
            i++;
            if (ch == '\n') {
                c->chunk = c->remaining ? CH_DATA : CH_TRAILER;
                c->line_len = 0;
            }
            break;
        case CH_DATA: {
            size_t take = n - i < c->remaining ? n - i : (size_t)c->remaining;
            c->remaining -= take;
            i += take;
            if (c->remaining == 0)
                c->chunk = CH_DATA_END;
            break;
        }
        case CH_DATA_END: /* the CRLF after the data */
            i++;
            if (ch == '\n')
                c->chunk = CH_SIZE;
            break;
        case CH_TRAILER: /* trailer fields, ended by an empty line */
            i++;
            if (ch == '\n') {
                if (c->line_len == 0) {
                    *used = i;
                    return 1;
                }
                c->line_len = 0;
            } else if (ch != '\r') {
                c->line_len++;
            }
            break;
        }
    }
    *used = i;
    return 0;
}

/* Feed response bytes to c's parser. Returns 1 when the response is complete
 * (*used bytes consumed), 0 when it needs more (*used > 0 whenever n > 0),
 * -1 on a protocol error. */
static int feed(const lg_shared *sh, lg_conn *c, const char *p, size_t n, size_t *used)
{
    if (sh->cfg->mode == ZLB_LG_TCP) {
        size_t take = n < c->remaining ? n : (size_t)c->remaining;
        c->remaining -= take;
        *used = take;
        if (take < n)
            return -1; /* more bytes than were sent: not an echo */
        return c->remaining == 0;
    }
    size_t off = 0;
    if (c->in_head) {
        uint32_t old = c->head_len;
        size_t room = HEAD_MAX - old;
        size_t take = n < room ? n : room;
        memcpy(c->head + old, p, take);
        c->head_len += (uint32_t)take;
        uint32_t from = old >= 3 ? old - 3 : 0;
        const char *term = memmem(c->head + from, c->head_len - from, "\r\n\r\n", 4);
        if (!term) {
            *used = take;
            return c->head_len == HEAD_MAX ? -1 : 0;
        }
        uint32_t head_end = (uint32_t)(term - c->head) + 4;
        off = head_end - old;
        if (!parse_head(sh, c, head_end))
            return -1;
        if (c->status < 200) { /* interim response: the real one follows */
            c->head_len = 0;
            c->label = NULL;
            *used = off;
            return 0;
        }
        c->in_head = false;
        if (c->body == B_NONE) {
            *used = off;
            return 1;
        }
    }
    int rc = 0;
    switch (c->body) {
    case B_LENGTH: {
        size_t take = n - off < c->remaining ? n - off : (size_t)c->remaining;
        c->remaining -= take;
        off += take;
        rc = c->remaining == 0;
        break;
    }
    case B_CHUNKED: {
        size_t u = 0;
        rc = feed_chunked(c, p + off, n - off, &u);
        off += u;
        break;
    }
    default: /* B_UNTIL_CLOSE: everything up to EOF is body */
        off = n;
        break;
    }
    *used = off;
    return rc;
}

/* c is readable (or errored). Read once - level-triggered epoll calls again
 * if more is pending - and advance the response. */
static void on_readable(lg_thread *t, lg_conn *c, int64_t now)
{
    ssize_t n = read(c->fd, t->rbuf, RBUF_SIZE);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (c->state == C_IDLE) {
        /* Between requests the server may close a keep-alive connection
         * (idle timeout, request limit); that is no error: reconnect on next
         * use. Unsolicited bytes leave the stream unusable, so drop it too. */
        close_conn(t, c);
        return;
    }
    if (n <= 0) {
        if (n == 0 && !c->in_head && c->body == B_UNTIL_CLOSE)
            complete_request(t, c, now);
        else
            fail_request(t, c, ZLB_LG_ERR_RESET, now);
        return;
    }
    t->res.bytes_read += (uint64_t)n;
    size_t off = 0;
    while (off < (size_t)n) {
        size_t used = 0;
        int rc = feed(t->sh, c, t->rbuf + off, (size_t)n - off, &used);
        off += used;
        if (rc < 0 || (rc == 1 && off != (size_t)n)) {
            /* Malformed, or bytes beyond the response we asked for. */
            fail_request(t, c, ZLB_LG_ERR_PROTOCOL, now);
            return;
        }
        if (rc == 1) {
            complete_request(t, c, now);
            return;
        }
    }
}

static void on_event(lg_thread *t, lg_conn *c, uint32_t ev, int64_t now)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) {
            fail_request(t, c, ZLB_LG_ERR_CONNECT, now);
            return;
        }
        if (!(ev & EPOLLOUT))
            return;
        t->res.connects++;
        send_more(t, c, now);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        on_readable(t, c, now);
        if (c->fd < 0 || c->state != C_SENDING)
            return;
    }
    if ((ev & EPOLLOUT) && c->state == C_SENDING)
        send_more(t, c, now);
}

static void check_timeouts(lg_thread *t, int64_t now)
{
    int64_t limit = t->sh->cfg->timeout_ns;
    for (uint32_t i = 0; i < t->nconns; i++) {
        lg_conn *c = &t->conns[i];
        if (c->state != C_IDLE && now - c->sent_ns > limit)
            fail_request(t, c, c->state == C_CONNECTING ? ZLB_LG_ERR_CONNECT : ZLB_LG_ERR_TIMEOUT, now);
    }
}

/* ---- the worker loop ---------------------------------------------------- */

/* Block in epoll until an event or until `until_ns`. Uses epoll_pwait2's
 * nanosecond timeout where the kernel has it: with millisecond rounding an
 * open loop at 100k req/s would send in bursts and charge the burst delay to
 * its own latency. */
static int wait_events(lg_thread *t, struct epoll_event *evs, int64_t until_ns, int64_t now)
{
    int64_t wait = until_ns - now;
    if (wait < 0)
        wait = 0;
    if (t->have_pwait2) {
        struct timespec ts = {.tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL};
        int n = epoll_pwait2(t->epfd, evs, MAX_EVENTS, &ts, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n;
        t->have_pwait2 = false;
    }
    return epoll_wait(t->epfd, evs, MAX_EVENTS, (int)((wait + 999999) / 1000000));
}

static void *worker_main(void *arg)
{
    lg_thread *t = arg;
    lg_shared *sh = t->sh;
    const zlb_lg_config *cfg = sh->cfg;
    struct epoll_event evs[MAX_EVENTS];

    /* All workers start together from one start time, so the duration and
     * the open-loop schedules line up across threads. */
    pthread_mutex_lock(&sh->mu);
    while (sh->gate == 0)
        pthread_cond_wait(&sh->cv, &sh->mu);
    int gate = sh->gate;
    int64_t start = sh->start_ns;
    pthread_mutex_unlock(&sh->mu);
    if (gate < 0)
        return NULL;
    int64_t deadline = cfg->duration_ns > 0 ? start + cfg->duration_ns : INT64_MAX;
    int64_t next_scan = start + SCAN_NS;
    t->next_due_ns += start;

    for (;;) {
        int64_t now = zlb_now_ns();
        if (now >= deadline)
            break;
        while (t->backoff_head && t->backoff_head->retry_ns <= now) {
            lg_conn *c = t->backoff_head;
            t->backoff_head = c->next_backoff;
            if (!t->backoff_head)
                t->backoff_tail = NULL;
            ring_push(t, c);
        }
        while (t->ring_count && t->issued < t->budget) {
            int64_t due = now;
            if (t->interval_ns) {
                if (t->next_due_ns > now)
                    break;
                due = t->next_due_ns;
                t->next_due_ns += t->interval_ns;
            }
            dispatch(t, ring_pop(t), due, now);
        }
        if (t->issued >= t->budget && t->inflight == 0)
            break;
        if (now >= next_scan) {
            check_timeouts(t, now);
            next_scan = now + SCAN_NS;
        }
        int64_t until = deadline < next_scan ? deadline : next_scan;
        if (t->backoff_head && t->backoff_head->retry_ns < until)
            until = t->backoff_head->retry_ns;
        if (t->interval_ns && t->ring_count && t->issued < t->budget && t->next_due_ns < until)
            until = t->next_due_ns;
        int n = wait_events(t, evs, until, now);
        if (n <= 0)
            continue;
        now = zlb_now_ns();
        for (int i = 0; i < n; i++)
            on_event(t, evs[i].data.ptr, evs[i].events, now);
    }
    t->end_ns = zlb_now_ns();
    if (t->end_ns > deadline)
        t->end_ns = deadline;
    for (uint32_t i = 0; i < t->nconns; i++)
        close_conn(t, &t->conns[i]);
    return NULL;
}

/* ---- setup, run, merge -------------------------------------------------- */

static int build_request(const zlb_lg_config *cfg, char **out, size_t *len)
{
    if (cfg->mode == ZLB_LG_TCP) {
        char *b = malloc(cfg->tcp_size);
        if (!b)
            return -1;
        for (uint32_t i = 0; i < cfg->tcp_size; i++)
            b[i] = (char)('a' + i % 26);
        *out = b;
        *len = cfg->tcp_size;
        return 0;
    }
    const char *host = cfg->host_header[0] ? cfg->host_header : cfg->host;
    size_t cap = strlen(cfg->path) + strlen(host) + 64;
    char *b = malloc(cap);
    if (!b)
        return -1;
    int n = snprintf(b, cap, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: zlbfast-loadgen\r\n\r\n",
                     cfg->path, host);
    *out = b;
    *len = (size_t)n;
    return 0;
}

static int check_config(const zlb_lg_config *cfg, lg_shared *sh, char *err, size_t errlen)
{
    const char *why = NULL;
    socklen_t alen = 0;
    if (zlb_sockaddr_parse(cfg->host, cfg->port, &sh->addr, &alen) < 0)
        why = "host must be a numeric IPv4 or IPv6 address";
    else if (cfg->port == 0)
        why = "port must be set";
    else if (cfg->mode != ZLB_LG_HTTP && cfg->mode != ZLB_LG_TCP)
        why = "mode must be http or tcp";
    else if (cfg->threads < 1 || cfg->threads > 256)
        why = "threads must be in 1..256";
    else if (cfg->connections < cfg->threads || cfg->connections > 1000000)
        why = "connections must be >= threads (and <= 1e6)";
    else if (cfg->rate < 0)
        why = "rate must be >= 0";
    else if (cfg->duration_ns <= 0 && cfg->max_requests == 0)
        why = "set a duration or a maximum request count";
    else if (cfg->timeout_ns <= 0)
        why = "timeout must be > 0";
    else if (cfg->mode == ZLB_LG_TCP && cfg->tcp_size == 0)
        why = "tcp_size must be >= 1";
    else if (cfg->mode == ZLB_LG_HTTP && (cfg->path[0] != '/' || strpbrk(cfg->path, " \r\n")))
        why = "path must start with / and hold no spaces or line breaks";
    sh->addrlen = (socklen_t)alen;
    if (why)
        snprintf(err, errlen, "%s", why);
    return why ? -1 : 0;
}

static void merge_result(zlb_lg_result *dst, const zlb_lg_result *src)
{
    dst->requests += src->requests;
    dst->bytes_read += src->bytes_read;
    dst->connects += src->connects;
    for (int k = 0; k < ZLB_LG_ERR_COUNT; k++)
        dst->errors[k] += src->errors[k];
    zlb_hist_merge(&dst->latency, &src->latency);
    dst->labels_other += src->labels_other;
    dst->labels_missing += src->labels_missing;
    for (uint32_t i = 0; i < src->nlabels; i++) {
        const zlb_lg_label *l = &src->labels[i];
        uint32_t j = 0;
        while (j < dst->nlabels && strcmp(dst->labels[j].value, l->value) != 0)
            j++;
        if (j == dst->nlabels) {
            if (j == ZLB_LG_LABELS) {
                dst->labels_other += l->count;
                continue;
            }
            dst->labels[j] = *l;
            dst->labels[j].count = 0;
            dst->nlabels++;
        }
        dst->labels[j].count += l->count;
    }
}

static void free_thread(lg_thread *t)
{
    if (t->conns)
        for (uint32_t i = 0; i < t->nconns; i++)
            free(t->conns[i].head);
    free(t->conns);
    free(t->ring);
    free(t->rbuf);
    if (t->epfd >= 0)
        close(t->epfd);
}

/* Allocate thread t's resources: nconns connections and a share `budget` of
 * the requests; open loop at `rate` req/s for this thread, first due at
 * phase_ns after the start. Returns -1 on allocation failure. */
static int init_thread(lg_thread *t, lg_shared *sh, uint32_t nconns, uint64_t budget, double rate,
                       int64_t phase_ns)
{
    t->sh = sh;
    t->nconns = nconns;
    t->budget = budget;
    t->interval_ns = rate > 0 ? (int64_t)(1e9 / rate) : 0;
    if (rate > 0 && t->interval_ns < 1)
        t->interval_ns = 1;
    t->next_due_ns = phase_ns;
    t->have_pwait2 = true;
    zlb_hist_init(&t->res.latency);
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    t->conns = calloc(nconns, sizeof *t->conns);
    t->ring = calloc(nconns, sizeof *t->ring);
    t->rbuf = malloc(RBUF_SIZE);
    if (t->epfd < 0 || !t->conns || !t->ring || !t->rbuf)
        return -1;
    for (uint32_t i = 0; i < nconns; i++) {
        lg_conn *c = &t->conns[i];
        c->fd = -1;
        c->state = C_IDLE;
        if (sh->cfg->mode == ZLB_LG_HTTP && !(c->head = malloc(HEAD_MAX)))
            return -1;
        ring_push(t, c);
    }
    return 0;
}

void zlb_lg_config_defaults(zlb_lg_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    zlb_strlcpy(cfg->host, "127.0.0.1", sizeof cfg->host);
    cfg->mode = ZLB_LG_HTTP;
    cfg->threads = 1;
    cfg->connections = 64;
    cfg->duration_ns = 10 * 1000000000LL;
    cfg->timeout_ns = 5 * 1000000000LL;
    zlb_strlcpy(cfg->path, "/", sizeof cfg->path);
    cfg->tcp_size = 64;
}

int zlb_lg_run(const zlb_lg_config *cfg, zlb_lg_result *out, char *err, size_t errlen)
{
    lg_shared sh = {.cfg = cfg};
    memset(out, 0, sizeof *out);
    zlb_hist_init(&out->latency);
    if (check_config(cfg, &sh, err, errlen) < 0)
        return -1;
    char *req = NULL;
    if (build_request(cfg, &req, &sh.req_len) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    sh.req = req;
    sh.label_name_len = strlen(cfg->label_header);

    uint32_t nt = (uint32_t)cfg->threads;
    lg_thread *ts = calloc(nt, sizeof *ts);
    int rc = -1;
    uint32_t started = 0;
    if (!ts) {
        snprintf(err, errlen, "out of memory");
        goto out_req;
    }
    for (uint32_t i = 0; i < nt; i++)
        ts[i].epfd = -1;
    uint64_t budget_total = cfg->max_requests ? cfg->max_requests : UINT64_MAX;
    for (uint32_t i = 0; i < nt; i++) {
        /* Even shares; the first threads take the remainders. Phases spread
         * the threads' open-loop schedules evenly over one total interval. */
        uint32_t nc = (uint32_t)cfg->connections / nt + (i < (uint32_t)cfg->connections % nt);
        uint64_t b = cfg->max_requests ? budget_total / nt + (i < budget_total % nt) : UINT64_MAX;
        int64_t phase = cfg->rate > 0 ? (int64_t)(i * 1e9 / cfg->rate) : 0;
        if (init_thread(&ts[i], &sh, nc, b, cfg->rate / nt, phase) < 0) {
            snprintf(err, errlen, "cannot allocate load generator thread state: %s", strerror(errno));
            goto out_threads;
        }
    }
    pthread_mutex_init(&sh.mu, NULL);
    pthread_cond_init(&sh.cv, NULL);
    while (started < nt && pthread_create(&ts[started].tid, NULL, worker_main, &ts[started]) == 0)
        started++;
    pthread_mutex_lock(&sh.mu);
    sh.gate = started == nt ? 1 : -1;
    sh.start_ns = zlb_now_ns();
    pthread_cond_broadcast(&sh.cv);
    pthread_mutex_unlock(&sh.mu);
    int64_t end = sh.start_ns;
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(ts[i].tid, NULL);
        merge_result(out, &ts[i].res);
        if (ts[i].end_ns > end)
            end = ts[i].end_ns;
    }
    out->duration_ns = end - sh.start_ns;
    if (started == nt)
        rc = 0;
    else
        snprintf(err, errlen, "cannot start load generator threads");
    pthread_cond_destroy(&sh.cv);
    pthread_mutex_destroy(&sh.mu);
out_threads:
    for (uint32_t i = 0; i < nt; i++)
        free_thread(&ts[i]);
    free(ts);
out_req:
    free(req);
    return rc;
}
