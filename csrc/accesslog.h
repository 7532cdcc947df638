/*
 * accesslog.h - per-worker access-log rings and the JSON-lines format.
 *
 * Each worker owns one single-producer/single-consumer ring: the worker
 * pushes one record per finished connection or request, the engine's log
 * thread (accesslog_writer.h) drains, formats and writes. A full ring drops
 * the record and counts it: the data path never waits for a slow log
 * writer.
 */
#ifndef ZLB_ACCESSLOG_H
#define ZLB_ACCESSLOG_H

#include <netinet/in.h>
#include "zlb_common.h"

/* Envoy-style response flags (bit set in zlb_access_record.flags). */
#define ZLB_AL_UF 0x01u   /* upstream connection failure (every attempt failed) */
#define ZLB_AL_UO 0x02u   /* upstream overflow: listener max_connections reached */
#define ZLB_AL_UT 0x04u   /* upstream connect timeout on at least one attempt */
#define ZLB_AL_NR 0x08u   /* no route: the listener's cluster is not in the config */
#define ZLB_AL_IT 0x10u   /* idle timeout closed the connection */
#define ZLB_AL_RS 0x20u   /* reset: an I/O error on either side ended it */
#define ZLB_AL_UC 0x40u   /* HTTP: upstream connection terminated before the response ended */

#define ZLB_AL_PEER_ID_MAX 128   /* bytes kept of the peer's SPIFFE ID, NUL included */

typedef struct zlb_access_record {
    int64_t start_unix_ns;        /* wall clock at accept */
    int64_t duration_ns;
    struct sockaddr_in6 down;     /* client address (AF_INET fits too) */
    struct sockaddr_in6 up;       /* upstream address, family 0 when none */
    uint64_t bytes_received;      /* from the client */
    uint64_t bytes_sent;          /* to the client */
    int32_t listener_id;
    uint16_t attempts;            /* upstream connect attempts */
    uint16_t flags;               /* ZLB_AL_* */
    /* HTTP requests only (status 0 for L4 connections); strings are
     * truncated to fit and always NUL-terminated. */
    uint16_t status;
    char method[16];
    char authority[96];
    char path[192];
    char cluster[64];             /* L4: the listener's cluster; HTTP: the route's ("" for local answers) */
    char listener[64];
    /* Verified SPIFFE ID of the client's certificate, "" when the client
     * did not come over TLS (truncated to fit, like the strings above). */
    char peer_identity[ZLB_AL_PEER_ID_MAX];
} zlb_access_record;

/* Records per worker ring: a power of two in [MIN, MAX], chosen when the log
 * is first enabled (zlb_engine_set_access_log). A record is 664 bytes on
 * x86-64. */
#define ZLB_AL_RING_DEFAULT 4096
#define ZLB_AL_RING_MIN 64
#define ZLB_AL_RING_MAX (1u << 20)

/* Longest JSON line one record can give: every string byte escapes to at
 * most 6 bytes ("\u00XX"), every number and address prints shorter than 6
 * times its binary size, and the keys and punctuation take under 512. */
#define ZLB_AL_LINE_MAX (sizeof(zlb_access_record) * 6 + 512)

typedef struct zlb_access_ring {
    _Atomic uint64_t head;        /* next slot to write (producer) */
    char pad1[ZLB_CACHELINE - sizeof(uint64_t)];
    _Atomic uint64_t tail;        /* next slot to read (consumer) */
    char pad2[ZLB_CACHELINE - sizeof(uint64_t)];
    zlb_access_record *slots;     /* mask + 1 records, allocated on first enable */
    uint64_t mask;                /* slots - 1: the ring's size is a power of two */
    /* An eventfd the producer writes to when the ring fills up to wake_at
     * records, so that the consumer drains before it is full instead of
     * waiting for its next timer (-1: none). Set before the first record
     * and never changed while the producer runs. */
    int wake_fd;
    uint32_t wake_at;
} zlb_access_ring;

/* Producer (owning worker): the next free slot, to be filled in place and
 * published with zlb_access_ring_commit, or NULL when the ring is full (the
 * caller counts a drop). Filling in place saves copying a record per
 * request. */
zlb_access_record *zlb_access_ring_reserve(zlb_access_ring *r);
/* Publishes the reserved slot; one eventfd write when the ring reaches
 * wake_at records (once per filling, not per record). Never blocks. */
void zlb_access_ring_commit(zlb_access_ring *r);

/* Records published and not yet consumed (any thread; a snapshot). */
uint64_t zlb_access_ring_pending(zlb_access_ring *r);

/* Consumer (one thread at a time): formats records as JSON lines into out
 * while at least ZLB_AL_LINE_MAX bytes of cap remain, and frees their
 * slots. With threshold != 0, a record is kept only when zlb_rand64(rng) <
 * threshold (sampling). Returns bytes written; *kept and *skipped count the
 * records (added to). Stops at the head it saw on entry, or when out of
 * room: cap - return < ZLB_AL_LINE_MAX says which. */
size_t zlb_access_ring_format(zlb_access_ring *r, char *out, size_t cap, uint64_t *rng, uint64_t threshold,
                              uint64_t *kept, uint64_t *skipped);

/* Formats one record as a JSON object and a newline into out (any thread,
 * no allocation). Returns the length, or 0 when cap is too small
 * (ZLB_AL_LINE_MAX always suffices). Doing this in C, without printf, keeps
 * a busy access log cheap next to the data plane it describes. */
size_t zlb_access_format_json(const zlb_access_record *r, char *out, size_t cap);

#endif
