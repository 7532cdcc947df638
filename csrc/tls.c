/*
 * tls.c - OpenSSL 3 contexts, SPIFFE verification, authorization rules and
 * the client session cache. See tls.h for ownership and threads.
 */
#include "tls.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

static int sink_idx = -1;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t next_gen = 1;

static void do_init(void)
{
    OPENSSL_init_ssl(0, NULL);
    sink_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

int zlb_tls_global_init(void)
{
    pthread_once(&init_once, do_init);
    return sink_idx >= 0 ? 0 : -1;
}

void zlb_tls_last_error(char *out, size_t outlen)
{
    unsigned long e = ERR_get_error();
    if (e == 0)
        zlb_strlcpy(out, "unknown TLS error", outlen);
    else
        ERR_error_string_n(e, out, outlen);
    ERR_clear_error();
}

/* ---- SPIFFE IDs ---------------------------------------------------------- */

int zlb_spiffe_trust_domain(const char *id, char *td, size_t tdlen)
{
    if (strncmp(id, "spiffe://", 9) != 0)
        return -1;
    const char *p = id + 9;
    size_t n = strcspn(p, "/");
    if (n == 0 || n >= tdlen)
        return -1;
    memcpy(td, p, n);
    td[n] = '\0';
    return 0;
}

/* Checks the SPIFFE ID grammar we rely on: lower-case trust domain of
 * [a-z0-9.-_], a non-empty path of segments of [A-Za-z0-9.-_] that are not
 * "." or "..", and nothing else (no port, user info, query or fragment). */
static int spiffe_id_valid(const char *id, size_t len)
{
    if (len <= 9 || strncmp(id, "spiffe://", 9) != 0)
        return 0;
    size_t i = 9;
    size_t td_start = i;
    for (; i < len && id[i] != '/'; i++) {
        char ch = id[i];
        if (!(islower((unsigned char)ch) || isdigit((unsigned char)ch) || ch == '.' || ch == '-' || ch == '_'))
            return 0;
    }
    if (i == td_start || i == len)
        return 0; /* empty trust domain, or no path (not a workload ID) */
    while (i < len) {
        i++; /* the '/' */
        size_t seg = i;
        for (; i < len && id[i] != '/'; i++) {
            char ch = id[i];
            if (!(isalnum((unsigned char)ch) || ch == '.' || ch == '-' || ch == '_'))
                return 0;
        }
        size_t sl = i - seg;
        if (sl == 0 || (sl == 1 && id[seg] == '.') || (sl == 2 && id[seg] == '.' && id[seg + 1] == '.'))
            return 0;
    }
    return 1;
}

int zlb_spiffe_id_of(X509 *cert, char *out, size_t outlen, char *why, size_t whylen)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0, rc = -1;
    out[0] = '\0';
    if (!sans) {
        snprintf(why, whylen, "certificate has no SPIFFE ID (no subjectAltName)");
        return -1;
    }
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_URI)
            continue;
        found++;
        const ASN1_IA5STRING *u = gn->d.uniformResourceIdentifier;
        const char *s = (const char *)ASN1_STRING_get0_data(u);
        size_t len = (size_t)ASN1_STRING_length(u);
        if (len >= outlen || memchr(s, '\0', len) || !spiffe_id_valid(s, len)) {
            snprintf(why, whylen, "certificate URI SAN is not a valid SPIFFE ID");
            goto done;
        }
        memcpy(out, s, len);
        out[len] = '\0';
    }
    if (found == 1)
        rc = 0;
    else if (found == 0)
        snprintf(why, whylen, "certificate has no SPIFFE ID (no URI SAN)");
    else
        snprintf(why, whylen, "certificate has %d URI SANs, an SVID has exactly one", found);
done:
    if (rc != 0)
        out[0] = '\0';
    GENERAL_NAMES_free(sans);
    return rc;
}

int zlb_spiffe_match_ok(const zlb_spiffe_match *m, const char *id)
{
    if (!id[0])
        return 0;
    switch (m->kind) {
    case ZLB_SPIFFE_ANY:
        return 1;
    case ZLB_SPIFFE_EXACT:
        return strcmp(id, m->value) == 0;
    case ZLB_SPIFFE_PREFIX:
        return strncmp(id, m->value, strlen(m->value)) == 0;
    case ZLB_SPIFFE_TRUST_DOMAIN: {
        char td[ZLB_SPIFFE_ID_MAX];
        return zlb_spiffe_trust_domain(id, td, sizeof(td)) == 0 && strcmp(td, m->value) == 0;
    }
    default:
        return 0;
    }
}

static const char *match_kind_name(int kind)
{
    switch (kind) {
    case ZLB_SPIFFE_EXACT:
        return "spiffe_id";
    case ZLB_SPIFFE_PREFIX:
        return "spiffe_prefix";
    case ZLB_SPIFFE_TRUST_DOMAIN:
        return "trust_domain";
    default:
        return "any";
    }
}

/* ---- verification callbacks (worker threads, inside SSL_do_handshake) ---- */

static const zlb_tls_td_bundle *find_bundle(const zlb_tls_mat *m, const char *td)
{
    for (uint32_t i = 0; i < m->n_bundles; i++)
        if (strcmp(m->bundles[i].trust_domain, td) == 0)
            return &m->bundles[i];
    return NULL;
}

/* Replaces OpenSSL's chain building (SSL_CTX_set_cert_verify_callback):
 * the leaf's SPIFFE ID picks the trust domain, the chain must verify against
 * that domain's bundle only, and then the ID must match the policy. Returns
 * 1 to accept; 0 makes OpenSSL fail the handshake with an alert derived from
 * the error set on `x`. The reason goes to the connection (tls.h). */
static int verify_cb(X509_STORE_CTX *x, void *arg)
{
    zlb_tls_mat *m = arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    zlb_tls_peer *peer = ssl ? SSL_get_app_data(ssl) : NULL;
    X509 *leaf = X509_STORE_CTX_get0_cert(x);
    char id[ZLB_SPIFFE_ID_MAX], td[ZLB_SPIFFE_ID_MAX];
    char why[ZLB_TLS_REASON_MAX];
    if (!peer || !leaf) {
        X509_STORE_CTX_set_error(x, X509_V_ERR_UNSPECIFIED);
        return 0;
    }
    if (zlb_spiffe_id_of(leaf, id, sizeof(id), why, sizeof(why)) != 0
        || zlb_spiffe_trust_domain(id, td, sizeof(td)) != 0) {
        zlb_strlcpy(peer->reason, why, sizeof(peer->reason));
        peer->verify_kind = ZLB_TLS_FAIL_SPIFFE_ID;
        X509_STORE_CTX_set_error(x, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    const zlb_tls_td_bundle *b = find_bundle(m, td);
    if (!b) {
        snprintf(peer->reason, sizeof(peer->reason), "%s: no trust bundle for trust domain %.100s", id, td);
        peer->verify_kind = ZLB_TLS_FAIL_UNTRUSTED;
        X509_STORE_CTX_set_error(x, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
        return 0;
    }
    X509_STORE_CTX *v = X509_STORE_CTX_new();
    int ok = 0, err = X509_V_ERR_OUT_OF_MEM;
    if (v && X509_STORE_CTX_init(v, b->store, leaf, X509_STORE_CTX_get0_untrusted(x))) {
        /* The purpose check of a client certificate on the server and the
         * other way round, as OpenSSL's own verification would do. */
        X509_STORE_CTX_set_default(v, peer->policy->is_server ? "ssl_client" : "ssl_server");
        ok = X509_verify_cert(v) == 1;
        err = X509_STORE_CTX_get_error(v);
    }
    X509_STORE_CTX_free(v);
    if (!ok) {
        snprintf(peer->reason, sizeof(peer->reason), "%s: certificate verify failed: %s", id,
                 X509_verify_cert_error_string(err));
        peer->verify_kind = (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID)
                                ? ZLB_TLS_FAIL_EXPIRED
                                : ZLB_TLS_FAIL_UNTRUSTED;
        X509_STORE_CTX_set_error(x, err);
        return 0;
    }
    if (!zlb_spiffe_match_ok(&peer->policy->peer, id)) {
        snprintf(peer->reason, sizeof(peer->reason), "peer %s does not match %s %.100s", id,
                 match_kind_name(peer->policy->peer.kind), peer->policy->peer.value);
        peer->verify_kind = ZLB_TLS_FAIL_SPIFFE_ID;
        X509_STORE_CTX_set_error(x, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    zlb_strlcpy(peer->id, id, sizeof(peer->id));
    X509_STORE_CTX_set_error(x, X509_V_OK);
    return 1;
}

int zlb_tls_check_peer(SSL *ssl, zlb_tls_peer *peer)
{
    char id[ZLB_SPIFFE_ID_MAX], why[ZLB_TLS_REASON_MAX];
    if (peer->reason[0])
        return -1;
    X509 *c = SSL_get0_peer_certificate(ssl);
    if (!c) {
        zlb_strlcpy(peer->reason, "peer presented no certificate", sizeof(peer->reason));
        peer->verify_kind = ZLB_TLS_FAIL_NO_CERT;
        return -1;
    }
    long vr = SSL_get_verify_result(ssl);
    if (vr != X509_V_OK) {
        snprintf(peer->reason, sizeof(peer->reason), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
        peer->verify_kind = ZLB_TLS_FAIL_UNTRUSTED;
        return -1;
    }
    if (zlb_spiffe_id_of(c, id, sizeof(id), why, sizeof(why)) != 0) {
        zlb_strlcpy(peer->reason, why, sizeof(peer->reason));
        peer->verify_kind = ZLB_TLS_FAIL_SPIFFE_ID;
        return -1;
    }
    if (!zlb_spiffe_match_ok(&peer->policy->peer, id)) {
        snprintf(peer->reason, sizeof(peer->reason), "peer %s does not match %s %.100s", id,
                 match_kind_name(peer->policy->peer.kind), peer->policy->peer.value);
        peer->verify_kind = ZLB_TLS_FAIL_SPIFFE_ID;
        return -1;
    }
    zlb_strlcpy(peer->id, id, sizeof(peer->id));
    return 0;
}

/* Server ALPN: the first of the listener's protocols the client offers; no
 * overlap (or none configured) means no ALPN, not a failed handshake. */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    ZLB_UNUSED(arg);
    zlb_tls_peer *peer = SSL_get_app_data(ssl);
    if (!peer || peer->policy->alpn_len == 0)
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, peer->policy->alpn, (unsigned int)peer->policy->alpn_len, in, inlen)
        != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Client: a ticket arrived (TLS 1.3: after the handshake, during SSL_read).
 * Returning 1 keeps the reference OpenSSL hands us. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    zlb_tls_session_sink *sink = SSL_get_ex_data(ssl, sink_idx);
    if (!sink || !sink->cache)
        return 0;
    zlb_tls_sessions_put(sink->cache, sink->ep, sink->gen, sess);
    return 1;
}

void zlb_tls_set_session_sink(SSL *ssl, zlb_tls_session_sink *sink) { SSL_set_ex_data(ssl, sink_idx, sink); }

/* ---- material ------------------------------------------------------------- */

static SSL_CTX *make_ctx(int server, X509 *leaf, STACK_OF(X509) *chain, EVP_PKEY *key, zlb_tls_mat *m, char *err,
                         size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION); /* per SSL: the policy's minimum */
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    /* A TCP proxy forwards EOF: a peer that closes without close_notify ends
     * its direction like a FIN would (IGNORE_UNEXPECTED_EOF). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                              | SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate(ctx, leaf) != 1)
        goto fail;
    for (int i = 0; i < sk_X509_num(chain); i++)
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1)
            goto fail;
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error(); /* the OpenSSL text is fine, but keep the message about the key short */
        snprintf(err, errlen, "private key does not match the certificate");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    SSL_CTX_set_cert_verify_callback(ctx, verify_cb, m);
    if (server) {
        /* Required for resumption when client certificates are verified. */
        SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"zlbfast", 7);
        SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
        SSL_CTX_set_num_tickets(ctx, 1);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    }
    return ctx;
fail:
    if (!err[0]) {
        char e[160];
        zlb_tls_last_error(e, sizeof(e));
        snprintf(err, errlen, "cannot set up TLS context: %s", e);
    }
    SSL_CTX_free(ctx);
    return NULL;
}

static int add_bundle(zlb_tls_mat *m, const char *td, const char *pem, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509_STORE *store = X509_STORE_new();
    int n = 0;
    if (!bio || !store) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < 10000; i++) { /* bound: a bundle of more CAs than this is not sane */
        X509 *ca = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!ca)
            break;
        int ok = X509_STORE_add_cert(store, ca);
        X509_free(ca);
        if (!ok) {
            snprintf(err, errlen, "trust bundle for %s: cannot add a CA certificate", td);
            goto fail;
        }
        n++;
    }
    ERR_clear_error(); /* the end-of-input "error" of the last read */
    if (n == 0) {
        snprintf(err, errlen, "trust bundle for %s holds no PEM certificate", td);
        goto fail;
    }
    if (find_bundle(m, td)) {
        snprintf(err, errlen, "two trust bundles for trust domain %s", td);
        goto fail;
    }
    zlb_tls_td_bundle *arr = realloc(m->bundles, sizeof(*arr) * (m->n_bundles + 1));
    if (!arr) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    m->bundles = arr;
    zlb_strlcpy(arr[m->n_bundles].trust_domain, td, sizeof(arr[m->n_bundles].trust_domain));
    arr[m->n_bundles].store = store;
    m->n_bundles++;
    BIO_free(bio);
    return 0;
fail:
    BIO_free(bio);
    X509_STORE_free(store);
    return -1;
}

static void mat_free(zlb_tls_mat *m)
{
    SSL_CTX_free(m->server);
    SSL_CTX_free(m->client);
    for (uint32_t i = 0; i < m->n_bundles; i++)
        X509_STORE_free(m->bundles[i].store);
    free(m->bundles);
    free(m);
}

zlb_tls_mat *zlb_tls_mat_new(const char *cert_pem, const char *key_pem, const char *const *bundle_tds,
                             const char *const *bundle_pems, size_t n_bundles, char *err, size_t errlen)
{
    zlb_tls_global_init();
    err[0] = '\0';
    zlb_tls_mat *m = calloc(1, sizeof(*m));
    BIO *cb = BIO_new_mem_buf(cert_pem, -1);
    BIO *kb = BIO_new_mem_buf(key_pem, -1);
    X509 *leaf = NULL;
    EVP_PKEY *key = NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    char why[ZLB_TLS_REASON_MAX], td[ZLB_SPIFFE_ID_MAX];
    if (!m || !cb || !kb || !chain) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    atomic_store(&m->refs, 1);
    m->gen = atomic_fetch_add(&next_gen, 1);
    leaf = PEM_read_bio_X509(cb, NULL, NULL, NULL);
    if (!leaf) {
        snprintf(err, errlen, "certificate: no PEM certificate found");
        goto fail;
    }
    for (int i = 0; i < 64; i++) { /* intermediates; bounded */
        X509 *x = PEM_read_bio_X509(cb, NULL, NULL, NULL);
        if (!x)
            break;
        sk_X509_push(chain, x);
    }
    ERR_clear_error();
    /* Never echo key text or OpenSSL's parse details for the key. */
    key = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL);
    ERR_clear_error();
    if (!key) {
        snprintf(err, errlen, "private key: no usable PEM private key found");
        goto fail;
    }
    if (zlb_spiffe_id_of(leaf, m->own_id, sizeof(m->own_id), why, sizeof(why)) != 0) {
        snprintf(err, errlen, "certificate is not an X.509 SVID: %s", why);
        goto fail;
    }
    zlb_spiffe_trust_domain(m->own_id, td, sizeof(td));
    {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        zlb_strlcpy(m->serial, hex ? hex : "", sizeof(m->serial));
        OPENSSL_free(hex);
        BN_free(bn);
    }
    if (n_bundles == 0) {
        snprintf(err, errlen, "no trust bundle given");
        goto fail;
    }
    for (size_t i = 0; i < n_bundles; i++)
        if (add_bundle(m, bundle_tds[i][0] ? bundle_tds[i] : td, bundle_pems[i], err, errlen) != 0)
            goto fail;
    m->server = make_ctx(1, leaf, chain, key, m, err, errlen);
    if (!m->server)
        goto fail;
    m->client = make_ctx(0, leaf, chain, key, m, err, errlen);
    if (!m->client)
        goto fail;
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    BIO_free(cb);
    BIO_free(kb);
    return m;
fail:
    ERR_clear_error();
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    BIO_free(cb);
    BIO_free(kb);
    if (m)
        mat_free(m);
    return NULL;
}

void zlb_tls_mat_ref(zlb_tls_mat *m) { atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed); }

void zlb_tls_mat_unref(zlb_tls_mat *m)
{
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        mat_free(m);
}

void zlb_tls_slot_set(zlb_tls_slot *s, zlb_tls_mat *m)
{
    pthread_mutex_lock(&s->lock);
    zlb_tls_mat *old = s->mat;
    s->mat = m;
    if (old)
        s->rotations++;
    pthread_mutex_unlock(&s->lock);
    /* Outside the lock: freeing a context is not cheap. Connections that took
     * a reference keep the old material alive. */
    zlb_tls_mat_unref(old);
}

zlb_tls_mat *zlb_tls_slot_get(zlb_tls_slot *s)
{
    pthread_mutex_lock(&s->lock);
    zlb_tls_mat *m = s->mat;
    if (m)
        zlb_tls_mat_ref(m);
    pthread_mutex_unlock(&s->lock);
    return m;
}

/* ---- policies --------------------------------------------------------------- */

static int copy_match(zlb_spiffe_match *dst, const zlb_spiffe_match *src, const char *what, char *err, size_t errlen)
{
    *dst = *src;
    dst->value[sizeof(dst->value) - 1] = '\0';
    if (dst->kind < ZLB_SPIFFE_ANY || dst->kind > ZLB_SPIFFE_TRUST_DOMAIN) {
        snprintf(err, errlen, "%s: unknown match kind %d", what, dst->kind);
        return -1;
    }
    if (dst->kind == ZLB_SPIFFE_TRUST_DOMAIN && strncmp(dst->value, "spiffe://", 9) == 0)
        memmove(dst->value, dst->value + 9, strlen(dst->value + 9) + 1);
    if ((dst->kind == ZLB_SPIFFE_EXACT || dst->kind == ZLB_SPIFFE_PREFIX) && strncmp(dst->value, "spiffe://", 9) != 0) {
        snprintf(err, errlen, "%s: %.100s is not a spiffe:// ID", what, dst->value);
        return -1;
    }
    if (dst->kind != ZLB_SPIFFE_ANY && !dst->value[0]) {
        snprintf(err, errlen, "%s: empty match value", what);
        return -1;
    }
    return 0;
}

/* Checks one rule's HTTP part (methods are bits: any value is valid). */
static int check_paths(const zlb_authz_rule *r, const char *what, char *err, size_t errlen)
{
    if (r->n_paths > ZLB_AUTHZ_MAX_PATHS) {
        snprintf(err, errlen, "%s: at most %d paths per rule", what, ZLB_AUTHZ_MAX_PATHS);
        return -1;
    }
    for (uint32_t i = 0; i < r->n_paths; i++) {
        const zlb_authz_path *pm = &r->paths[i];
        if (pm->kind != ZLB_AUTHZ_PATH_EXACT && pm->kind != ZLB_AUTHZ_PATH_PREFIX) {
            snprintf(err, errlen, "%s: unknown path match kind %d", what, pm->kind);
            return -1;
        }
        if (pm->value[0] != '/' || !memchr(pm->value, '\0', sizeof(pm->value))) {
            snprintf(err, errlen, "%s: a path match starts with / and has at most %d bytes", what,
                     ZLB_AUTHZ_PATH_MAX - 1);
            return -1;
        }
    }
    return 0;
}

static zlb_authz_rule *copy_rules(const zlb_authz_rule *src, uint32_t n, const char *what, char *err,
                                  size_t errlen)
{
    zlb_authz_rule *r = calloc(n ? n : 1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (src[i].n_ports > ZLB_TLS_MAX_PORTS) {
            snprintf(err, errlen, "%s: at most %d ports per rule", what, ZLB_TLS_MAX_PORTS);
            free(r);
            return NULL;
        }
        if (copy_match(&r[i].peer, &src[i].peer, what, err, errlen) != 0 || check_paths(&src[i], what, err, errlen)) {
            free(r);
            return NULL;
        }
        r[i].n_ports = src[i].n_ports;
        memcpy(r[i].ports, src[i].ports, sizeof(r[i].ports));
        r[i].methods = src[i].methods;
        r[i].n_paths = src[i].n_paths;
        memcpy(r[i].paths, src[i].paths, sizeof(r[i].paths));
    }
    return r;
}

void zlb_tls_policy_ref(zlb_tls_policy *p) { atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed); }

void zlb_tls_policy_unref(zlb_tls_policy *p)
{
    if (p && atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1) {
        free(p->allow);
        free(p->deny);
        free(p);
    }
}

zlb_tls_policy *zlb_tls_policy_new(const zlb_tls_opts *o, int is_server, zlb_tls_slot *slot, char *err,
                                   size_t errlen)
{
    zlb_tls_global_init();
    zlb_tls_policy *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_store(&p->refs, 1);
    /* The options are filled into zeroed memory (the boundary memsets them),
     * so equal settings hash equally. */
    p->opts_hash = zlb_hash64(o, sizeof(*o), 0);
    p->is_server = is_server;
    p->mode = is_server ? o->mode : ZLB_TLS_STRICT;
    p->slot = slot;
    p->handshake_timeout_ms = o->handshake_timeout_ms ? o->handshake_timeout_ms : 10000;
    if (o->min_version == 12)
        p->min_version = TLS1_2_VERSION;
    else if (o->min_version == 13 || o->min_version == 0)
        p->min_version = TLS1_3_VERSION;
    else {
        snprintf(err, errlen, "tls min_version must be 1.2 or 1.3");
        goto fail;
    }
    if (is_server && o->mode != ZLB_TLS_STRICT && o->mode != ZLB_TLS_PERMISSIVE) {
        snprintf(err, errlen, "tls mode must be strict or permissive");
        goto fail;
    }
    /* ALPN: "h2,http/1.1" -> wire format (length-prefixed names). */
    const char *a = o->alpn;
    while (*a) {
        size_t n = strcspn(a, ",");
        if (n == 0 || n > 255 || p->alpn_len + 1 + n > sizeof(p->alpn)) {
            snprintf(err, errlen, "tls alpn: bad protocol list");
            goto fail;
        }
        p->alpn[p->alpn_len++] = (unsigned char)n;
        memcpy(p->alpn + p->alpn_len, a, n);
        p->alpn_len += n;
        a += n;
        if (*a == ',')
            a++;
    }
    zlb_strlcpy(p->sni, o->sni, sizeof(p->sni));
    if (copy_match(&p->peer, &o->peer, "tls peer", err, errlen) != 0)
        goto fail;
    if (o->n_allow > ZLB_TLS_MAX_RULES || o->n_deny > ZLB_TLS_MAX_RULES) {
        snprintf(err, errlen, "at most %d allow and %d deny rules", ZLB_TLS_MAX_RULES, ZLB_TLS_MAX_RULES);
        goto fail;
    }
    p->allow = copy_rules(o->allow, o->n_allow, "tls allow", err, errlen);
    if (!p->allow)
        goto fail;
    p->deny = copy_rules(o->deny, o->n_deny, "tls deny", err, errlen);
    if (!p->deny)
        goto fail;
    p->n_allow = o->n_allow;
    p->n_deny = o->n_deny;
    for (uint32_t i = 0; i < p->n_allow + p->n_deny; i++) {
        const zlb_authz_rule *r = i < p->n_allow ? &p->allow[i] : &p->deny[i - p->n_allow];
        p->http_rules |= r->methods != 0 || r->n_paths != 0;
        p->path_rules |= r->n_paths != 0;
    }
    return p;
fail:
    zlb_tls_policy_unref(p);
    return NULL;
}

uint32_t zlb_http_method_bit(const char *m, size_t len)
{
    static const struct { const char *name; uint32_t bit; } methods[] = {
        {"GET", ZLB_M_GET},         {"HEAD", ZLB_M_HEAD},       {"POST", ZLB_M_POST},
        {"PUT", ZLB_M_PUT},         {"DELETE", ZLB_M_DELETE},   {"CONNECT", ZLB_M_CONNECT},
        {"OPTIONS", ZLB_M_OPTIONS}, {"TRACE", ZLB_M_TRACE},     {"PATCH", ZLB_M_PATCH},
    };
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, m, len) == 0)
            return methods[i].bit;
    return 0;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = (char)(ch | 0x20);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

int zlb_authz_path_canonical(const char *path, size_t len)
{
    if (len == 0 || path[0] != '/')
        return 0; /* "*" (OPTIONS) or absolute-form: not a path a rule can name */
    for (size_t i = 0; i < len; i++) {
        char ch = path[i];
        if (ch == '\\')
            return 0;
        if (ch == '%') {
            int hi = i + 2 < len ? hexval(path[i + 1]) : -1, lo = hi >= 0 ? hexval(path[i + 2]) : -1;
            if (lo < 0)
                return 0; /* the parser lets no such target through; refuse rather than guess */
            char dec = (char)(hi << 4 | lo);
            /* strchr also finds the terminator: %00 is refused as well. */
            if (isalnum((unsigned char)dec) || strchr("-._~/\\", dec))
                return 0;
        }
        if (ch != '/')
            continue;
        /* A segment starts after this slash: empty, "." and ".." are not canonical. */
        size_t seg = i + 1, end = seg;
        while (end < len && path[end] != '/')
            end++;
        size_t sl = end - seg;
        if ((sl == 0 && end < len) || (sl == 1 && path[seg] == '.') || (sl == 2 && path[seg] == '.' && path[seg + 1] == '.'))
            return 0;
    }
    return 1;
}

static int path_matches(const zlb_authz_rule *r, const zlb_authz_req *req)
{
    if (r->n_paths == 0)
        return 1;
    for (uint32_t i = 0; i < r->n_paths; i++) {
        const zlb_authz_path *pm = &r->paths[i];
        size_t n = strlen(pm->value);
        if (pm->kind == ZLB_AUTHZ_PATH_EXACT ? (n == req->path_len && memcmp(pm->value, req->path, n) == 0)
                                             : (n <= req->path_len && memcmp(pm->value, req->path, n) == 0))
            return 1;
    }
    return 0;
}

static int rule_matches(const zlb_authz_rule *r, const char *id, uint16_t port, const zlb_authz_req *req)
{
    if (r->peer.kind != ZLB_SPIFFE_ANY && !zlb_spiffe_match_ok(&r->peer, id))
        return 0;
    if (r->methods || r->n_paths) {
        if (!req || (r->methods && !(r->methods & req->method)) || !path_matches(r, req))
            return 0;
    }
    if (r->n_ports == 0)
        return 1;
    for (uint32_t i = 0; i < r->n_ports; i++)
        if (r->ports[i] == port)
            return 1;
    return 0;
}

int zlb_tls_authorize_req(const zlb_tls_policy *p, const char *peer_id, uint16_t port, const zlb_authz_req *req)
{
    for (uint32_t i = 0; i < p->n_deny; i++)
        if (rule_matches(&p->deny[i], peer_id, port, req))
            return 0;
    if (p->n_allow == 0)
        return 1;
    for (uint32_t i = 0; i < p->n_allow; i++)
        if (rule_matches(&p->allow[i], peer_id, port, req))
            return 1;
    return 0;
}

SSL *zlb_tls_ssl_new(zlb_tls_peer *peer, int fd, SSL_SESSION *resume)
{
    const zlb_tls_policy *p = peer->policy;
    SSL *ssl = SSL_new(p->is_server ? peer->mat->server : peer->mat->client);
    if (!ssl)
        return NULL;
    SSL_set_app_data(ssl, peer);
    SSL_set_min_proto_version(ssl, p->min_version);
    if (SSL_set_fd(ssl, fd) != 1)
        goto fail;
    if (p->is_server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        if (p->alpn_len && SSL_set_alpn_protos(ssl, p->alpn, (unsigned int)p->alpn_len) != 0)
            goto fail;
        if (p->sni[0] && SSL_set_tlsext_host_name(ssl, p->sni) != 1)
            goto fail;
        if (resume)
            SSL_set_session(ssl, resume);
    }
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

/* ---- client session cache ----------------------------------------------- */

#define ZLB_SESS_SLOTS 256 /* direct-mapped; a collision only costs a full handshake */

struct zlb_tls_sessions {
    struct {
        const void *ep;
        uint64_t gen;
        SSL_SESSION *s;
    } e[ZLB_SESS_SLOTS];
};

static size_t sess_slot(const void *ep, uint64_t gen)
{
    uintptr_t k = (uintptr_t)ep;
    return (size_t)(zlb_hash64(&k, sizeof(k), gen) % ZLB_SESS_SLOTS);
}

zlb_tls_sessions *zlb_tls_sessions_new(void) { return calloc(1, sizeof(zlb_tls_sessions)); }

void zlb_tls_sessions_free(zlb_tls_sessions *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < ZLB_SESS_SLOTS; i++)
        SSL_SESSION_free(c->e[i].s);
    free(c);
}

SSL_SESSION *zlb_tls_sessions_get(zlb_tls_sessions *c, const void *ep, uint64_t gen)
{
    if (!c)
        return NULL;
    size_t i = sess_slot(ep, gen);
    if (c->e[i].s && c->e[i].ep == ep && c->e[i].gen == gen && SSL_SESSION_is_resumable(c->e[i].s))
        return c->e[i].s;
    return NULL;
}

void zlb_tls_sessions_put(zlb_tls_sessions *c, const void *ep, uint64_t gen, SSL_SESSION *sess)
{
    size_t i = sess_slot(ep, gen);
    SSL_SESSION_free(c->e[i].s);
    c->e[i].ep = ep;
    c->e[i].gen = gen;
    c->e[i].s = sess;
}
