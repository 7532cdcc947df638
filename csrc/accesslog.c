/* accesslog.c - see accesslog.h. Classic SPSC ring: the producer publishes
 * a slot with a release store of head, the consumer frees it with a release
 * store of tail; each side reads the other's index with acquire. */
#include "accesslog.h"

#include <string.h>

#include "sockaddr.h"

zlb_access_record *zlb_access_ring_reserve(zlb_access_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (!r->slots || head - tail >= ZLB_AL_RING)
        return NULL;
    return &r->slots[head & (ZLB_AL_RING - 1)];
}

void zlb_access_ring_commit(zlb_access_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
}

size_t zlb_access_ring_format(zlb_access_ring *r, char *out, size_t cap, size_t max, uint64_t *rng,
                              uint64_t threshold, size_t *kept, size_t *skipped)
{
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t used = 0, n = 0;
    for (; tail != head && n < max; tail++, n++) {
        if (threshold && zlb_rand64(rng) >= threshold) {
            (*skipped)++;
            continue;
        }
        size_t k = zlb_access_format_json(&r->slots[tail & (ZLB_AL_RING - 1)], out + used, cap - used);
        if (k == 0)
            break; /* out of room: the rest stays for the next call */
        used += k;
        (*kept)++;
    }
    atomic_store_explicit(&r->tail, tail, memory_order_release);
    return used;
}

/* JSON-lines formatting without printf: a busy access log formats tens of
 * thousands of records a second on the control thread, and vsnprintf's
 * format parsing (and %f) was most of that cost. Every writer appends to a
 * bounded buffer; `w.len > w.cap` marks an overflow (the caller gets 0). */
typedef struct jw {
    char *out;
    size_t len, cap;
} jw;

static void jw_raw(jw *w, const char *s, size_t n)
{
    if (w->len + n > w->cap) {
        w->len = w->cap + 1;
        return;
    }
    memcpy(w->out + w->len, s, n);
    w->len += n;
}

#define JW_LIT(w, lit) jw_raw((w), (lit), sizeof(lit) - 1)

static void jw_u64(jw *w, uint64_t v)
{
    char tmp[20];
    int i = 20;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    jw_raw(w, tmp + i, (size_t)(20 - i));
}

/* v / 10^digits with exactly `digits` decimals (v >= 0). */
static void jw_fixed(jw *w, uint64_t v, int digits)
{
    uint64_t scale = 1;
    for (int i = 0; i < digits; i++)
        scale *= 10;
    jw_u64(w, v / scale);
    char frac[20];
    uint64_t f = v % scale;
    for (int i = digits - 1; i >= 0; i--) {
        frac[i] = (char)('0' + f % 10);
        f /= 10;
    }
    JW_LIT(w, ".");
    jw_raw(w, frac, (size_t)digits);
}

/* ,"key":"value" with quotes, backslashes and control bytes escaped. The
 * HTTP parser already refused control bytes in the fields logged, but the
 * log must stay valid JSON whatever reaches it. */
static void jw_string(jw *w, const char *key, const char *s)
{
    JW_LIT(w, ",\"");
    jw_raw(w, key, strlen(key));
    JW_LIT(w, "\":\"");
    static const char hex[] = "0123456789abcdef";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            jw_raw(w, esc, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            jw_raw(w, esc, 6);
        } else {
            jw_raw(w, (const char *)&ch, 1);
        }
    }
    JW_LIT(w, "\"");
}

size_t zlb_access_format_json(const zlb_access_record *r, char *out, size_t cap)
{
    static const struct { uint16_t bit; const char *name; } flags[] = {
        {ZLB_AL_UF, "\"UF\""}, {ZLB_AL_UO, "\"UO\""}, {ZLB_AL_UT, "\"UT\""}, {ZLB_AL_NR, "\"NR\""},
        {ZLB_AL_IT, "\"IT\""}, {ZLB_AL_RS, "\"RS\""}, {ZLB_AL_UC, "\"UC\""},
    };
    char down[ZLB_SOCKADDR_STR_MAX], up[ZLB_SOCKADDR_STR_MAX];
    zlb_sockaddr_format((const struct sockaddr *)&r->down, down, sizeof(down));
    zlb_sockaddr_format((const struct sockaddr *)&r->up, up, sizeof(up));
    jw w = {out, 0, cap};
    JW_LIT(&w, "{\"start_time\":");
    jw_fixed(&w, (uint64_t)(r->start_unix_ns > 0 ? r->start_unix_ns : 0) / 1000, 6);
    JW_LIT(&w, ",\"duration_ms\":");
    jw_fixed(&w, (uint64_t)(r->duration_ns > 0 ? r->duration_ns : 0) / 1000, 3);
    jw_string(&w, "downstream", down);
    jw_string(&w, "upstream", up);
    jw_string(&w, "listener", r->listener);
    jw_string(&w, "cluster", r->cluster);
    JW_LIT(&w, ",\"bytes_received\":");
    jw_u64(&w, r->bytes_received);
    JW_LIT(&w, ",\"bytes_sent\":");
    jw_u64(&w, r->bytes_sent);
    JW_LIT(&w, ",\"attempts\":");
    jw_u64(&w, r->attempts);
    JW_LIT(&w, ",\"flags\":[");
    int first = 1;
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if (r->flags & flags[i].bit) {
            if (!first)
                JW_LIT(&w, ",");
            jw_raw(&w, flags[i].name, 4);
            first = 0;
        }
    }
    JW_LIT(&w, "]");
    if (r->status) {
        JW_LIT(&w, ",\"status\":");
        jw_u64(&w, r->status);
        jw_string(&w, "method", r->method);
        jw_string(&w, "authority", r->authority);
        jw_string(&w, "path", r->path);
    }
    if (r->peer_identity[0])
        jw_string(&w, "peer_identity", r->peer_identity);
    JW_LIT(&w, "}\n");
    return w.len <= cap ? w.len : 0;
}
