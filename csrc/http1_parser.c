/*
 * http1_parser.c - strict HTTP/1.1 head parser and chunked-body scanner
 * (contract in http1_parser.h, rules from RFC 9110/9112).
 *
 * Design, after picohttpparser: nothing allocates, results are spans, and the
 * hot loop is one table load and test per byte. Unlike picohttpparser the
 * parser is incremental: it remembers where the current line started and how
 * far it has looked, so a head that arrives one byte at a time costs O(n),
 * not O(n^2). Every decision depends only on the bytes before the position
 * where it is taken, never on where the caller's reads happened to end, so
 * the same bytes give the same result however they are split (the tests
 * check every split point).
 *
 * Strictness is the point: a proxy that accepts what its upstream reads
 * differently is the root of request smuggling, so anything ambiguous
 * (obs-fold, bare CR/LF, CL+TE, conflicting CL, odd transfer codings) is an
 * error rather than something to "repair".
 *
 * Threads: no globals except constant tables; each parser/scanner object is
 * owned by one thread at a time.
 */
#include "http1_parser.h"

#include <string.h>

/* ---- byte classes --------------------------------------------------------- */

#define T 0x01u  /* tchar (RFC 9110 5.6.2): methods, header names, codings */
#define U 0x02u  /* allowed in a request-target: RFC 3986 unreserved, sub-delims, ":@/?%" and "[]";
                  * not '#' (a fragment is never sent) nor space, controls or non-ASCII */
#define A 0x04u  /* allowed in an authority (Host value, CONNECT target): unreserved, sub-delims, ":[]%" */
#define H 0x08u  /* HEXDIG */
#define X 0x10u  /* ends the line scan: CTLs other than HTAB, and DEL */
#define TUA (T | U | A)
#define TUAH (T | U | A | H)
#define UA (U | A)

/* One table so the scan loop and the validators share a single cache line
 * set; bytes 0x80-0xFF (obs-text) are 0: allowed only in values. */
static const uint8_t cls[256] = {
    X, X, X, X, X, X, X, X, X, 0, X, X, X, X, X, X,                                          /* 0x00 */
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,                                          /* 0x10 */
       0,  TUA,    0,    T,  TUA,  TUA,  TUA,  TUA,   UA,   UA,  TUA,  TUA,   UA,  TUA,  TUA,    U,  /* 0x20:  !"#$%&'()*+,-./ */
    TUAH, TUAH, TUAH, TUAH, TUAH, TUAH, TUAH, TUAH, TUAH, TUAH,   UA,   UA,    0,   UA,    0,    U,  /* 0x30: 0123456789:;<=>? */
       U, TUAH, TUAH, TUAH, TUAH, TUAH, TUAH,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  /* 0x40: @ABCDEFGHIJKLMNO */
     TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,   UA,    0,   UA,    T,  TUA,  /* 0x50: PQRSTUVWXYZ[\]^_ */
       T, TUAH, TUAH, TUAH, TUAH, TUAH, TUAH,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  /* 0x60: `abcdefghijklmno */
     TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,  TUA,    0,    T,    0,  TUA,    X,  /* 0x70: pqrstuvwxyz{|}~  */
};

#undef TUA
#undef TUAH
#undef UA

#define IS(c, k) ((cls[(unsigned char)(c)] & (k)) != 0)
#define OWS(c) ((c) == ' ' || (c) == '\t')

/* ASCII-only lowercase: header names and codings are ASCII by grammar, and
 * locale-dependent tolower() must not change what a proxy accepts. */
static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Case-insensitive equality of s[0..n) with the lowercase NUL-terminated
 * `lo`. Pure; any thread. */
static int eq_lower(const char *s, uint32_t n, const char *lo)
{
    uint32_t i = 0;
    for (; i < n && lo[i]; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)lo[i])
            return 0;
    return i == n && lo[i] == '\0';
}

int zlb_h1_name_is(const char *buf, zlb_span name, const char *lower_name)
{
    return eq_lower(buf + name.off, name.len, lower_name);
}

/* Iterates the elements of a comma-separated list value v[0..n) (RFC 9110
 * 5.6.1). From *pos, sets *eoff and *elen to the next element with OWS trimmed
 * (possibly empty) and advances *pos past its comma. Returns 0 when the
 * list is exhausted. Pure. */
static int list_next(const char *v, uint32_t n, uint32_t *pos, uint32_t *eoff, uint32_t *elen)
{
    uint32_t i = *pos;
    if (i > n)
        return 0;
    while (i < n && OWS(v[i]))
        i++;
    uint32_t s = i;
    while (i < n && v[i] != ',')
        i++;
    uint32_t e = i;
    while (e > s && OWS(v[e - 1]))
        e--;
    *eoff = s;
    *elen = e - s;
    *pos = i + 1; /* past the comma, or n + 1 at the end */
    return 1;
}

/* True when every byte of s[0..n) has class `mask`, and every '%' starts a
 * complete pct-encoding: a truncated escape is decoded differently by
 * different servers, which is exactly the ambiguity a proxy must not pass. */
static int chars_ok(const char *s, uint32_t n, unsigned mask)
{
    for (uint32_t i = 0; i < n; i++) {
        if (!IS(s[i], mask))
            return 0;
        if (s[i] == '%') {
            if (i + 2 >= n || !IS(s[i + 1], H) || !IS(s[i + 2], H))
                return 0;
            i += 2;
        }
    }
    return 1;
}

/* The first position in buf[pos..stop) of a class-X byte (a control byte
 * other than HTAB, or DEL), or stop. Eight bytes at a time: the "has a byte
 * less than n" test ((w - n*ones) & ~w & highs, n <= 128) has no false
 * negatives, and the lowest byte it flags is a true one (a wrong flag only
 * comes from a borrow out of a true one below it), so on a little-endian
 * load its trailing zero count finds the first byte below 0x20 or DEL in
 * the word; the table then decides (HTAB is below 0x20 yet allowed, and the
 * scan goes on after it). The last < 8 bytes go one at a time. Never reads
 * at or past stop. */
static size_t scan_line(const char *buf, size_t pos, size_t stop)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (pos + 8 <= stop) {
        uint64_t w, d, hit;
        memcpy(&w, buf + pos, 8);
        d = w ^ (0x7f * ones); /* DEL bytes become zero bytes */
        hit = ((w - 0x20 * ones) & ~w & highs) | ((d - ones) & ~d & highs);
        if (!hit) {
            pos += 8;
            continue;
        }
        pos += (size_t)__builtin_ctzll(hit) / 8;
        if (IS(buf[pos], X))
            return pos;
        pos++;
    }
#endif
    while (pos < stop && !IS(buf[pos], X))
        pos++;
    return pos;
}

/* ---- head parser ------------------------------------------------------------ */

enum { ST_START_LINE = 0, ST_HEADERS, ST_DONE, ST_ERROR };

/* zlb_h1_parser.te_seen bits */
#define TE_PRESENT 0x01u
#define TE_FINAL_CHUNKED 0x02u  /* the last coding so far is chunked */
#define TE_UNSUPPORTED 0x04u    /* some coding other than chunked */

/* zlb_h1_parser.hdr_bits: semantic headers met so far */
#define HB_CONN_CLOSE 0x01u
#define HB_CONN_KEEP_ALIVE 0x02u
#define HB_CONN_UPGRADE 0x04u
#define HB_UPGRADE 0x08u
#define HB_EXPECT_100 0x10u
#define HB_HOST 0x20u
#define HB_CONN_TOKENS 0x40u    /* becomes ZLB_H1_F_CONN_TOKENS */

void zlb_h1_limits_defaults(zlb_h1_limits *l)
{
    l->max_request_line = 8192;
    l->max_head = 65536;
    l->max_headers = 100;
}

/* Shared by both init functions; the header array capacity caps max_headers
 * so that a careless limit can never index past zlb_h1_head.headers. */
static void parser_init(zlb_h1_parser *p, const zlb_h1_limits *limits)
{
    memset(p, 0, sizeof(*p));
    if (limits)
        p->limits = *limits;
    else
        zlb_h1_limits_defaults(&p->limits);
    if (p->limits.max_headers > ZLB_H1_MAX_HEADERS_CAP)
        p->limits.max_headers = ZLB_H1_MAX_HEADERS_CAP;
}

void zlb_h1_parser_init_request(zlb_h1_parser *p, const zlb_h1_limits *limits)
{
    parser_init(p, limits);
}

void zlb_h1_parser_init_response(zlb_h1_parser *p, const zlb_h1_limits *limits, int request_was_head)
{
    parser_init(p, limits);
    p->is_response = 1;
    p->request_was_head = request_was_head != 0;
}

/* Records an error; the parser stays in ST_ERROR so later calls return the
 * same verdict without looking at the bytes again. `msg` must be static. */
static int fail(zlb_h1_parser *p, zlb_h1_head *out, int status, const char *msg)
{
    p->state = ST_ERROR;
    out->error_status = status;
    out->error = msg;
    return ZLB_H1_ERROR;
}

static zlb_span span(size_t off, size_t len)
{
    return (zlb_span){(uint32_t)off, (uint32_t)len};
}

/* Parses "HTTP/1.0" or "HTTP/1.1" at v[0..n); returns the minor or -1.
 * Case-sensitive (RFC 9112 2.3) and exactly one digit each: "HTTP/1.10"
 * and friends are read as 1.1 by some servers and as errors by others. */
static int parse_version(const char *v, size_t n)
{
    if (n != 8 || memcmp(v, "HTTP/1.", 7) != 0 || (v[7] != '0' && v[7] != '1'))
        return -1;
    return v[7] - '0';
}

/* authority-form (RFC 9112 3.2.3): uri-host ":" port, no userinfo. */
static int authority_form_ok(const char *t, uint32_t n)
{
    uint32_t colon = n;
    while (colon > 0 && t[colon - 1] != ':')
        colon--;
    if (colon < 2 || colon == n || n - colon > 5)
        return 0; /* no ':' after a non-empty host, or no/too long port */
    for (uint32_t i = colon; i < n; i++)
        if (t[i] < '0' || t[i] > '9')
            return 0;
    if (t[0] == '[' && t[colon - 2] != ']')
        return 0;
    return chars_ok(t, colon - 1, A);
}

/* absolute-form: scheme "://" non-empty authority [path-abempty] [? query].
 * Requiring "//" keeps "host:port" (which RFC 3986 would read as a scheme)
 * out of non-CONNECT requests, where it can only be a client mistake. */
static int absolute_form_ok(const char *t, uint32_t n)
{
    uint32_t i = 0;
    while (i < n && ((lower((unsigned char)t[i]) >= 'a' && lower((unsigned char)t[i]) <= 'z') ||
                     (i > 0 && ((t[i] >= '0' && t[i] <= '9') || t[i] == '+' || t[i] == '-' || t[i] == '.'))))
        i++;
    if (i == 0 || n - i < 4 || memcmp(t + i, "://", 3) != 0)
        return 0;
    i += 3;
    return t[i] != '/' && t[i] != '?';
}

/* Checks a request-target against the method (RFC 9112 3.2). Returns NULL
 * or a static error string. */
static const char *check_target(const char *m, uint32_t mlen, const char *t, uint32_t tlen)
{
    int is_connect = mlen == 7 && memcmp(m, "CONNECT", 7) == 0;
    if (!chars_ok(t, tlen, U))
        return "invalid character in request target";
    if (is_connect)
        return authority_form_ok(t, tlen) ? NULL : "CONNECT needs an authority-form target";
    if (tlen == 1 && t[0] == '*')
        return (mlen == 7 && memcmp(m, "OPTIONS", 7) == 0) ? NULL : "'*' target is only for OPTIONS";
    if (t[0] == '/' || absolute_form_ok(t, tlen))
        return NULL;
    return "invalid request target";
}

/* request-line = method SP request-target SP HTTP-version, at buf[s..e)
 * (CRLF excluded). Exactly one SP each: other whitespace is an error. */
static int parse_request_line(zlb_h1_parser *p, const char *buf, size_t s, size_t e, zlb_h1_head *out)
{
    size_t i = s;
    while (i < e && IS(buf[i], T))
        i++;
    if (i == s)
        return fail(p, out, 400, s == e ? "empty request line" : "invalid method");
    if (i == e || buf[i] != ' ')
        return fail(p, out, 400, "invalid method");
    out->method = span(s, i - s);
    size_t t = ++i;
    while (i < e && buf[i] != ' ')
        i++;
    if (i == t || i == e)
        return fail(p, out, 400, "missing request target or version");
    out->target = span(t, i - t);
    int minor = parse_version(buf + i + 1, e - i - 1);
    if (minor < 0)
        return fail(p, out, 400, "unsupported HTTP version");
    out->version_minor = minor;
    const char *err = check_target(buf + s, out->method.len, buf + t, out->target.len);
    return err ? fail(p, out, 400, err) : 0;
}

/* status-line = HTTP-version SP 3DIGIT SP reason-phrase, at buf[s..e). The
 * SP before an empty reason may be missing: some servers omit it and the
 * framing is not ambiguous either way. Reason bytes were already limited to
 * HTAB/SP/VCHAR/obs-text by the line scan. */
static int parse_status_line(zlb_h1_parser *p, const char *buf, size_t s, size_t e, zlb_h1_head *out)
{
    const char *l = buf + s;
    size_t n = e - s;
    int minor = n >= 12 ? parse_version(l, 8) : -1;
    if (minor < 0 || l[8] != ' ')
        return fail(p, out, 400, "invalid status line");
    if (l[9] < '1' || l[9] > '9' || l[10] < '0' || l[10] > '9' || l[11] < '0' || l[11] > '9' ||
        (n > 12 && l[12] != ' '))
        return fail(p, out, 400, "invalid status code");
    out->version_minor = minor;
    out->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
    out->reason = n > 12 ? span(s + 13, n - 13) : span(e, 0);
    return 0;
}

/* Equality of the field name s[0..n) with `lo` (n bytes of lowercase letters
 * and '-'), ignoring case. OR-ing 0x20 folds 'A'-'Z' onto 'a'-'z'; the only
 * other byte it maps onto a letter or '-' is CR (onto '-'), and a name that
 * reached here holds tchars only, so the fold is exact. Eight bytes at a time
 * (the last word overlapping the one before it), never outside s[0..n). */
static inline int name_folds_to(const char *s, const char *lo, uint32_t n)
{
    if (n < 8) {
        for (uint32_t i = 0; i < n; i++)
            if ((unsigned char)(s[i] | 0x20) != (unsigned char)lo[i])
                return 0;
        return 1;
    }
    const uint64_t fold = 0x2020202020202020ull;
    uint64_t a, b;
    for (uint32_t i = 0; i + 8 < n; i += 8) {
        memcpy(&a, s + i, 8);
        memcpy(&b, lo + i, 8);
        if ((a | fold) != b)
            return 0;
    }
    memcpy(&a, s + n - 8, 8);
    memcpy(&b, lo + n - 8, 8);
    return (a | fold) == b;
}

/* The enum zlb_h1_hdr of the token s[0..n): the length, and where two names
 * share it their first letter, pick the only candidate; one folded
 * comparison decides. Runs once per field, so every later question about
 * these names is an integer compare. Pure. */
static uint32_t classify_name(const char *s, uint32_t n)
{
#define NAME(lit, id) (name_folds_to(s, lit, n) ? (id) : ZLB_H1_HDR_OTHER)
    switch (n) {
    case 2:
        return NAME("te", ZLB_H1_HDR_TE);
    case 4:
        return NAME("host", ZLB_H1_HDR_HOST);
    case 6:
        return NAME("expect", ZLB_H1_HDR_EXPECT);
    case 7:
        return (s[0] | 0x20) == 'u' ? NAME("upgrade", ZLB_H1_HDR_UPGRADE) : NAME("trailer", ZLB_H1_HDR_TRAILER);
    case 10:
        return (s[0] | 0x20) == 'c' ? NAME("connection", ZLB_H1_HDR_CONNECTION)
                                    : NAME("keep-alive", ZLB_H1_HDR_KEEP_ALIVE);
    case 11:
        return NAME("traceparent", ZLB_H1_HDR_TRACEPARENT);
    case 12:
        return NAME("x-request-id", ZLB_H1_HDR_X_REQUEST_ID);
    case 14:
        return NAME("content-length", ZLB_H1_HDR_CONTENT_LENGTH);
    case 15:
        return NAME("x-forwarded-for", ZLB_H1_HDR_X_FORWARDED_FOR);
    case 16:
        return NAME("proxy-connection", ZLB_H1_HDR_PROXY_CONNECTION);
    case 17:
        return (s[0] | 0x20) == 't' ? NAME("transfer-encoding", ZLB_H1_HDR_TRANSFER_ENCODING)
                                    : NAME("x-forwarded-proto", ZLB_H1_HDR_X_FORWARDED_PROTO);
    case 23:
        return NAME("x-forwarded-client-cert", ZLB_H1_HDR_X_FORWARDED_CLIENT_CERT);
    default:
        return ZLB_H1_HDR_OTHER;
    }
#undef NAME
}

/* Applies the meaning of the header just stored (framing, connection
 * options, Host). Called once per field, in order. */
static int apply_header(zlb_h1_parser *p, const char *buf, const zlb_h1_header *h, zlb_h1_head *out)
{
    const char *v = buf + h->value.off;
    uint32_t n = h->value.len, pos = 0, eo, el;

    switch (h->id) {
    case ZLB_H1_HDR_CONTENT_LENGTH: {
        /* 1*DIGIT only: "+5", "5, 5" or " 5 5" are read differently by
         * different implementations. Duplicates must agree numerically,
         * which is what framing depends on. */
        uint64_t cl = 0;
        if (n == 0)
            return fail(p, out, 400, "invalid Content-Length");
        for (uint32_t i = 0; i < n; i++) {
            if (v[i] < '0' || v[i] > '9')
                return fail(p, out, 400, "invalid Content-Length");
            unsigned d = (unsigned)(v[i] - '0');
            if (cl > (UINT64_MAX - d) / 10)
                return fail(p, out, 400, "Content-Length overflows");
            cl = cl * 10 + d;
        }
        if (p->cl_count && cl != out->content_length)
            return fail(p, out, 400, "conflicting Content-Length headers");
        out->content_length = cl;
        p->cl_count++;
        break;
    }
    case ZLB_H1_HDR_TRANSFER_ENCODING:
        /* Several TE fields form one list (RFC 9110 5.3); chunked must be
         * last and only once, so anything after it is an error at once. */
        if (n == 0)
            return fail(p, out, 400, "empty Transfer-Encoding");
        p->te_seen |= TE_PRESENT;
        while (list_next(v, n, &pos, &eo, &el)) {
            if (el == 0 || !chars_ok(v + eo, el, T))
                return fail(p, out, 400, "invalid Transfer-Encoding");
            if (p->te_seen & TE_FINAL_CHUNKED)
                return fail(p, out, 400, "chunked is not the final transfer coding");
            if (eq_lower(v + eo, el, "chunked"))
                p->te_seen |= TE_FINAL_CHUNKED;
            else
                p->te_seen |= TE_UNSUPPORTED;
        }
        break;
    case ZLB_H1_HDR_CONNECTION:
        while (list_next(v, n, &pos, &eo, &el)) {
            if (eq_lower(v + eo, el, "keep-alive"))
                p->hdr_bits |= HB_CONN_KEEP_ALIVE;
            else if (eq_lower(v + eo, el, "upgrade"))
                p->hdr_bits |= HB_CONN_UPGRADE;
            else if (eq_lower(v + eo, el, "close"))
                p->hdr_bits |= HB_CONN_CLOSE | HB_CONN_TOKENS;
            else if (el)
                p->hdr_bits |= HB_CONN_TOKENS;
        }
        break;
    case ZLB_H1_HDR_UPGRADE:
        p->hdr_bits |= HB_UPGRADE;
        break;
    case ZLB_H1_HDR_EXPECT:
        while (list_next(v, n, &pos, &eo, &el))
            if (eq_lower(v + eo, el, "100-continue"))
                p->hdr_bits |= HB_EXPECT_100;
        break;
    case ZLB_H1_HDR_HOST:
        if (p->is_response)
            break;
        /* The router picks a cluster by Host: two of them, or one with
         * bytes no authority can contain, would let the proxy and the
         * upstream disagree about the destination. */
        if (p->hdr_bits & HB_HOST)
            return fail(p, out, 400, "multiple Host headers");
        if (!chars_ok(v, n, A))
            return fail(p, out, 400, "invalid Host header");
        p->hdr_bits |= HB_HOST;
        out->host = h->value;
        break;
    default:
        break;
    }
    return 0;
}

/* header-field = field-name ":" OWS field-value OWS, at buf[s..e), where
 * buf[e] is the line's CR: it is no tchar, so the name scan needs no bound. */
static int parse_header_line(zlb_h1_parser *p, const char *buf, size_t s, size_t e, zlb_h1_head *out)
{
    size_t i = s;
    while (IS(buf[i], T))
        i++;
    if (i == s)
        return fail(p, out, 400, OWS(buf[s]) ? "obs-fold or whitespace before a header name" : "invalid header name");
    if (i == e || buf[i] != ':')
        return fail(p, out, 400,
                    (i < e && OWS(buf[i])) ? "whitespace between header name and colon" : "invalid header name");
    if (out->n_headers >= p->limits.max_headers)
        return fail(p, out, 431, "too many header fields");
    size_t vs = i + 1, ve = e;
    while (vs < ve && OWS(buf[vs]))
        vs++;
    while (ve > vs && OWS(buf[ve - 1]))
        ve--;
    zlb_h1_header *h = &out->headers[out->n_headers++];
    h->name = span(s, i - s);
    h->value = span(vs, ve - vs);
    h->id = classify_name(buf + s, (uint32_t)(i - s));
    return apply_header(p, buf, h, out);
}

/* The empty line was seen: decides framing and connection flags (RFC 9112
 * 6.3, 9.3). `head_len` includes the final CRLF. */
static int finish_head(zlb_h1_parser *p, zlb_h1_head *out, size_t head_len)
{
    uint32_t hb = p->hdr_bits;
    int minor = out->version_minor;
    out->head_len = (uint32_t)head_len;
    if (p->te_seen) {
        /* CL+TE is the classic smuggling pair; RFC 9112 lets a server
         * "fix" it, a proxy must not guess which one the upstream reads. */
        if (p->cl_count)
            return fail(p, out, 400, "both Transfer-Encoding and Content-Length");
        /* An HTTP/1.0 peer may ignore TE entirely (RFC 9112 6.1). */
        if (minor == 0)
            return fail(p, out, 400, "Transfer-Encoding in an HTTP/1.0 message");
        if (!p->is_response && !(p->te_seen & TE_FINAL_CHUNKED))
            return fail(p, out, 400, "chunked is not the final transfer coding");
        if (p->te_seen & TE_UNSUPPORTED)
            return fail(p, out, 501, "unsupported transfer coding");
        out->body = ZLB_H1_BODY_CHUNKED;
    } else if (p->cl_count) {
        out->body = ZLB_H1_BODY_LENGTH;
    } else {
        out->body = p->is_response ? ZLB_H1_BODY_CLOSE : ZLB_H1_BODY_NONE;
    }
    if (p->is_response &&
        (out->status < 200 || out->status == 204 || out->status == 304 || p->request_was_head))
        out->body = ZLB_H1_BODY_NONE;
    if (out->body != ZLB_H1_BODY_LENGTH)
        out->content_length = 0;

    if (!p->is_response) {
        if (minor == 1 && !(hb & HB_HOST))
            return fail(p, out, 400, "missing Host header");
        if (hb & HB_HOST)
            out->flags |= ZLB_H1_F_HAS_HOST;
        /* RFC 9110 10.1.1: a 100-continue in HTTP/1.0 must be ignored. */
        if (minor == 1 && (hb & HB_EXPECT_100))
            out->flags |= ZLB_H1_F_EXPECT_100;
    }
    if ((hb & HB_CONN_CLOSE) || (minor == 0 && !(hb & HB_CONN_KEEP_ALIVE)))
        out->flags |= ZLB_H1_F_CLOSE;
    else if (minor == 0)
        out->flags |= ZLB_H1_F_KEEP_ALIVE;
    if ((hb & HB_CONN_UPGRADE) && (hb & HB_UPGRADE))
        out->flags |= ZLB_H1_F_UPGRADE;
    if (hb & HB_CONN_TOKENS)
        out->flags |= ZLB_H1_F_CONN_TOKENS;
    p->state = ST_DONE;
    p->scanned = (uint32_t)head_len;
    return ZLB_H1_OK;
}

/* One complete line buf[s..e) (CRLF at e). Returns 0 to go on, or the final
 * ZLB_H1_OK / ZLB_H1_ERROR. */
static int on_line(zlb_h1_parser *p, const char *buf, size_t s, size_t e, zlb_h1_head *out)
{
    if (p->state == ST_START_LINE) {
        int rc = p->is_response ? parse_status_line(p, buf, s, e, out) : parse_request_line(p, buf, s, e, out);
        if (rc == 0)
            p->state = ST_HEADERS;
        return rc;
    }
    if (s == e)
        return finish_head(p, out, e + 2);
    return parse_header_line(p, buf, s, e, out);
}

/* Clears the scalar results; headers[] is filled as fields arrive, so the
 * 2 KiB array is not touched. */
static void head_reset(zlb_h1_head *out)
{
    out->method = out->target = out->host = out->reason = span(0, 0);
    out->status = 0;
    out->version_minor = 0;
    out->flags = 0;
    out->body = ZLB_H1_BODY_NONE;
    out->content_length = 0;
    out->head_len = 0;
    out->n_headers = 0;
    out->error_status = 0;
    out->error = NULL;
}

int zlb_h1_parse(zlb_h1_parser *p, const char *buf, size_t len, zlb_h1_head *out)
{
    if (p->state == ST_DONE)
        return ZLB_H1_OK;
    if (p->state == ST_ERROR)
        return ZLB_H1_ERROR;
    /* Nothing is recorded in `out` before the first CRLF, which lies after
     * offset 0, so scanned == 0 identifies the first useful call. */
    if (p->scanned == 0)
        head_reset(out);

    /* Bytes past max_head are never looked at: if the head has not ended
     * by then it is too large whatever follows. */
    size_t end = len < p->limits.max_head ? len : p->limits.max_head;
    size_t pos = p->scanned;
    while (pos < end) {
        size_t stop = end, cap = SIZE_MAX; /* only the start line has its own limit */
        if (p->state == ST_START_LINE) {
            cap = (size_t)p->line_start + p->limits.max_request_line + 1;
            if (cap < stop)
                stop = cap;
        }
        pos = scan_line(buf, pos, stop);
        if (pos == cap)
            return fail(p, out, p->is_response ? 400 : 414,
                        p->is_response ? "status line too long" : "request line too long");
        if (pos == stop)
            break;
        unsigned char c = (unsigned char)buf[pos];
        if (c == '\r') {
            if (pos + 1 == end)
                break; /* the LF decides; wait for it (or for the 431 below) */
            if (buf[pos + 1] != '\n')
                return fail(p, out, 400, "bare CR in head");
            int rc = on_line(p, buf, p->line_start, pos, out);
            if (rc != 0)
                return rc;
            pos += 2;
            p->line_start = (uint32_t)pos;
            continue;
        }
        if (c == '\n')
            return fail(p, out, 400, "bare LF in head");
        return fail(p, out, 400, c == 0 ? "NUL byte in head" : "control character in head");
    }
    p->scanned = (uint32_t)pos;
    if (len > end)
        return fail(p, out, 431, "head too large");
    return ZLB_H1_AGAIN;
}

/* ---- chunked scanner ---------------------------------------------------------- */

enum {
    CK_SIZE_START = 0, /* first hex digit of a chunk-size line */
    CK_SIZE,           /* more hex digits, ';' or CR */
    CK_EXT_NAME_START, /* after ';' */
    CK_EXT_NAME,
    CK_EXT_VAL_START,  /* after '=' */
    CK_EXT_TOKEN,
    CK_EXT_QUOTED,
    CK_EXT_QUOTED_ESC, /* after '\' inside a quoted-string */
    CK_EXT_QUOTED_END, /* after the closing '"' */
    CK_SIZE_LF,        /* after the CR of the size line */
    CK_DATA,
    CK_DATA_CR,        /* CRLF that ends the chunk data */
    CK_DATA_LF,
    CK_TRAILER_START,  /* start of a trailer line, or the final CRLF */
    CK_TRAILER_NAME,
    CK_TRAILER_VALUE,
    CK_TRAILER_LF,
    CK_FINAL_LF,
    CK_DONE,
    CK_ERROR,
};

#define CK_MAX_SIZE (1ULL << 62)

void zlb_h1_chunked_init(zlb_h1_chunked *c)
{
    memset(c, 0, sizeof(*c));
    c->max_line = 4096;
    c->max_trailers = 8192;
}

/* Moves from one state to the next for the framing byte `ch` (never called
 * for payload). Returns NULL or a static error string. Line and trailer
 * limits are counted here so that no single line can grow without bound
 * while the scanner keeps no bytes of it. */
static const char *ck_byte(zlb_h1_chunked *c, unsigned char ch)
{
    int in_trailer = c->state >= CK_TRAILER_START && c->state <= CK_FINAL_LF;
    if (in_trailer && ++c->trailer_bytes > c->max_trailers)
        return "trailer section too large";
    if (ch != '\r' && ch != '\n' && ++c->line_len > c->max_line)
        return "chunk-size or trailer line too long";

    switch (c->state) {
    case CK_SIZE_START:
    case CK_SIZE:
        if (IS(ch, H)) {
            unsigned d = ch <= '9' ? (unsigned)(ch - '0') : (unsigned)(lower(ch) - 'a' + 10);
            if (c->remaining > (CK_MAX_SIZE >> 4) || (c->remaining << 4 | d) > CK_MAX_SIZE)
                return "chunk size overflows";
            c->remaining = c->remaining << 4 | d;
            c->state = CK_SIZE;
            return NULL;
        }
        if (c->state == CK_SIZE && ch == ';')
            c->state = CK_EXT_NAME_START;
        else if (c->state == CK_SIZE && ch == '\r')
            c->state = CK_SIZE_LF;
        else
            return "invalid chunk size";
        return NULL;
    case CK_EXT_NAME_START:
    case CK_EXT_VAL_START:
        if (IS(ch, T))
            c->state = c->state == CK_EXT_NAME_START ? CK_EXT_NAME : CK_EXT_TOKEN;
        else if (c->state == CK_EXT_VAL_START && ch == '"')
            c->state = CK_EXT_QUOTED;
        else
            return "invalid chunk extension";
        return NULL;
    case CK_EXT_NAME:
    case CK_EXT_TOKEN:
    case CK_EXT_QUOTED_END:
        if (IS(ch, T) && c->state != CK_EXT_QUOTED_END)
            return NULL;
        if (ch == '=' && c->state == CK_EXT_NAME)
            c->state = CK_EXT_VAL_START;
        else if (ch == ';')
            c->state = CK_EXT_NAME_START;
        else if (ch == '\r')
            c->state = CK_SIZE_LF;
        else
            return "invalid chunk extension";
        return NULL;
    case CK_EXT_QUOTED:
        /* qdtext: anything but controls (HTAB is fine), '"' and '\' */
        if (ch == '"')
            c->state = CK_EXT_QUOTED_END;
        else if (ch == '\\')
            c->state = CK_EXT_QUOTED_ESC;
        else if (IS(ch, X))
            return "invalid chunk extension";
        return NULL;
    case CK_EXT_QUOTED_ESC:
        if (IS(ch, X))
            return "invalid chunk extension";
        c->state = CK_EXT_QUOTED;
        return NULL;
    case CK_SIZE_LF:
    case CK_DATA_LF:
    case CK_TRAILER_LF:
        if (ch != '\n')
            return "bare CR in chunked framing";
        c->line_len = 0;
        if (c->state == CK_SIZE_LF)
            c->state = c->remaining ? CK_DATA : CK_TRAILER_START;
        else
            c->state = c->state == CK_DATA_LF ? CK_SIZE_START : CK_TRAILER_START;
        return NULL;
    case CK_DATA_CR:
        if (ch != '\r')
            return "chunk data not followed by CRLF";
        c->state = CK_DATA_LF;
        return NULL;
    case CK_TRAILER_START:
        if (ch == '\r')
            c->state = CK_FINAL_LF;
        else if (IS(ch, T))
            c->state = CK_TRAILER_NAME;
        else
            return OWS(ch) ? "obs-fold in trailer section" : "invalid trailer field name";
        return NULL;
    case CK_TRAILER_NAME:
        if (ch == ':')
            c->state = CK_TRAILER_VALUE;
        else if (!IS(ch, T))
            return "invalid trailer field name";
        return NULL;
    case CK_TRAILER_VALUE:
        if (ch == '\r')
            c->state = CK_TRAILER_LF;
        else if (IS(ch, X))
            return "invalid character in trailer field";
        return NULL;
    case CK_FINAL_LF:
        if (ch != '\n')
            return "bare CR in chunked framing";
        c->state = CK_DONE;
        return NULL;
    default:
        return "chunked scanner misuse";
    }
}

int zlb_h1_chunked_step(zlb_h1_chunked *c, const char *buf, size_t len, size_t *consumed, size_t *data_off,
                        size_t *data_len)
{
    size_t i = 0;
    *data_off = 0;
    *data_len = 0;
    if (c->state == CK_ERROR || c->state == CK_DONE) {
        *consumed = 0;
        return c->state == CK_DONE ? ZLB_H1_CHUNK_DONE : ZLB_H1_CHUNK_ERROR;
    }
    while (i < len) {
        if (c->state == CK_DATA) {
            /* payload is handed back in place, in as large pieces as the
             * buffer allows: the scanner never touches its bytes */
            size_t n = len - i;
            if (n > c->remaining)
                n = (size_t)c->remaining;
            *data_off = i;
            *data_len = n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CK_DATA_CR;
            *consumed = i + n;
            return ZLB_H1_CHUNK_DATA;
        }
        const char *err = ck_byte(c, (unsigned char)buf[i++]);
        if (err) {
            c->state = CK_ERROR;
            c->error = err;
            *consumed = i;
            return ZLB_H1_CHUNK_ERROR;
        }
        if (c->state == CK_DONE) {
            *consumed = i;
            return ZLB_H1_CHUNK_DONE;
        }
    }
    *consumed = len;
    return ZLB_H1_CHUNK_AGAIN;
}
