/*
 * worker.c - one worker thread's event loop. Each worker owns an epoll
 * instance, its SO_REUSEPORT listening sockets, its connections and its
 * timers; nothing here is shared except the atomics noted in worker.h.
 */
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <unistd.h>

#define ZLB_MAX_EVENTS 256
/* Upper bound on one epoll_wait so a stop request is never missed for long
 * even if a wake-up were lost. */
#define ZLB_MAX_WAIT_MS 1000
/* How often the wall clock's offset from the monotonic clock is measured. */
#define ZLB_UNIX_RESYNC_NS 1000000000LL

void zlb_worker_wake(zlb_worker *w)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: the worker will wake. */
    ssize_t rc = write(w->wake_fd, &one, sizeof(one));
    ZLB_UNUSED(rc);
}

static void add_listener(zlb_worker *w, zlb_cmd *c)
{
    zlb_wlistener *wl = calloc(1, sizeof(*wl));
    if (!wl) {
        close(c->fd);
        zlb_listener_unref(c->l);
        return;
    }
    wl->io.kind = ZLB_IO_LISTENER;
    wl->fd = c->fd;
    wl->l = c->l;
    wl->cached_cluster = -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wl->io};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, wl->fd, &ev) != 0) {
        close(wl->fd);
        zlb_listener_unref(wl->l);
        free(wl);
        return;
    }
    wl->next = w->listeners;
    w->listeners = wl;
}

/* Closing the fd removes it from epoll; events already returned by the
 * current epoll_wait batch for it are skipped because commands run before
 * the batch is fetched (see the loop). */
static void close_wlistener(zlb_wlistener *wl)
{
    close(wl->fd);
    zlb_listener_unref(wl->l);
    free(wl);
}

static void remove_listener(zlb_worker *w, int id)
{
    for (zlb_wlistener **pp = &w->listeners; *pp; pp = &(*pp)->next) {
        if ((*pp)->l->id == id) {
            zlb_wlistener *wl = *pp;
            *pp = wl->next;
            close_wlistener(wl);
            return;
        }
    }
}

static void run_commands(zlb_worker *w)
{
    uint64_t v;
    ssize_t rc = read(w->wake_fd, &v, sizeof(v));
    ZLB_UNUSED(rc);
    pthread_mutex_lock(&w->cmd_lock);
    zlb_cmd *c = w->cmds;
    w->cmds = NULL;
    pthread_mutex_unlock(&w->cmd_lock);
    while (c) {
        zlb_cmd *next = c->next;
        if (c->kind == ZLB_CMD_ADD_LISTENER)
            add_listener(w, c);
        else
            remove_listener(w, c->listener_id);
        free(c);
        c = next;
    }
}

/* Reads the monotonic clock for this loop iteration (and, once a second,
 * the wall clock's offset from it: zlb_worker_unix_ns). */
static void tick(zlb_worker *w)
{
    w->now_ns = zlb_now_ns();
    if (w->now_ns >= w->unix_resync_ns) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        w->unix_offset_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - w->now_ns;
        w->unix_resync_ns = w->now_ns + ZLB_UNIX_RESYNC_NS;
    }
}

void *zlb_worker_main(void *arg)
{
    zlb_worker *w = arg;
    zlb_engine *e = w->eng;
    struct epoll_event events[ZLB_MAX_EVENTS];

    /* Named for top -H, perf and the benchmarks' per-thread CPU figures. */
    char name[16];
    snprintf(name, sizeof(name), "zlb-worker-%u", w->id);
    prctl(PR_SET_NAME, name);
    zlb_qsbr_online(&e->qsbr, w->id);
    while (!atomic_load(&w->stop)) {
        /* Quiescent point: nothing from the previous iteration's snapshot is
         * held past here (connections keep endpoint-state references, never
         * snapshot pointers across iterations). */
        tick(w);
        zlb_timer_run(&w->timers, w->now_ns);
        int timeout = w->busy ? 0 : zlb_timer_next_ms(&w->timers, w->now_ns, ZLB_MAX_WAIT_MS);

        /* Blocking: announce an extended quiescent state so publishers never
         * wait for an idle worker. */
        zlb_qsbr_offline(&e->qsbr, w->id);
        int n = epoll_wait(w->epfd, events, ZLB_MAX_EVENTS, timeout);
        zlb_qsbr_online(&e->qsbr, w->id);
        w->snap = zlb_qsbr_current(&e->qsbr);
        tick(w);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        /* Commands first: a listener removed by a command must not be used
         * by an event of this batch, so listener events are re-validated. */
        for (int i = 0; i < n; i++) {
            zlb_io *io = events[i].data.ptr;
            if (io->kind == ZLB_IO_WAKE) {
                run_commands(w);
                events[i].data.ptr = NULL;
            }
        }
        for (int i = 0; i < n; i++) {
            zlb_io *io = events[i].data.ptr;
            if (!io)
                continue;
            if (io->kind == ZLB_IO_LISTENER) {
                /* Only accept on sockets still installed. */
                for (zlb_wlistener *wl = w->listeners; wl; wl = wl->next)
                    if (&wl->io == io) {
                        if (wl->l->opts.protocol == ZLB_PROTO_HTTP)
                            zlb_http_accept(w, wl);
                        else
                            zlb_l4_accept(w, wl);
                        break;
                    }
            } else if (io->kind == ZLB_IO_HTTP_DOWN || io->kind == ZLB_IO_HTTP_UP) {
                zlb_http_on_event(w, io, events[i].events);
            } else {
                zlb_l4_on_event(w, io, events[i].events);
            }
        }
        /* Connections closed during the batch are freed only now, since a
         * later event of the same batch may still point at them. */
        w->busy = zlb_http_run_ready(w);
        zlb_l4_reap(w);
        zlb_http_reap(w);
    }
    zlb_qsbr_offline(&e->qsbr, w->id);

    while (w->listeners) {
        zlb_wlistener *wl = w->listeners;
        w->listeners = wl->next;
        close_wlistener(wl);
    }
    zlb_l4_close_all(w);
    zlb_http_close_all(w);
    zlb_l4_pipe_pool_free(w);
    zlb_timer_heap_free(&w->timers);
    return NULL;
}
