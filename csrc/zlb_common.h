/*
 * zlb_common.h - small helpers shared by every C file of the data plane.
 *
 * Nothing here allocates or locks; everything is safe from any thread.
 */
#ifndef ZLB_COMMON_H
#define ZLB_COMMON_H

#include <stdint.h>
#include <stddef.h>
#include <stdatomic.h>
#include <time.h>

#define ZLB_CACHELINE 64
#define ZLB_UNUSED(x) ((void)(x))
#define ZLB_LIKELY(x) __builtin_expect(!!(x), 1)
#define ZLB_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Monotonic clock in nanoseconds. Cheap (vDSO) and thread-safe. */
static inline int64_t zlb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Wall clock in nanoseconds (access logs, events); a vDSO call as well. */
static inline int64_t zlb_unix_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* xorshift64* - the per-worker seeded generator. The state must be non-zero;
 * callers own the state word (one per worker), so no synchronisation. */
static inline uint64_t zlb_rand64(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform integer in [0, n), n > 0 (Lemire's multiply-shift, bias < 2^-32). */
static inline uint32_t zlb_rand_below(uint64_t *state, uint32_t n)
{
    return (uint32_t)(((zlb_rand64(state) >> 32) * (uint64_t)n) >> 32);
}

/* 64-bit hash of a byte string (FNV-1a followed by a murmur3 finaliser so that
 * short keys still spread over all bits). Stable across runs and machines:
 * ring_hash and maglev placement depend on it. */
static inline uint64_t zlb_hash64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = (const unsigned char *)data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Bounded string copy that always terminates (dst_size > 0). */
static inline void zlb_strlcpy(char *dst, const char *src, size_t dst_size)
{
    size_t i = 0;
    for (; i + 1 < dst_size && src[i]; i++)
        dst[i] = src[i];
    dst[i] = '\0';
}

#endif
