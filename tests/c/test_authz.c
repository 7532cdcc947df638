/*
 * test_authz.c - unit tests of the listener authorization rules
 * (csrc/tls.c): HTTP method bits, the canonical-path test that path rules
 * rely on, and rule evaluation (deny first, default deny once an allow rule
 * exists, methods and paths only for HTTP requests). Policies are built
 * from options exactly as the engine builds them, without an identity (the
 * rules do not need one). Built with ASan+UBSan (tests/c/Makefile).
 * Single-threaded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls.h"
#include "zt.h"

static void test_method_bits(void)
{
    ZT_CHECK(zlb_http_method_bit("GET", 3) == ZLB_M_GET);
    ZT_CHECK(zlb_http_method_bit("PATCH", 5) == ZLB_M_PATCH);
    ZT_CHECK(zlb_http_method_bit("DELETE", 6) == ZLB_M_DELETE);
    ZT_CHECK(zlb_http_method_bit("get", 3) == 0);      /* methods are case-sensitive */
    ZT_CHECK(zlb_http_method_bit("GETX", 4) == 0);
    ZT_CHECK(zlb_http_method_bit("GETX", 3) == ZLB_M_GET); /* a span, not a C string */
    ZT_CHECK(zlb_http_method_bit("", 0) == 0);
}

static void test_canonical_paths(void)
{
    static const struct { const char *path; int canonical; } cases[] = {
        {"/", 1},
        {"/api/items", 1},
        {"/api/items/", 1},           /* a trailing slash is an empty last segment: fine */
        {"/a.b/c..d/.e", 1},          /* dots inside names are not dot segments */
        {"/a%20b", 1},                /* a space must stay encoded */
        {"/a%3Fb", 1},                /* so must '?' */
        {"//admin", 0},
        {"/api//x", 0},
        {"/./admin", 0},
        {"/api/.", 0},
        {"/api/..", 0},
        {"/api/../admin", 0},
        {"/a\\b", 0},
        {"/%61dmin", 0},              /* 'a': unreserved, would be decoded */
        {"/api/%2e%2e/admin", 0},
        {"/api/%2E%2E/admin", 0},
        {"/api%2fadmin", 0},
        {"/api%5cadmin", 0},
        {"/a%7e", 0},                 /* '~' is unreserved */
        {"/a%00", 0},
        {"/a%", 0},                   /* truncated escapes */
        {"/a%4", 0},
        {"/a%zz", 0},
        {"*", 0},
        {"http://h/", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = zlb_authz_path_canonical(cases[i].path, strlen(cases[i].path));
        ZT_CHECKF(got == cases[i].canonical, "%s: got %d", cases[i].path, got);
    }
    /* Only `len` bytes count: the rest of the buffer is the query. */
    ZT_CHECK(zlb_authz_path_canonical("/ok?x=/../", 3) == 1);
}

static zlb_tls_opts *opts_new(void)
{
    zlb_tls_opts *o = calloc(1, sizeof(*o));
    if (o) {
        o->mode = ZLB_TLS_STRICT;
        o->min_version = 13;
    }
    return o;
}

static void set_path(zlb_authz_rule *r, int kind, const char *value)
{
    r->paths[r->n_paths].kind = kind;
    zlb_strlcpy(r->paths[r->n_paths].value, value, sizeof(r->paths[r->n_paths].value));
    r->n_paths++;
}

static int allowed(const zlb_tls_policy *p, const char *id, const char *method, const char *path)
{
    zlb_authz_req req = {zlb_http_method_bit(method, strlen(method)), path, strlen(path)};
    return zlb_tls_authorize_req(p, id, 443, &req);
}

#define CLIENT "spiffe://prod.example/ns/shop/sa/client"
#define ADMIN "spiffe://prod.example/ns/ops/sa/admin"

static void test_rules(void)
{
    char err[512] = "";
    zlb_tls_opts *o = opts_new();
    ZT_CHECK(o != NULL);
    /* allow: the client may GET/HEAD /api/... and /healthz; anyone of ns/ops anything. deny: /api/secret. */
    o->allow[0].peer = (zlb_spiffe_match){ZLB_SPIFFE_EXACT, CLIENT};
    o->allow[0].methods = ZLB_M_GET | ZLB_M_HEAD;
    set_path(&o->allow[0], ZLB_AUTHZ_PATH_PREFIX, "/api/");
    set_path(&o->allow[0], ZLB_AUTHZ_PATH_EXACT, "/healthz");
    o->allow[1].peer = (zlb_spiffe_match){ZLB_SPIFFE_PREFIX, "spiffe://prod.example/ns/ops/"};
    o->n_allow = 2;
    set_path(&o->deny[0], ZLB_AUTHZ_PATH_EXACT, "/api/secret");
    o->n_deny = 1;
    zlb_tls_policy *p = zlb_tls_policy_new(o, 1, NULL, err, sizeof(err));
    free(o);
    ZT_CHECKF(p != NULL, "%s", err);
    int http_rules = p->http_rules, path_rules = p->path_rules;
    int a1 = allowed(p, CLIENT, "GET", "/api/items");
    int a2 = allowed(p, CLIENT, "HEAD", "/healthz");
    int d1 = allowed(p, CLIENT, "POST", "/api/items");  /* method */
    int d2 = allowed(p, CLIENT, "GET", "/healthz/x");   /* exact */
    int d3 = allowed(p, CLIENT, "GET", "/api");         /* shorter than the prefix */
    int d4 = allowed(p, CLIENT, "GET", "/api/secret");  /* deny wins */
    int d5 = allowed(p, CLIENT, "FOO", "/api/items");   /* a method without a bit */
    int a3 = allowed(p, ADMIN, "DELETE", "/anything");
    int d6 = allowed(p, ADMIN, "GET", "/api/secret");
    int d7 = allowed(p, "", "GET", "/api/items");       /* a plaintext peer */
    /* L4 (no request): rules with methods or paths never match, so only allow[1] can. */
    int l4_client = zlb_tls_authorize(p, CLIENT, 443), l4_admin = zlb_tls_authorize(p, ADMIN, 443);
    zlb_tls_policy_unref(p);
    ZT_CHECK(http_rules && path_rules);
    ZT_CHECK(a1 && a2 && a3);
    ZT_CHECK(!d1 && !d2 && !d3 && !d4 && !d5 && !d6 && !d7);
    ZT_CHECK(!l4_client && l4_admin);
}

static void test_no_rules_and_deny_only(void)
{
    char err[512] = "";
    zlb_tls_opts *o = opts_new();
    ZT_CHECK(o != NULL);
    zlb_tls_policy *open_p = zlb_tls_policy_new(o, 1, NULL, err, sizeof(err));
    o->deny[0].methods = ZLB_M_DELETE;
    o->n_deny = 1;
    zlb_tls_policy *deny_p = zlb_tls_policy_new(o, 1, NULL, err, sizeof(err));
    free(o);
    ZT_CHECK(open_p != NULL && deny_p != NULL);
    int open_any = allowed(open_p, "", "DELETE", "/x"), open_flags = open_p->http_rules | open_p->path_rules;
    int get_ok = allowed(deny_p, CLIENT, "GET", "/x"), delete_ok = allowed(deny_p, CLIENT, "DELETE", "/x");
    int deny_flags = deny_p->http_rules && !deny_p->path_rules;
    zlb_tls_policy_unref(open_p);
    zlb_tls_policy_unref(deny_p);
    ZT_CHECK(open_any && !open_flags);
    ZT_CHECK(get_ok && !delete_ok && deny_flags);
}

static void test_bad_rules_are_refused(void)
{
    char err[512];
    zlb_tls_opts *o = opts_new();
    ZT_CHECK(o != NULL);
    o->n_allow = 1;
    set_path(&o->allow[0], ZLB_AUTHZ_PATH_PREFIX, "api/");
    err[0] = '\0';
    zlb_tls_policy *p1 = zlb_tls_policy_new(o, 1, NULL, err, sizeof(err));
    int said_slash = strstr(err, "starts with /") != NULL;
    o->allow[0].paths[0].kind = 7;
    zlb_strlcpy(o->allow[0].paths[0].value, "/api/", sizeof(o->allow[0].paths[0].value));
    err[0] = '\0';
    zlb_tls_policy *p2 = zlb_tls_policy_new(o, 1, NULL, err, sizeof(err));
    int said_kind = strstr(err, "unknown path match kind") != NULL;
    o->allow[0].paths[0].kind = ZLB_AUTHZ_PATH_EXACT;
    o->allow[0].n_paths = ZLB_AUTHZ_MAX_PATHS + 1;
    err[0] = '\0';
    zlb_tls_policy *p3 = zlb_tls_policy_new(o, 1, NULL, err, sizeof(err));
    int said_count = strstr(err, "at most") != NULL;
    free(o);
    ZT_CHECK(p1 == NULL && said_slash);
    ZT_CHECK(p2 == NULL && said_kind);
    ZT_CHECK(p3 == NULL && said_count);
}

int main(void)
{
    ZT_RUN(test_method_bits);
    ZT_RUN(test_canonical_paths);
    ZT_RUN(test_rules);
    ZT_RUN(test_no_rules_and_deny_only);
    ZT_RUN(test_bad_rules_are_refused);
    return zt_summary();
}
