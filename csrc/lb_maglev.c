/*
 * lb_maglev.c - Maglev consistent hashing (Eisenbud et al., NSDI'16) with
 * Envoy's weighted table fill.
 *
 * build() (control thread) fills a lookup table of M = maglev_table_size
 * slots (M prime, so every endpoint's preference list (offset + j * skip)
 * mod M is a permutation of the slots) with ALL endpoints of the priority
 * level, so availability changes never reshuffle the table. Endpoints take
 * turns claiming their next preferred free slot; an endpoint of weight w
 * takes a turn on w/max_weight of the rounds, giving it a share of the
 * table proportional to its weight.
 * pick() (worker): table[hash % M]; when that endpoint is not in the
 * subset, up to 8 salted re-hashes (spreading its keys over the others),
 * then a linear probe to the first slot whose endpoint is a member.
 */
#include "lb.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGLEV_EMPTY UINT32_MAX
#define MAGLEV_REHASHES 8

typedef struct maglev {
    uint32_t m;
    uint32_t table[]; /* endpoint index into prio->eps per slot */
} maglev;

typedef struct mg_entry {
    uint64_t offset, skip, next;
    uint64_t target; /* the turn threshold, in weight units */
} mg_entry;

static int is_prime(uint32_t m)
{
    if (m < 2)
        return 0;
    for (uint64_t d = 2; d * d <= m; d++)
        if (m % d == 0)
            return 0;
    return 1;
}

/* Control thread. Allocates p->lb_data (freed by zlb_lb_free_data). */
static int maglev_build(zlb_prio *p, const zlb_cluster_opts *o, char *err, size_t errlen)
{
    uint32_t m = o->maglev_table_size;
    if (!is_prime(m)) {
        snprintf(err, errlen, "maglev_table_size %u is not prime", m);
        return -1;
    }
    if (m < p->n) {
        snprintf(err, errlen, "maglev_table_size %u is smaller than the %u endpoints", m, p->n);
        return -1;
    }
    maglev *t = malloc(sizeof(*t) + (size_t)m * sizeof(uint32_t));
    mg_entry *e = calloc(p->n, sizeof(*e));
    if (!t || !e) {
        free(t);
        free(e);
        snprintf(err, errlen, "maglev table of %u slots: out of memory", m);
        return -1;
    }
    uint32_t max_w = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        const char *name = p->eps[i]->name;
        size_t len = strlen(name);
        e[i].offset = zlb_hash64(name, len, 0) % m;
        e[i].skip = zlb_hash64(name, len, 1) % (m - 1) + 1;
        if (p->eps[i]->weight > max_w)
            max_w = p->eps[i]->weight;
    }
    t->m = m;
    for (uint32_t s = 0; s < m; s++)
        t->table[s] = MAGLEV_EMPTY;
    /* The max-weight endpoint takes a slot every round, so this ends after
     * at most m rounds. */
    uint32_t filled = 0;
    for (uint64_t round = 1; filled < m; round++) {
        for (uint32_t i = 0; i < p->n && filled < m; i++) {
            if (round * p->eps[i]->weight < e[i].target)
                continue;
            e[i].target += max_w;
            uint64_t slot = (e[i].offset + e[i].skip * e[i].next) % m;
            while (t->table[slot] != MAGLEV_EMPTY) {
                e[i].next++;
                slot = (e[i].offset + e[i].skip * e[i].next) % m;
            }
            t->table[slot] = i;
            e[i].next++;
            filled++;
        }
    }
    free(e);
    p->lb_data = t;
    return 0;
}

/* Worker thread. Without a hash key a random slot is used. */
static int32_t maglev_pick(const zlb_prio *p, zlb_subset *s, zlb_pick_ctx *ctx)
{
    if (s->n == 0)
        return -1;
    const maglev *t = p->lb_data;
    uint64_t h = ctx->has_hash ? ctx->hash : zlb_rand64(ctx->rng);
    uint32_t e = t->table[h % t->m];
    for (uint64_t salt = 1; !s->member[e] && salt <= MAGLEV_REHASHES; salt++)
        e = t->table[zlb_hash64(&h, sizeof(h), salt) % t->m];
    for (uint32_t probe = 1; !s->member[e] && probe < t->m; probe++)
        e = t->table[(h % t->m + probe) % t->m];
    /* Every endpoint owns a slot (m >= n, all placed in the first round),
     * so the probe always ends on a member. */
    return (int32_t)e;
}

const zlb_lb_ops zlb_lb_maglev = {
    .name = "maglev",
    .build = maglev_build,
    .destroy = zlb_lb_free_data,
    .pick = maglev_pick,
};
