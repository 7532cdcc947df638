/*
 * test_accesslog.c - unit tests of the access-log rings, the JSON-lines
 * format, the printf-free address format (csrc/accesslog.c, sockaddr.c)
 * and the access-log thread (csrc/accesslog_writer.c), on real pipes and
 * threads. Built with ASan+UBSan (tests/c/Makefile): a writer that touched
 * a ring after being abandoned would be a reported use-after-free.
 * ZT_CHECK runs on the main thread only; helper threads report through
 * their structs.
 */
#define _GNU_SOURCE /* pipe2 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "accesslog.h"
#include "accesslog_writer.h"
#include "sockaddr.h"
#include "zt.h"

#define DEADLINE_NS (10 * 1000000000LL)

/* ---- addresses ------------------------------------------------------------ */

/* The reference: what inet_ntop + snprintf gave before the printf-free
 * version. */
static void reference_format(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%u", ip, (unsigned)ntohs(a4->sin_port));
    } else {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%u", ip, (unsigned)ntohs(a6->sin6_port));
    }
}

static void test_sockaddr_format_matches_inet_ntop(void)
{
    uint64_t rng = 0x5eed;
    for (int i = 0; i < 20000; i++) {
        struct sockaddr_in6 ss;
        memset(&ss, 0, sizeof(ss));
        uint64_t r = zlb_rand64(&rng);
        if (i % 2 == 0) {
            struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
            a4->sin_family = AF_INET;
            /* Edge values first: zeros, 255s, one-digit octets, port 0 and 65535. */
            uint32_t ip = i == 0 ? 0 : i == 2 ? 0xffffffffu : (uint32_t)r;
            a4->sin_addr.s_addr = ip;
            a4->sin_port = (uint16_t)(i == 0 ? 0 : i == 2 ? 0xffff : r >> 40);
        } else {
            ss.sin6_family = AF_INET6;
            for (int k = 0; k < 16; k++) /* runs of zero words exercise "::" */
                ss.sin6_addr.s6_addr[k] = (i % 3 == 0 && k < 10) ? 0 : (uint8_t)(zlb_rand64(&rng) >> 56);
            ss.sin6_port = (uint16_t)(r >> 24);
        }
        for (size_t cap = 1; cap <= ZLB_SOCKADDR_STR_MAX; cap += (cap < 24 ? 1 : 13)) {
            char got[ZLB_SOCKADDR_STR_MAX], want[ZLB_SOCKADDR_STR_MAX];
            zlb_sockaddr_format((const struct sockaddr *)&ss, got, cap);
            reference_format((const struct sockaddr *)&ss, want, cap);
            ZT_CHECKF(strcmp(got, want) == 0, "cap %zu: got %s, want %s", cap, got, want);
        }
    }
    struct sockaddr_in6 none;
    memset(&none, 0, sizeof(none));
    char out[8] = "x";
    zlb_sockaddr_format((const struct sockaddr *)&none, out, sizeof(out));
    ZT_CHECK(out[0] == '\0');
}

/* ---- JSON lines ------------------------------------------------------------ */

static void v4(struct sockaddr_in6 *ss, const char *ip, uint16_t port)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof(*ss));
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a4->sin_addr);
}

static void test_json_http_record(void)
{
    zlb_access_record r;
    memset(&r, 0, sizeof(r));
    r.start_unix_ns = 1700000000123456789LL;
    r.duration_ns = 1234567;
    v4(&r.down, "127.0.0.1", 40000);
    r.up.sin6_family = AF_INET6;
    r.up.sin6_port = htons(8080);
    inet_pton(AF_INET6, "2001:db8::1", &r.up.sin6_addr);
    r.bytes_received = 78;
    r.bytes_sent = 18446744073709551615ULL;
    r.attempts = 2;
    r.flags = ZLB_AL_UT | ZLB_AL_UC;
    r.status = 503;
    strcpy(r.method, "GET");
    strcpy(r.authority, "shop.test");
    strcpy(r.path, "/a\"b\\c\x01\x7f\xc3\xa9");
    strcpy(r.cluster, "c");
    strcpy(r.listener, "web");
    char out[ZLB_AL_LINE_MAX];
    size_t n = zlb_access_format_json(&r, out, sizeof(out));
    const char *want =
        "{\"start_time\":1700000000.123456,\"duration_ms\":1.234,\"downstream\":\"127.0.0.1:40000\","
        "\"upstream\":\"[2001:db8::1]:8080\",\"listener\":\"web\",\"cluster\":\"c\",\"bytes_received\":78,"
        "\"bytes_sent\":18446744073709551615,\"attempts\":2,\"flags\":[\"UT\",\"UC\"],\"status\":503,"
        "\"method\":\"GET\",\"authority\":\"shop.test\",\"path\":\"/a\\\"b\\\\c\\u0001\\u007f\xc3\xa9\"}\n";
    ZT_CHECKF(n == strlen(want) && memcmp(out, want, n) == 0, "got %.*s", (int)n, out);
}

static void test_json_l4_record_has_no_http_fields(void)
{
    zlb_access_record r;
    memset(&r, 0, sizeof(r));
    r.start_unix_ns = 5;              /* under a microsecond */
    r.duration_ns = -1;               /* clamped, never negative */
    v4(&r.down, "10.0.0.1", 1);
    r.flags = ZLB_AL_UF | ZLB_AL_UO | ZLB_AL_NR | ZLB_AL_IT | ZLB_AL_RS;
    strcpy(r.listener, "l");
    char out[ZLB_AL_LINE_MAX];
    size_t n = zlb_access_format_json(&r, out, sizeof(out));
    const char *want =
        "{\"start_time\":0.000000,\"duration_ms\":0.000,\"downstream\":\"10.0.0.1:1\",\"upstream\":\"\","
        "\"listener\":\"l\",\"cluster\":\"\",\"bytes_received\":0,\"bytes_sent\":0,\"attempts\":0,"
        "\"flags\":[\"UF\",\"UO\",\"NR\",\"IT\",\"RS\"]}\n";
    ZT_CHECKF(n == strlen(want) && memcmp(out, want, n) == 0, "got %.*s", (int)n, out);
}

/* Every string byte a control byte: the longest line there is. */
static void test_worst_case_line_fits_the_bound(void)
{
    zlb_access_record r;
    memset(&r, 0, sizeof(r));
    r.start_unix_ns = INT64_MAX;
    r.duration_ns = INT64_MAX;
    r.bytes_received = r.bytes_sent = UINT64_MAX;
    r.attempts = UINT16_MAX;
    r.flags = UINT16_MAX;
    r.status = UINT16_MAX;
    r.down.sin6_family = r.up.sin6_family = AF_INET6;
    memset(&r.down.sin6_addr, 0xff, 16);
    memset(&r.up.sin6_addr, 0xff, 16);
    memset(r.method, 1, sizeof(r.method) - 1);
    memset(r.authority, 1, sizeof(r.authority) - 1);
    memset(r.path, 1, sizeof(r.path) - 1);
    memset(r.cluster, 1, sizeof(r.cluster) - 1);
    memset(r.listener, 1, sizeof(r.listener) - 1);
    static char out[ZLB_AL_LINE_MAX];
    size_t n = zlb_access_format_json(&r, out, sizeof(out));
    ZT_CHECK(n > 0 && n <= sizeof(out) && out[n - 1] == '\n');
    ZT_CHECK(zlb_access_format_json(&r, out, sizeof(out) - 1) == 0);
}

/* ---- the writer on real pipes ---------------------------------------------- */

typedef struct rings {
    zlb_access_ring r[2];
    zlb_access_ring *p[2];
    int wake_fd;
} rings;

/* Two rings of `records` slots (a power of two), set up the way
 * zlb_engine_set_access_log does. */
static void rings_init(rings *rs, uint32_t records)
{
    memset(rs, 0, sizeof(*rs));
    rs->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    for (int i = 0; i < 2; i++) {
        rs->r[i].slots = calloc(records, sizeof(zlb_access_record));
        rs->r[i].mask = records - 1;
        rs->r[i].wake_fd = rs->wake_fd;
        rs->r[i].wake_at = records / 2;
        rs->p[i] = &rs->r[i];
    }
}

static void rings_free(rings *rs)
{
    for (int i = 0; i < 2; i++)
        free(rs->r[i].slots);
    close(rs->wake_fd);
}

/* Pushes n records numbered from first (path "/<ring>-<i>") into ring k,
 * retrying while it is full (a worker would drop; here every record must
 * arrive). Gives up after DEADLINE_NS: the writer stopped draining. */
typedef struct producer {
    zlb_access_ring *ring;
    int k, n;
    int stuck;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    int64_t deadline = zlb_now_ns() + DEADLINE_NS;
    for (int i = 0; i < p->n; i++) {
        zlb_access_record *rec;
        while (!(rec = zlb_access_ring_reserve(p->ring))) {
            if (zlb_now_ns() > deadline) {
                p->stuck = 1;
                return NULL;
            }
            sched_yield();
        }
        memset(rec, 0, sizeof(*rec));
        v4(&rec->down, "127.0.0.1", 1000);
        rec->status = 200;
        snprintf(rec->path, sizeof(rec->path), "/%d-%d", p->k, i);
        zlb_access_ring_commit(p->ring);
    }
    return NULL;
}

/* Reads a pipe to EOF into a growing buffer. */
typedef struct sink {
    int fd;
    char *data;
    size_t len, cap;
} sink;

static void *consume(void *arg)
{
    sink *s = arg;
    for (;;) {
        if (s->cap - s->len < 65536) {
            s->cap = s->cap ? s->cap * 2 : 1 << 20;
            s->data = realloc(s->data, s->cap);
        }
        ssize_t n = read(s->fd, s->data + s->len, s->cap - s->len);
        if (n <= 0)
            return NULL;
        s->len += (size_t)n;
    }
}

/* With a flush interval far longer than the test, records reach the pipe
 * only through the producers' half-ring nudges and the final drain: every
 * record arrives, once, each ring's in order. */
static void test_writer_writes_every_record_in_order(void)
{
    rings rs;
    rings_init(&rs, ZLB_AL_RING_DEFAULT);
    int pfd[2];
    ZT_CHECK(pipe2(pfd, O_CLOEXEC) == 0);
    sink s = {.fd = pfd[0]};
    pthread_t reader;
    pthread_create(&reader, NULL, consume, &s);
    char err[256];
    zlb_alog_writer_opts o = {.fd = pfd[1], .flush_interval_ms = 600000, .buffer_bytes = 64 * 1024};
    zlb_alog_writer *w = zlb_alog_writer_start(rs.p, 2, rs.wake_fd, &o, err, sizeof(err));
    ZT_CHECKF(w != NULL, "%s", err);
    enum { N = 3 * ZLB_AL_RING_DEFAULT + 123 };
    producer prod[2] = {{.ring = &rs.r[0], .k = 0, .n = N}, {.ring = &rs.r[1], .k = 1, .n = N}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, produce, &prod[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    zlb_alog_writer_stats st;
    int rc = zlb_alog_writer_stop(w, 10000, &st); /* closes pfd[1]: the reader sees EOF */
    pthread_join(reader, NULL);
    close(pfd[0]);
    ZT_CHECK(!prod[0].stuck && !prod[1].stuck);
    ZT_CHECK(rc == 0);
    ZT_CHECKF(st.written == 2 * N && st.sampled_out == 0 && st.write_errors == 0 && st.buffered == 0,
              "written %llu", (unsigned long long)st.written);
    int next[2] = {0, 0};
    size_t lines = 0;
    for (char *line = s.data; line < s.data + s.len; lines++) {
        char *end = memchr(line, '\n', (size_t)(s.data + s.len - line));
        ZT_CHECK(end != NULL);
        const char *path = strstr(line, "\"path\":\"/");
        ZT_CHECK(path != NULL && path < end);
        int k, i;
        ZT_CHECK(sscanf(path, "\"path\":\"/%d-%d\"", &k, &i) == 2 && (k == 0 || k == 1));
        ZT_CHECKF(i == next[k], "ring %d: record %d after %d", k, i, next[k] - 1);
        next[k]++;
        line = end + 1;
    }
    ZT_CHECK(lines == 2 * (size_t)N && next[0] == N && next[1] == N);
    free(s.data);
    rings_free(&rs);
}

static void test_writer_samples_at_random_and_counts(void)
{
    rings rs;
    rings_init(&rs, ZLB_AL_RING_DEFAULT);
    int pfd[2];
    ZT_CHECK(pipe2(pfd, O_CLOEXEC) == 0);
    sink s = {.fd = pfd[0]};
    pthread_t reader;
    pthread_create(&reader, NULL, consume, &s);
    char err[256];
    zlb_alog_writer_opts o = {.fd = pfd[1], .sample_threshold = UINT64_MAX / 4, .rng_seed = 7,
                              .flush_interval_ms = 1, .buffer_bytes = ZLB_ALOG_MIN_BUFFER};
    zlb_alog_writer *w = zlb_alog_writer_start(rs.p, 2, rs.wake_fd, &o, err, sizeof(err));
    ZT_CHECKF(w != NULL, "%s", err);
    enum { N = 40000 };
    producer prod = {.ring = &rs.r[1], .k = 1, .n = N};
    produce(&prod);
    zlb_alog_writer_stats st;
    ZT_CHECK(zlb_alog_writer_stop(w, 10000, &st) == 0);
    pthread_join(reader, NULL);
    close(pfd[0]);
    ZT_CHECK(!prod.stuck);
    size_t lines = 0;
    for (size_t i = 0; i < s.len; i++)
        lines += s.data[i] == '\n';
    ZT_CHECK(st.written == lines && st.written + st.sampled_out == N);
    ZT_CHECKF(st.written > 9400 && st.written < 10600, "kept %llu of %d at 1/4", (unsigned long long)st.written,
              N); /* Binomial(40000, 1/4): sd 87 */
    free(s.data);
    rings_free(&rs);
}

static void test_bad_options_are_refused(void)
{
    rings rs;
    rings_init(&rs, ZLB_AL_RING_DEFAULT);
    char err[256] = "";
    zlb_alog_writer_opts o = {.fd = -1, .flush_interval_ms = 100, .buffer_bytes = ZLB_ALOG_MIN_BUFFER - 1};
    ZT_CHECK(zlb_alog_writer_start(rs.p, 2, rs.wake_fd, &o, err, sizeof(err)) == NULL && err[0]);
    o.buffer_bytes = ZLB_ALOG_MIN_BUFFER;
    o.flush_interval_ms = 0;
    ZT_CHECK(zlb_alog_writer_start(rs.p, 2, rs.wake_fd, &o, err, sizeof(err)) == NULL);
    rings_free(&rs);
}

/* A destination nobody reads: producers never wait (the ring fills and
 * reserve says so), stop gives up on the blocked thread, and the thread,
 * once its write returns, exits without touching the rings, which are
 * already freed (ASan would report it), and closes the destination. */
static void test_blocked_writer_is_left_behind_without_touching_the_rings(void)
{
    rings rs;
    rings_init(&rs, ZLB_AL_RING_DEFAULT);
    int pfd[2];
    ZT_CHECK(pipe2(pfd, O_CLOEXEC) == 0);
    int probe = dup(pfd[1]); /* to see the pipe full; closed before the EOF is awaited */
    char err[256];
    zlb_alog_writer_opts o = {.fd = pfd[1], .flush_interval_ms = 1, .buffer_bytes = ZLB_ALOG_MIN_BUFFER};
    zlb_alog_writer *w = zlb_alog_writer_start(rs.p, 2, rs.wake_fd, &o, err, sizeof(err));
    ZT_CHECKF(w != NULL, "%s", err);
    /* Far more than the pipe and the buffer hold, less than the ring. */
    int n = 0;
    zlb_access_record *rec;
    while (n < ZLB_AL_RING_DEFAULT - 1 && (rec = zlb_access_ring_reserve(&rs.r[0]))) {
        memset(rec, 0, sizeof(*rec));
        v4(&rec->down, "127.0.0.1", 1000);
        zlb_access_ring_commit(&rs.r[0]);
        n++;
    }
    int64_t deadline = zlb_now_ns() + DEADLINE_NS;
    struct pollfd writable = {.fd = probe, .events = POLLOUT};
    int full;
    while (!(full = poll(&writable, 1, 0) == 0) && zlb_now_ns() < deadline)
        sched_yield();
    close(probe);
    ZT_CHECK(full); /* the writer is stuck in write(2) */
    /* The writer is stuck, the producer is not: the ring fills and refuses. */
    while ((rec = zlb_access_ring_reserve(&rs.r[1]))) {
        memset(rec, 0, sizeof(*rec));
        zlb_access_ring_commit(&rs.r[1]);
    }
    ZT_CHECK(zlb_access_ring_pending(&rs.r[1]) == ZLB_AL_RING_DEFAULT);
    zlb_alog_writer_stats st;
    ZT_CHECK(zlb_alog_writer_stop(w, 50, &st) == -1);
    ZT_CHECK(st.written < (uint64_t)n && st.buffered > 0);
    rings_free(&rs);
    /* Unblock: the thread finishes its write, sees it was abandoned, exits
     * and closes the pipe's write end, so the reader reaches EOF. */
    char buf[65536];
    deadline = zlb_now_ns() + DEADLINE_NS;
    ssize_t got = -1;
    while (got != 0 && zlb_now_ns() < deadline) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (poll(&p, 1, 100) > 0)
            got = read(pfd[0], buf, sizeof(buf));
    }
    close(pfd[0]);
    ZT_CHECK(got == 0);
}

/* A ring of the smallest size takes exactly that many records, refuses the
 * next, and uses its slots in order around the ring, also when a filling
 * starts part-way round (the first 5 records move the start). */
static void test_small_ring_fills_at_its_size_and_wraps(void)
{
    rings rs;
    rings_init(&rs, ZLB_AL_RING_MIN);
    zlb_access_ring *r = &rs.r[0];
    char *out = malloc(2 * ZLB_AL_LINE_MAX);
    uint64_t rng = 1, kept = 0, skipped = 0, seq = 0;
    for (int pass = 0; pass < 6; pass++) {
        uint32_t fill = pass == 0 ? 5 : ZLB_AL_RING_MIN;
        for (uint32_t i = 0; i < fill; i++, seq++) {
            zlb_access_record *rec = zlb_access_ring_reserve(r);
            ZT_CHECK(rec == &r->slots[seq % ZLB_AL_RING_MIN]);
            if (!rec)
                break;
            memset(rec, 0, sizeof(*rec));
            zlb_access_ring_commit(r);
        }
        if (pass > 0) {
            ZT_CHECK(zlb_access_ring_reserve(r) == NULL);
            ZT_CHECK(zlb_access_ring_pending(r) == ZLB_AL_RING_MIN);
        }
        while (zlb_access_ring_pending(r) > 0)
            zlb_access_ring_format(r, out, 2 * ZLB_AL_LINE_MAX, &rng, 0, &kept, &skipped);
    }
    ZT_CHECK(kept == 5 + 5 * ZLB_AL_RING_MIN && skipped == 0);
    free(out);
    rings_free(&rs);
}

int main(void)
{
    ZT_RUN(test_sockaddr_format_matches_inet_ntop);
    ZT_RUN(test_json_http_record);
    ZT_RUN(test_json_l4_record_has_no_http_fields);
    ZT_RUN(test_worst_case_line_fits_the_bound);
    ZT_RUN(test_writer_writes_every_record_in_order);
    ZT_RUN(test_writer_samples_at_random_and_counts);
    ZT_RUN(test_bad_options_are_refused);
    ZT_RUN(test_blocked_writer_is_left_behind_without_touching_the_rings);
    ZT_RUN(test_small_ring_fills_at_its_size_and_wraps);
    return zt_summary();
}
