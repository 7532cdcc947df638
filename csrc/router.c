/* router.c - see router.h. */
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void set_err(char *err, size_t errlen, const char *what, const char *detail)
{
    snprintf(err, errlen, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

/* Copies s into an owned zlb_str (empty for NULL). 0 or -1 (OOM). */
static int str_set(zlb_str *dst, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    char *p = malloc(n + 1);
    if (!p)
        return -1;
    memcpy(p, s ? s : "", n);
    p[n] = '\0';
    free(dst->p);
    dst->p = p;
    dst->len = (uint32_t)n;
    return 0;
}

static void str_free(zlb_str *s)
{
    free(s->p);
    s->p = NULL;
    s->len = 0;
}

static void lowercase(zlb_str *s)
{
    for (uint32_t i = 0; i < s->len; i++)
        if (s->p[i] >= 'A' && s->p[i] <= 'Z')
            s->p[i] = (char)(s->p[i] + 32);
}

/* Grows an array by one zeroed element; returns its index or -1. */
static int grow(void **arr, uint32_t *n, size_t elem)
{
    void *p = realloc(*arr, (*n + 1) * elem);
    if (!p)
        return -1;
    memset((char *)p + *n * elem, 0, elem);
    *arr = p;
    return (int)(*n)++;
}

/* Compiles `pattern` anchored to the whole value. 0 or -1 with err. */
static int compile_anchored(regex_t *re, const char *pattern, char *err, size_t errlen)
{
    size_t n = strlen(pattern);
    char *anchored = malloc(n + 5);
    if (!anchored) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    snprintf(anchored, n + 5, "^(%s)$", pattern);
    int rc = regcomp(re, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    if (rc != 0) {
        char msg[128];
        regerror(rc, re, msg, sizeof(msg));
        set_err(err, errlen, "invalid regex", msg);
        return -1;
    }
    return 0;
}

zlb_router *zlb_router_new(const char *name)
{
    zlb_router *r = calloc(1, sizeof(*r));
    if (r && str_set(&r->name, name) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

static void free_match(zlb_value_match *m)
{
    str_free(&m->name);
    str_free(&m->value);
    if (m->kind == ZLB_MATCH_REGEX)
        regfree(&m->re);
}

static void free_route(zlb_route *rt)
{
    str_free(&rt->name);
    str_free(&rt->path);
    if (rt->path_kind == ZLB_MATCH_REGEX)
        regfree(&rt->path_re);
    for (uint32_t i = 0; i < rt->n_headers; i++)
        free_match(&rt->headers[i]);
    for (uint32_t i = 0; i < rt->n_queries; i++)
        free_match(&rt->queries[i]);
    free(rt->headers);
    free(rt->queries);
    free(rt->clusters);
    str_free(&rt->body);
    str_free(&rt->redirect_scheme);
    str_free(&rt->redirect_host);
    str_free(&rt->redirect_path);
    str_free(&rt->prefix_rewrite);
    str_free(&rt->host_rewrite);
    for (int k = 0; k < ZLB_HEADER_OP_KINDS; k++) {
        for (uint32_t i = 0; i < rt->n_ops[k]; i++) {
            str_free(&rt->ops[k][i].name);
            str_free(&rt->ops[k][i].value);
        }
        free(rt->ops[k]);
    }
    str_free(&rt->hash_name);
    str_free(&rt->peer);
}

void zlb_router_free(zlb_router *r)
{
    if (!r)
        return;
    for (uint32_t v = 0; v < r->n_vhosts; v++) {
        zlb_vhost *vh = &r->vhosts[v];
        str_free(&vh->name);
        for (uint32_t i = 0; i < vh->n_domains; i++)
            str_free(&vh->domains[i]);
        free(vh->domains);
        for (uint32_t i = 0; i < vh->n_routes; i++)
            free_route(&vh->routes[i]);
        free(vh->routes);
    }
    free(r->vhosts);
    str_free(&r->name);
    free(r);
}

void zlb_router_set_match_host_port(zlb_router *r, int on)
{
    r->match_host_port = on ? 1 : 0;
}

int zlb_router_add_vhost(zlb_router *r, const char *name, char *err, size_t errlen)
{
    int i = grow((void **)&r->vhosts, &r->n_vhosts, sizeof(zlb_vhost));
    if (i < 0 || str_set(&r->vhosts[i].name, name) != 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    return i;
}

static zlb_vhost *vhost_at(zlb_router *r, int vh, char *err, size_t errlen)
{
    if (vh < 0 || (uint32_t)vh >= r->n_vhosts) {
        set_err(err, errlen, "no such virtual host", NULL);
        return NULL;
    }
    return &r->vhosts[vh];
}

static zlb_route *route_at(zlb_router *r, int vh, int rt, char *err, size_t errlen)
{
    zlb_vhost *v = vhost_at(r, vh, err, errlen);
    if (!v)
        return NULL;
    if (rt < 0 || (uint32_t)rt >= v->n_routes) {
        set_err(err, errlen, "no such route", NULL);
        return NULL;
    }
    return &v->routes[rt];
}

int zlb_router_add_domain(zlb_router *r, int vh, const char *domain, char *err, size_t errlen)
{
    zlb_vhost *v = vhost_at(r, vh, err, errlen);
    if (!v)
        return -1;
    if (!domain[0] || (strchr(domain, '*') && strcmp(domain, "*") != 0 && strncmp(domain, "*.", 2) != 0)) {
        set_err(err, errlen, "domain must be a host name, '*.suffix' or '*'", domain);
        return -1;
    }
    int i = grow((void **)&v->domains, &v->n_domains, sizeof(zlb_str));
    if (i < 0 || str_set(&v->domains[i], domain) != 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    lowercase(&v->domains[i]);
    return 0;
}

int zlb_router_add_route(zlb_router *r, int vh, const char *name, int path_kind, const char *path,
                         char *err, size_t errlen)
{
    zlb_vhost *v = vhost_at(r, vh, err, errlen);
    if (!v)
        return -1;
    if (path_kind != ZLB_MATCH_EXACT && path_kind != ZLB_MATCH_PREFIX && path_kind != ZLB_MATCH_REGEX) {
        set_err(err, errlen, "path match must be exact, prefix or regex", NULL);
        return -1;
    }
    int i = grow((void **)&v->routes, &v->n_routes, sizeof(zlb_route));
    if (i < 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    zlb_route *rt = &v->routes[i];
    /* Defaults: Envoy's (connect-failure retries off unless asked). */
    rt->path_kind = ZLB_MATCH_PREFIX; /* safe to free until the regex compiles */
    if (str_set(&rt->name, name) != 0 || str_set(&rt->path, path) != 0) {
        set_err(err, errlen, "out of memory", NULL);
        v->n_routes--;
        free_route(rt);
        return -1;
    }
    if (path_kind == ZLB_MATCH_REGEX && compile_anchored(&rt->path_re, path, err, errlen) != 0) {
        v->n_routes--;
        free_route(rt);
        return -1;
    }
    rt->path_kind = (uint8_t)path_kind;
    return i;
}

int zlb_route_add_match(zlb_router *r, int vh, int rt_i, int is_query, const char *name, int kind,
                        const char *value, int invert, char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if (kind < ZLB_MATCH_EXACT || kind > ZLB_MATCH_PRESENT) {
        set_err(err, errlen, "unknown match kind", NULL);
        return -1;
    }
    zlb_value_match **arr = is_query ? &rt->queries : &rt->headers;
    uint32_t *n = is_query ? &rt->n_queries : &rt->n_headers;
    int i = grow((void **)arr, n, sizeof(zlb_value_match));
    if (i < 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    zlb_value_match *m = &(*arr)[i];
    m->kind = ZLB_MATCH_EXACT; /* nothing compiled yet */
    if (str_set(&m->name, name) != 0 || str_set(&m->value, value) != 0) {
        (*n)--;
        free_match(m);
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    if (!is_query)
        lowercase(&m->name);
    if (kind == ZLB_MATCH_REGEX && compile_anchored(&m->re, value, err, errlen) != 0) {
        (*n)--;
        free_match(m);
        return -1;
    }
    m->kind = (uint8_t)kind;
    m->invert = invert ? 1 : 0;
    return 0;
}

int zlb_route_add_cluster(zlb_router *r, int vh, int rt_i, int cluster, uint32_t weight, char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if (cluster < 0 || weight == 0) {
        set_err(err, errlen, "a route cluster needs a valid cluster and a weight > 0", NULL);
        return -1;
    }
    int i = grow((void **)&rt->clusters, &rt->n_clusters, sizeof(zlb_weighted_cluster));
    if (i < 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    rt->clusters[i].cluster = cluster;
    rt->clusters[i].weight = weight;
    rt->total_weight += weight;
    rt->action = ZLB_ACTION_CLUSTER;
    return 0;
}

int zlb_route_set_direct(zlb_router *r, int vh, int rt_i, int status, const char *body, char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if (status < 200 || status > 599) {
        set_err(err, errlen, "direct response status must be 200..599", NULL);
        return -1;
    }
    if (str_set(&rt->body, body) != 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    rt->status = (uint16_t)status;
    rt->action = ZLB_ACTION_DIRECT;
    return 0;
}

int zlb_route_set_redirect(zlb_router *r, int vh, int rt_i, int status, const char *scheme, const char *host,
                           const char *path, char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if (status != 301 && status != 302 && status != 303 && status != 307 && status != 308) {
        set_err(err, errlen, "redirect status must be 301, 302, 303, 307 or 308", NULL);
        return -1;
    }
    if (str_set(&rt->redirect_scheme, scheme) != 0 || str_set(&rt->redirect_host, host) != 0 ||
        str_set(&rt->redirect_path, path) != 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    rt->status = (uint16_t)status;
    rt->action = ZLB_ACTION_REDIRECT;
    return 0;
}

int zlb_route_set_rewrite(zlb_router *r, int vh, int rt_i, const char *prefix, const char *host, char *err,
                          size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if (prefix && prefix[0] && rt->path_kind != ZLB_MATCH_PREFIX) {
        set_err(err, errlen, "prefix_rewrite needs a prefix route", NULL);
        return -1;
    }
    if ((prefix && str_set(&rt->prefix_rewrite, prefix) != 0) || (host && str_set(&rt->host_rewrite, host) != 0)) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    return 0;
}

int zlb_route_add_header_op(zlb_router *r, int vh, int rt_i, int op, const char *name, const char *value,
                            char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if (op < 0 || op >= ZLB_HEADER_OP_KINDS) {
        set_err(err, errlen, "unknown header operation", NULL);
        return -1;
    }
    for (const char *p = value ? value : ""; *p; p++) {
        if (*p == '\r' || *p == '\n' || *p == '\0') {
            set_err(err, errlen, "header values may not contain CR or LF", name);
            return -1;
        }
    }
    int i = grow((void **)&rt->ops[op], &rt->n_ops[op], sizeof(zlb_header_op));
    if (i < 0 || str_set(&rt->ops[op][i].name, name) != 0 || str_set(&rt->ops[op][i].value, value) != 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    lowercase(&rt->ops[op][i].name);
    return 0;
}

int zlb_route_set_hash(zlb_router *r, int vh, int rt_i, int kind, const char *name, char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if (kind < ZLB_HASH_NONE || kind > ZLB_HASH_PATH || str_set(&rt->hash_name, name) != 0) {
        set_err(err, errlen, "invalid hash policy", NULL);
        return -1;
    }
    if (kind == ZLB_HASH_HEADER)
        lowercase(&rt->hash_name);
    rt->hash = (uint8_t)kind;
    return 0;
}

int zlb_route_set_peer(zlb_router *r, int vh, int rt_i, int kind, const char *value, char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    if ((kind != ZLB_MATCH_EXACT && kind != ZLB_MATCH_PREFIX) || strncmp(value, "spiffe://", 9) != 0) {
        set_err(err, errlen, "a route's peer match is an exact ID or an ID prefix starting spiffe://", NULL);
        return -1;
    }
    if (str_set(&rt->peer, value) != 0) {
        set_err(err, errlen, "out of memory", NULL);
        return -1;
    }
    rt->peer_kind = (uint8_t)kind;
    rt->has_peer = 1;
    return 0;
}

int zlb_route_set_policy(zlb_router *r, int vh, int rt_i, uint32_t timeout_ms, const zlb_retry_policy *retry,
                         char *err, size_t errlen)
{
    zlb_route *rt = route_at(r, vh, rt_i, err, errlen);
    if (!rt)
        return -1;
    rt->timeout_ms = timeout_ms;
    if (retry)
        rt->retry = *retry;
    return 0;
}

/* ---- matching ------------------------------------------------------------ */

const char *zlb_h1_find_header(const char *buf, const zlb_h1_head *h, const char *lower, uint32_t lower_len,
                               uint32_t *len)
{
    for (uint32_t i = 0; i < h->n_headers; i++) {
        if (h->headers[i].name.len == lower_len && zlb_h1_name_is(buf, h->headers[i].name, lower)) {
            *len = h->headers[i].value.len;
            return buf + h->headers[i].value.off;
        }
    }
    return NULL;
}

/* regexec on a span without copying (glibc REG_STARTEND). */
static int regex_span(const regex_t *re, const char *p, uint32_t len)
{
    regmatch_t m[1] = {{.rm_so = 0, .rm_eo = (regoff_t)len}};
    return regexec(re, p, 1, m, REG_STARTEND) == 0;
}

static int value_matches(const zlb_value_match *m, const char *v, uint32_t len)
{
    int ok;
    if (!v)
        ok = 0;
    else if (m->kind == ZLB_MATCH_PRESENT)
        ok = 1;
    else if (m->kind == ZLB_MATCH_EXACT)
        ok = len == m->value.len && memcmp(v, m->value.p, len) == 0;
    else if (m->kind == ZLB_MATCH_PREFIX)
        ok = len >= m->value.len && memcmp(v, m->value.p, m->value.len) == 0;
    else
        ok = regex_span(&m->re, v, len);
    return m->invert ? !ok : ok;
}

/* Value of query parameter `name` in query (without '?'), or NULL. */
static const char *query_param(const char *q, uint32_t qlen, const zlb_str *name, uint32_t *vlen)
{
    uint32_t i = 0;
    while (i < qlen) {
        uint32_t start = i;
        while (i < qlen && q[i] != '&')
            i++;
        uint32_t eq = start;
        while (eq < i && q[eq] != '=')
            eq++;
        if (eq - start == name->len && memcmp(q + start, name->p, name->len) == 0) {
            *vlen = eq < i ? i - eq - 1 : 0;
            return eq < i ? q + eq + 1 : q + i;
        }
        i++;
    }
    return NULL;
}

/* Splits the target into path and query; absolute-form targets use the part
 * after the authority. */
static void split_target(const char *buf, const zlb_h1_head *h, const char **path, uint32_t *plen,
                         const char **query, uint32_t *qlen)
{
    const char *t = buf + h->target.off;
    uint32_t n = h->target.len, i = 0;
    if (n > 0 && t[0] != '/') {
        const char *scheme_end = memchr(t, ':', n);
        if (scheme_end && (uint32_t)(scheme_end - t) + 3 <= n && scheme_end[1] == '/' && scheme_end[2] == '/') {
            i = (uint32_t)(scheme_end - t) + 3;
            while (i < n && t[i] != '/' && t[i] != '?')
                i++;
        }
    }
    uint32_t p0 = i;
    while (i < n && t[i] != '?')
        i++;
    *path = t + p0;
    *plen = i - p0;
    *query = i < n ? t + i + 1 : t + n;
    *qlen = i < n ? n - i - 1 : 0;
}

static int peer_matches(const zlb_route *rt, const char *peer_id)
{
    if (rt->peer_kind == ZLB_MATCH_EXACT)
        return strcmp(peer_id, rt->peer.p) == 0;
    return strncmp(peer_id, rt->peer.p, rt->peer.len) == 0;
}

static int route_matches(const zlb_route *rt, const char *buf, const zlb_h1_head *h, const char *path,
                         uint32_t plen, const char *query, uint32_t qlen, const char *peer_id)
{
    if (rt->has_peer && !peer_matches(rt, peer_id))
        return 0;
    if (rt->path_kind == ZLB_MATCH_EXACT) {
        if (plen != rt->path.len || memcmp(path, rt->path.p, plen) != 0)
            return 0;
    } else if (rt->path_kind == ZLB_MATCH_PREFIX) {
        if (plen < rt->path.len || memcmp(path, rt->path.p, rt->path.len) != 0)
            return 0;
    } else if (!regex_span(&rt->path_re, path, plen)) {
        return 0;
    }
    for (uint32_t i = 0; i < rt->n_headers; i++) {
        uint32_t len = 0;
        const char *v = zlb_h1_find_header(buf, h, rt->headers[i].name.p, rt->headers[i].name.len, &len);
        if (!value_matches(&rt->headers[i], v, len))
            return 0;
    }
    for (uint32_t i = 0; i < rt->n_queries; i++) {
        uint32_t len = 0;
        const char *v = query_param(query, qlen, &rt->queries[i].name, &len);
        if (!value_matches(&rt->queries[i], v, len))
            return 0;
    }
    return 1;
}

/* Domain ranking (Envoy's): exact beats the longest "*.suffix" beats "*". */
static int domain_rank(const zlb_str *d, const char *host, uint32_t hlen)
{
    if (d->len == 1 && d->p[0] == '*')
        return 1;
    if (d->len > 1 && d->p[0] == '*') {
        uint32_t sl = d->len - 1; /* ".suffix" */
        if (hlen > sl && strncasecmp(host + hlen - sl, d->p + 1, sl) == 0)
            return 1 + (int)sl;
        return 0;
    }
    if (d->len == hlen && strncasecmp(host, d->p, hlen) == 0)
        return 1 << 20;
    return 0;
}

const zlb_route *zlb_router_match(const zlb_router *r, const char *buf, const zlb_h1_head *h, const char *peer_id)
{
    const char *host = buf + h->host.off;
    uint32_t hlen = h->host.len;
    /* Drop a port (but not the colons of an IPv6 literal), unless domains
     * name ports: then "a.example:8080" is matched as a whole, as Envoy does
     * without ignore_port_in_host_matching. */
    for (uint32_t i = hlen; i > 0 && !r->match_host_port; i--) {
        if (host[i - 1] == ':') {
            hlen = i - 1;
            break;
        }
        if (host[i - 1] < '0' || host[i - 1] > '9')
            break;
    }
    const zlb_vhost *best = NULL;
    int best_rank = 0;
    for (uint32_t v = 0; v < r->n_vhosts; v++) {
        for (uint32_t d = 0; d < r->vhosts[v].n_domains; d++) {
            int rank = domain_rank(&r->vhosts[v].domains[d], host, hlen);
            if (rank > best_rank) {
                best_rank = rank;
                best = &r->vhosts[v];
            }
        }
    }
    if (!best)
        return NULL;
    const char *path, *query;
    uint32_t plen, qlen;
    split_target(buf, h, &path, &plen, &query, &qlen);
    for (uint32_t i = 0; i < best->n_routes; i++)
        if (route_matches(&best->routes[i], buf, h, path, plen, query, qlen, peer_id))
            return &best->routes[i];
    return NULL;
}

int zlb_route_pick_cluster(const zlb_route *rt, uint64_t *rng)
{
    if (rt->n_clusters == 0)
        return -1;
    if (rt->n_clusters == 1)
        return rt->clusters[0].cluster;
    uint64_t x = zlb_rand64(rng) % rt->total_weight;
    for (uint32_t i = 0; i < rt->n_clusters; i++) {
        if (x < rt->clusters[i].weight)
            return rt->clusters[i].cluster;
        x -= rt->clusters[i].weight;
    }
    return rt->clusters[rt->n_clusters - 1].cluster;
}
