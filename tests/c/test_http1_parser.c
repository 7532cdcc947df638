/*
 * test_http1_parser.c - unit tests of the strict HTTP/1.1 parser and the
 * chunked scanner (csrc/http1_parser.c).
 *
 * Every call hands the parser a buffer whose last byte is the last byte
 * before a PROT_NONE page, so reading even one byte past `len` crashes the
 * test (picohttpparser's trick). Every case is parsed whole, one byte at a
 * time and split in two at every point, and all of them must agree: the
 * parser's decisions may depend on the bytes, never on how they arrived.
 * Built with ASan+UBSan (tests/c/Makefile). Single-threaded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "http1_parser.h"
#include "zt.h"

/* ---- guard page --------------------------------------------------------- */

#define GUARD_AREA (128u * 1024u) /* largest input any test places */

static char *g_area; /* GUARD_AREA readable bytes, then one PROT_NONE page */

/* Maps the area once; aborts the run when the kernel refuses (nothing else
 * can be tested meaningfully without it). */
static void guard_init(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *m = mmap(NULL, GUARD_AREA + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m + GUARD_AREA, page, PROT_NONE) != 0) {
        perror("guard page");
        exit(2);
    }
    g_area = m;
}

/* Copies s[0..n) so that its last byte sits just before the guard page and
 * returns where it starts. The copy is overwritten by the next call: the
 * parser contract allows the buffer to move between calls as long as the
 * offsets stay, which is exactly what this exercises. */
static const char *guarded(const char *s, size_t n)
{
    if (n > GUARD_AREA) {
        fprintf(stderr, "guarded: input of %zu bytes too large\n", n);
        exit(2);
    }
    char *dst = g_area + GUARD_AREA - n;
    memmove(dst, s, n);
    return dst;
}

/* ---- head parsing drivers -------------------------------------------------- */

typedef struct pcase {
    const char *name;
    const char *in;
    size_t len;
    int response;        /* 0: request, 1: response, 2: response to HEAD */
    int rc;              /* expected ZLB_H1_* */
    int status;          /* expected error_status when rc is ZLB_H1_ERROR */
    int body;            /* expected framing when rc is ZLB_H1_OK */
    uint64_t cl;         /* expected content_length when OK */
} pcase;

static void init_parser(zlb_h1_parser *p, int response, const zlb_h1_limits *lim)
{
    if (response)
        zlb_h1_parser_init_response(p, lim, response == 2);
    else
        zlb_h1_parser_init_request(p, lim);
}

/* Parses in[0..n) delivered as growing prefixes ending at cuts[0..ncuts)
 * and finally n, each placed at the guard. Stops at the first verdict. */
static int parse_cuts(const char *in, size_t n, const size_t *cuts, size_t ncuts, int response,
                      const zlb_h1_limits *lim, zlb_h1_head *out)
{
    zlb_h1_parser p;
    init_parser(&p, response, lim);
    int rc = ZLB_H1_AGAIN;
    for (size_t i = 0; i <= ncuts && rc == ZLB_H1_AGAIN; i++) {
        size_t upto = i < ncuts ? cuts[i] : n;
        rc = zlb_h1_parse(&p, guarded(in, upto), upto, out);
    }
    return rc;
}

/* Two results are the same when the verdict and everything it reports
 * agree (spans, flags, every header, the very same error string). */
static int same_result(int rc1, const zlb_h1_head *a, int rc2, const zlb_h1_head *b)
{
    if (rc1 != rc2)
        return 0;
    if (rc1 == ZLB_H1_ERROR)
        return a->error_status == b->error_status && a->error == b->error;
    if (rc1 == ZLB_H1_AGAIN)
        return 1;
#define SPAN_EQ(f) (a->f.off == b->f.off && a->f.len == b->f.len)
    if (!SPAN_EQ(method) || !SPAN_EQ(target) || !SPAN_EQ(host) || !SPAN_EQ(reason) || a->status != b->status ||
        a->version_minor != b->version_minor || a->flags != b->flags || a->body != b->body ||
        a->content_length != b->content_length || a->head_len != b->head_len || a->n_headers != b->n_headers)
        return 0;
    for (uint32_t i = 0; i < a->n_headers; i++)
        if (!SPAN_EQ(headers[i].name) || !SPAN_EQ(headers[i].value) || a->headers[i].id != b->headers[i].id)
            return 0;
#undef SPAN_EQ
    return 1;
}

/* Whole, byte by byte and at every 2-way split must all give `*whole`. */
static int splits_agree(const char *in, size_t n, int response, const zlb_h1_limits *lim, int *rc_whole,
                        zlb_h1_head *whole, size_t *bad_split)
{
    static zlb_h1_head other;
    static size_t cuts[GUARD_AREA];
    *rc_whole = parse_cuts(in, n, NULL, 0, response, lim, whole);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i;
    int rc = parse_cuts(in, n, cuts, n, response, lim, &other);
    *bad_split = (size_t)-1;
    if (!same_result(*rc_whole, whole, rc, &other))
        return 0;
    for (size_t s = 0; s <= n; s++) {
        rc = parse_cuts(in, n, &s, 1, response, lim, &other);
        if (!same_result(*rc_whole, whole, rc, &other)) {
            *bad_split = s;
            return 0;
        }
    }
    return 1;
}

#define IN(s) s, sizeof(s) - 1
#define REQ(name, s, body, cl) {name, IN(s), 0, ZLB_H1_OK, 0, body, cl}
#define BAD(name, s, status) {name, IN(s), 0, ZLB_H1_ERROR, status, 0, 0}
#define RSP(name, kind, s, body, cl) {name, IN(s), kind, ZLB_H1_OK, 0, body, cl}
#define RBAD(name, kind, s, status) {name, IN(s), kind, ZLB_H1_ERROR, status, 0, 0}
#define NONE ZLB_H1_BODY_NONE
#define LEN ZLB_H1_BODY_LENGTH
#define CHUNK ZLB_H1_BODY_CHUNKED
#define CLOSE ZLB_H1_BODY_CLOSE
#define HOST "Host: a\r\n"

static const pcase cases[] = {
    /* valid requests */
    REQ("simple get", "GET / HTTP/1.1\r\n" HOST "\r\n", NONE, 0),
    REQ("http/1.0 without host", "GET /x?y=1 HTTP/1.0\r\n\r\n", NONE, 0),
    REQ("content-length", "POST /p HTTP/1.1\r\n" HOST "Content-Length: 5\r\n\r\nhello", LEN, 5),
    REQ("content-length 0", "POST /p HTTP/1.1\r\n" HOST "Content-Length: 0\r\n\r\n", LEN, 0),
    REQ("identical duplicate CL", "POST / HTTP/1.1\r\n" HOST "Content-Length: 7\r\ncontent-length: 7\r\n\r\n", LEN, 7),
    REQ("CL max uint64", "POST / HTTP/1.1\r\n" HOST "Content-Length: 18446744073709551615\r\n\r\n", LEN,
        UINT64_MAX),
    REQ("CL leading zeros", "POST / HTTP/1.1\r\n" HOST "Content-Length: 0000000000000000000000012\r\n\r\n", LEN, 12),
    REQ("chunked", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: chunked\r\n\r\n", CHUNK, 0),
    REQ("chunked, mixed case", "POST / HTTP/1.1\r\n" HOST "transfer-encoding: ChUnKeD\r\n\r\n", CHUNK, 0),
    REQ("chunked after HTAB OWS", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding:\tchunked\t\r\n\r\n", CHUNK, 0),
    REQ("OWS around values", "GET / HTTP/1.1\r\nHost: \t a \t\r\nX:\r\nY:  \r\n\r\n", NONE, 0),
    REQ("absolute-form", "GET http://a.example:8080/p?q HTTP/1.1\r\n" HOST "\r\n", NONE, 0),
    REQ("authority-form CONNECT", "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", NONE, 0),
    REQ("CONNECT ipv6", "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", NONE, 0),
    REQ("OPTIONS *", "OPTIONS * HTTP/1.1\r\n" HOST "\r\n", NONE, 0),
    REQ("pct-encoded target", "GET /a%20b%2F HTTP/1.1\r\n" HOST "\r\n", NONE, 0),
    REQ("extension method", "M-SEARCH /x HTTP/1.1\r\n" HOST "\r\n", NONE, 0),
    REQ("obs-text in value", "GET / HTTP/1.1\r\n" HOST "X: caf\xc3\xa9\r\n\r\n", NONE, 0),
    REQ("empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", NONE, 0),

    /* framing conflicts (smuggling) */
    BAD("CL+TE", "POST / HTTP/1.1\r\n" HOST "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    BAD("TE+CL", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    BAD("differing duplicate CL", "POST / HTTP/1.1\r\n" HOST "Content-Length: 7\r\nContent-Length: 8\r\n\r\n", 400),
    BAD("CL list", "POST / HTTP/1.1\r\n" HOST "Content-Length: 7, 7\r\n\r\n", 400),
    BAD("CL sign", "POST / HTTP/1.1\r\n" HOST "Content-Length: +7\r\n\r\n", 400),
    BAD("CL negative", "POST / HTTP/1.1\r\n" HOST "Content-Length: -1\r\n\r\n", 400),
    BAD("CL empty", "POST / HTTP/1.1\r\n" HOST "Content-Length:\r\n\r\n", 400),
    BAD("CL hex", "POST / HTTP/1.1\r\n" HOST "Content-Length: 0x10\r\n\r\n", 400),
    BAD("CL inner space", "POST / HTTP/1.1\r\n" HOST "Content-Length: 1 2\r\n\r\n", 400),
    BAD("CL overflow", "POST / HTTP/1.1\r\n" HOST "Content-Length: 18446744073709551616\r\n\r\n", 400),
    BAD("CL huge", "POST / HTTP/1.1\r\n" HOST "Content-Length: 99999999999999999999999999999\r\n\r\n", 400),
    BAD("TE not final on request", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: chunked, identity\r\n\r\n", 400),
    BAD("TE gzip only on request", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: gzip\r\n\r\n", 400),
    BAD("TE xchunked", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: xchunked\r\n\r\n", 400),
    BAD("TE chunked twice", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: chunked, chunked\r\n\r\n", 400),
    BAD("TE chunked in two fields", "POST / HTTP/1.1\r\n" HOST
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    BAD("TE coding after chunked field", "POST / HTTP/1.1\r\n" HOST
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    BAD("TE gzip, chunked", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    BAD("TE empty element", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: , chunked\r\n\r\n", 400),
    BAD("TE empty", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding:\r\n\r\n", 400),
    BAD("TE quoted", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding: \"chunked\"\r\n\r\n", 400),
    BAD("TE vertical tab", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding:\x0b" "chunked\r\n\r\n", 400),
    BAD("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    BAD("space before colon", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding : chunked\r\n\r\n", 400),
    BAD("tab before colon", "POST / HTTP/1.1\r\n" HOST "Transfer-Encoding\t: chunked\r\n\r\n", 400),
    BAD("leading space first header", "POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" HOST "\r\n", 400),
    BAD("obs-fold", "GET / HTTP/1.1\r\n" HOST "X: a\r\n b\r\n\r\n", 400),
    BAD("obs-fold tab", "GET / HTTP/1.1\r\n" HOST "X: a\r\n\tb\r\n\r\n", 400),
    BAD("bare CR in value", "GET / HTTP/1.1\r\n" HOST "X: a\rb\r\n\r\n", 400),
    BAD("bare LF in value", "GET / HTTP/1.1\r\n" HOST "X: a\nTransfer-Encoding: chunked\r\n\r\n", 400),
    BAD("bare LF line ends", "GET / HTTP/1.1\n" HOST "\n", 400),
    BAD("bare LF final", "GET / HTTP/1.1\r\n" HOST "\n", 400),
    BAD("NUL in value", "GET / HTTP/1.1\r\n" HOST "X: a\0b\r\n\r\n", 400),
    BAD("NUL in target", "GET /\0 HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("DEL in value", "GET / HTTP/1.1\r\n" HOST "X: a\x7f\r\n\r\n", 400),
    BAD("ESC in value", "GET / HTTP/1.1\r\n" HOST "X: a\x1b\r\n\r\n", 400),
    BAD("space in name", "GET / HTTP/1.1\r\n" HOST "X Y: a\r\n\r\n", 400),
    BAD("control in name", "GET / HTTP/1.1\r\n" HOST "X\x01Y: a\r\n\r\n", 400),
    BAD("empty name", "GET / HTTP/1.1\r\n" HOST ": a\r\n\r\n", 400),
    BAD("no colon", "GET / HTTP/1.1\r\n" HOST "Xyz\r\n\r\n", 400),
    BAD("missing host", "GET / HTTP/1.1\r\n\r\n", 400),
    BAD("two hosts", "GET / HTTP/1.1\r\n" HOST "Host: b\r\n\r\n", 400),
    BAD("two hosts http/1.0", "GET / HTTP/1.0\r\n" HOST "Host: b\r\n\r\n", 400),
    BAD("host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    BAD("host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    BAD("host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),

    /* request line */
    BAD("empty method", " / HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("leading CRLF", "\r\nGET / HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("method with slash", "GE/T / HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("two spaces", "GET  / HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("tab separator", "GET\t/ HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("trailing space", "GET / HTTP/1.1 \r\n" HOST "\r\n", 400),
    BAD("no version", "GET /\r\n" HOST "\r\n", 400),
    BAD("HTTP/0.9 style", "GET\r\n\r\n", 400),
    BAD("HTTP/1.2", "GET / HTTP/1.2\r\n" HOST "\r\n", 400),
    BAD("HTTP/2.0", "GET / HTTP/2.0\r\n" HOST "\r\n", 400),
    BAD("HTTP/1.10", "GET / HTTP/1.10\r\n" HOST "\r\n", 400),
    BAD("lowercase version", "GET / http/1.1\r\n" HOST "\r\n", 400),
    BAD("space in target", "GET /a b HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("fragment in target", "GET /a#b HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("backslash in target", "GET /a\\b HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("non-ascii target", "GET /caf\xc3\xa9 HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("truncated pct", "GET /a%2 HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("bad pct", "GET /a%zz HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("relative target", "GET a/b HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("host:port for GET", "GET a.example:80 HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("absolute-form without host", "GET http:///p HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("star for GET", "GET * HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("CONNECT origin-form", "CONNECT / HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("CONNECT without port", "CONNECT a.example HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("CONNECT userinfo", "CONNECT u@a:443 HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("CONNECT empty host", "CONNECT :443 HTTP/1.1\r\n" HOST "\r\n", 400),
    BAD("bare CR in request line", "GET /\r HTTP/1.1\r\n" HOST "\r\n", 400),

    /* responses */
    RSP("200 CL", 1, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", LEN, 3),
    RSP("200 chunked", 1, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", CHUNK, 0),
    RSP("200 close-delimited", 1, "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", CLOSE, 0),
    RSP("1.0 close-delimited", 1, "HTTP/1.0 200 OK\r\n\r\n", CLOSE, 0),
    RSP("no reason, no SP", 1, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", LEN, 0),
    RSP("empty reason", 1, "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", LEN, 0),
    RSP("reason with tab and obs-text", 1, "HTTP/1.1 200 O\tK \xe9\r\n\r\n", CLOSE, 0),
    RSP("204 with nothing", 1, "HTTP/1.1 204 No Content\r\n\r\n", NONE, 0),
    RSP("304 with CL", 1, "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n", NONE, 0),
    RSP("HEAD response with CL", 2, "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", NONE, 0),
    RSP("HEAD response with TE", 2, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", NONE, 0),
    RSP("100 continue", 1, "HTTP/1.1 100 Continue\r\n\r\n", NONE, 0),
    RSP("101 switching", 1, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        NONE, 0),
    RSP("999", 1, "HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", LEN, 0),
    RSP("Host is not special in responses", 1, "HTTP/1.1 200 OK\r\nHost: a b\r\nHost: c\r\n\r\n", CLOSE, 0),
    RBAD("099", 1, "HTTP/1.1 099 x\r\n\r\n", 400),
    RBAD("two-digit status", 1, "HTTP/1.1 20 x\r\n\r\n", 400),
    RBAD("four-digit status", 1, "HTTP/1.1 2000 x\r\n\r\n", 400),
    RBAD("status letters", 1, "HTTP/1.1 2x0 x\r\n\r\n", 400),
    RBAD("HTTP/1.2 response", 1, "HTTP/1.2 200 OK\r\n\r\n", 400),
    RBAD("no SP after version", 1, "HTTP/1.1200 OK\r\n\r\n", 400),
    RBAD("response CL+TE", 1, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    RBAD("response TE gzip", 1, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    RBAD("response TE gzip, chunked", 1, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    RBAD("response 1.0 with TE", 1, "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    RBAD("response conflicting CL", 1, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    RBAD("response obs-fold", 1, "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", 400),
    RBAD("response bare LF", 1, "HTTP/1.1 200 OK\nContent-Length: 0\n\n", 400),
    RBAD("response NUL in reason", 1, "HTTP/1.1 200 O\0K\r\n\r\n", 400),
};

static void test_case_table(void)
{
    static zlb_h1_head whole;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const pcase *c = &cases[i];
        int rc;
        size_t bad;
        ZT_CHECKF(splits_agree(c->in, c->len, c->response, NULL, &rc, &whole, &bad),
                  "%s: split results differ (split %zd)", c->name, (ssize_t)bad);
        ZT_CHECKF(rc == c->rc, "%s: rc %d, want %d (%s)", c->name, rc, c->rc, whole.error ? whole.error : "");
        if (rc == ZLB_H1_ERROR) {
            ZT_CHECKF(whole.error_status == c->status && whole.error && whole.error[0],
                      "%s: status %d, want %d", c->name, whole.error_status, c->status);
        } else {
            ZT_CHECKF(whole.body == c->body && whole.content_length == c->cl, "%s: body %d cl %llu", c->name,
                      whole.body, (unsigned long long)whole.content_length);
            /* the head ends at the empty line, whatever follows it */
            ZT_CHECKF(whole.head_len <= c->len && memcmp(c->in + whole.head_len - 4, "\r\n\r\n", 4) == 0,
                      "%s: head_len %u", c->name, whole.head_len);
        }
    }
}

/* ---- spans and flags ----------------------------------------------------------- */

static int span_is(const char *buf, zlb_span s, const char *want)
{
    return s.len == strlen(want) && memcmp(buf + s.off, want, s.len) == 0;
}

static void test_spans(void)
{
    static const char req[] = "PUT /up?x=1 HTTP/1.1\r\nHost:  svc.local:8080 \r\nX-Empty:\r\n"
                              "X-Tabs:\t a\tb \t\r\nContent-Length: 2\r\n\r\nhi";
    static zlb_h1_head h;
    zlb_h1_parser p;
    zlb_h1_parser_init_request(&p, NULL);
    const char *b = guarded(req, sizeof(req) - 1);
    ZT_CHECK(zlb_h1_parse(&p, b, sizeof(req) - 1, &h) == ZLB_H1_OK);
    ZT_CHECK(span_is(b, h.method, "PUT"));
    ZT_CHECK(span_is(b, h.target, "/up?x=1"));
    ZT_CHECK(span_is(b, h.host, "svc.local:8080"));
    ZT_CHECK(h.version_minor == 1);
    ZT_CHECK(h.n_headers == 4);
    ZT_CHECK(span_is(b, h.headers[1].name, "X-Empty") && h.headers[1].value.len == 0);
    ZT_CHECK(span_is(b, h.headers[2].value, "a\tb"));
    ZT_CHECK(zlb_h1_name_is(b, h.headers[3].name, "content-length"));
    ZT_CHECK(!zlb_h1_name_is(b, h.headers[3].name, "content-lengt"));
    ZT_CHECK(!zlb_h1_name_is(b, h.headers[3].name, "content-lengthx"));
    ZT_CHECK(h.head_len == sizeof(req) - 1 - 2);
    ZT_CHECK(h.flags == ZLB_H1_F_HAS_HOST);

    static const char rsp[] = "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    zlb_h1_parser_init_response(&p, NULL, 0);
    b = guarded(rsp, sizeof(rsp) - 1);
    ZT_CHECK(zlb_h1_parse(&p, b, sizeof(rsp) - 1, &h) == ZLB_H1_OK);
    ZT_CHECK(h.status == 503 && h.version_minor == 0);
    ZT_CHECK(span_is(b, h.reason, "Service Unavailable"));
    ZT_CHECK(h.flags == ZLB_H1_F_CLOSE);
}

typedef struct fcase {
    const char *in;
    int response;
    uint32_t flags;
} fcase;

static void test_flags(void)
{
    static const fcase fc[] = {
        {"GET / HTTP/1.1\r\n" HOST "\r\n", 0, ZLB_H1_F_HAS_HOST},
#define CT ZLB_H1_F_CONN_TOKENS
        {"GET / HTTP/1.1\r\n" HOST "Connection: close\r\n\r\n", 0, ZLB_H1_F_HAS_HOST | ZLB_H1_F_CLOSE | CT},
        {"GET / HTTP/1.1\r\n" HOST "Connection: foo, CLOSE\r\n\r\n", 0, ZLB_H1_F_HAS_HOST | ZLB_H1_F_CLOSE | CT},
        {"GET / HTTP/1.0\r\n\r\n", 0, ZLB_H1_F_CLOSE},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 0, ZLB_H1_F_KEEP_ALIVE},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", 0, ZLB_H1_F_CLOSE | CT},
        {"GET / HTTP/1.1\r\n" HOST "Connection: keep-alive\r\n\r\n", 0, ZLB_H1_F_HAS_HOST},
        /* CONN_TOKENS: only keep-alive and upgrade elements leave it clear */
        {"GET / HTTP/1.1\r\n" HOST "Connection: keep-alive, UPGRADE\r\nConnection: ,\r\n\r\n", 0,
         ZLB_H1_F_HAS_HOST},
        {"GET / HTTP/1.1\r\n" HOST "Connection: keep-alive\r\nConnection: x-secret\r\n\r\n", 0,
         ZLB_H1_F_HAS_HOST | CT},
        {"GET / HTTP/1.1\r\n" HOST "Connection: keep-alive x-secret\r\n\r\n", 0, ZLB_H1_F_HAS_HOST | CT},
        {"GET / HTTP/1.1\r\n" HOST "X-Connection: x-secret\r\n\r\n", 0, ZLB_H1_F_HAS_HOST},
        {"POST / HTTP/1.1\r\n" HOST "Expect: 100-continue\r\nContent-Length: 1\r\n\r\n", 0,
         ZLB_H1_F_HAS_HOST | ZLB_H1_F_EXPECT_100},
        {"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", 0, ZLB_H1_F_CLOSE},
        {"GET / HTTP/1.1\r\n" HOST "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0,
         ZLB_H1_F_HAS_HOST | ZLB_H1_F_UPGRADE},
        {"GET / HTTP/1.1\r\n" HOST "Upgrade: websocket\r\n\r\n", 0, ZLB_H1_F_HAS_HOST},
        {"GET / HTTP/1.1\r\n" HOST "Connection: upgrade\r\n\r\n", 0, ZLB_H1_F_HAS_HOST},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 1, ZLB_H1_F_CLOSE | CT},
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", 1, ZLB_H1_F_KEEP_ALIVE},
        {"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", 1, ZLB_H1_F_UPGRADE},
#undef CT
    };
    static zlb_h1_head h;
    for (size_t i = 0; i < sizeof(fc) / sizeof(fc[0]); i++) {
        int rc;
        size_t bad;
        ZT_CHECKF(splits_agree(fc[i].in, strlen(fc[i].in), fc[i].response, NULL, &rc, &h, &bad), "case %zu", i);
        ZT_CHECKF(rc == ZLB_H1_OK && h.flags == fc[i].flags, "case %zu: rc %d flags %#x want %#x", i, rc, h.flags,
                  fc[i].flags);
    }
}

/* ---- header name ids ------------------------------------------------------------ */

/* The names with an id, spelled out here independently of the parser, each
 * with a value that keeps a response head valid. */
static const struct {
    const char *name;
    uint32_t id;
    const char *value;
} known_names[] = {
    {"content-length", ZLB_H1_HDR_CONTENT_LENGTH, "0"},
    {"transfer-encoding", ZLB_H1_HDR_TRANSFER_ENCODING, "chunked"},
    {"connection", ZLB_H1_HDR_CONNECTION, "x"},
    {"upgrade", ZLB_H1_HDR_UPGRADE, "x"},
    {"expect", ZLB_H1_HDR_EXPECT, "x"},
    {"host", ZLB_H1_HDR_HOST, "x"},
    {"keep-alive", ZLB_H1_HDR_KEEP_ALIVE, "x"},
    {"proxy-connection", ZLB_H1_HDR_PROXY_CONNECTION, "x"},
    {"te", ZLB_H1_HDR_TE, "x"},
    {"trailer", ZLB_H1_HDR_TRAILER, "x"},
    {"x-forwarded-for", ZLB_H1_HDR_X_FORWARDED_FOR, "x"},
    {"x-forwarded-proto", ZLB_H1_HDR_X_FORWARDED_PROTO, "x"},
    {"x-forwarded-client-cert", ZLB_H1_HDR_X_FORWARDED_CLIENT_CERT, "x"},
    {"x-request-id", ZLB_H1_HDR_X_REQUEST_ID, "x"},
    {"traceparent", ZLB_H1_HDR_TRACEPARENT, "x"},
};

/* The id the parser gives the one field `name: value` in a response head
 * (every split agreeing), or -1 when the head does not parse. Responses,
 * so that Host needs no company. */
static int64_t id_of(const char *name, const char *value)
{
    static char in[256];
    static zlb_h1_head h;
    int rc;
    size_t bad;
    int n = snprintf(in, sizeof(in), "HTTP/1.1 200 OK\r\n%s: %s\r\n\r\n", name, value);
    if (n < 0 || (size_t)n >= sizeof(in) || !splits_agree(in, (size_t)n, 1, NULL, &rc, &h, &bad) ||
        rc != ZLB_H1_OK || h.n_headers != 1)
        return -1;
    return h.headers[0].id;
}

/* Every known name in any case gets its id; names one byte away from one
 * (another tchar anywhere, '_' for '-', a byte more or less) and other
 * names get OTHER. */
static void test_header_ids(void)
{
    static const char others[] = "!#$%&'*+.^_`|~0129xyzXYZ";
    char v[64];
    for (size_t k = 0; k < sizeof(known_names) / sizeof(known_names[0]); k++) {
        const char *nm = known_names[k].name;
        size_t n = strlen(nm);
        const char *val = known_names[k].value;
        uint32_t want = known_names[k].id;
        ZT_CHECKF(id_of(nm, val) == want, "%s", nm);
        for (size_t i = 0; i < n; i++)
            v[i] = (char)((nm[i] >= 'a' && nm[i] <= 'z') ? nm[i] - 32 : nm[i]);
        v[n] = '\0';
        ZT_CHECKF(id_of(v, val) == want, "%s", v);
        for (size_t i = 0; i < n; i += 2)
            v[i] = nm[i]; /* mixed case */
        ZT_CHECKF(id_of(v, val) == want, "%s", v);
        for (size_t i = 0; i < n; i++) {
            for (const char *o = others; *o; o++) {
                memcpy(v, nm, n + 1);
                if ((*o | 0x20) == nm[i])
                    continue;
                v[i] = *o;
                ZT_CHECKF(id_of(v, val) == ZLB_H1_HDR_OTHER, "%s", v);
            }
        }
        memcpy(v, nm, n + 1);
        v[n] = 's';
        v[n + 1] = '\0';
        ZT_CHECKF(id_of(v, val) == ZLB_H1_HDR_OTHER, "%s", v);
        v[n - 1] = '\0';
        ZT_CHECKF(id_of(v, val) == ZLB_H1_HDR_OTHER, "%s", v);
    }
    ZT_CHECK(id_of("X-Custom", "x") == ZLB_H1_HDR_OTHER);
    ZT_CHECK(id_of("Server", "x") == ZLB_H1_HDR_OTHER);
}

/* ---- limits --------------------------------------------------------------------- */

/* Runs `in` with `lim` through every split and checks the verdict. */
static void expect_limit(const char *in, size_t n, const zlb_h1_limits *lim, int want_rc, int want_status,
                         const char *what)
{
    static zlb_h1_head h;
    int rc;
    size_t bad;
    ZT_CHECKF(splits_agree(in, n, 0, lim, &rc, &h, &bad), "%s: split %zd differs", what, (ssize_t)bad);
    ZT_CHECKF(rc == want_rc && (rc != ZLB_H1_ERROR || h.error_status == want_status), "%s: rc %d status %d",
              what, rc, h.error_status);
}

static void test_request_line_limit(void)
{
    zlb_h1_limits lim = {.max_request_line = 16, .max_head = 1024, .max_headers = 10};
    /* "GET /abcdefghijk HTTP/1.1" would be 25; build lines of exactly 16 and 17 */
    expect_limit(IN("GET /ab HTTP/1.1\r\n" HOST "\r\n"), &lim, ZLB_H1_OK, 0, "line == limit");
    expect_limit(IN("GET /abc HTTP/1.1\r\n" HOST "\r\n"), &lim, ZLB_H1_ERROR, 414, "line == limit + 1");
    /* the verdict comes before the line ends: a client may never send CRLF */
    expect_limit(IN("GET /abcdefghijklmnopqrstuvwxyz"), &lim, ZLB_H1_ERROR, 414, "unterminated long line");
    expect_limit(IN("GET /abcdefghijk"), &lim, ZLB_H1_AGAIN, 0, "unterminated line at the limit");
    /* header lines are bounded by max_head only */
    expect_limit(IN("GET / HTTP/1.1\r\n" HOST "X: 0123456789012345678901234567890123456789\r\n\r\n"), &lim,
                 ZLB_H1_OK, 0, "long header line");
}

static void test_head_size_limit(void)
{
    static const char req[] = "GET / HTTP/1.1\r\n" HOST "X: 12345\r\n\r\n";
    zlb_h1_limits lim = {.max_request_line = 8192, .max_head = sizeof(req) - 1, .max_headers = 10};
    expect_limit(IN(req), &lim, ZLB_H1_OK, 0, "head == limit");
    lim.max_head--;
    expect_limit(IN(req), &lim, ZLB_H1_ERROR, 431, "head == limit + 1");
    expect_limit(IN("GET / HTTP/1.1\r\n" HOST "X: 12345\r\n"), &lim, ZLB_H1_AGAIN, 0, "not yet over");
    /* a CR as the last byte allowed still waits for its LF to decide */
    expect_limit(IN("GET / HTTP/1.1\r\n" HOST "X: 12345\r\n\r"), &lim, ZLB_H1_AGAIN, 0, "CR at the limit");

    /* the defaults: a 65536-byte head passes, one more byte does not */
    static char big[65540];
    static const char pre[] = "GET / HTTP/1.1\r\n" HOST "X: ";
    size_t n = 65536;
    memcpy(big, pre, sizeof(pre) - 1);
    memset(big + sizeof(pre) - 1, 'v', n - (sizeof(pre) - 1) - 4);
    memcpy(big + n - 4, "\r\n\r\n", 4);
    static zlb_h1_head h;
    size_t cuts[] = {1000, 30000, 65535};
    ZT_CHECK(parse_cuts(big, n, cuts, 3, 0, NULL, &h) == ZLB_H1_OK && h.head_len == n);
    memcpy(big + n - 4, "v\r\n\r\n", 5);
    ZT_CHECK(parse_cuts(big, n + 1, cuts, 3, 0, NULL, &h) == ZLB_H1_ERROR && h.error_status == 431);
}

static void test_header_count_limit(void)
{
    zlb_h1_limits lim = {.max_request_line = 8192, .max_head = 4096, .max_headers = 3};
    expect_limit(IN("GET / HTTP/1.1\r\n" HOST "A: 1\r\nB: 2\r\n\r\n"), &lim, ZLB_H1_OK, 0, "count == limit");
    expect_limit(IN("GET / HTTP/1.1\r\n" HOST "A: 1\r\nB: 2\r\nC: 3\r\n\r\n"), &lim, ZLB_H1_ERROR, 431,
                 "count == limit + 1");
}

/* A limit above the array capacity is clamped, never an overflow. */
static void test_header_capacity_clamp(void)
{
    static char req[8192];
    size_t n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\n" HOST);
    for (int i = 1; i < ZLB_H1_MAX_HEADERS_CAP; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, "X%d: %d\r\n", i, i);
    zlb_h1_limits lim = {.max_request_line = 8192, .max_head = 1u << 20, .max_headers = 100000};
    size_t end = n;
    n += (size_t)snprintf(req + n, sizeof(req) - n, "\r\n");
    static zlb_h1_head h;
    ZT_CHECK(parse_cuts(req, n, NULL, 0, 0, &lim, &h) == ZLB_H1_OK && h.n_headers == ZLB_H1_MAX_HEADERS_CAP);
    n = end + (size_t)snprintf(req + end, sizeof(req) - end, "Y: 1\r\n\r\n");
    ZT_CHECK(parse_cuts(req, n, NULL, 0, 0, &lim, &h) == ZLB_H1_ERROR && h.error_status == 431);
}

/* ---- byte classes, one byte at a time ------------------------------------------------ */

static int parse_one(const char *in, size_t n, zlb_h1_head *h)
{
    return parse_cuts(in, n, NULL, 0, 0, NULL, h);
}

static void test_every_byte(void)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    static const char uri[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?[]";
    static zlb_h1_head h;
    char buf[128];
    for (int b = 0; b < 256; b++) {
        int in_tchar = b && memchr(tchar, b, sizeof(tchar) - 1) != NULL;
        int in_uri = b && memchr(uri, b, sizeof(uri) - 1) != NULL;
        int vchar = b == '\t' || b == ' ' || (b >= 0x21 && b != 0x7f);

        int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX%cY: v\r\n\r\n", b ? b : '?');
        buf[26] = (char)b;
        /* "X:Y: v" is the field "X" with the value "Y: v" */
        ZT_CHECKF((parse_one(buf, (size_t)n, &h) == ZLB_H1_OK) == (in_tchar || b == ':'), "name byte %#x", b);

        n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX: a%cb\r\n\r\n", b ? b : '?');
        buf[29] = (char)b;
        ZT_CHECKF((parse_one(buf, (size_t)n, &h) == ZLB_H1_OK) == vchar, "value byte %#x", b);

        /* The line scan skips eight bytes at a time: the byte at every
         * offset of a long value (every alignment in a word, near the
         * line's end too) must still be seen. */
        for (int k = 0; k < 24; k++) {
            n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX: v%.24s\r\n\r\n",
                         "vvvvvvvvvvvvvvvvvvvvvvvv");
            buf[29 + k] = (char)b;
            ZT_CHECKF((parse_one(buf, (size_t)n, &h) == ZLB_H1_OK) == vchar,
                      "value byte %#x at %d", b, k);
            buf[28 + k] = '\t'; /* an allowed control byte just before it */
            ZT_CHECKF((parse_one(buf, (size_t)n, &h) == ZLB_H1_OK) == vchar,
                      "value byte %#x at %d after HTAB", b, k);
        }

        n = snprintf(buf, sizeof(buf), "GET /a%cb HTTP/1.1\r\nHost: a\r\n\r\n", b ? b : '?');
        buf[6] = (char)b;
        ZT_CHECKF((parse_one(buf, (size_t)n, &h) == ZLB_H1_OK) == in_uri, "target byte %#x", b);

        n = snprintf(buf, sizeof(buf), "G%cT / HTTP/1.1\r\nHost: a\r\n\r\n", b ? b : '?');
        buf[1] = (char)b;
        ZT_CHECKF((parse_one(buf, (size_t)n, &h) == ZLB_H1_OK) == in_tchar, "method byte %#x", b);
    }
}

/* A verdict is final: later calls with more bytes repeat it untouched. */
static void test_sticky_verdicts(void)
{
    static const char ok[] = "GET / HTTP/1.1\r\n" HOST "\r\nGARBAGE\0\r\n";
    static zlb_h1_head h;
    zlb_h1_parser p;
    zlb_h1_parser_init_request(&p, NULL);
    ZT_CHECK(zlb_h1_parse(&p, guarded(ok, sizeof(ok) - 1), sizeof(ok) - 1, &h) == ZLB_H1_OK);
    uint32_t head_len = h.head_len;
    ZT_CHECK(zlb_h1_parse(&p, guarded(ok, sizeof(ok) - 1), sizeof(ok) - 1, &h) == ZLB_H1_OK);
    ZT_CHECK(h.head_len == head_len && head_len == 27);

    static const char bad[] = "GET / HTTP/1.1\r\nX\0";
    zlb_h1_parser_init_request(&p, NULL);
    ZT_CHECK(zlb_h1_parse(&p, guarded(bad, sizeof(bad) - 1), sizeof(bad) - 1, &h) == ZLB_H1_ERROR);
    const char *err = h.error;
    ZT_CHECK(zlb_h1_parse(&p, guarded(ok, sizeof(ok) - 1), sizeof(ok) - 1, &h) == ZLB_H1_ERROR && h.error == err);
}

/* ---- chunked scanner ----------------------------------------------------------------- */

typedef struct ccase {
    const char *name;
    const char *in;
    size_t len;
    int rc;              /* DONE, ERROR or AGAIN after all bytes */
    const char *body;    /* payload when DONE */
    size_t body_len;
    size_t rest;         /* bytes after the message when DONE (the next message) */
} ccase;

/* Feeds in[0..n) cut at cuts[], each pending slice placed at the guard,
 * as a proxy that drops consumed bytes would. Collects the payload into
 * body (capacity cap). Returns the last verdict. */
static int dechunk_cuts(const char *in, size_t n, const size_t *cuts, size_t ncuts, const zlb_h1_chunked *cfg,
                        char *body, size_t cap, size_t *body_len, size_t *consumed, const char **err)
{
    zlb_h1_chunked c = *cfg;
    size_t pos = 0;
    int rc = ZLB_H1_CHUNK_AGAIN;
    *body_len = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t upto = i < ncuts ? cuts[i] : n;
        /* each DATA verdict eats at least one byte, so n + 2 rounds suffice */
        for (size_t round = 0; round < n + 2 && pos < upto; round++) {
            size_t used, off, dlen;
            const char *b = guarded(in + pos, upto - pos);
            rc = zlb_h1_chunked_step(&c, b, upto - pos, &used, &off, &dlen);
            if (rc == ZLB_H1_CHUNK_DATA) {
                if (*body_len + dlen > cap || off + dlen != used)
                    return -99;
                memcpy(body + *body_len, b + off, dlen);
                *body_len += dlen;
            }
            pos += used;
            if (rc == ZLB_H1_CHUNK_DONE || rc == ZLB_H1_CHUNK_ERROR) {
                *consumed = pos;
                *err = c.error;
                return rc;
            }
        }
    }
    *consumed = pos;
    *err = NULL;
    return rc == ZLB_H1_CHUNK_DATA ? ZLB_H1_CHUNK_AGAIN : rc;
}

#define CK_OK(name, s, body, rest) {name, IN(s), ZLB_H1_CHUNK_DONE, body, sizeof(body) - 1, rest}
#define CK_BAD(name, s) {name, IN(s), ZLB_H1_CHUNK_ERROR, NULL, 0, 0}
#define CK_MORE(name, s) {name, IN(s), ZLB_H1_CHUNK_AGAIN, NULL, 0, 0}

static const ccase ccases[] = {
    CK_OK("empty body", "0\r\n\r\n", "", 0),
    CK_OK("two chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world", 0),
    CK_OK("next message untouched", "1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n", "a", 16),
    CK_OK("hex cases", "A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", "0123456789abcdefghij", 0),
    CK_OK("leading zeros", "0001\r\nx\r\n000\r\n\r\n", "x", 0),
    CK_OK("extensions", "1;a\r\nx\r\n1;a=b;c=\"q \\\" ;\\\\\"\r\ny\r\n0;last=1\r\n\r\n", "xy", 0),
    CK_OK("trailers", "1\r\nx\r\n0\r\nChecksum: abc\r\nX-T:\r\n\r\n", "x", 0),
    CK_OK("binary payload", "3\r\n\r\n\0\r\n0\r\n\r\n", "\r\n\0", 0),
    CK_BAD("empty size", "\r\n\r\n"),
    CK_BAD("size space", "1 \r\nx\r\n0\r\n\r\n"),
    CK_BAD("leading space", " 1\r\nx\r\n0\r\n\r\n"),
    CK_BAD("0x prefix", "0x1\r\nx\r\n0\r\n\r\n"),
    CK_BAD("negative", "-1\r\nx\r\n0\r\n\r\n"),
    CK_BAD("bare LF after size", "1\nx\r\n0\r\n\r\n"),
    CK_BAD("bare CR after size", "1\rx\r\n0\r\n\r\n"),
    CK_BAD("data too long", "1\r\nab\r\n0\r\n\r\n"),
    CK_BAD("data bare LF", "1\r\na\n0\r\n\r\n"),
    CK_BAD("size overflow 2^62+1", "4000000000000001\r\n"),
    CK_BAD("size overflow 2^64", "10000000000000000\r\n"),
    CK_BAD("size overflow 2^64+1 wraps to 1", "10000000000000001\r\nx\r\n0\r\n\r\n"),
    CK_MORE("size 2^62 is fine", "4000000000000000\r\nabc"),
    CK_BAD("ext space before ;", "1 ;a\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext space after ;", "1; a\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext empty name", "1;=b\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext empty value", "1;a=\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext space before =", "1;a =b\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext unterminated quote", "1;a=\"b\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext text after quote", "1;a=\"b\"c\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext NUL", "1;a=b\0\r\nx\r\n0\r\n\r\n"),
    CK_BAD("ext lone ;", "1;\r\nx\r\n0\r\n\r\n"),
    CK_BAD("trailer obs-fold", "0\r\nA: b\r\n c\r\n\r\n"),
    CK_BAD("trailer space before colon", "0\r\nA : b\r\n\r\n"),
    CK_BAD("trailer no colon", "0\r\nAb\r\n\r\n"),
    CK_BAD("trailer NUL", "0\r\nA: b\0\r\n\r\n"),
    CK_BAD("trailer bare LF", "0\r\nA: b\n\r\n"),
    CK_BAD("final bare LF", "0\r\n\n"),
    CK_BAD("final bare CR", "0\r\n\rx"),
    CK_MORE("incomplete size line", "5"),
    CK_MORE("incomplete data", "5\r\nhel"),
    CK_MORE("incomplete trailer", "0\r\nA: b\r\n"),
};

static void test_chunked_table(void)
{
    static char body[4096], body2[4096];
    static size_t cuts[4096];
    zlb_h1_chunked cfg;
    zlb_h1_chunked_init(&cfg);
    for (size_t i = 0; i < sizeof(ccases) / sizeof(ccases[0]); i++) {
        const ccase *c = &ccases[i];
        size_t blen, used, blen2, used2;
        const char *err, *err2;
        int rc = dechunk_cuts(c->in, c->len, NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err);
        ZT_CHECKF(rc == c->rc, "%s: rc %d want %d (%s)", c->name, rc, c->rc, err ? err : "");
        if (rc == ZLB_H1_CHUNK_DONE)
            ZT_CHECKF(blen == c->body_len && memcmp(body, c->body, blen) == 0 && used == c->len - c->rest,
                      "%s: body %zu bytes, consumed %zu", c->name, blen, used);
        if (rc == ZLB_H1_CHUNK_ERROR)
            ZT_CHECKF(err && err[0], "%s: no error string", c->name);
        for (size_t k = 0; k < c->len; k++)
            cuts[k] = k;
        int rc2 = dechunk_cuts(c->in, c->len, cuts, c->len, &cfg, body2, sizeof(body2), &blen2, &used2, &err2);
        ZT_CHECKF(rc2 == rc && err2 == err && (rc != ZLB_H1_CHUNK_DONE || (blen2 == blen && used2 == used &&
                                                                            memcmp(body, body2, blen) == 0)),
                  "%s: byte by byte differs", c->name);
        for (size_t s = 0; s <= c->len; s++) {
            rc2 = dechunk_cuts(c->in, c->len, &s, 1, &cfg, body2, sizeof(body2), &blen2, &used2, &err2);
            ZT_CHECKF(rc2 == rc && err2 == err && (rc != ZLB_H1_CHUNK_DONE || (blen2 == blen && used2 == used &&
                                                                                memcmp(body, body2, blen) == 0)),
                      "%s: split at %zu differs", c->name, s);
        }
    }
}

static void test_chunked_limits(void)
{
    static char body[64];
    size_t blen, used;
    const char *err;
    zlb_h1_chunked cfg;
    zlb_h1_chunked_init(&cfg);
    ZT_CHECK(cfg.max_line == 4096 && cfg.max_trailers == 8192);
    cfg.max_line = 8;
    cfg.max_trailers = 16;
    /* a size line of exactly max_line bytes passes, one more does not */
    ZT_CHECK(dechunk_cuts(IN("00000001\r\nx\r\n0\r\n\r\n"), NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err) ==
             ZLB_H1_CHUNK_DONE);
    ZT_CHECK(dechunk_cuts(IN("000000001\r\nx\r\n0\r\n\r\n"), NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err) ==
             ZLB_H1_CHUNK_ERROR);
    ZT_CHECK(dechunk_cuts(IN("1;abcdefgh\r\n"), NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err) ==
             ZLB_H1_CHUNK_ERROR);
    /* trailer lines are bounded one by one and together */
    ZT_CHECK(dechunk_cuts(IN("0\r\nA: 12345\r\n\r\n"), NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err) ==
             ZLB_H1_CHUNK_DONE);
    ZT_CHECK(dechunk_cuts(IN("0\r\nA: 123456\r\n\r\n"), NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err) ==
                 ZLB_H1_CHUNK_ERROR &&
             strcmp(err, "chunk-size or trailer line too long") == 0);
    ZT_CHECK(dechunk_cuts(IN("0\r\nA: 1\r\nB: 2\r\n\r\n"), NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err) ==
             ZLB_H1_CHUNK_DONE);
    ZT_CHECK(dechunk_cuts(IN("0\r\nA: 1\r\nB: 2\r\nC:x\r\n"), NULL, 0, &cfg, body, sizeof(body), &blen, &used,
                          &err) == ZLB_H1_CHUNK_ERROR &&
             strcmp(err, "trailer section too large") == 0 && used == 3 + 17);
    /* a size line may never be unbounded, even with nothing but zeros */
    static char zeros[10000];
    memset(zeros, '0', sizeof(zeros));
    zlb_h1_chunked_init(&cfg);
    ZT_CHECK(dechunk_cuts(zeros, sizeof(zeros), NULL, 0, &cfg, body, sizeof(body), &blen, &used, &err) ==
                 ZLB_H1_CHUNK_ERROR &&
             used == 4097);
}

/* Large chunks are handed back as large in-place pieces, and a verdict is
 * final. */
static void test_chunked_pieces(void)
{
    static const char in[] = "10\r\n0123456789abcdef\r\n0\r\n\r\n";
    zlb_h1_chunked c;
    zlb_h1_chunked_init(&c);
    size_t used, off, dlen;
    const char *b = guarded(in, 10);
    ZT_CHECK(zlb_h1_chunked_step(&c, b, 10, &used, &off, &dlen) == ZLB_H1_CHUNK_DATA);
    ZT_CHECK(off == 4 && dlen == 6 && used == 10 && memcmp(b + off, "012345", 6) == 0);
    b = guarded(in + 10, sizeof(in) - 1 - 10);
    ZT_CHECK(zlb_h1_chunked_step(&c, b, sizeof(in) - 1 - 10, &used, &off, &dlen) == ZLB_H1_CHUNK_DATA);
    ZT_CHECK(off == 0 && dlen == 10 && used == 10);
    b = guarded(in + 20, sizeof(in) - 1 - 20);
    ZT_CHECK(zlb_h1_chunked_step(&c, b, sizeof(in) - 1 - 20, &used, &off, &dlen) == ZLB_H1_CHUNK_DONE);
    ZT_CHECK(used == sizeof(in) - 1 - 20);
    ZT_CHECK(zlb_h1_chunked_step(&c, b, 3, &used, &off, &dlen) == ZLB_H1_CHUNK_DONE && used == 0);
    ZT_CHECK(zlb_h1_chunked_step(&c, b, 0, &used, &off, &dlen) == ZLB_H1_CHUNK_DONE && used == 0);
}

int main(void)
{
    guard_init();
    ZT_RUN(test_case_table);
    ZT_RUN(test_spans);
    ZT_RUN(test_flags);
    ZT_RUN(test_header_ids);
    ZT_RUN(test_request_line_limit);
    ZT_RUN(test_head_size_limit);
    ZT_RUN(test_header_count_limit);
    ZT_RUN(test_header_capacity_clamp);
    ZT_RUN(test_every_byte);
    ZT_RUN(test_sticky_verdicts);
    ZT_RUN(test_chunked_table);
    ZT_RUN(test_chunked_limits);
    ZT_RUN(test_chunked_pieces);
    return zt_summary();
}
