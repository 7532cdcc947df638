/*
 * accesslog_writer.h - the access-log thread: drains every worker's ring
 * (accesslog.h), samples, formats JSON lines into one large buffer and
 * writes it to a file descriptor in as few write(2) calls as it can.
 *
 * Why a C thread of its own: the records never become Python objects, the
 * GIL and the control plane's event loop are never involved, and the thread
 * sleeps on an eventfd between batches (woken by its flush timer or by a
 * worker whose ring is half full) instead of polling.
 *
 * A destination that blocks (a pipe nobody reads, a full disk) blocks this
 * thread only: the rings fill and the workers drop and count
 * (access_log_dropped), they never wait.
 *
 * Threads: zlb_alog_writer_start/stop/stats are called by one control
 * thread at a time (the engine, engine.c); the writer thread is the rings'
 * only consumer while it runs.
 */
#ifndef ZLB_ACCESSLOG_WRITER_H
#define ZLB_ACCESSLOG_WRITER_H

#include "accesslog.h"

typedef struct zlb_alog_writer zlb_alog_writer;

typedef struct zlb_alog_writer_opts {
    int fd;                     /* destination; owned by the writer once started (closed when it ends) */
    uint64_t sample_threshold;  /* keep a record when zlb_rand64 < this; 0 keeps every record */
    uint64_t rng_seed;          /* sampling generator (non-zero after mixing, any value is fine) */
    uint32_t flush_interval_ms; /* longest a record waits in its ring before it is written (1 to INT_MAX) */
    uint32_t buffer_bytes;      /* largest single write; >= ZLB_ALOG_MIN_BUFFER */
} zlb_alog_writer_opts;

/* A buffer smaller than two of the longest lines would write line by line. */
#define ZLB_ALOG_MIN_BUFFER (2 * ZLB_AL_LINE_MAX)

/* Counters since the writer started (all records count exactly once). */
typedef struct zlb_alog_writer_stats {
    uint64_t written;       /* lines the destination accepted */
    uint64_t sampled_out;   /* left out on purpose */
    uint64_t write_errors;  /* lines lost to a failed write */
    uint64_t buffered;      /* formatted, not written yet */
    int last_errno;         /* of the latest failed write, 0 if none */
} zlb_alog_writer_stats;

/* Starts the thread over rings[0..n_rings-1] (copied). wake_fd is an
 * eventfd the rings' producers write to (see zlb_access_ring.wake_fd); the
 * writer duplicates it, so the caller's descriptor stays the caller's.
 * Returns NULL with err set (o->fd then stays the caller's). */
zlb_alog_writer *zlb_alog_writer_start(zlb_access_ring *const *rings, uint32_t n_rings, int wake_fd,
                                       const zlb_alog_writer_opts *o, char *err, size_t errlen);

/* Stops the thread after one last drain of every ring and write of the
 * buffer, waiting up to timeout_ms for it; fills *final with the last
 * counters and releases the caller's hold on w. Returns 0 when the thread
 * finished (the destination is closed), or -1 when it was still blocked in
 * a write: it is then left to finish that write on its own and exits
 * without touching the rings again, so they may be freed at once. */
int zlb_alog_writer_stop(zlb_alog_writer *w, uint32_t timeout_ms, zlb_alog_writer_stats *final);

/* Current counters (any time between start and stop). */
void zlb_alog_writer_stats_get(zlb_alog_writer *w, zlb_alog_writer_stats *out);

#endif
