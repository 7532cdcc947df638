/*
 * hbuf.h - the growable byte buffer of the HTTP path: valid bytes are
 * p[off..len). Owned by one connection on one worker thread; no locking.
 * Consuming from the front only moves `off`; space is reclaimed by moving
 * the remaining bytes to the front when more room is needed, so offsets
 * relative to the first valid byte (parser spans) survive growth.
 */
#ifndef ZLB_HBUF_H
#define ZLB_HBUF_H

#include <stdlib.h>
#include <string.h>
#include "zlb_common.h"

typedef struct hbuf {
    char *p;
    uint32_t off, len, cap;
} hbuf;

static inline uint32_t hbuf_size(const hbuf *b) { return b->len - b->off; }
static inline char *hbuf_data(const hbuf *b) { return b->p + b->off; }

/* Makes room for `extra` more bytes after the valid ones. 0 or -1 (OOM). */
static inline int hbuf_reserve(hbuf *b, uint32_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    if (b->off > 0) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= extra)
            return 0;
    }
    uint32_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int hbuf_append(hbuf *b, const void *d, uint32_t n)
{
    if (hbuf_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

static inline int hbuf_puts(hbuf *b, const char *s) { return hbuf_append(b, s, (uint32_t)strlen(s)); }

static inline void hbuf_consume(hbuf *b, uint32_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}

static inline void hbuf_clear(hbuf *b) { b->off = b->len = 0; }

static inline void hbuf_free(hbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->off = b->len = b->cap = 0;
}

#endif
