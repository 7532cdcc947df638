/* accesslog.c - see accesslog.h. Classic SPSC ring: the producer publishes
 * a slot with a release store of head, the consumer frees it with a release
 * store of tail; each side reads the other's index with acquire. */
#include "accesslog.h"

#include <string.h>
#include <unistd.h>

#include "sockaddr.h"

zlb_access_record *zlb_access_ring_reserve(zlb_access_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (!r->slots || head - tail > r->mask)
        return NULL;
    return &r->slots[head & r->mask];
}

void zlb_access_ring_commit(zlb_access_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed) + 1;
    atomic_store_explicit(&r->head, head, memory_order_release);
    /* The fill level grows by one per commit between the consumer's passes,
     * so it meets wake_at exactly once per filling; a stale tail only makes
     * the level look higher, never skips it. */
    if (r->wake_fd >= 0 && head - atomic_load_explicit(&r->tail, memory_order_relaxed) == r->wake_at) {
        uint64_t one = 1;
        ssize_t rc = write(r->wake_fd, &one, sizeof(one)); /* non-blocking eventfd */
        (void)rc;
    }
}

uint64_t zlb_access_ring_pending(zlb_access_ring *r)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    return atomic_load_explicit(&r->head, memory_order_acquire) - tail;
}

size_t zlb_access_ring_format(zlb_access_ring *r, char *out, size_t cap, uint64_t *rng, uint64_t threshold,
                              uint64_t *kept, uint64_t *skipped)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t used = 0;
    for (; tail != head && cap - used >= ZLB_AL_LINE_MAX; tail++) {
        if (threshold && zlb_rand64(rng) >= threshold) {
            (*skipped)++;
            continue;
        }
        used += zlb_access_format_json(&r->slots[tail & r->mask], out + used, cap - used);
        (*kept)++;
    }
    atomic_store_explicit(&r->tail, tail, memory_order_release);
    return used;
}

/* JSON-lines formatting without printf: a busy access log formats tens of
 * thousands of records a second, and vsnprintf's format parsing (and %f)
 * was most of that cost. The caller guarantees ZLB_AL_LINE_MAX bytes of
 * room, so every writer below appends at a cursor without bounds checks
 * and returns the cursor past what it wrote. */

#define PUT_LIT(p, lit) (memcpy((p), (lit), sizeof(lit) - 1), (p) + sizeof(lit) - 1)
/* ,"key": (key a string literal). */
#define PUT_KEY(p, key) PUT_LIT((p), ",\"" key "\":")

static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int i = 20;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(p, tmp + i, (size_t)(20 - i));
    return p + (20 - i);
}

/* v / 10^digits with exactly `digits` decimals (v >= 0, digits <= 19). */
static char *put_fixed(char *p, uint64_t v, int digits)
{
    uint64_t scale = 1;
    for (int i = 0; i < digits; i++)
        scale *= 10;
    p = put_u64(p, v / scale);
    *p++ = '.';
    uint64_t f = v % scale;
    for (int i = digits - 1; i >= 0; i--) {
        p[i] = (char)('0' + f % 10);
        f /= 10;
    }
    return p + digits;
}

/* Bytes a JSON string cannot hold as they are: control bytes, DEL, the
 * quote and the backslash; and NUL, which ends the field. One table load
 * per byte instead of four comparisons: strings are most of a line. */
static const uint8_t escaped[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1, [0x07] = 1,
    [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1, [0x0e] = 1, [0x0f] = 1,
    [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1, [0x15] = 1, [0x16] = 1, [0x17] = 1,
    [0x18] = 1, [0x19] = 1, [0x1a] = 1, [0x1b] = 1, [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1,
    ['"'] = 1, ['\\'] = 1, [0x7f] = 1,
};

/* A string value, quotes included, with quotes, backslashes and control
 * bytes escaped. The HTTP parser already refused control bytes in the
 * fields logged, but the log must stay valid JSON whatever reaches it.
 * Runs of plain bytes are copied whole: most fields have no escapes. */
static char *put_string(char *p, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    *p++ = '"';
    for (;;) {
        const char *run = s;
        while (!escaped[(unsigned char)*s])
            s++;
        memcpy(p, run, (size_t)(s - run));
        p += s - run;
        unsigned char ch = (unsigned char)*s++;
        if (!ch)
            break;
        *p++ = '\\';
        if (ch == '"' || ch == '\\') {
            *p++ = (char)ch;
        } else {
            p = PUT_LIT(p, "u00");
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    *p++ = '"';
    return p;
}

/* An address as a string value, "" when there is none; addresses hold
 * nothing to escape, so they are written in place. */
static char *put_address(char *p, const struct sockaddr_in6 *sa)
{
    *p++ = '"';
    p += zlb_sockaddr_put((const struct sockaddr *)sa, p);
    *p++ = '"';
    return p;
}

size_t zlb_access_format_json(const zlb_access_record *r, char *out, size_t cap)
{
    static const struct { uint16_t bit; char name[5]; } flags[] = {
        {ZLB_AL_UF, "\"UF\""}, {ZLB_AL_UO, "\"UO\""}, {ZLB_AL_UT, "\"UT\""}, {ZLB_AL_NR, "\"NR\""},
        {ZLB_AL_IT, "\"IT\""}, {ZLB_AL_RS, "\"RS\""}, {ZLB_AL_UC, "\"UC\""},
    };
    if (cap < ZLB_AL_LINE_MAX)
        return 0;
    char *p = PUT_LIT(out, "{\"start_time\":");
    p = put_fixed(p, (uint64_t)(r->start_unix_ns > 0 ? r->start_unix_ns : 0) / 1000, 6);
    p = PUT_KEY(p, "duration_ms");
    p = put_fixed(p, (uint64_t)(r->duration_ns > 0 ? r->duration_ns : 0) / 1000, 3);
    p = PUT_KEY(p, "downstream");
    p = put_address(p, &r->down);
    p = PUT_KEY(p, "upstream");
    p = put_address(p, &r->up);
    p = PUT_KEY(p, "listener");
    p = put_string(p, r->listener);
    p = PUT_KEY(p, "cluster");
    p = put_string(p, r->cluster);
    p = PUT_KEY(p, "bytes_received");
    p = put_u64(p, r->bytes_received);
    p = PUT_KEY(p, "bytes_sent");
    p = put_u64(p, r->bytes_sent);
    p = PUT_KEY(p, "attempts");
    p = put_u64(p, r->attempts);
    p = PUT_KEY(p, "flags");
    *p++ = '[';
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if (r->flags & flags[i].bit) {
            if (p[-1] != '[')
                *p++ = ',';
            memcpy(p, flags[i].name, 4);
            p += 4;
        }
    }
    *p++ = ']';
    if (r->status) {
        p = PUT_KEY(p, "status");
        p = put_u64(p, r->status);
        p = PUT_KEY(p, "method");
        p = put_string(p, r->method);
        p = PUT_KEY(p, "authority");
        p = put_string(p, r->authority);
        p = PUT_KEY(p, "path");
        p = put_string(p, r->path);
    }
    if (r->peer_identity[0]) {
        p = PUT_KEY(p, "peer_identity");
        p = put_string(p, r->peer_identity);
    }
    p = PUT_LIT(p, "}\n");
    return (size_t)(p - out);
}
