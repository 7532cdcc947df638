/* cluster_stats.c - see cluster_stats.h. */
#include "cluster_stats.h"

#include <stdlib.h>
#include <string.h>

/* Prometheus-style bounds from 0.5 ms to 30 s: fine where service latency
 * lives, coarse enough that 1,000 clusters x 16 workers stay small. */
const uint64_t zlb_lat_bounds_us[ZLB_LAT_BUCKETS - 1] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 30000000,
};

void zlb_cs_table_init(zlb_cs_table *t)
{
    pthread_mutex_init(&t->lock, NULL);
    t->n_slots = 1;
    t->head = NULL;
}

void zlb_cs_unref(zlb_cluster_stats *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1)
        free(s);
}

void zlb_cs_table_destroy(zlb_cs_table *t)
{
    zlb_cluster_stats *s = t->head;
    while (s) {
        zlb_cluster_stats *next = s->next;
        zlb_cs_unref(s);
        s = next;
    }
    t->head = NULL;
    pthread_mutex_destroy(&t->lock);
}

zlb_cluster_stats *zlb_cs_get(zlb_cs_table *t, const char *name)
{
    pthread_mutex_lock(&t->lock);
    zlb_cluster_stats *s = t->head;
    while (s && strcmp(s->name, name) != 0)
        s = s->next;
    if (s) {
        atomic_fetch_add(&s->refs, 1);
    } else {
        s = aligned_alloc(ZLB_CACHELINE, sizeof(*s) + t->n_slots * sizeof(zlb_cs_slot));
        if (s) {
            memset(s, 0, sizeof(*s) + t->n_slots * sizeof(zlb_cs_slot));
            atomic_init(&s->refs, 2); /* table + caller */
            s->n_slots = t->n_slots;
            zlb_strlcpy(s->name, name, sizeof(s->name));
            s->next = t->head;
            t->head = s;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return s;
}

void zlb_cs_sweep(zlb_cs_table *t)
{
    pthread_mutex_lock(&t->lock);
    for (zlb_cluster_stats **pp = &t->head; *pp;) {
        zlb_cluster_stats *s = *pp;
        if (atomic_load_explicit(&s->refs, memory_order_acquire) == 1) {
            *pp = s->next;
            zlb_cs_unref(s);
        } else {
            pp = &s->next;
        }
    }
    pthread_mutex_unlock(&t->lock);
}

void zlb_cs_latency(zlb_cluster_stats *s, uint32_t slot, int64_t ns)
{
    zlb_cs_slot *sl = &s->slots[slot % s->n_slots];
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    int b = 0;
    while (b < ZLB_LAT_BUCKETS - 1 && us > zlb_lat_bounds_us[b])
        b++;
    atomic_store_explicit(&sl->lat[b], atomic_load_explicit(&sl->lat[b], memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&sl->lat_sum_us, atomic_load_explicit(&sl->lat_sum_us, memory_order_relaxed) + us,
                          memory_order_relaxed);
}

void zlb_cs_read(const zlb_cluster_stats *s, uint64_t counters[ZLB_CS_COUNTERS], uint64_t lat[ZLB_LAT_BUCKETS],
                 uint64_t *lat_sum_us)
{
    memset(counters, 0, sizeof(uint64_t) * ZLB_CS_COUNTERS);
    memset(lat, 0, sizeof(uint64_t) * ZLB_LAT_BUCKETS);
    *lat_sum_us = 0;
    for (uint32_t i = 0; i < s->n_slots; i++) {
        const zlb_cs_slot *sl = &s->slots[i];
        for (int k = 0; k < ZLB_CS_COUNTERS; k++)
            counters[k] += atomic_load_explicit(&sl->c[k], memory_order_relaxed);
        for (int k = 0; k < ZLB_LAT_BUCKETS; k++)
            lat[k] += atomic_load_explicit(&sl->lat[k], memory_order_relaxed);
        *lat_sum_us += atomic_load_explicit(&sl->lat_sum_us, memory_order_relaxed);
    }
}
