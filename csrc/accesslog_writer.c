/*
 * accesslog_writer.c - see accesslog_writer.h.
 *
 * Lifetime: the writer is held by the control side (from start to stop) and
 * by its thread (until it returns); whoever lets go last frees it and
 * closes its descriptors. That is what lets stop give up on a thread
 * blocked in write(2) without a use-after-free when the write returns.
 */
#define _GNU_SOURCE /* SCHED_BATCH */
#include "accesslog_writer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

struct zlb_alog_writer {
    /* Set by start, read-only afterwards. */
    zlb_access_ring **rings;
    uint32_t n_rings;
    int fd;
    int wake_fd;               /* our duplicate of the producers' eventfd */
    uint64_t threshold;
    uint32_t flush_ms;
    char *buf;
    size_t cap;
    pthread_t thread;

    /* The writer thread's own. */
    uint64_t rng;
    size_t used;               /* bytes in buf */
    uint64_t lines;            /* lines in buf */

    /* Written by the writer thread (relaxed), read by anyone. */
    _Atomic uint64_t written, sampled_out, write_errors, buffered;
    _Atomic int last_errno;

    _Atomic int stop;          /* set once by zlb_alog_writer_stop */
    _Atomic int refs;          /* the control side's and the thread's */

    /* Guards finished and abandoned. The thread holds it while it reads the
     * rings, so once stop has set abandoned under it the rings are never
     * touched again. */
    pthread_mutex_t lock;
    pthread_cond_t done;       /* finished became 1 (CLOCK_MONOTONIC waits) */
    int finished, abandoned;
};

static void writer_unref(zlb_alog_writer *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1)
        return;
    close(w->fd);
    close(w->wake_fd);
    pthread_cond_destroy(&w->done);
    pthread_mutex_destroy(&w->lock);
    free(w->buf);
    free(w->rings);
    free(w);
}

static uint64_t count_lines(const char *p, size_t n)
{
    uint64_t k = 0;
    for (const char *end = p + n; (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
        k++;
    return k;
}

/* Writes the whole buffer, then empties it. A non-blocking destination
 * (a descriptor shared with a parent that set O_NONBLOCK) is waited for
 * like a blocking one would be. On an error, the lines not fully written
 * count as write errors and the rest of the buffer is dropped: retrying a
 * full disk forever would stop the log for good. */
static void flush(zlb_alog_writer *w)
{
    size_t off = 0;
    int err = 0;
    while (off < w->used) {
        ssize_t n = write(w->fd, w->buf + off, w->used - off);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = w->fd, .events = POLLOUT};
            if (poll(&p, 1, -1) < 0 && errno != EINTR) {
                err = errno;
                break;
            }
        } else {
            err = n < 0 ? errno : EIO; /* 0 bytes for a non-empty write: no progress possible */
            break;
        }
    }
    uint64_t ok = w->lines;
    if (err) {
        ok = count_lines(w->buf, off);
        atomic_fetch_add_explicit(&w->write_errors, w->lines - ok, memory_order_relaxed);
        atomic_store_explicit(&w->last_errno, err, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&w->written, ok, memory_order_relaxed);
    w->used = 0;
    w->lines = 0;
    atomic_store_explicit(&w->buffered, 0, memory_order_relaxed);
}

/* One pass over every ring: formats what each holds, writes the buffer
 * whenever it cannot take another line and once at the end (so a record
 * waits at most one flush interval). Returns -1, without writing, once the
 * writer is abandoned. */
static int drain(zlb_alog_writer *w)
{
    for (uint32_t i = 0; i < w->n_rings; i++) {
        for (;;) {
            uint64_t kept = 0, skipped = 0;
            pthread_mutex_lock(&w->lock);
            if (w->abandoned) {
                pthread_mutex_unlock(&w->lock);
                return -1;
            }
            w->used += zlb_access_ring_format(w->rings[i], w->buf + w->used, w->cap - w->used, &w->rng,
                                              w->threshold, &kept, &skipped);
            pthread_mutex_unlock(&w->lock);
            w->lines += kept;
            atomic_fetch_add_explicit(&w->sampled_out, skipped, memory_order_relaxed);
            atomic_store_explicit(&w->buffered, w->lines, memory_order_relaxed);
            if (w->cap - w->used >= ZLB_AL_LINE_MAX)
                break; /* the ring is empty (as far as it was when formatting began) */
            flush(w);
        }
    }
    if (w->used)
        flush(w);
    return 0;
}

/* Sleeps until a producer's nudge, a stop, or the flush interval. */
static void wait_for_work(zlb_alog_writer *w)
{
    struct pollfd p = {.fd = w->wake_fd, .events = POLLIN};
    if (poll(&p, 1, (int)w->flush_ms) > 0) {
        uint64_t v;
        ssize_t rc = read(w->wake_fd, &v, sizeof(v)); /* non-blocking: resets the counter */
        (void)rc;
    }
}

static void *writer_main(void *arg)
{
    zlb_alog_writer *w = arg;
    prctl(PR_SET_NAME, "zlb-accesslog"); /* top -H, perf, the benchmarks */
    /* Batch work that can wait: SCHED_BATCH keeps its wake-ups from
     * preempting a worker on a shared CPU (the rings absorb the delay); it
     * still gets its fair share of the CPU. Best effort. */
    struct sched_param batch = {.sched_priority = 0};
    sched_setscheduler(0, SCHED_BATCH, &batch);
    for (;;) {
        /* Read before the pass: the pass after a stop is the final drain. */
        int stopping = atomic_load_explicit(&w->stop, memory_order_acquire);
        if (drain(w) != 0 || stopping)
            break;
        wait_for_work(w);
    }
    pthread_mutex_lock(&w->lock);
    w->finished = 1;
    pthread_cond_signal(&w->done);
    pthread_mutex_unlock(&w->lock);
    writer_unref(w);
    return NULL;
}

zlb_alog_writer *zlb_alog_writer_start(zlb_access_ring *const *rings, uint32_t n_rings, int wake_fd,
                                       const zlb_alog_writer_opts *o, char *err, size_t errlen)
{
    if (o->buffer_bytes < ZLB_ALOG_MIN_BUFFER || o->flush_interval_ms < 1 || o->flush_interval_ms > INT_MAX) {
        snprintf(err, errlen, "access log buffer must be at least %zu bytes and the flush interval 1 to %d ms",
                 (size_t)ZLB_ALOG_MIN_BUFFER, INT_MAX);
        return NULL;
    }
    zlb_alog_writer *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->rings = malloc(n_rings * sizeof(*w->rings));
    w->buf = malloc(o->buffer_bytes);
    w->wake_fd = fcntl(wake_fd, F_DUPFD_CLOEXEC, 0);
    if (!w->rings || !w->buf || w->wake_fd < 0) {
        snprintf(err, errlen, "cannot set up the access log: %s", w->wake_fd < 0 ? strerror(errno) : "out of memory");
        goto fail;
    }
    memcpy(w->rings, rings, n_rings * sizeof(*w->rings));
    w->n_rings = n_rings;
    w->fd = o->fd;
    w->threshold = o->sample_threshold;
    w->flush_ms = o->flush_interval_ms;
    w->cap = o->buffer_bytes;
    w->rng = o->rng_seed * 0x9E3779B97F4A7C15ULL | 1; /* xorshift needs a non-zero state */
    w->refs = 2;
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->done, &ca);
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&w->thread, NULL, writer_main, w);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the access-log thread: %s", strerror(rc));
        pthread_cond_destroy(&w->done);
        pthread_mutex_destroy(&w->lock);
        goto fail;
    }
    return w;
fail:
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    free(w->buf);
    free(w->rings);
    free(w);
    return NULL;
}

void zlb_alog_writer_stats_get(zlb_alog_writer *w, zlb_alog_writer_stats *out)
{
    out->written = atomic_load_explicit(&w->written, memory_order_relaxed);
    out->sampled_out = atomic_load_explicit(&w->sampled_out, memory_order_relaxed);
    out->write_errors = atomic_load_explicit(&w->write_errors, memory_order_relaxed);
    out->buffered = atomic_load_explicit(&w->buffered, memory_order_relaxed);
    out->last_errno = atomic_load_explicit(&w->last_errno, memory_order_relaxed);
}

int zlb_alog_writer_stop(zlb_alog_writer *w, uint32_t timeout_ms, zlb_alog_writer_stats *final)
{
    atomic_store_explicit(&w->stop, 1, memory_order_release);
    uint64_t one = 1;
    ssize_t wr = write(w->wake_fd, &one, sizeof(one)); /* our reference keeps wake_fd open */
    (void)wr;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->lock);
    int rc = 0;
    while (!w->finished && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&w->done, &w->lock, &deadline);
    int finished = w->finished;
    if (!finished)
        w->abandoned = 1;
    pthread_mutex_unlock(&w->lock);
    if (finished)
        pthread_join(w->thread, NULL);
    else
        pthread_detach(w->thread);
    zlb_alog_writer_stats_get(w, final);
    writer_unref(w);
    return finished ? 0 : -1;
}
