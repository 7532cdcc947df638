/*
 * tls.h - TLS for the workers (OpenSSL 3; the L4 and the HTTP/1.1 proxies)
 * with SPIFFE peer validation and per-listener authorization.
 *
 * Objects and their owners
 * ------------------------
 *  - zlb_tls_mat ("material"): one X.509 SVID (leaf + chain + key), the trust
 *    bundles per trust domain, and the two SSL_CTX built from them (server,
 *    client). Immutable once built, refcounted: the identity slot holds one
 *    reference and every connection that created an SSL from it holds one, so
 *    a rotation never disturbs established connections.
 *  - zlb_tls_slot: a named identity ("which SVID"), owned by the engine and
 *    freed only with it. Its material pointer is swapped under the slot mutex
 *    by zlb_tls_slot_set (control thread) and read under the same mutex by
 *    zlb_tls_slot_get (workers, once per handshake). The mutex is uncontended
 *    except during a rotation; it is never held while doing crypto work.
 *  - zlb_tls_policy: what one listener (server side) or one cluster (client
 *    side) wants from TLS: the identity slot, minimum version, ALPN, SNI, the
 *    expected peer SPIFFE ID, the authorization rules. Immutable and
 *    refcounted (listener/engine table reference + one per connection).
 *
 * Verification is SPIFFE style, never by DNS name: the peer leaf must carry
 * exactly one spiffe:// URI SAN; its trust domain selects the trust bundle the
 * chain must verify against; then the ID is matched against the policy.
 * Private keys are held only inside OpenSSL objects; no message built here
 * contains key material.
 */
#ifndef ZLB_TLS_H
#define ZLB_TLS_H

#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>
#include "zlb_common.h"

#define ZLB_SPIFFE_ID_MAX 256
#define ZLB_TLS_NAME_MAX 128
#define ZLB_TLS_MAX_RULES 32
#define ZLB_TLS_MAX_PORTS 16
#define ZLB_TLS_REASON_MAX 512
#define ZLB_AUTHZ_MAX_PATHS 8        /* path matches per rule (HTTP listeners) */
#define ZLB_AUTHZ_PATH_MAX 128       /* bytes of one path match, NUL included */

enum zlb_tls_mode { ZLB_TLS_OFF = 0, ZLB_TLS_STRICT = 1, ZLB_TLS_PERMISSIVE = 2 };

/* How a SPIFFE ID is matched. ANY: any ID that verifies against a bundle. */
enum zlb_spiffe_match_kind {
    ZLB_SPIFFE_ANY = 0,
    ZLB_SPIFFE_EXACT = 1,        /* the whole ID */
    ZLB_SPIFFE_PREFIX = 2,       /* string prefix of the ID, e.g. spiffe://td/ns/prod/ */
    ZLB_SPIFFE_TRUST_DOMAIN = 3, /* the trust domain equals the value */
};

typedef struct zlb_spiffe_match {
    int kind;                       /* zlb_spiffe_match_kind */
    char value[ZLB_SPIFFE_ID_MAX];
} zlb_spiffe_match;

/* HTTP methods an authorization rule can name, as bits (RFC 9110 9.3 and
 * PATCH). A method outside this list has no bit: it matches no rule that
 * lists methods. */
enum zlb_http_method_bit {
    ZLB_M_GET = 1u << 0, ZLB_M_HEAD = 1u << 1, ZLB_M_POST = 1u << 2, ZLB_M_PUT = 1u << 3,
    ZLB_M_DELETE = 1u << 4, ZLB_M_CONNECT = 1u << 5, ZLB_M_OPTIONS = 1u << 6, ZLB_M_TRACE = 1u << 7,
    ZLB_M_PATCH = 1u << 8,
};
/* The bit of a method token (case-sensitive, as methods are), 0 when none. */
uint32_t zlb_http_method_bit(const char *m, size_t len);

enum zlb_authz_path_kind { ZLB_AUTHZ_PATH_EXACT = 1, ZLB_AUTHZ_PATH_PREFIX = 2 };
typedef struct zlb_authz_path {
    int kind;                          /* zlb_authz_path_kind */
    char value[ZLB_AUTHZ_PATH_MAX];    /* starts with '/' */
} zlb_authz_path;

/* One authorization rule: matches when the peer matches `peer` (ANY also
 * matches a plaintext peer of a permissive listener, whose ID is "") and the
 * destination port is one of ports (none listed = every port); on HTTP
 * listeners also when the request's method is one of `methods` (0 = every
 * method) and its path (the target without the query) matches one of
 * `paths` (none = every path). A rule with methods or paths belongs to HTTP
 * listeners only (the engine refuses it on TCP listeners). */
typedef struct zlb_authz_rule {
    zlb_spiffe_match peer;
    uint16_t ports[ZLB_TLS_MAX_PORTS];
    uint32_t n_ports;
    uint32_t methods;                  /* zlb_http_method_bit set, 0 = any */
    uint32_t n_paths;
    zlb_authz_path paths[ZLB_AUTHZ_MAX_PATHS];
} zlb_authz_rule;

/* What HTTP authorization looks at besides the peer and the port. */
typedef struct zlb_authz_req {
    uint32_t method;                   /* zlb_http_method_bit of the request, 0 = another method */
    const char *path;                  /* the path, query excluded (not NUL-terminated) */
    size_t path_len;
} zlb_authz_req;

/* Flat options that the control thread fills (the Cython boundary). */
typedef struct zlb_tls_opts {
    char identity[ZLB_TLS_NAME_MAX]; /* slot name: zlb_engine_set_identity */
    int mode;                        /* listeners: zlb_tls_mode; clusters: ignored */
    int min_version;                 /* 12 or 13 (default 13) */
    uint32_t handshake_timeout_ms;   /* listeners; 0 = 10000 */
    char alpn[256];                  /* comma separated protocol names, "" = none */
    char sni[256];                   /* clusters: server name sent, "" = none */
    zlb_spiffe_match peer;           /* expected peer (both sides) */
    zlb_authz_rule allow[ZLB_TLS_MAX_RULES];
    uint32_t n_allow;
    zlb_authz_rule deny[ZLB_TLS_MAX_RULES];
    uint32_t n_deny;
} zlb_tls_opts;

typedef struct zlb_tls_td_bundle {
    char trust_domain[ZLB_SPIFFE_ID_MAX];
    X509_STORE *store;
} zlb_tls_td_bundle;

typedef struct zlb_tls_mat {
    _Atomic int64_t refs;
    uint64_t gen;                   /* unique per material: keys the session cache */
    SSL_CTX *server, *client;
    uint32_t n_bundles;
    zlb_tls_td_bundle *bundles;
    char own_id[ZLB_SPIFFE_ID_MAX]; /* SPIFFE ID of our own SVID */
    char serial[80];                /* hex serial of our leaf (logs, tests) */
} zlb_tls_mat;

typedef struct zlb_tls_slot {
    char name[ZLB_TLS_NAME_MAX];
    pthread_mutex_t lock;           /* protects mat */
    zlb_tls_mat *mat;               /* NULL until the first set */
    uint64_t rotations;             /* sets after the first (control thread) */
    struct zlb_tls_slot *next;
} zlb_tls_slot;

typedef struct zlb_tls_policy {
    _Atomic int64_t refs;
    int is_server;
    int mode;
    int min_version;                /* TLS1_2_VERSION / TLS1_3_VERSION */
    uint32_t handshake_timeout_ms;
    zlb_tls_slot *slot;             /* not owned (engine) */
    unsigned char alpn[256];        /* wire format */
    size_t alpn_len;
    char sni[256];
    zlb_spiffe_match peer;
    uint32_t n_allow, n_deny;
    zlb_authz_rule *allow, *deny;   /* owned */
    uint64_t opts_hash;             /* of the options it was built from: tells a changed policy */
    uint8_t http_rules;             /* some rule names methods or paths */
    uint8_t path_rules;             /* some rule names paths: requests need canonical paths */
} zlb_tls_policy;

/* Per-connection TLS facts the verify callback fills (owned by the connection). */
typedef struct zlb_tls_peer {
    const zlb_tls_policy *policy;
    zlb_tls_mat *mat;
    char id[ZLB_SPIFFE_ID_MAX];     /* verified peer SPIFFE ID, "" = none */
    char reason[ZLB_TLS_REASON_MAX];/* why verification failed, "" = it did not */
    int verify_kind;                /* zlb_tls_fail_kind of a failure */
} zlb_tls_peer;

enum zlb_tls_fail_kind {
    ZLB_TLS_FAIL_NONE = 0,
    ZLB_TLS_FAIL_UNTRUSTED = 1,     /* no chain to the trust domain's bundle */
    ZLB_TLS_FAIL_EXPIRED = 2,       /* a certificate is expired or not yet valid */
    ZLB_TLS_FAIL_SPIFFE_ID = 3,     /* missing/invalid SPIFFE ID, or not the expected one */
    ZLB_TLS_FAIL_NO_CERT = 4,
    ZLB_TLS_FAIL_PROTOCOL = 5,      /* any other handshake failure */
};

/* One-time process setup (ex_data indexes). Any thread; idempotent. */
int zlb_tls_global_init(void);

/* Builds material from PEM text. bundle_tds[i] names the trust domain whose
 * CA certificates are bundle_pems[i]; "" means "the trust domain of our own
 * SVID". Returns a material with one reference, or NULL with err set (the
 * message never contains key bytes). Control thread. */
zlb_tls_mat *zlb_tls_mat_new(const char *cert_pem, const char *key_pem, const char *const *bundle_tds,
                             const char *const *bundle_pems, size_t n_bundles, char *err, size_t errlen);
void zlb_tls_mat_ref(zlb_tls_mat *m);
/* Drops a reference; the last frees the SSL_CTXs and stores. Any thread. */
void zlb_tls_mat_unref(zlb_tls_mat *m);

/* Slot: installs m (the reference passes to the slot), releasing the old
 * material's slot reference. Control thread. */
void zlb_tls_slot_set(zlb_tls_slot *s, zlb_tls_mat *m);
/* Slot: the current material with a NEW reference for the caller, or NULL
 * when no identity was installed yet. Any thread. */
zlb_tls_mat *zlb_tls_slot_get(zlb_tls_slot *s);

/* Policy from options; slot resolved by the caller. NULL + err on failure. */
zlb_tls_policy *zlb_tls_policy_new(const zlb_tls_opts *o, int is_server, zlb_tls_slot *slot, char *err,
                                   size_t errlen);
void zlb_tls_policy_ref(zlb_tls_policy *p);
void zlb_tls_policy_unref(zlb_tls_policy *p);

/* Creates an SSL for one side of a connection on fd (worker thread). The SSL
 * holds `peer` as app data: the verify and ALPN callbacks read the policy
 * there and record the verified ID in it. peer->mat must hold a reference. */
SSL *zlb_tls_ssl_new(zlb_tls_peer *peer, int fd, SSL_SESSION *resume);

/* After a completed handshake: extracts and re-checks the peer ID (covers
 * resumed sessions, where no verification callback runs). 0 or -1 with
 * peer->reason set. */
int zlb_tls_check_peer(SSL *ssl, zlb_tls_peer *peer);

/* Authorization of a verified (or, permissive, plaintext "") peer for a
 * destination port: 1 allow, 0 deny. Deny rules win; any allow rule makes the
 * default deny. req NULL (L4): rules that name methods or paths never match. */
int zlb_tls_authorize_req(const zlb_tls_policy *p, const char *peer_id, uint16_t port, const zlb_authz_req *req);
static inline int zlb_tls_authorize(const zlb_tls_policy *p, const char *peer_id, uint16_t port)
{
    return zlb_tls_authorize_req(p, peer_id, port, NULL);
}

/* Is a request path in the canonical form that path rules can judge? No
 * empty, "." or ".." segment, no backslash, and no percent-encoded octet
 * that normalization would decode (an unreserved character, '/' or '\\'):
 * otherwise "/public/../admin" or "/%61dmin" would escape a rule on "/admin"
 * while the backend resolves them to it. */
int zlb_authz_path_canonical(const char *path, size_t len);

/* Extracts the single spiffe:// URI SAN of a certificate. 0, or -1 (none,
 * several, or malformed) with a reason. */
int zlb_spiffe_id_of(X509 *cert, char *out, size_t outlen, char *why, size_t whylen);
/* Splits "spiffe://td/path": copies the trust domain. 0 or -1 (malformed). */
int zlb_spiffe_trust_domain(const char *id, char *td, size_t tdlen);
int zlb_spiffe_match_ok(const zlb_spiffe_match *m, const char *id);

/* Per-worker client session cache for resumption to upstreams. Keys: the
 * endpoint (any stable pointer) and the material generation. Owned by one
 * worker; zlb_tls_sessions_free at worker teardown. */
typedef struct zlb_tls_sessions zlb_tls_sessions;
zlb_tls_sessions *zlb_tls_sessions_new(void);
void zlb_tls_sessions_free(zlb_tls_sessions *c);
/* Borrowed session (do not free) or NULL. */
SSL_SESSION *zlb_tls_sessions_get(zlb_tls_sessions *c, const void *ep, uint64_t gen);
/* Stores sess (takes over the caller's reference). */
void zlb_tls_sessions_put(zlb_tls_sessions *c, const void *ep, uint64_t gen, SSL_SESSION *sess);

/* Where the client ctx's new-session callback stores tickets: set as SSL
 * ex data by the caller (l4.c) together with the endpoint key. */
typedef struct zlb_tls_session_sink {
    zlb_tls_sessions *cache;
    const void *ep;
    uint64_t gen;
} zlb_tls_session_sink;
void zlb_tls_set_session_sink(SSL *ssl, zlb_tls_session_sink *sink);

/* The first OpenSSL error of this thread as text (and clears the queue). */
void zlb_tls_last_error(char *out, size_t outlen);

#endif
