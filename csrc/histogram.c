/*
 * histogram.c - see histogram.h for the layout and its error bound.
 */
#include "histogram.h"

#include <string.h>

#define EXACT_LIMIT (2u * ZLB_HIST_SUB) /* values below this have their own bucket */

void zlb_hist_init(zlb_hist *h)
{
    memset(h, 0, sizeof *h);
    h->min_ns = UINT64_MAX;
}

uint32_t zlb_hist_bucket_of(uint64_t ns)
{
    if (ns < EXACT_LIMIT)
        return (uint32_t)ns;
    if (ns >> ZLB_HIST_TOP_BIT)
        return ZLB_HIST_BUCKETS - 1; /* clamp: max_ns keeps the real value */
    /* With msb the index of the top bit, the value shifted right by
     * e = msb - 6 is a 7-bit number in [64, 128): its low 6 bits pick the
     * sub-bucket and e picks the power of two. e >= 1 here, and the formula
     * continues the exact range without a gap: 128 -> 1 * 64 + 64 = 128. */
    unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
    unsigned e = msb - ZLB_HIST_SUB_BITS;
    return e * ZLB_HIST_SUB + (uint32_t)(ns >> e);
}

void zlb_hist_bucket_bounds(uint32_t idx, uint64_t *lo, uint64_t *hi)
{
    if (idx < EXACT_LIMIT) {
        *lo = *hi = idx;
        return;
    }
    /* Inverse of zlb_hist_bucket_of: idx = e * 64 + s with s in [64, 128). */
    unsigned e = idx / ZLB_HIST_SUB - 1;
    uint64_t s = idx % ZLB_HIST_SUB + ZLB_HIST_SUB;
    *lo = s << e;
    *hi = *lo + (1ull << e) - 1;
}

void zlb_hist_record(zlb_hist *h, uint64_t ns)
{
    h->buckets[zlb_hist_bucket_of(ns)]++;
    h->count++;
    h->sum_ns += ns;
    if (ns < h->min_ns)
        h->min_ns = ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

void zlb_hist_merge(zlb_hist *dst, const zlb_hist *src)
{
    for (uint32_t i = 0; i < ZLB_HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum_ns += src->sum_ns;
    if (src->min_ns < dst->min_ns)
        dst->min_ns = src->min_ns;
    if (src->max_ns > dst->max_ns)
        dst->max_ns = src->max_ns;
}

uint64_t zlb_hist_percentile(const zlb_hist *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q < 0.0)
        q = 0.0;
    if (q > 1.0)
        q = 1.0;
    /* Rank of the wanted sample, 1-based: ceil(q * count), at least 1.
     * Computed without libm so the extension needs no -lm. */
    double exact = q * (double)h->count;
    uint64_t rank = (uint64_t)exact;
    if ((double)rank < exact)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < ZLB_HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t lo, hi;
            zlb_hist_bucket_bounds(i, &lo, &hi);
            if (hi > h->max_ns)
                hi = h->max_ns;
            if (hi < h->min_ns)
                hi = h->min_ns;
            return hi;
        }
    }
    return h->max_ns; /* unreachable while count == sum of buckets */
}
