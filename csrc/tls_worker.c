/*
 * tls_worker.c - TLS steps shared by the L4 and HTTP proxies of a worker:
 * ClientHello detection, side start, handshake step with verification,
 * counting and events. See tls_worker.h for ownership and threads.
 */
#include "tls_worker.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static _Atomic int64_t live_tls;

void zlb_tls_live_add(int64_t d) { atomic_fetch_add(&live_tls, d); }

int64_t zlb_debug_live_tls(void) { return atomic_load(&live_tls); }

int zlb_tls_detect(int fd)
{
    unsigned char b[2];
    ssize_t n = recv(fd, b, sizeof(b), MSG_PEEK);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? ZLB_DETECT_WAIT : ZLB_DETECT_ERROR;
    if (n == 0)
        return ZLB_DETECT_EOF;
    if (n == 1 && b[0] == 0x16)
        return ZLB_DETECT_WAIT; /* the second byte decides */
    return n == 2 && b[0] == 0x16 && b[1] == 0x03 ? ZLB_DETECT_TLS : ZLB_DETECT_PLAIN;
}

void zlb_tls_report(zlb_worker *w, const zlb_tls_where *at, int kind, int fail_kind, const char *peer_id,
                    const char *reason)
{
    zlb_tls_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.unix_ns = zlb_unix_now_ns();
    ev.kind = kind;
    ev.fail_kind = fail_kind;
    ev.listener_id = at->listener_id;
    ev.port = at->port;
    if (at->addr)
        ev.peer = *at->addr;
    zlb_strlcpy(ev.cluster, at->cluster ? at->cluster : "", sizeof(ev.cluster));
    zlb_strlcpy(ev.peer_id, peer_id ? peer_id : "", sizeof(ev.peer_id));
    zlb_strlcpy(ev.reason, reason ? reason : "", sizeof(ev.reason));
    if (zlb_engine_tls_event(w->eng, &ev) != 0)
        ZLB_STAT_ADD(w, tls_events_dropped, 1);
}

static void count_fail_kind(zlb_worker *w, int kind)
{
    switch (kind) {
    case ZLB_TLS_FAIL_UNTRUSTED:
        ZLB_STAT_ADD(w, tls_verify_untrusted, 1);
        break;
    case ZLB_TLS_FAIL_EXPIRED:
        ZLB_STAT_ADD(w, tls_verify_expired, 1);
        break;
    case ZLB_TLS_FAIL_SPIFFE_ID:
        ZLB_STAT_ADD(w, tls_verify_spiffe_id, 1);
        break;
    case ZLB_TLS_FAIL_NO_CERT:
        ZLB_STAT_ADD(w, tls_no_peer_cert, 1);
        break;
    default:
        break;
    }
}

/* Why a handshake failed: our own verification's reason when it rejected
 * the peer, else OpenSSL's error (e.g. the peer's alert). */
static int fail_reason(zlb_tls_peer *p, char *out, size_t outlen)
{
    if (p->reason[0]) {
        zlb_strlcpy(out, p->reason, outlen);
        ERR_clear_error();
        return p->verify_kind;
    }
    unsigned long e = ERR_peek_error();
    int kind = ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE ? ZLB_TLS_FAIL_NO_CERT
                                                                             : ZLB_TLS_FAIL_PROTOCOL;
    if (e == 0)
        zlb_strlcpy(out, "connection closed or reset during the TLS handshake", outlen);
    else
        zlb_tls_last_error(out, outlen);
    return kind;
}

void zlb_tls_failed(zlb_worker *w, const zlb_tls_where *at, zlb_tls_peer *peer, const char *reason)
{
    char why[ZLB_TLS_REASON_MAX];
    int kind = ZLB_TLS_FAIL_PROTOCOL;
    int up = !peer->policy->is_server;
    if (reason)
        zlb_strlcpy(why, reason, sizeof(why));
    else
        kind = fail_reason(peer, why, sizeof(why));
    if (up)
        ZLB_STAT_ADD(w, tls_handshake_failures_up, 1);
    else
        ZLB_STAT_ADD(w, tls_handshake_failures_down, 1);
    count_fail_kind(w, kind);
    zlb_tls_report(w, at, up ? ZLB_TLS_EV_UP_FAILED : ZLB_TLS_EV_DOWN_FAILED, kind, peer->id, why);
}

SSL *zlb_tls_start(zlb_worker *w, const zlb_tls_where *at, zlb_tls_peer *peer, int fd, const void *resume_key,
                   zlb_tls_session_sink *sink)
{
    const zlb_tls_policy *p = peer->policy;
    char why[ZLB_TLS_REASON_MAX];
    peer->mat = zlb_tls_slot_get(p->slot);
    if (!peer->mat) {
        snprintf(why, sizeof(why), "no identity installed as %s", p->slot->name);
        zlb_tls_failed(w, at, peer, why);
        return NULL;
    }
    SSL_SESSION *resume = NULL;
    if (!p->is_server) {
        if (!w->tls_sessions)
            w->tls_sessions = zlb_tls_sessions_new(); /* NULL: no resumption, still works */
        resume = zlb_tls_sessions_get(w->tls_sessions, resume_key, peer->mat->gen);
    }
    SSL *ssl = zlb_tls_ssl_new(peer, fd, resume);
    if (!ssl) {
        zlb_tls_failed(w, at, peer, "cannot create the TLS session");
        return NULL;
    }
    if (!p->is_server) {
        *sink = (zlb_tls_session_sink){.cache = w->tls_sessions, .ep = resume_key, .gen = peer->mat->gen};
        zlb_tls_set_session_sink(ssl, sink);
    }
    return ssl;
}

int zlb_tls_handshake(zlb_worker *w, const zlb_tls_where *at, SSL *ssl, zlb_tls_peer *peer)
{
    int up = !peer->policy->is_server;
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    if (rc != 1) {
        int e = SSL_get_error(ssl, rc);
        if (e == SSL_ERROR_WANT_READ)
            return ZLB_HS_WANT_READ;
        if (e == SSL_ERROR_WANT_WRITE)
            return ZLB_HS_WANT_WRITE;
    }
    if (rc != 1 || zlb_tls_check_peer(ssl, peer) != 0) {
        zlb_tls_failed(w, at, peer, NULL);
        return ZLB_HS_FAILED;
    }
    if (up) {
        ZLB_STAT_ADD(w, tls_handshakes_up, 1);
        if (SSL_session_reused(ssl))
            ZLB_STAT_ADD(w, tls_resumed_up, 1);
    } else {
        ZLB_STAT_ADD(w, tls_handshakes_down, 1);
    }
    if (atomic_load_explicit(&w->eng->tls_log_peers, memory_order_relaxed))
        zlb_tls_report(w, at, up ? ZLB_TLS_EV_UP_OK : ZLB_TLS_EV_DOWN_OK, ZLB_TLS_FAIL_NONE, peer->id, "");
    return ZLB_HS_DONE;
}

void zlb_tls_end(SSL **ssl, zlb_tls_peer *peer, int how)
{
    if (*ssl && how != ZLB_TLS_END_ABORT && SSL_is_init_finished(*ssl)
        && !(SSL_get_shutdown(*ssl) & SSL_SENT_SHUTDOWN)) {
        /* Quiet: SSL_shutdown only marks the connection as shut down, which
         * is what keeps OpenSSL from invalidating its session in SSL_free. */
        SSL_set_quiet_shutdown(*ssl, how == ZLB_TLS_END_QUIET);
        ERR_clear_error();
        SSL_shutdown(*ssl); /* best effort: a full socket buffer only loses the alert */
        ERR_clear_error();
    }
    SSL_free(*ssl);
    *ssl = NULL;
    zlb_tls_mat_unref(peer->mat);
    peer->mat = NULL;
    peer->id[0] = peer->reason[0] = '\0';
    peer->verify_kind = 0;
}

int zlb_tls_peer_cert_sha256(SSL *ssl, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    X509 *c = SSL_get0_peer_certificate(ssl);
    if (!c || X509_digest(c, EVP_sha256(), md, &n) != 1 || n != 32) {
        out[0] = '\0';
        return -1;
    }
    for (unsigned int i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
    return 0;
}

typedef void zlb_text_fn(const char *text, size_t len, void *arg);

/* Has write() put text about the peer certificate into a memory BIO and
 * calls fn with it, unless that is nothing: the shared part of the subject
 * and PEM helpers. 0, or -1 when there is no peer certificate, no memory or
 * write() failed (returned 0). */
static int emit_peer_text(SSL *ssl, int (*write)(BIO *bio, SSL *ssl, X509 *leaf, int chain), int chain,
                          zlb_text_fn *fn, void *arg)
{
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    if (!leaf)
        return -1;
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return -1;
    int ok = write(bio, ssl, leaf, chain);
    char *data = NULL;
    long len = ok ? BIO_get_mem_data(bio, &data) : 0;
    if (len > 0)
        fn(data, (size_t)len, arg);
    BIO_free(bio);
    return ok ? 0 : -1;
}

static int write_subject(BIO *bio, SSL *ssl, X509 *leaf, int chain)
{
    ZLB_UNUSED(ssl);
    ZLB_UNUSED(chain);
    return X509_NAME_print_ex(bio, X509_get_subject_name(leaf), 0, XN_FLAG_RFC2253) >= 0;
}

int zlb_tls_peer_subject(SSL *ssl, void (*fn)(const char *subject, size_t len, void *arg), void *arg)
{
    return emit_peer_text(ssl, write_subject, 0, fn, arg);
}

/* Letters, digits, '-', '.', '_' and a leading "*." wildcard label. */
static int dns_name_ok(const unsigned char *s, int len)
{
    if (len <= 0)
        return 0;
    for (int i = 0; i < len; i++) {
        unsigned char ch = s[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                 ch == '.' || ch == '_' || (ch == '*' && i == 0);
        if (!ok)
            return 0;
    }
    return 1;
}

int zlb_tls_peer_dns_names(SSL *ssl, void (*fn)(const char *name, size_t len, void *arg), void *arg)
{
    X509 *c = SSL_get0_peer_certificate(ssl);
    if (!c)
        return -1;
    GENERAL_NAMES *names = X509_get_ext_d2i(c, NID_subject_alt_name, NULL, NULL);
    int count = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS)
            continue;
        const unsigned char *s = ASN1_STRING_get0_data(g->d.dNSName);
        int len = ASN1_STRING_length(g->d.dNSName);
        if (!dns_name_ok(s, len))
            continue;
        fn((const char *)s, (size_t)len, arg);
        count++;
    }
    GENERAL_NAMES_free(names);
    return count;
}

static int write_pem(BIO *bio, SSL *ssl, X509 *leaf, int chain)
{
    int ok = PEM_write_bio_X509(bio, leaf) == 1;
    /* On the server side the sent chain does not include the leaf. */
    STACK_OF(X509) *rest = chain ? SSL_get_peer_cert_chain(ssl) : NULL;
    for (int i = 0; ok && i < sk_X509_num(rest); i++)
        ok = PEM_write_bio_X509(bio, sk_X509_value(rest, i)) == 1;
    return ok;
}

int zlb_tls_peer_pem(SSL *ssl, int chain, void (*fn)(const char *pem, size_t len, void *arg), void *arg)
{
    return emit_peer_text(ssl, write_pem, chain, fn, arg);
}
