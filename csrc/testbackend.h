/*
 * testbackend.h - built-in backends for tests and `zlbfast bench`.
 *
 * A backend is one listening socket served by its own pthreads (each with its
 * own epoll), started and stopped from any thread; the serving threads never
 * call into Python. Kinds:
 *  - ZLB_TB_HTTP: HTTP/1.1 keep-alive responder. Every request gets the same
 *    response: configurable status and body size, and when `label` is set an
 *    `x-backend: LABEL` header so a client can see which backend answered.
 *    Optional fixed delay per response, and zlb_tb_stall() to hold every
 *    response for a while (the coordinated-omission test).
 *  - ZLB_TB_ECHO: writes back every byte it reads.
 *  - ZLB_TB_SINK: reads and discards.
 */
#ifndef ZLB_TESTBACKEND_H
#define ZLB_TESTBACKEND_H

#include <stddef.h>
#include <stdint.h>

enum zlb_tb_kind { ZLB_TB_HTTP = 0, ZLB_TB_ECHO = 1, ZLB_TB_SINK = 2 };

typedef struct zlb_tb_config {
    int kind;                /* enum zlb_tb_kind */
    char host[64];           /* numeric address to bind, e.g. 127.0.0.1 */
    uint16_t port;           /* 0 = let the kernel pick (see zlb_tb_port) */
    int threads;             /* serving threads, >= 1 */
    int status;              /* HTTP: response status, 100..599 */
    uint32_t body_size;      /* HTTP: response body bytes */
    int64_t delay_ns;        /* HTTP: hold each response this long */
    char label[64];          /* HTTP: x-backend header value; "" = none */
} zlb_tb_config;

typedef struct zlb_tb zlb_tb;

/* Defaults: HTTP, 127.0.0.1, port 0, 1 thread, status 200, 64-byte body. */
void zlb_tb_config_defaults(zlb_tb_config *cfg);

/* Bind, listen and start serving. Returns the backend (owned by the caller,
 * release with zlb_tb_stop) or NULL with a message in err. cfg is copied. */
zlb_tb *zlb_tb_start(const zlb_tb_config *cfg, char *err, size_t errlen);

/* The bound port. Any thread. */
uint16_t zlb_tb_port(const zlb_tb *tb);

/* HTTP: no response leaves before now + duration_ns (responses that were
 * due earlier wait until then). Any thread, lock-free; extends, never
 * shortens, a stall already in force. */
void zlb_tb_stall(zlb_tb *tb, int64_t duration_ns);

/* Counters, summed over the serving threads; any thread, lock-free. A
 * response is counted before its first byte is written, so a client that has
 * read a response always sees it counted. */
uint64_t zlb_tb_requests(const zlb_tb *tb);     /* HTTP responses sent */
uint64_t zlb_tb_bytes(const zlb_tb *tb);        /* bytes read from clients */
uint64_t zlb_tb_connections(const zlb_tb *tb);  /* connections accepted */

/* Stop the threads, close every socket and free tb. Call once, from a thread
 * that is not one of tb's own. */
void zlb_tb_stop(zlb_tb *tb);

#endif
