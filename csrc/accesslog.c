/* accesslog.c - see accesslog.h. Classic SPSC ring: the producer publishes
 * a slot with a release store of head, the consumer frees it with a release
 * store of tail; each side reads the other's index with acquire. */
#include "accesslog.h"

#include <string.h>

int zlb_access_ring_push(zlb_access_ring *r, const zlb_access_record *rec)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (!r->slots || head - tail >= ZLB_AL_RING)
        return -1;
    r->slots[head & (ZLB_AL_RING - 1)] = *rec;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
    return 0;
}

size_t zlb_access_ring_drain(zlb_access_ring *r, zlb_access_record *out, size_t max)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t n = 0;
    while (tail != head && n < max) {
        out[n++] = r->slots[tail & (ZLB_AL_RING - 1)];
        tail++;
    }
    atomic_store_explicit(&r->tail, tail, memory_order_release);
    return n;
}
