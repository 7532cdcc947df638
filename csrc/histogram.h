/*
 * histogram.h - log-linear high-dynamic-range histogram of latencies (ns).
 *
 * Layout (the HdrHistogram idea, fixed at 6 significant bits):
 *  - values 0..127 ns have one bucket each (exact);
 *  - above that every power-of-two range [2^k, 2^(k+1)) is split into 64
 *    equal sub-buckets of width 2^(k-6).
 * A value v >= 128 therefore lands in a bucket [lo, lo + w) with
 * lo >= 64 * w, so any value reported for the bucket (we report its highest
 * value, as HdrHistogram does) is off by less than w <= v / 64: the relative
 * error bound is 1/64 = 1.5625 %, and exact below 128 ns.
 * The top bucket ends at 2^37 ns (~137 s); larger values are counted in the
 * top bucket while max_ns keeps the true maximum.
 *
 * Threads: a histogram has no lock. Each thread records into its own
 * instance; instances are merged by one thread once the writers are done.
 * Memory: 2,048 buckets * 8 bytes = 16 KiB, all inline (no allocation).
 */
#ifndef ZLB_HISTOGRAM_H
#define ZLB_HISTOGRAM_H

#include <stdint.h>

#define ZLB_HIST_SUB_BITS 6
#define ZLB_HIST_SUB (1u << ZLB_HIST_SUB_BITS)       /* 64 sub-buckets */
#define ZLB_HIST_TOP_BIT 37                           /* values < 2^37 ns */
/* Buckets: 128 exact ones, then 64 per power of two from 2^7 to 2^36. */
#define ZLB_HIST_BUCKETS (2 * ZLB_HIST_SUB + (ZLB_HIST_TOP_BIT - ZLB_HIST_SUB_BITS - 1) * ZLB_HIST_SUB)

typedef struct zlb_hist {
    uint64_t count;
    uint64_t min_ns;   /* UINT64_MAX while empty */
    uint64_t max_ns;   /* true maximum, even past the top bucket */
    uint64_t sum_ns;   /* for the mean; wraps only after ~584 years of latency */
    uint64_t buckets[ZLB_HIST_BUCKETS];
} zlb_hist;

/* Empty the histogram. Caller owns h. */
void zlb_hist_init(zlb_hist *h);

/* Record one value. Not thread-safe: one writer per instance. */
void zlb_hist_record(zlb_hist *h, uint64_t ns);

/* dst += src. The caller guarantees nobody writes either while it runs. */
void zlb_hist_merge(zlb_hist *dst, const zlb_hist *src);

/* Value at quantile q in [0, 1]: the highest value of the bucket holding the
 * sample of rank ceil(q * count) (rank 1 for q = 0), clamped to
 * [min_ns, max_ns] so that p100 is the exact maximum. 0 when empty. */
uint64_t zlb_hist_percentile(const zlb_hist *h, double q);

/* Index of the bucket that counts value ns, and that bucket's bounds
 * [*lo, *hi] (inclusive). Pure functions, any thread. */
uint32_t zlb_hist_bucket_of(uint64_t ns);
void zlb_hist_bucket_bounds(uint32_t idx, uint64_t *lo, uint64_t *hi);

#endif
