/*
 * http1_parser.h - a strict, sans-I/O HTTP/1.1 message-head parser and a
 * chunked-body scanner (RFC 9112). No allocation: results are spans (offset,
 * length) into the caller's buffer, so the caller may move or compact the
 * buffer between calls as long as the bytes already seen keep their offsets
 * relative to the message start.
 *
 * Incremental: call again with the same parser and a longer buffer (the old
 * bytes plus new ones); bytes already scanned are never scanned again.
 *
 * Threads: a parser object is used by one thread at a time; no globals.
 */
#ifndef ZLB_HTTP1_PARSER_H
#define ZLB_HTTP1_PARSER_H

#include <stddef.h>
#include <stdint.h>

#define ZLB_H1_MAX_HEADERS_CAP 128   /* compile-time capacity of zlb_h1_head.headers */

typedef struct zlb_span {
    uint32_t off;   /* from the start of the message head */
    uint32_t len;
} zlb_span;

/* Field names the parser or the proxy acts on. The parser classifies each
 * name once, case-insensitively, as it stores the field (zlb_h1_header.id),
 * so that later code switches on a small integer instead of comparing the
 * same bytes against many names again. Every other name is OTHER. */
enum zlb_h1_hdr {
    ZLB_H1_HDR_OTHER = 0,
    /* framing and connection management (the parser's own) */
    ZLB_H1_HDR_CONTENT_LENGTH,
    ZLB_H1_HDR_TRANSFER_ENCODING,
    ZLB_H1_HDR_CONNECTION,
    ZLB_H1_HDR_UPGRADE,
    ZLB_H1_HDR_EXPECT,
    ZLB_H1_HDR_HOST,
    /* the other hop-by-hop fields (RFC 9110 7.6.1) */
    ZLB_H1_HDR_KEEP_ALIVE,
    ZLB_H1_HDR_PROXY_CONNECTION,
    ZLB_H1_HDR_TE,
    ZLB_H1_HDR_TRAILER,
    /* fields the proxy adds, replaces or extends */
    ZLB_H1_HDR_X_FORWARDED_FOR,
    ZLB_H1_HDR_X_FORWARDED_PROTO,
    ZLB_H1_HDR_X_FORWARDED_CLIENT_CERT,
    ZLB_H1_HDR_X_REQUEST_ID,
    ZLB_H1_HDR_TRACEPARENT,
    ZLB_H1_HDR_COUNT
};

typedef struct zlb_h1_header {
    zlb_span name;
    zlb_span value; /* leading/trailing OWS removed */
    uint32_t id;    /* enum zlb_h1_hdr of the name */
} zlb_h1_header;

typedef struct zlb_h1_limits {
    uint32_t max_request_line;   /* bytes, CRLF excluded; over it: 414 (default 8192) */
    uint32_t max_head;           /* whole head incl. request line; over it: 431 (default 65536) */
    uint32_t max_headers;        /* header fields; over it: 431 (default 100, <= ZLB_H1_MAX_HEADERS_CAP) */
} zlb_h1_limits;

void zlb_h1_limits_defaults(zlb_h1_limits *l);

enum zlb_h1_body {
    ZLB_H1_BODY_NONE = 0,        /* no body (e.g. GET without framing, 204, 304, HEAD response) */
    ZLB_H1_BODY_LENGTH = 1,      /* Content-Length bytes */
    ZLB_H1_BODY_CHUNKED = 2,     /* Transfer-Encoding: chunked (final coding) */
    ZLB_H1_BODY_CLOSE = 3,       /* response delimited by connection close */
};

/* Flags in zlb_h1_head.flags */
#define ZLB_H1_F_CLOSE       0x01u  /* Connection: close, or HTTP/1.0 without keep-alive */
#define ZLB_H1_F_EXPECT_100  0x02u  /* request: Expect: 100-continue */
#define ZLB_H1_F_UPGRADE     0x04u  /* Connection: upgrade + Upgrade header present */
#define ZLB_H1_F_HAS_HOST    0x08u  /* request: exactly one Host header */
#define ZLB_H1_F_KEEP_ALIVE  0x10u  /* HTTP/1.0 with Connection: keep-alive */
#define ZLB_H1_F_CONN_TOKENS 0x20u  /* a Connection element other than keep-alive and upgrade (close
                                     * included): it may name more hop-by-hop fields (RFC 9110 7.6.1);
                                     * without this flag the ids alone say which fields are hop-by-hop */

typedef struct zlb_h1_head {
    /* request */
    zlb_span method;
    zlb_span target;
    zlb_span host;               /* value of the Host header (len 0 when absent) */
    /* response */
    int status;                  /* 100..999 */
    zlb_span reason;
    /* both */
    int version_minor;           /* 0 or 1 (HTTP/1.x only) */
    uint32_t flags;
    int body;                    /* enum zlb_h1_body */
    uint64_t content_length;     /* when body == ZLB_H1_BODY_LENGTH */
    uint32_t head_len;           /* bytes of the head including the final CRLF CRLF */
    uint32_t n_headers;
    zlb_h1_header headers[ZLB_H1_MAX_HEADERS_CAP];
    /* on error */
    int error_status;            /* 400, 414, 431, 501 (unsupported transfer coding) */
    const char *error;           /* static string saying what was wrong */
} zlb_h1_head;

typedef struct zlb_h1_parser {
    zlb_h1_limits limits;
    int is_response;
    int request_was_head;        /* response parsing: the request method was HEAD */
    /* private incremental state */
    uint32_t scanned;            /* bytes already examined */
    uint32_t line_start;
    int state;
    uint32_t cl_count;
    uint32_t te_seen;
    uint32_t hdr_bits;           /* Connection tokens, Upgrade, Expect, Host seen so far */
} zlb_h1_parser;

/* Prepares a parser for one message head. limits may be NULL (defaults). */
void zlb_h1_parser_init_request(zlb_h1_parser *p, const zlb_h1_limits *limits);
void zlb_h1_parser_init_response(zlb_h1_parser *p, const zlb_h1_limits *limits, int request_was_head);

#define ZLB_H1_OK 1          /* head complete: out->head_len bytes form the head */
#define ZLB_H1_AGAIN 0       /* incomplete: call again with more bytes */
#define ZLB_H1_ERROR (-1)    /* invalid: out->error_status and out->error set */

/* Parses the head at buf[0..len). `out` must be the same object across the
 * calls for one message (it accumulates headers). Rules (all violations are
 * errors): method is a token; target is origin-form, absolute-form,
 * authority-form (CONNECT only) or "*" (OPTIONS only) without spaces or
 * control bytes; version is HTTP/1.0 or HTTP/1.1; header names are tokens
 * (no spaces before the colon); values have no CR, LF or NUL and no other
 * control bytes except HTAB; no obs-fold; lines end in CRLF (bare CR or bare
 * LF rejected); Content-Length is 1*DIGIT without overflow, duplicates only
 * when identical (else 400); Transfer-Encoding together with Content-Length
 * is 400; on requests the final transfer coding must be chunked (else 400),
 * codings other than chunked are 501; HTTP/1.1 requests need exactly one
 * Host header. Response framing follows RFC 9112 section 6.3 (1xx, 204, 304
 * and responses to HEAD have no body; no framing = close-delimited). */
int zlb_h1_parse(zlb_h1_parser *p, const char *buf, size_t len, zlb_h1_head *out);

/* Case-insensitive comparison of a header name span with a lowercase name.
 * For names outside enum zlb_h1_hdr; callers compare lengths first. */
int zlb_h1_name_is(const char *buf, zlb_span name, const char *lower);

/* ---- chunked bodies ------------------------------------------------------ */

typedef struct zlb_h1_chunked {
    int state;
    uint64_t remaining;          /* data bytes left in the current chunk */
    uint32_t line_len;           /* bytes of the current size/trailer line so far */
    uint32_t max_line;           /* chunk-size line and trailer line limit (default 4096) */
    uint32_t trailer_bytes;      /* total trailer bytes so far */
    uint32_t max_trailers;       /* limit for the trailer section (default 8192) */
    const char *error;           /* after ZLB_H1_CHUNK_ERROR: static string saying what was wrong */
} zlb_h1_chunked;

void zlb_h1_chunked_init(zlb_h1_chunked *c);

#define ZLB_H1_CHUNK_DONE 2      /* last-chunk and trailer section consumed */
#define ZLB_H1_CHUNK_DATA 1      /* *data_off, *data_len: a piece of payload inside buf */
#define ZLB_H1_CHUNK_AGAIN 0     /* everything consumed, need more bytes */
#define ZLB_H1_CHUNK_ERROR (-1)  /* invalid chunk framing */

/* Advances over buf[0..len). Sets *consumed to the bytes eaten (payload
 * included). Chunk sizes are hex without overflow (max 2^62); chunk
 * extensions must be `;token[=token|quoted-string]` or are errors; lines end
 * in CRLF; trailer fields follow header rules. Never reads past len. */
int zlb_h1_chunked_step(zlb_h1_chunked *c, const char *buf, size_t len, size_t *consumed,
                        size_t *data_off, size_t *data_len);

#endif
