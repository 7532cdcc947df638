/*
 * tls_worker.h - the TLS steps that both proxies of a worker thread (l4.c and
 * http1_proxy.c) take on a connection: tell a ClientHello from plaintext,
 * start one side's SSL from its identity slot, advance the handshake with
 * SPIFFE verification, count and report the outcome, and end the side.
 *
 * Threads: the owning worker only. Ownership: the caller owns the socket, the
 * epoll interest, the timers and the zlb_tls_peer with its policy; nothing
 * here closes a socket or re-arms anything, so each proxy keeps its own
 * lifecycle while the TLS logic, the counters and the events exist once.
 * "Side" follows the policy: a server policy is the downstream side (0), a
 * client policy the upstream side (1).
 */
#ifndef ZLB_TLS_WORKER_H
#define ZLB_TLS_WORKER_H

#include "worker.h"

/* Where a connection is, for the events a TLS step reports. */
typedef struct zlb_tls_where {
    int32_t listener_id;
    uint16_t port;                    /* the listener's bound port */
    const struct sockaddr_in6 *addr;  /* the peer of this side */
    const char *cluster;              /* "" when there is none */
} zlb_tls_where;

enum zlb_detect { ZLB_DETECT_WAIT, ZLB_DETECT_TLS, ZLB_DETECT_PLAIN, ZLB_DETECT_EOF, ZLB_DETECT_ERROR };

/* Peeks (MSG_PEEK: nothing is consumed) at the first bytes of a TLS
 * listener's connection: a record of type handshake (0x16) with major
 * version 3 is a ClientHello. WAIT: not enough bytes yet (their arrival is a
 * new edge); EOF: the client left without a byte. */
int zlb_tls_detect(int fd);

/* Queues one TLS event for the control plane; a full ring counts a drop. */
void zlb_tls_report(zlb_worker *w, const zlb_tls_where *at, int kind, int fail_kind, const char *peer_id,
                    const char *reason);

/* Counts and reports a failed handshake of peer's side. reason NULL: our
 * verification's reason when it rejected the peer, else OpenSSL's error
 * queue (e.g. the peer's alert), which is cleared. */
void zlb_tls_failed(zlb_worker *w, const zlb_tls_where *at, zlb_tls_peer *peer, const char *reason);

/* Starts a side on fd: peer->policy must be set. Takes the identity slot's
 * current material into peer->mat (a reference) and creates the SSL. On a
 * client policy, resumes a session from the worker's cache keyed by
 * (resume_key, material) and points new tickets at the same key through
 * `sink`, which must live as long as the SSL. Returns the SSL, or NULL after
 * reporting the failure (zlb_tls_failed). */
SSL *zlb_tls_start(zlb_worker *w, const zlb_tls_where *at, zlb_tls_peer *peer, int fd, const void *resume_key,
                   zlb_tls_session_sink *sink);

enum zlb_hs { ZLB_HS_FAILED = -1, ZLB_HS_WANT_READ = 0, ZLB_HS_WANT_WRITE = 1, ZLB_HS_DONE = 2 };

/* One non-blocking handshake step. DONE: the peer is verified (peer->id
 * set), the handshake counted (and its resumption, upstream) and, while peer
 * logging is on, reported. WANT_READ / WANT_WRITE: the caller waits for that
 * readiness of the socket. FAILED: counted and reported; the caller closes
 * (downstream) or tries another endpoint (upstream). */
int zlb_tls_handshake(zlb_worker *w, const zlb_tls_where *at, SSL *ssl, zlb_tls_peer *peer);

/* How a side ends (zlb_tls_end). */
enum zlb_tls_end_how {
    ZLB_TLS_END_ABORT = 0,  /* after a fatal error (OpenSSL forbids SSL_shutdown then): OpenSSL also makes the
                               session unresumable, as it does for every SSL freed without a shutdown */
    ZLB_TLS_END_QUIET = 1,  /* our own reset: no alert, but the session (a ticket in the worker's cache)
                               stays resumable */
    ZLB_TLS_END_NOTIFY = 2, /* a clean close: one best-effort close_notify first */
};

/* Ends a side as `how` says (only a completed handshake gets a shutdown),
 * then SSL_free, the material reference dropped and what verification
 * learned cleared. The policy stays (the caller owns it). *ssl is NULL
 * afterwards. */
void zlb_tls_end(SSL **ssl, zlb_tls_peer *peer, int how);

/* Connections holding TLS state, process-wide (zlb_debug_live_tls). */
void zlb_tls_live_add(int64_t d);

/* The SHA-256 of the peer's leaf certificate (DER) as 64 lower-case hex
 * digits and a NUL (XFCC "Hash"). 0, or -1 when there is no peer certificate. */
int zlb_tls_peer_cert_sha256(SSL *ssl, char out[65]);

/* Calls fn with the peer certificate's subject in RFC 2253 form ("CN=x,O=y";
 * XFCC "Subject"), or not at all when it is empty. 0, or -1 when there is no
 * peer certificate or no memory. Worker thread (OpenSSL objects). */
int zlb_tls_peer_subject(SSL *ssl, void (*fn)(const char *subject, size_t len, void *arg), void *arg);

/* Calls fn(name, length, arg) for each DNS name of the peer certificate's
 * subjectAltName, in order (XFCC "DNS"), skipping names with characters a
 * DNS name cannot hold (so none needs quoting). The number of calls, or -1
 * when there is no peer certificate. */
int zlb_tls_peer_dns_names(SSL *ssl, void (*fn)(const char *name, size_t len, void *arg), void *arg);

/* Calls fn once with the PEM of the peer's certificate (chain == 0) or of
 * it and the certificates it sent after it (chain != 0; XFCC "Cert" and
 * "Chain"). Server side (a listener's connection). 0, or -1 when there is
 * no peer certificate or no memory. */
int zlb_tls_peer_pem(SSL *ssl, int chain, void (*fn)(const char *pem, size_t len, void *arg), void *arg);

#endif
