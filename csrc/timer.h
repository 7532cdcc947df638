/*
 * timer.h - a per-worker binary min-heap of deadlines (connect and idle
 * timeouts). Owned by one worker thread; no locking. Timers are embedded in
 * their owners (no allocation per timer); the heap array grows on demand.
 */
#ifndef ZLB_TIMER_H
#define ZLB_TIMER_H

#include "zlb_common.h"

typedef struct zlb_timer zlb_timer;
typedef void (*zlb_timer_cb)(zlb_timer *t, int64_t now_ns);

struct zlb_timer {
    int64_t deadline_ns;
    int32_t heap_index;   /* -1 when not armed */
    zlb_timer_cb cb;
};

typedef struct zlb_timer_heap {
    zlb_timer **items;
    uint32_t n, cap;
} zlb_timer_heap;

static inline void zlb_timer_init(zlb_timer *t, zlb_timer_cb cb)
{
    t->deadline_ns = 0;
    t->heap_index = -1;
    t->cb = cb;
}
static inline int zlb_timer_armed(const zlb_timer *t) { return t->heap_index >= 0; }

void zlb_timer_heap_free(zlb_timer_heap *h);
/* (Re)arms t for deadline_ns. Returns -1 only on allocation failure. */
int zlb_timer_arm(zlb_timer_heap *h, zlb_timer *t, int64_t deadline_ns);
void zlb_timer_cancel(zlb_timer_heap *h, zlb_timer *t);
/* Milliseconds until the earliest deadline for epoll_wait (-1 = none),
 * capped at max_ms. */
int zlb_timer_next_ms(const zlb_timer_heap *h, int64_t now_ns, int max_ms);
/* Disarms and runs every timer whose deadline has passed. A callback may
 * re-arm its timer or free its owner. */
void zlb_timer_run(zlb_timer_heap *h, int64_t now_ns);

#endif
