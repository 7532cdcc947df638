/*
 * qsbr.h - quiescent-state-based reclamation for published snapshots.
 *
 * One writer (the control thread) publishes with zlb_qsbr_publish(); each of
 * up to `n_readers` reader threads owns one slot and calls
 *   zlb_qsbr_online()/zlb_qsbr_offline() around blocking waits and
 *   zlb_qsbr_quiescent() at the top of each loop iteration,
 * then reads the current pointer with zlb_qsbr_current(). A pointer read
 * between two quiescent points stays valid until the next one. Readers never
 * lock or wait; the writer frees a retired snapshot only once every reader
 * has been quiescent (or offline) since the retirement.
 */
#ifndef ZLB_QSBR_H
#define ZLB_QSBR_H

#include <pthread.h>
#include "zlb_common.h"

#define ZLB_QSBR_OFFLINE UINT64_MAX

typedef struct zlb_qsbr_slot {
    _Atomic uint64_t epoch; /* last epoch seen, or ZLB_QSBR_OFFLINE */
    char pad[ZLB_CACHELINE - sizeof(uint64_t)];
} zlb_qsbr_slot;

typedef struct zlb_retired {
    void *ptr;
    uint64_t epoch;
    struct zlb_retired *next;
} zlb_retired;

typedef struct zlb_qsbr {
    _Atomic(void *) current;
    _Atomic uint64_t epoch;
    uint32_t n_readers;
    zlb_qsbr_slot *slots;
    void (*free_fn)(void *);
    pthread_mutex_t writer_lock; /* serialises publishers; readers never take it */
    zlb_retired *retired;
    uint64_t n_retired;
} zlb_qsbr;

int zlb_qsbr_init(zlb_qsbr *q, uint32_t n_readers, void (*free_fn)(void *));
/* Frees the current pointer and everything retired. No reader may be online. */
void zlb_qsbr_destroy(zlb_qsbr *q);

/* Reader side (slot i owned by exactly one thread). */
static inline void zlb_qsbr_quiescent(zlb_qsbr *q, uint32_t i)
{
    atomic_store(&q->slots[i].epoch, atomic_load(&q->epoch));
}
static inline void zlb_qsbr_online(zlb_qsbr *q, uint32_t i) { zlb_qsbr_quiescent(q, i); }
static inline void zlb_qsbr_offline(zlb_qsbr *q, uint32_t i)
{
    atomic_store(&q->slots[i].epoch, ZLB_QSBR_OFFLINE);
}
static inline void *zlb_qsbr_current(zlb_qsbr *q) { return atomic_load(&q->current); }

/* Writer side: installs p (ownership passes to q), retires the previous
 * pointer and frees whatever retired pointers are now unreachable. */
void zlb_qsbr_publish(zlb_qsbr *q, void *p);
/* Frees retired pointers that no reader can see; returns how many remain. */
uint64_t zlb_qsbr_reclaim(zlb_qsbr *q);

#endif
