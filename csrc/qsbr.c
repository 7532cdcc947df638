/* qsbr.c - see qsbr.h for the contract. */
#include "qsbr.h"

#include <stdlib.h>

int zlb_qsbr_init(zlb_qsbr *q, uint32_t n_readers, void (*free_fn)(void *))
{
    q->slots = aligned_alloc(ZLB_CACHELINE, sizeof(zlb_qsbr_slot) * (n_readers ? n_readers : 1));
    if (!q->slots)
        return -1;
    for (uint32_t i = 0; i < n_readers; i++)
        atomic_init(&q->slots[i].epoch, ZLB_QSBR_OFFLINE);
    atomic_init(&q->current, NULL);
    atomic_init(&q->epoch, 1);
    q->n_readers = n_readers;
    q->free_fn = free_fn;
    q->retired = NULL;
    q->n_retired = 0;
    pthread_mutex_init(&q->writer_lock, NULL);
    return 0;
}

void zlb_qsbr_destroy(zlb_qsbr *q)
{
    void *cur = atomic_exchange(&q->current, NULL);
    if (cur)
        q->free_fn(cur);
    zlb_retired *r = q->retired;
    while (r) {
        zlb_retired *next = r->next;
        q->free_fn(r->ptr);
        free(r);
        r = next;
    }
    q->retired = NULL;
    free(q->slots);
    q->slots = NULL;
    pthread_mutex_destroy(&q->writer_lock);
}

/* Smallest epoch any online reader may still be in. */
static uint64_t min_reader_epoch(zlb_qsbr *q)
{
    uint64_t min = ZLB_QSBR_OFFLINE;
    for (uint32_t i = 0; i < q->n_readers; i++) {
        uint64_t e = atomic_load(&q->slots[i].epoch);
        if (e < min)
            min = e;
    }
    return min;
}

static uint64_t reclaim_locked(zlb_qsbr *q)
{
    uint64_t min = min_reader_epoch(q);
    zlb_retired **pp = &q->retired;
    while (*pp) {
        zlb_retired *r = *pp;
        /* A reader that announced epoch >= r->epoch did so after the pointer
         * was replaced (seq_cst ordering), so it can only see newer ones. */
        if (min >= r->epoch) {
            *pp = r->next;
            q->free_fn(r->ptr);
            free(r);
            q->n_retired--;
        } else {
            pp = &r->next;
        }
    }
    return q->n_retired;
}

void zlb_qsbr_publish(zlb_qsbr *q, void *p)
{
    pthread_mutex_lock(&q->writer_lock);
    void *old = atomic_exchange(&q->current, p);
    uint64_t retire_epoch = atomic_fetch_add(&q->epoch, 1) + 1;
    if (old) {
        zlb_retired *r = malloc(sizeof(*r));
        if (r) {
            r->ptr = old;
            r->epoch = retire_epoch;
            r->next = q->retired;
            q->retired = r;
            q->n_retired++;
        }
        /* On allocation failure the old snapshot is leaked rather than freed
         * under a reader: correctness over memory. */
    }
    reclaim_locked(q);
    pthread_mutex_unlock(&q->writer_lock);
}

uint64_t zlb_qsbr_reclaim(zlb_qsbr *q)
{
    pthread_mutex_lock(&q->writer_lock);
    uint64_t left = reclaim_locked(q);
    pthread_mutex_unlock(&q->writer_lock);
    return left;
}
