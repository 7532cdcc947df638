/*
 * router.h - HTTP request routing: virtual hosts chosen by Host, routes by
 * path (exact, prefix, regex), header and query matches; actions: a cluster,
 * weighted clusters, a direct response or a redirect; path-prefix and host
 * rewrites; request/response header operations; hash policy; timeout and
 * retry policy.
 *
 * A router is built by the control thread with the calls below, handed to
 * a snapshot (zlb_snap_add_router), and is immutable from then on: workers
 * match against it without locks. Regexes are POSIX extended, anchored to
 * the whole value (compiled once at build time).
 */
#ifndef ZLB_ROUTER_H
#define ZLB_ROUTER_H

#include <regex.h>
#include "http1_parser.h"
#include "zlb_common.h"

enum zlb_match_kind { ZLB_MATCH_EXACT, ZLB_MATCH_PREFIX, ZLB_MATCH_REGEX, ZLB_MATCH_PRESENT };
enum zlb_action_kind { ZLB_ACTION_CLUSTER, ZLB_ACTION_DIRECT, ZLB_ACTION_REDIRECT };
enum zlb_hash_kind { ZLB_HASH_NONE, ZLB_HASH_HEADER, ZLB_HASH_COOKIE, ZLB_HASH_SOURCE_IP, ZLB_HASH_PATH };
enum zlb_header_op_kind { ZLB_REQ_ADD, ZLB_REQ_SET, ZLB_REQ_REMOVE, ZLB_RESP_ADD, ZLB_RESP_SET, ZLB_RESP_REMOVE,
                          ZLB_HEADER_OP_KINDS };

/* retry_on bits */
#define ZLB_RETRY_CONNECT_FAILURE 0x01u /* no connection could be made */
#define ZLB_RETRY_RESET 0x02u           /* connection reset/closed before any response byte */
#define ZLB_RETRY_GATEWAY 0x04u         /* 502, 503, 504 */
#define ZLB_RETRY_5XX 0x08u             /* any 5xx (includes gateway and reset) */
#define ZLB_RETRY_CODES 0x10u           /* the listed status codes */

typedef struct zlb_str {
    char *p;          /* NUL-terminated copy, owned by the router */
    uint32_t len;
} zlb_str;

typedef struct zlb_value_match {
    zlb_str name;     /* lowercase header name or query parameter name */
    uint8_t kind;     /* zlb_match_kind */
    uint8_t invert;
    zlb_str value;
    regex_t re;       /* kind == ZLB_MATCH_REGEX */
} zlb_value_match;

typedef struct zlb_header_op {
    zlb_str name;
    zlb_str value;    /* empty for removals */
} zlb_header_op;

typedef struct zlb_weighted_cluster {
    int cluster;      /* index into the snapshot's clusters */
    uint32_t weight;
} zlb_weighted_cluster;

typedef struct zlb_retry_policy {
    uint32_t retry_on;            /* ZLB_RETRY_* */
    uint32_t num_retries;
    uint32_t per_try_timeout_ms;  /* 0 = only the request timeout */
    uint32_t backoff_base_ms;     /* exponential backoff with full jitter */
    uint32_t backoff_max_ms;
    uint8_t retry_non_idempotent; /* POST etc. too (off by default) */
    uint8_t n_codes;
    uint16_t codes[8];
} zlb_retry_policy;

typedef struct zlb_route {
    zlb_str name;
    uint8_t path_kind;            /* zlb_match_kind (not PRESENT) */
    zlb_str path;
    regex_t path_re;
    uint32_t n_headers, n_queries;
    zlb_value_match *headers, *queries;
    /* The client's verified SPIFFE ID (TLS listeners): when has_peer, the
     * route matches only a client whose ID equals `peer` (EXACT) or starts
     * with it (PREFIX; a trust domain is the prefix "spiffe://td/"). A
     * client without a verified ID never matches such a route. */
    uint8_t has_peer;
    uint8_t peer_kind;            /* ZLB_MATCH_EXACT or ZLB_MATCH_PREFIX */
    zlb_str peer;

    uint8_t action;               /* zlb_action_kind */
    uint32_t n_clusters;
    zlb_weighted_cluster *clusters;
    uint64_t total_weight;
    uint16_t status;              /* direct response / redirect code */
    zlb_str body;                 /* direct response body */
    zlb_str redirect_scheme, redirect_host, redirect_path;

    zlb_str prefix_rewrite;       /* replaces the matched prefix (prefix routes) */
    zlb_str host_rewrite;
    uint32_t n_ops[ZLB_HEADER_OP_KINDS];
    zlb_header_op *ops[ZLB_HEADER_OP_KINDS];

    uint8_t hash;                 /* zlb_hash_kind */
    zlb_str hash_name;            /* header or cookie name */
    uint32_t timeout_ms;          /* whole exchange; 0 = listener default */
    zlb_retry_policy retry;
} zlb_route;

typedef struct zlb_vhost {
    zlb_str name;
    uint32_t n_domains;
    zlb_str *domains;             /* lowercase; "*" or "*.suffix" allowed */
    uint32_t n_routes;
    zlb_route *routes;
} zlb_vhost;

typedef struct zlb_router {
    zlb_str name;
    uint8_t match_host_port;      /* the Host's port takes part in choosing the virtual host (Envoy's
                                   * default); 0: it is dropped first */
    uint32_t n_vhosts;
    zlb_vhost *vhosts;
} zlb_router;

/* ---- building (control thread) --------------------------------------- */
zlb_router *zlb_router_new(const char *name);
void zlb_router_free(zlb_router *r);
void zlb_router_set_match_host_port(zlb_router *r, int on);
int zlb_router_add_vhost(zlb_router *r, const char *name, char *err, size_t errlen);
int zlb_router_add_domain(zlb_router *r, int vh, const char *domain, char *err, size_t errlen);
/* Returns the route index within the vhost, or -1. */
int zlb_router_add_route(zlb_router *r, int vh, const char *name, int path_kind, const char *path,
                         char *err, size_t errlen);
/* is_query: match a query parameter instead of a header. */
int zlb_route_add_match(zlb_router *r, int vh, int rt, int is_query, const char *name, int kind,
                        const char *value, int invert, char *err, size_t errlen);
int zlb_route_set_peer(zlb_router *r, int vh, int rt, int kind, const char *value, char *err, size_t errlen);
int zlb_route_add_cluster(zlb_router *r, int vh, int rt, int cluster, uint32_t weight, char *err, size_t errlen);
int zlb_route_set_direct(zlb_router *r, int vh, int rt, int status, const char *body, char *err, size_t errlen);
int zlb_route_set_redirect(zlb_router *r, int vh, int rt, int status, const char *scheme, const char *host,
                           const char *path, char *err, size_t errlen);
int zlb_route_set_rewrite(zlb_router *r, int vh, int rt, const char *prefix, const char *host, char *err,
                          size_t errlen);
int zlb_route_add_header_op(zlb_router *r, int vh, int rt, int op, const char *name, const char *value,
                            char *err, size_t errlen);
int zlb_route_set_hash(zlb_router *r, int vh, int rt, int kind, const char *name, char *err, size_t errlen);
int zlb_route_set_policy(zlb_router *r, int vh, int rt, uint32_t timeout_ms, const zlb_retry_policy *retry,
                         char *err, size_t errlen);

/* ---- matching (worker thread, no allocation) ------------------------- */
/* The route for a parsed request (buf holds the head) from a client whose
 * verified SPIFFE ID is peer_id ("" when none), or NULL (404). */
const zlb_route *zlb_router_match(const zlb_router *r, const char *buf, const zlb_h1_head *h, const char *peer_id);
/* Weighted choice among the route's clusters; -1 when it has none. */
int zlb_route_pick_cluster(const zlb_route *rt, uint64_t *rng);
/* Value of the first header named `lower` (lowercase, lower_len bytes) or
 * NULL; *len set. Only fields of lower_len bytes are compared. */
const char *zlb_h1_find_header(const char *buf, const zlb_h1_head *h, const char *lower, uint32_t lower_len,
                               uint32_t *len);

#endif
