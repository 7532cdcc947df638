# HTTP/1.1 parser test surface (csrc/http1_parser.h). Included by _native.pyx.
#
# Test-facing only: the proxy runs the parser from C worker threads and never
# comes through here. These wrappers let Python tests (hypothesis against h11,
# smuggling cases, the atheris harness) drive the very same C code, whole or
# split into pieces the way reads would deliver them. Each call copies its
# input once and holds the GIL; nothing is kept between calls.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "http1_parser.h":
    enum:
        ZLB_H1_MAX_HEADERS_CAP
        ZLB_H1_OK
        ZLB_H1_AGAIN
        ZLB_H1_ERROR
        ZLB_H1_CHUNK_DONE
        ZLB_H1_CHUNK_DATA
        ZLB_H1_CHUNK_AGAIN
        ZLB_H1_CHUNK_ERROR
        ZLB_H1_F_CLOSE
        ZLB_H1_F_EXPECT_100
        ZLB_H1_F_UPGRADE
        ZLB_H1_F_HAS_HOST
        ZLB_H1_F_KEEP_ALIVE
        ZLB_H1_F_CONN_TOKENS
    enum zlb_h1_hdr:
        ZLB_H1_HDR_OTHER
        ZLB_H1_HDR_CONTENT_LENGTH
        ZLB_H1_HDR_TRANSFER_ENCODING
        ZLB_H1_HDR_CONNECTION
        ZLB_H1_HDR_UPGRADE
        ZLB_H1_HDR_EXPECT
        ZLB_H1_HDR_HOST
        ZLB_H1_HDR_KEEP_ALIVE
        ZLB_H1_HDR_PROXY_CONNECTION
        ZLB_H1_HDR_TE
        ZLB_H1_HDR_TRAILER
        ZLB_H1_HDR_X_FORWARDED_FOR
        ZLB_H1_HDR_X_FORWARDED_PROTO
        ZLB_H1_HDR_X_FORWARDED_CLIENT_CERT
        ZLB_H1_HDR_X_REQUEST_ID
        ZLB_H1_HDR_TRACEPARENT
    ctypedef struct zlb_span:
        uint32_t off
        uint32_t len
    ctypedef struct zlb_h1_header:
        zlb_span name
        zlb_span value
        uint32_t id
    ctypedef struct zlb_h1_limits:
        uint32_t max_request_line
        uint32_t max_head
        uint32_t max_headers
    ctypedef struct zlb_h1_head:
        zlb_span method
        zlb_span target
        zlb_span host
        int status
        zlb_span reason
        int version_minor
        uint32_t flags
        int body
        uint64_t content_length
        uint32_t head_len
        uint32_t n_headers
        zlb_h1_header headers[ZLB_H1_MAX_HEADERS_CAP]
        int error_status
        const char *error
    ctypedef struct zlb_h1_parser:
        pass
    ctypedef struct zlb_h1_chunked:
        uint32_t max_line
        uint32_t max_trailers
        const char *error
    void zlb_h1_parser_init_request(zlb_h1_parser *p, const zlb_h1_limits *limits)
    void zlb_h1_parser_init_response(zlb_h1_parser *p, const zlb_h1_limits *limits, int request_was_head)
    int zlb_h1_parse(zlb_h1_parser *p, const char *buf, size_t len, zlb_h1_head *out)
    void zlb_h1_chunked_init(zlb_h1_chunked *c)
    int zlb_h1_chunked_step(zlb_h1_chunked *c, const char *buf, size_t len, size_t *consumed,
                            size_t *data_off, size_t *data_len)

H1_F_CLOSE = ZLB_H1_F_CLOSE
H1_F_EXPECT_100 = ZLB_H1_F_EXPECT_100
H1_F_UPGRADE = ZLB_H1_F_UPGRADE
H1_F_HAS_HOST = ZLB_H1_F_HAS_HOST
H1_F_KEEP_ALIVE = ZLB_H1_F_KEEP_ALIVE
H1_F_CONN_TOKENS = ZLB_H1_F_CONN_TOKENS
# The lowercase field names the parser gives an id (enum zlb_h1_hdr); every
# other name gets H1_HDR_OTHER. Spelled out here, apart from the C switch
# that classifies them, so that tests can hold one against the other.
H1_HDR_OTHER = ZLB_H1_HDR_OTHER
H1_HEADER_IDS = {
    b"content-length": ZLB_H1_HDR_CONTENT_LENGTH,
    b"transfer-encoding": ZLB_H1_HDR_TRANSFER_ENCODING,
    b"connection": ZLB_H1_HDR_CONNECTION,
    b"upgrade": ZLB_H1_HDR_UPGRADE,
    b"expect": ZLB_H1_HDR_EXPECT,
    b"host": ZLB_H1_HDR_HOST,
    b"keep-alive": ZLB_H1_HDR_KEEP_ALIVE,
    b"proxy-connection": ZLB_H1_HDR_PROXY_CONNECTION,
    b"te": ZLB_H1_HDR_TE,
    b"trailer": ZLB_H1_HDR_TRAILER,
    b"x-forwarded-for": ZLB_H1_HDR_X_FORWARDED_FOR,
    b"x-forwarded-proto": ZLB_H1_HDR_X_FORWARDED_PROTO,
    b"x-forwarded-client-cert": ZLB_H1_HDR_X_FORWARDED_CLIENT_CERT,
    b"x-request-id": ZLB_H1_HDR_X_REQUEST_ID,
    b"traceparent": ZLB_H1_HDR_TRACEPARENT,
}
# Indexed by enum zlb_h1_body.
H1_BODY_KINDS = ("none", "length", "chunked", "close")


cdef bytes _h1_span(const char *buf, zlb_span s):
    return buf[s.off:s.off + s.len]


cdef dict _h1_head_dict(const char *buf, const zlb_h1_head *h, bint response):
    """The parsed head as plain Python values (bytes cut from buf)."""
    cdef uint32_t i
    d = {
        "version_minor": h.version_minor,
        "headers": [(_h1_span(buf, h.headers[i].name), _h1_span(buf, h.headers[i].value))
                    for i in range(h.n_headers)],
        "header_ids": [h.headers[i].id for i in range(h.n_headers)],
        "body": H1_BODY_KINDS[h.body],
        "content_length": h.content_length,
        "head_len": h.head_len,
        "flags": h.flags,
    }
    if response:
        d["status"] = h.status
        d["reason"] = _h1_span(buf, h.reason)
    else:
        d["method"] = _h1_span(buf, h.method)
        d["target"] = _h1_span(buf, h.target)
        d["host"] = _h1_span(buf, h.host)
    return d


cdef object _h1_feed(list pieces, bint response, bint request_was_head, uint32_t max_request_line,
                     uint32_t max_head, uint32_t max_headers):
    """Calls zlb_h1_parse once per piece on the growing prefix, as a reader
    appending to its buffer would. Returns the head dict, (status, message)
    on error, or None when the pieces end before the head does."""
    cdef bytes data = b"".join(pieces)
    cdef const char *buf = data
    cdef zlb_h1_parser p
    cdef zlb_h1_head h
    cdef zlb_h1_limits lim
    cdef size_t upto = 0
    cdef int rc = ZLB_H1_AGAIN
    lim.max_request_line = max_request_line
    lim.max_head = max_head
    lim.max_headers = max_headers
    if response:
        zlb_h1_parser_init_response(&p, &lim, request_was_head)
    else:
        zlb_h1_parser_init_request(&p, &lim)
    for piece in pieces:
        upto += len(piece)
        rc = zlb_h1_parse(&p, buf, upto, &h)
        if rc != ZLB_H1_AGAIN:
            break
    if rc == ZLB_H1_AGAIN:
        return None
    if rc == ZLB_H1_ERROR:
        return (h.error_status, h.error.decode())
    return _h1_head_dict(buf, &h, response)


def h1_feed_request(list pieces not None, *, uint32_t max_request_line=8192, uint32_t max_head=65536,
                    uint32_t max_headers=100):
    """Parses a request head delivered as `pieces` (list of bytes)."""
    return _h1_feed(pieces, False, False, max_request_line, max_head, max_headers)


def h1_parse_request(bytes data not None, *, uint32_t max_request_line=8192, uint32_t max_head=65536,
                     uint32_t max_headers=100):
    """Parses a request head: dict | (error_status, message) | None (incomplete)."""
    return _h1_feed([data], False, False, max_request_line, max_head, max_headers)


def h1_parse_repeat(bytes data not None, unsigned long long n):
    """Micro-benchmark hook: parses the request head `data` n times in a C loop, each time with a fresh
    parser as the proxy does per request; returns how many parses completed. Time the call."""
    cdef const char *buf = data
    cdef size_t length = len(data)
    cdef zlb_h1_parser p
    cdef zlb_h1_head h
    cdef unsigned long long i, ok = 0
    for i in range(n):
        zlb_h1_parser_init_request(&p, NULL)
        if zlb_h1_parse(&p, buf, length, &h) == ZLB_H1_OK:
            ok += 1
    return ok


def h1_feed_response(list pieces not None, *, bint request_was_head=False, uint32_t max_request_line=8192,
                     uint32_t max_head=65536, uint32_t max_headers=100):
    """Parses a response head delivered as `pieces` (list of bytes)."""
    return _h1_feed(pieces, True, request_was_head, max_request_line, max_head, max_headers)


def h1_parse_response(bytes data not None, *, bint request_was_head=False, uint32_t max_request_line=8192,
                      uint32_t max_head=65536, uint32_t max_headers=100):
    """Parses a response head: dict | (error_status, message) | None (incomplete)."""
    return _h1_feed([data], True, request_was_head, max_request_line, max_head, max_headers)


def h1_dechunk_pieces(list pieces not None, *, uint32_t max_line=4096, uint32_t max_trailers=8192):
    """Runs the chunked scanner over `pieces` the way the proxy does: bytes it
    consumed are dropped, the rest waits for the next piece. Returns
    (payload, bytes consumed) at the end of the body, the error message on
    invalid framing, or None when the pieces end first."""
    cdef zlb_h1_chunked c
    cdef size_t used = 0, off = 0, dlen = 0, total = 0
    cdef const char *buf
    cdef int rc
    cdef bytes pending = b""
    zlb_h1_chunked_init(&c)
    c.max_line = max_line
    c.max_trailers = max_trailers
    body = bytearray()
    for piece in pieces:
        pending += piece
        # Every DATA verdict eats at least one byte, so this ends within
        # len(pending) + 1 rounds; AGAIN eats everything.
        while pending:
            buf = pending
            rc = zlb_h1_chunked_step(&c, buf, len(pending), &used, &off, &dlen)
            if rc == ZLB_H1_CHUNK_ERROR:
                return c.error.decode()
            if rc == ZLB_H1_CHUNK_DATA:
                body += buf[off:off + dlen]
            total += used
            pending = pending[used:]
            if rc == ZLB_H1_CHUNK_DONE:
                return (bytes(body), total)
    return None


def h1_dechunk(bytes data not None, *, uint32_t max_line=4096, uint32_t max_trailers=8192):
    """Decodes a chunked body at the start of data: (payload, consumed) | error message | None."""
    return h1_dechunk_pieces([data], max_line=max_line, max_trailers=max_trailers)
