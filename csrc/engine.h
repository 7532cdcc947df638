/*
 * engine.h - the data-plane engine: N worker threads, listeners, snapshot
 * publication and statistics. This is the whole C API that the Cython module
 * (zlbfast/_native.pyx) uses.
 *
 * Threads: every zlb_engine_* function is called from the control thread
 * (Python, holding or not holding the GIL - none of them calls back into
 * Python). Workers never call these functions.
 */
#ifndef ZLB_ENGINE_H
#define ZLB_ENGINE_H

#include "accesslog.h"
#include "accesslog_writer.h"
#include "snapshot.h"
#include "tls.h"

typedef struct zlb_engine zlb_engine;

typedef struct zlb_engine_opts {
    uint32_t workers;   /* >= 1 */
    uint64_t rng_seed;  /* seeds the per-worker generators (worker i: seed + i) */
} zlb_engine_opts;

enum zlb_protocol { ZLB_PROTO_TCP = 0, ZLB_PROTO_HTTP = 1 };

/* HTTP/1.1 listener settings (protocol == ZLB_PROTO_HTTP). */
typedef struct zlb_http_opts {
    char route_table[ZLB_NAME_MAX]; /* router name in the snapshot */
    uint32_t max_request_line;      /* 414 above it */
    uint32_t max_head;              /* 431 above it */
    uint32_t max_headers;           /* 431 above it */
    uint32_t header_timeout_ms;     /* whole request head must arrive within it (slowloris): 408 */
    uint32_t request_timeout_ms;    /* default whole-exchange timeout when the route sets none: 504 */
    uint32_t upstream_idle_ms;      /* pooled upstream connections close after this */
    uint32_t max_requests_per_conn; /* upstream connection reuse limit, 0 = unlimited */
    uint32_t max_idle_per_endpoint; /* pooled connections kept per endpoint and worker */
    uint32_t retry_buffer;          /* requests up to this size (head + body) can be retried */
    int forward_client_cert;        /* zlb_xfcc: what happens to x-forwarded-client-cert */
    uint32_t xfcc_details;          /* zlb_xfcc_detail bits: what this hop's element adds to By, Hash, URI */
    int append_x_forwarded_for;     /* nonzero: the client's address is appended to x-forwarded-for
                                     * (Envoy's use_remote_address: true); zero: it passes unchanged */
} zlb_http_opts;

/* x-forwarded-client-cert handling, Envoy's forward_client_cert_details. A
 * request that did not come over mutual TLS is always sanitized. */
enum zlb_xfcc {
    ZLB_XFCC_SANITIZE = 0,          /* remove any incoming header (the default) */
    ZLB_XFCC_FORWARD_ONLY = 1,      /* pass the incoming header on unchanged */
    ZLB_XFCC_APPEND_FORWARD = 2,    /* append this hop's element to the incoming header */
    ZLB_XFCC_SANITIZE_SET = 3,      /* replace the incoming header with this hop's element */
};

/* Keys of this hop's element beyond By, Hash and URI (Envoy's
 * set_current_client_cert_details). */
enum zlb_xfcc_detail {
    ZLB_XFCC_SUBJECT = 1,           /* Subject="<the client certificate's subject, RFC 2253>" */
    ZLB_XFCC_DNS = 2,               /* DNS=<name>, once per DNS name of its subjectAltName */
    ZLB_XFCC_CERT = 4,              /* Cert="<its PEM, URL-encoded>" */
    ZLB_XFCC_CHAIN = 8,             /* Chain="<its PEM and those of the certificates sent after it, URL-encoded>" */
};

typedef struct zlb_listener_opts {
    char name[ZLB_NAME_MAX];
    char cluster[ZLB_NAME_MAX];     /* TCP listeners */
    int protocol;                   /* zlb_protocol */
    zlb_http_opts http;
    char host[ZLB_ADDR_STR_MAX];   /* numeric IPv4/IPv6 */
    uint16_t port;                 /* 0 = ephemeral (the same port on every worker) */
    uint32_t max_connections;      /* per listener, all workers together */
    uint32_t idle_timeout_ms;      /* 0 = none */
    int backlog;
    char tcp_congestion[ZLB_TCP_CA_NAME_MAX]; /* accepted sockets' congestion control; "" = system default */
    /* NULL = plaintext, else terminate TLS with these options (read during
     * zlb_engine_add_listener only; not kept). Rules naming HTTP methods or
     * paths are refused on TCP listeners. */
    const zlb_tls_opts *tls;
} zlb_listener_opts;

/* Counters summed over workers. Field order is the ABI with _native.pyx. */
typedef struct zlb_stats {
    uint64_t conns_accepted;
    uint64_t conns_active;
    uint64_t conns_overflow;     /* closed at once: listener max_connections reached */
    uint64_t connect_attempts;
    uint64_t connect_failures;   /* refused/unreachable upstream connects */
    uint64_t connect_timeouts;
    uint64_t retries;            /* connects tried again on another endpoint */
    uint64_t upstream_exhausted; /* clients closed because every attempt failed */
    uint64_t no_cluster;         /* listener's cluster missing from the snapshot */
    uint64_t idle_timeouts;
    uint64_t resets;             /* connections ended by an error on either side */
    uint64_t bytes_down_up;      /* client -> upstream */
    uint64_t bytes_up_down;      /* upstream -> client */
    uint64_t splice_fallbacks;   /* connections that fell back to read/write */
    uint64_t access_log_dropped; /* records lost because a worker's ring was full */
    uint64_t http_requests;      /* requests completed (any status) */
    uint64_t http_1xx, http_2xx, http_3xx, http_4xx, http_5xx; /* responses sent, by class */
    uint64_t http_retries;       /* upstream attempts beyond the first */
    uint64_t http_bad_requests;  /* rejected by the parser (400/414/431/501) */
    uint64_t http_header_timeouts;
    uint64_t http_request_timeouts;
    uint64_t http_overflow;      /* circuit breaker 503s */
    uint64_t http_upstream_reused; /* requests sent on a pooled connection */
    uint64_t http_upgrades;      /* connections turned into tunnels (101) */
    /* TLS (L4 and HTTP). Handshakes count completed ones; failures are split by cause
     * in the tls_verify_* / tls_no_peer_cert counters (both sides). */
    uint64_t tls_handshakes_down;        /* listener terminated TLS, peer verified */
    uint64_t tls_handshakes_up;          /* TLS to an upstream completed, peer verified */
    uint64_t tls_resumed_up;             /* ... of which resumed a session (ticket) */
    uint64_t tls_handshake_failures_down;
    uint64_t tls_handshake_failures_up;
    uint64_t tls_handshake_timeouts;     /* client did not finish the handshake in time */
    uint64_t tls_verify_untrusted;       /* chain does not verify to the trust domain's bundle */
    uint64_t tls_verify_expired;         /* a certificate is expired or not yet valid */
    uint64_t tls_verify_spiffe_id;       /* no/invalid SPIFFE ID, or not the expected peer */
    uint64_t tls_no_peer_cert;           /* client sent no certificate (mTLS required) */
    uint64_t tls_plaintext_rejected;     /* strict listener got plaintext */
    uint64_t tls_permissive_plaintext;   /* permissive listener accepted plaintext */
    uint64_t tls_bytes_down_up;          /* of bytes_down_up: on connections with TLS on a side */
    uint64_t tls_bytes_up_down;
    uint64_t authz_denied;               /* closed (L4) or answered 403 (HTTP) by a listener's allow/deny rules */
    uint64_t tls_events_dropped;         /* TLS events lost because the event ring was full */
} zlb_stats;

zlb_engine *zlb_engine_new(const zlb_engine_opts *o, char *err, size_t errlen);
/* Starts the worker threads. 0 or -1. */
int zlb_engine_start(zlb_engine *e, char *err, size_t errlen);
/* Stops and joins workers, closes every socket, frees everything. */
void zlb_engine_free(zlb_engine *e);

zlb_ep_registry *zlb_engine_registry(zlb_engine *e);
uint32_t zlb_engine_workers(const zlb_engine *e);

/* Installs s (ownership passes to the engine); the previous snapshot is freed
 * once every worker has passed a quiescent point. */
void zlb_engine_publish(zlb_engine *e, zlb_snapshot *s);
/* The snapshot workers currently see. Control thread only: valid until the
 * next zlb_engine_publish from this same thread (the only place that frees). */
const zlb_snapshot *zlb_engine_current(zlb_engine *e);
/* Frees retired snapshots that are no longer visible; returns how many wait. */
uint64_t zlb_engine_reclaim(zlb_engine *e);

/* Binds one SO_REUSEPORT socket per worker and hands them over. Returns the
 * listener id (>= 0) or -1 with err set. */
int zlb_engine_add_listener(zlb_engine *e, const zlb_listener_opts *o, char *err, size_t errlen);
/* Bound port of a listener, or -1 for an unknown id. */
int zlb_engine_listener_port(zlb_engine *e, int id);
/* Live connections accepted on a listener (all workers), or -1. */
int64_t zlb_engine_listener_active(zlb_engine *e, int id);
/* Workers close the listener's sockets; open connections continue. 0 or -1. */
int zlb_engine_remove_listener(zlb_engine *e, int id);

/* Records an active health-check verdict (zlb_health) for an endpoint of the
 * current snapshot; the state object keeps it across reloads. Workers see it
 * at their next pick. 0, or -1 when no such endpoint exists. */
int zlb_engine_set_active_health(zlb_engine *e, const char *cluster, const char *address, int health);

void zlb_engine_stats(zlb_engine *e, zlb_stats *out);

/* Turns access-log records on or off. The first time on allocates each
 * worker's ring of ring_records records (a power of two within
 * ZLB_AL_RING_MIN..MAX, see accesslog.h); later calls keep that size. Records
 * made while no writer runs wait in the rings (and drop, counted, once a ring
 * is full). 0; -1 on allocation failure; -2 when ring_records is invalid. */
int zlb_engine_set_access_log(zlb_engine *e, int on, uint32_t ring_records);
/* Starts the engine's access-log thread (accesslog_writer.h) over every
 * worker's ring, writing to o->fd, which the engine owns from a successful
 * start on. 0, or -1 with err set (a writer already runs, bad options). */
int zlb_engine_access_log_start(zlb_engine *e, const zlb_alog_writer_opts *o, char *err, size_t errlen);
/* Stops the access-log thread after a final drain of the rings (turn
 * records off first to have everything written), waiting up to timeout_ms:
 * 0 done, -1 the destination stayed blocked (the thread is left behind,
 * see zlb_alog_writer_stop), 1 when no writer was running. */
int zlb_engine_access_log_stop(zlb_engine *e, uint32_t timeout_ms);
/* Counters of every writer this engine ran (the running one included) and
 * *pending, the records waiting in the rings now. */
void zlb_engine_access_log_stats(zlb_engine *e, zlb_alog_writer_stats *out, uint64_t *pending);

/* ---- TLS (csrc/tls.h) ---------------------------------------------------
 * Identities are named slots; listeners and clusters refer to them by name.
 * Installing a new identity into a slot is the rotation: new handshakes use
 * it at once, established connections keep the material they started with. */

/* Creates or replaces the identity `name` from PEM text (leaf first, then
 * intermediates; key; per trust domain bundle, "" = our own trust domain).
 * 0, or -1 with err set and the previous identity kept. Never puts key bytes
 * into err. */
int zlb_engine_set_identity(zlb_engine *e, const char *name, const char *cert_pem, const char *key_pem,
                            const char *const *bundle_tds, const char *const *bundle_pems, size_t n_bundles,
                            char *err, size_t errlen);
/* Facts about an installed identity: 0, or -1 when the slot is unknown or
 * empty. rotations: installs after the first. */
int zlb_engine_identity_info(zlb_engine *e, const char *name, char *spiffe_id, size_t idlen, char *serial,
                             size_t seriallen, uint64_t *rotations);
/* Upstream TLS for a cluster (by name, independent of snapshots): o NULL
 * turns it off. New connections see the change. 0 or -1 with err. */
int zlb_engine_set_cluster_tls(zlb_engine *e, const char *cluster, const zlb_tls_opts *o, char *err, size_t errlen);

enum zlb_tls_event_kind {
    ZLB_TLS_EV_DOWN_FAILED = 1,        /* listener handshake/verification failed */
    ZLB_TLS_EV_UP_FAILED = 2,          /* upstream handshake/verification failed */
    ZLB_TLS_EV_PLAINTEXT_REJECTED = 3, /* strict listener, first bytes not a ClientHello */
    ZLB_TLS_EV_DENIED = 4,             /* authorization rules closed the connection */
    ZLB_TLS_EV_TIMEOUT = 5,            /* client handshake timeout */
    ZLB_TLS_EV_DOWN_OK = 6,            /* verified client (only while peer logging is on) */
    ZLB_TLS_EV_UP_OK = 7,              /* verified upstream (only while peer logging is on) */
};

/* One TLS event for the log: failures and denials always, successful
 * verifications while zlb_engine_set_tls_log_peers is on. */
typedef struct zlb_tls_event {
    int64_t unix_ns;
    int32_t kind;                    /* zlb_tls_event_kind */
    int32_t fail_kind;               /* zlb_tls_fail_kind */
    int32_t listener_id;             /* -1 for upstream events */
    uint16_t port;                   /* destination port (listener) */
    struct sockaddr_in6 peer;        /* client address, or the upstream's */
    char cluster[ZLB_NAME_MAX];
    char peer_id[ZLB_SPIFFE_ID_MAX]; /* verified (or presented) SPIFFE ID, "" = none */
    char reason[ZLB_TLS_REASON_MAX];
} zlb_tls_event;

#define ZLB_TLS_EVENT_RING 1024
/* Moves up to max events into out, oldest first; returns how many. */
size_t zlb_engine_drain_tls_events(zlb_engine *e, zlb_tls_event *out, size_t max);
void zlb_engine_set_tls_log_peers(zlb_engine *e, int on);

/* Debug counters (process-wide) that tests assert return to zero. */
int64_t zlb_debug_live_conns(void);
int64_t zlb_debug_live_pipes(void);
int64_t zlb_debug_live_tls(void); /* connections holding TLS state */

#endif
