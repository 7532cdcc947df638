/*
 * worker.h - internals shared by engine.c (control side), worker.c (the
 * event loop), l4.c and http1_proxy.c (the proxies) and tls_worker.c. Not
 * part of the API.
 */
#ifndef ZLB_WORKER_H
#define ZLB_WORKER_H

#include <pthread.h>
#include "engine.h"
#include "lb.h"
#include "qsbr.h"
#include "timer.h"

/* Bytes per read(2) in the L4 copy path; a read that fills it switches the
 * direction to splice (see l4.c). */
#define ZLB_SCRATCH (16 * 1024)

/* Every epoll registration points at one of these as its first member, so
 * the loop can dispatch on `kind`. */
enum zlb_io_kind { ZLB_IO_WAKE, ZLB_IO_LISTENER, ZLB_IO_DOWN, ZLB_IO_UP, ZLB_IO_HTTP_DOWN, ZLB_IO_HTTP_UP };
typedef struct zlb_io {
    uint8_t kind;
} zlb_io;

/* A listener as the engine knows it. Refcounted: the engine's table holds
 * one reference, each worker socket one, each accepted connection one. */
typedef struct zlb_listener {
    _Atomic int64_t refs;
    _Atomic int64_t active;         /* live connections, all workers */
    int id;
    uint16_t bound_port;
    zlb_listener_opts opts;         /* opts.tls is NULL: see tls */
    zlb_tls_policy *tls;            /* owned; NULL = plaintext listener */
} zlb_listener;

void zlb_listener_unref(zlb_listener *l);

/* One worker's accepting socket of a listener (owned by that worker). */
typedef struct zlb_wlistener {
    zlb_io io;
    int fd;
    zlb_listener *l;
    struct zlb_wlistener *next;
    /* Cluster index cached per snapshot so accept does no name lookup. */
    const zlb_snapshot *cached_snap;
    int cached_cluster;
} zlb_wlistener;

/* Per-worker counters: written by the owning worker only (relaxed atomics so
 * the control thread can read them without tearing). Mirrors zlb_stats. */
typedef struct zlb_worker_stats {
    _Atomic uint64_t c[sizeof(zlb_stats) / sizeof(uint64_t)];
} zlb_worker_stats;

#define ZLB_STAT(w, field) \
    (w)->stats.c[offsetof(zlb_stats, field) / sizeof(uint64_t)]
/* Single writer (the owning worker): a relaxed load + store is enough and
 * avoids a locked read-modify-write on every message. */
#define ZLB_STAT_ADD(w, field, v)                                                        \
    atomic_store_explicit(&ZLB_STAT(w, field),                                           \
                          atomic_load_explicit(&ZLB_STAT(w, field), memory_order_relaxed) \
                              + (uint64_t)(v),                                           \
                          memory_order_relaxed)
#define ZLB_STAT_SUB(w, field, v) ZLB_STAT_ADD(w, field, -(uint64_t)(v))

enum zlb_cmd_kind { ZLB_CMD_ADD_LISTENER, ZLB_CMD_REMOVE_LISTENER };
typedef struct zlb_cmd {
    enum zlb_cmd_kind kind;
    int fd;                 /* ADD: the socket, ownership passes to the worker */
    zlb_listener *l;        /* ADD: a reference passes to the worker */
    int listener_id;        /* REMOVE */
    struct zlb_cmd *next;
} zlb_cmd;

typedef struct zlb_worker {
    zlb_engine *eng;
    uint32_t id;
    pthread_t thread;
    int epfd;
    zlb_io wake_io;
    int wake_fd;                 /* eventfd: commands and stop */
    pthread_mutex_t cmd_lock;    /* protects cmds only (control path) */
    zlb_cmd *cmds;
    _Atomic int stop;

    const zlb_snapshot *snap;    /* loaded once per loop iteration */
    zlb_lb_cache *lb;
    uint64_t rng;
    zlb_timer_heap timers;
    int64_t now_ns;              /* refreshed once per loop iteration */
    int64_t unix_offset_ns;      /* wall clock - monotonic clock, see zlb_worker_unix_ns */
    int64_t unix_resync_ns;      /* now_ns at which unix_offset_ns is measured again */
    zlb_wlistener *listeners;
    struct zlb_conn *conns;      /* every open connection of this worker */
    struct zlb_conn *closed;     /* closed in this batch, freed by zlb_l4_reap */
    struct zlb_hconn *hconns;    /* HTTP client connections (http1_proxy.c) */
    struct zlb_hconn *hready;    /* HTTP connections with work left over (zlb_http_run_ready) */
    int busy;                    /* work is waiting: poll without blocking */
    struct zlb_hup *hups;        /* HTTP upstream connections, busy or pooled */
    struct zlb_hup *idle_hups;   /* the pooled ones (most recently used first) */
    uint32_t n_idle_hups;
    void *hclosed;               /* HTTP objects closed in this batch */

    char *scratch;               /* ZLB_SCRATCH bytes for read/write copying */
    int (*pipe_pool)[2];         /* empty pipes kept for reuse */
    uint32_t n_pipes, cap_pipes;

    zlb_worker_stats stats;
    zlb_access_ring alog;
    zlb_tls_sessions *tls_sessions; /* upstream tickets, created on first use; freed by the engine */
} zlb_worker;

struct zlb_engine {
    zlb_engine_opts opts;
    zlb_worker *workers;
    zlb_qsbr qsbr;
    zlb_ep_registry *registry;
    pthread_mutex_t listeners_lock;   /* control threads only */
    zlb_listener **listeners;         /* indexed by id, NULL when removed */
    int n_listeners, cap_listeners;
    int started;
    _Atomic int access_log;           /* workers push records while set (acquire) */
    int alog_wake_fd;                 /* eventfd: workers nudge the access-log thread (accesslog.h) */
    zlb_alog_writer *alog_writer;     /* the running access-log thread, or NULL (control thread) */
    zlb_alog_writer_stats alog_past;  /* counters of the writers already stopped (control thread) */
    /* TLS. Slots and the cluster table are created by control threads and
     * read by workers under tls_lock (once per connection, and only when
     * n_cluster_tls says there is something to find). */
    pthread_mutex_t tls_lock;
    zlb_tls_slot *tls_slots;          /* never removed before engine free */
    struct zlb_cluster_tls *cluster_tls;
    _Atomic int n_cluster_tls;
    _Atomic uint64_t cluster_tls_gen; /* bumped by every zlb_engine_set_cluster_tls: pooled HTTP
                                         upstream connections of an older generation are not reused */
    _Atomic int tls_log_peers;
    pthread_mutex_t tls_ev_lock;      /* the event ring (rare: failures, or peer logging) */
    zlb_tls_event *tls_ev;            /* ZLB_TLS_EVENT_RING slots, allocated with the engine */
    uint64_t tls_ev_head, tls_ev_tail;
};

/* Wall clock of the current loop iteration (access-log start times, TLS
 * events): now_ns plus an offset the loop measures once a second, so a
 * request costs no clock_gettime of its own and a clock step shows within
 * a second. Owning worker only. */
static inline int64_t zlb_worker_unix_ns(const zlb_worker *w) { return w->now_ns + w->unix_offset_ns; }

/* engine.c, TLS helpers for the workers. */
/* The upstream TLS policy of a cluster with a new reference, or NULL. */
zlb_tls_policy *zlb_engine_cluster_tls(zlb_engine *e, const char *cluster);
/* Queues an event; a full ring drops it and returns -1 (caller counts). */
int zlb_engine_tls_event(zlb_engine *e, const zlb_tls_event *ev);

/* worker.c */
void *zlb_worker_main(void *arg);
void zlb_worker_wake(zlb_worker *w);

/* l4.c (worker thread) */
void zlb_l4_accept(zlb_worker *w, zlb_wlistener *wl);
void zlb_l4_on_event(zlb_worker *w, zlb_io *io, uint32_t events);
/* Frees connections closed during the last event batch. */
void zlb_l4_reap(zlb_worker *w);

/* http1_proxy.c (worker thread) */
void zlb_http_accept(zlb_worker *w, zlb_wlistener *wl);
void zlb_http_on_event(zlb_worker *w, zlb_io *io, uint32_t events);
void zlb_http_reap(zlb_worker *w);
/* Runs the connections that used up their round budget; returns 1 when
 * some still have work (the next epoll_wait must not block). */
int zlb_http_run_ready(zlb_worker *w);
void zlb_http_close_all(zlb_worker *w);
/* Closes every connection of the worker (engine shutdown). */
void zlb_l4_close_all(zlb_worker *w);
void zlb_l4_pipe_pool_free(zlb_worker *w);

#endif
