/* accesslog.c - see accesslog.h. Classic SPSC ring: the producer publishes
 * a slot with a release store of head, the consumer frees it with a release
 * store of tail; each side reads the other's index with acquire. */
#include "accesslog.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sockaddr.h"

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

/* Appends to out at *len (bounded by cap); sets *len past cap on overflow. */
static void put(char *out, size_t cap, size_t *len, const char *fmt, ...)
{
    if (*len >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + *len, cap - *len, fmt, ap);
    va_end(ap);
    *len += n < 0 ? cap : (size_t)n;
}

/* A JSON string: quotes, backslashes and control bytes escaped. The HTTP
 * parser already refused control bytes in the fields logged, but the log
 * must stay valid JSON whatever reaches it. */
static void put_string(char *out, size_t cap, size_t *len, const char *key, const char *s)
{
    put(out, cap, len, ",\"%s\":\"", key);
    for (; *s && *len < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            put(out, cap, len, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            put(out, cap, len, "\\u%04x", ch);
        else
            out[(*len)++] = (char)ch;
    }
    put(out, cap, len, "\"");
}

size_t zlb_access_format_json(const zlb_access_record *r, char *out, size_t cap)
{
    static const struct { uint16_t bit; const char *name; } flags[] = {
        {ZLB_AL_UF, "UF"}, {ZLB_AL_UO, "UO"}, {ZLB_AL_UT, "UT"}, {ZLB_AL_NR, "NR"},
        {ZLB_AL_IT, "IT"}, {ZLB_AL_RS, "RS"}, {ZLB_AL_UC, "UC"},
    };
    char down[ZLB_SOCKADDR_STR_MAX], up[ZLB_SOCKADDR_STR_MAX];
    zlb_sockaddr_format((const struct sockaddr *)&r->down, down, sizeof(down));
    zlb_sockaddr_format((const struct sockaddr *)&r->up, up, sizeof(up));
    size_t len = 0;
    put(out, cap, &len, "{\"start_time\":%lld.%06lld,\"duration_ms\":%.3f", (long long)(r->start_unix_ns / 1000000000),
        (long long)(r->start_unix_ns % 1000000000 / 1000), (double)r->duration_ns / 1e6);
    put_string(out, cap, &len, "downstream", down);
    put_string(out, cap, &len, "upstream", up);
    put_string(out, cap, &len, "listener", r->listener);
    put_string(out, cap, &len, "cluster", r->cluster);
    put(out, cap, &len, ",\"bytes_received\":%llu,\"bytes_sent\":%llu,\"attempts\":%u,\"flags\":[",
        (unsigned long long)r->bytes_received, (unsigned long long)r->bytes_sent, (unsigned)r->attempts);
    int first = 1;
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        if (r->flags & flags[i].bit) {
            put(out, cap, &len, "%s\"%s\"", first ? "" : ",", flags[i].name);
            first = 0;
        }
    }
    put(out, cap, &len, "]");
    if (r->status) {
        put(out, cap, &len, ",\"status\":%u", (unsigned)r->status);
        put_string(out, cap, &len, "method", r->method);
        put_string(out, cap, &len, "authority", r->authority);
        put_string(out, cap, &len, "path", r->path);
    }
    put(out, cap, &len, "}\n");
    return len < cap ? len : 0;
}
