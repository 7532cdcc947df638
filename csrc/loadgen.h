/*
 * loadgen.h - the native load generator behind `zlbfast bench`.
 *
 * zlb_lg_run() starts cfg->threads pthreads. Each owns one epoll instance,
 * its share of the connections, its own histogram and label table, so the
 * hot path shares nothing; the caller's thread only waits and then merges.
 * It never calls into Python, so the Cython wrapper calls it without the GIL.
 *
 * Modes
 *  - ZLB_LG_HTTP: HTTP/1.1 keep-alive GET; responses framed by
 *    Content-Length, chunked encoding, or connection close.
 *  - ZLB_LG_TCP: write tcp_size bytes, read tcp_size bytes back (an echo).
 * Loops
 *  - closed (rate == 0): each connection sends its next request as soon as
 *    the previous response is complete; latency runs from the actual send.
 *  - open (rate > 0): requests are due at a constant total rate, whatever the
 *    responses do; a due request waits for a free connection and its latency
 *    runs from the time it was DUE (coordinated-omission correction, as wrk2).
 *
 * Accounting: every request issued ends either as a response (requests,
 * latency recorded) or as one error of kind connect/reset/timeout/protocol.
 * bad_status counts responses (already in requests) whose status is outside
 * 200..399. With max_requests and no errors, requests == max_requests.
 * When duration_ns ends the run, requests still in flight are abandoned:
 * neither responses nor errors (as in wrk).
 */
#ifndef ZLB_LOADGEN_H
#define ZLB_LOADGEN_H

#include <stddef.h>
#include <stdint.h>
#include "histogram.h"

enum zlb_lg_mode { ZLB_LG_HTTP = 0, ZLB_LG_TCP = 1 };

enum zlb_lg_error {
    ZLB_LG_ERR_CONNECT = 0,  /* connect refused / failed / timed out */
    ZLB_LG_ERR_RESET,        /* connection reset or closed mid-request */
    ZLB_LG_ERR_TIMEOUT,      /* no complete response within timeout_ns */
    ZLB_LG_ERR_BAD_STATUS,   /* response status < 200 or >= 400 */
    ZLB_LG_ERR_PROTOCOL,     /* malformed or unexpected response bytes */
    ZLB_LG_ERR_COUNT
};

#define ZLB_LG_LABELS 32          /* distinct label values counted */
#define ZLB_LG_LABEL_MAX 48       /* bytes per label value, with the NUL */

typedef struct zlb_lg_config {
    char host[64];                /* numeric IPv4 or IPv6 address */
    uint16_t port;
    int mode;                     /* enum zlb_lg_mode */
    int threads;                  /* >= 1 */
    int connections;              /* total, >= threads, split across threads */
    double rate;                  /* total requests/s; 0 = closed loop */
    int64_t duration_ns;          /* 0 = until max_requests */
    uint64_t max_requests;        /* 0 = until duration; one must be set */
    int64_t timeout_ns;           /* per request (and connect); > 0 */
    char path[512];               /* HTTP request target */
    char host_header[128];        /* HTTP Host header value */
    char label_header[64];        /* count responses by this header; "" = off */
    uint32_t tcp_size;            /* TCP mode: bytes per request, >= 1 */
} zlb_lg_config;

typedef struct zlb_lg_label {
    char value[ZLB_LG_LABEL_MAX];
    uint64_t count;
} zlb_lg_label;

typedef struct zlb_lg_result {
    uint64_t requests;            /* responses received, any status */
    uint64_t errors[ZLB_LG_ERR_COUNT];
    uint64_t bytes_read;
    uint64_t connects;            /* successful connection setups */
    int64_t duration_ns;          /* first send .. last thread done */
    zlb_hist latency;             /* of every response */
    uint32_t nlabels;
    uint64_t labels_other;        /* responses whose label did not fit */
    uint64_t labels_missing;      /* responses without the label header */
    zlb_lg_label labels[ZLB_LG_LABELS];
} zlb_lg_result;

/* Fill cfg with defaults: 127.0.0.1, HTTP, 1 thread, 64 connections,
 * closed loop, 10 s, timeout 5 s, path "/", tcp_size 64. */
void zlb_lg_config_defaults(zlb_lg_config *cfg);

/* Run one load test to completion (blocking). Thread-safe: any number of runs
 * may proceed at once; cfg is only read, out is owned by the caller and fully
 * written. Returns 0, or -1 with a message in err when the configuration is
 * invalid or resources (threads, epoll) cannot be had; connection failures
 * during the run are counted in out->errors, not reported here. */
int zlb_lg_run(const zlb_lg_config *cfg, zlb_lg_result *out, char *err, size_t errlen);

#endif
