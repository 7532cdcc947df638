/* timer.c - see timer.h. Standard binary heap with back-indices so that
 * cancel and re-arm are O(log n). */
#include "timer.h"

#include <stdlib.h>

static void heap_set(zlb_timer_heap *h, uint32_t i, zlb_timer *t)
{
    h->items[i] = t;
    t->heap_index = (int32_t)i;
}

static void sift_up(zlb_timer_heap *h, uint32_t i)
{
    zlb_timer *t = h->items[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (h->items[parent]->deadline_ns <= t->deadline_ns)
            break;
        heap_set(h, i, h->items[parent]);
        i = parent;
    }
    heap_set(h, i, t);
}

static void sift_down(zlb_timer_heap *h, uint32_t i)
{
    zlb_timer *t = h->items[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= h->n)
            break;
        if (child + 1 < h->n && h->items[child + 1]->deadline_ns < h->items[child]->deadline_ns)
            child++;
        if (h->items[child]->deadline_ns >= t->deadline_ns)
            break;
        heap_set(h, i, h->items[child]);
        i = child;
    }
    heap_set(h, i, t);
}

void zlb_timer_heap_free(zlb_timer_heap *h)
{
    free(h->items);
    h->items = NULL;
    h->n = h->cap = 0;
}

void zlb_timer_cancel(zlb_timer_heap *h, zlb_timer *t)
{
    if (t->heap_index < 0)
        return;
    uint32_t i = (uint32_t)t->heap_index;
    t->heap_index = -1;
    h->n--;
    if (i == h->n)
        return;
    /* Move the last item into the hole; it may need to go either way. */
    zlb_timer *moved = h->items[h->n];
    heap_set(h, i, moved);
    sift_up(h, i);
    sift_down(h, (uint32_t)moved->heap_index);
}

int zlb_timer_arm(zlb_timer_heap *h, zlb_timer *t, int64_t deadline_ns)
{
    if (t->heap_index >= 0) {
        int64_t old = t->deadline_ns;
        t->deadline_ns = deadline_ns;
        if (deadline_ns < old)
            sift_up(h, (uint32_t)t->heap_index);
        else
            sift_down(h, (uint32_t)t->heap_index);
        return 0;
    }
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 64;
        zlb_timer **items = realloc(h->items, sizeof(*items) * cap);
        if (!items)
            return -1;
        h->items = items;
        h->cap = cap;
    }
    t->deadline_ns = deadline_ns;
    heap_set(h, h->n, t);
    h->n++;
    sift_up(h, h->n - 1);
    return 0;
}

int zlb_timer_next_ms(const zlb_timer_heap *h, int64_t now_ns, int max_ms)
{
    if (h->n == 0)
        return max_ms;
    int64_t delta = h->items[0]->deadline_ns - now_ns;
    if (delta <= 0)
        return 0;
    int64_t ms = (delta + 999999) / 1000000;
    return (max_ms >= 0 && ms > max_ms) ? max_ms : (int)ms;
}

void zlb_timer_run(zlb_timer_heap *h, int64_t now_ns)
{
    while (h->n > 0 && h->items[0]->deadline_ns <= now_ns) {
        zlb_timer *t = h->items[0];
        zlb_timer_cancel(h, t);
        t->cb(t, now_ns);
    }
}
