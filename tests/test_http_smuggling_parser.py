"""Request-smuggling cases at the parser level.

Each case is a request a front end and a back end could frame differently
(CL.TE, TE.CL, TE.TE obfuscations, duplicate Content-Length, chunk-size
overflow, header injection via CR/LF, oversized heads). The parser must
either reject it or frame it in exactly one way, which the test states:
head length, body kind, Content-Length, and for chunked bodies the decoded
payload and where the message ends. Every case is also fed one byte at a
time, which must not change the verdict.
"""

from __future__ import annotations

import pytest

from zlbfast import _native

if not hasattr(_native, "h1_parse_request"):
    pytest.fail('zlbfast._native lacks the HTTP/1.1 surface: _native.pyx must include "_http1.pxi"', pytrace=False)

H = b"POST / HTTP/1.1\r\nHost: a\r\n"

# (id, request bytes, expected error status)
REJECTED = [
    ("CL.TE", H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400),
    ("TE.CL", H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n", 400),
    ("TE.TE space before colon", H + b"Transfer-Encoding : chunked\r\n\r\n", 400),
    ("TE.TE xchunked", H + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    ("TE.TE chunked, identity", H + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("TE.TE identity", H + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("TE.TE two fields", H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", 400),
    ("TE.TE obs-fold", H + b"Transfer-Encoding:\r\n chunked\r\n\r\n", 400),
    ("TE.TE leading space line", b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n", 400),
    ("TE.TE vertical tab", H + b"Transfer-Encoding:\x0bchunked\r\n\r\n", 400),
    ("TE.TE form feed", H + b"Transfer-Encoding:\x0cchunked\r\n\r\n", 400),
    ("TE.TE quoted", H + b'Transfer-Encoding: "chunked"\r\n\r\n', 400),
    ("TE.TE trailing NUL", H + b"Transfer-Encoding: chunked\x00\r\n\r\n", 400),
    ("TE.TE bare LF before", H + b"X: y\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("TE.TE empty element", H + b"Transfer-Encoding: ,chunked\r\n\r\n", 400),
    ("TE.TE gzip, chunked unsupported", H + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("CL differing duplicates", H + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("CL list", H + b"Content-Length: 5, 0\r\n\r\n", 400),
    ("CL same list", H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("CL plus sign", H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("CL overflow wraps to 0", H + b"Content-Length: 18446744073709551616\r\n\r\n", 400),
    ("CL space inside", H + b"Content-Length: 1 0\r\n\r\n", 400),
    ("CL bare CR", H + b"Content-Length: 1\r0\r\n\r\n", 400),
    ("header injection bare LF", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nContent-Length: 5\r\n\r\n", 400),
    ("header injection bare CR", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rContent-Length: 5\r\n\r\n", 400),
    ("request line injection", b"GET /a\rHTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("request line LF", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("Host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("oversized head", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 100 + b"\r\n", 431),
    ("oversized request line", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
]


@pytest.mark.parametrize("data,status", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected(data, status):
    res = _native.h1_parse_request(data)
    assert isinstance(res, tuple) and res[0] == status, res
    assert res[1]
    if len(data) < 2000:  # byte by byte is quadratic in the pieces list only
        assert _native.h1_feed_request([data[i : i + 1] for i in range(len(data))]) == res


# (id, request bytes, body kind, content_length, decoded payload, total message length)
FRAMED = [
    (
        "identical duplicate CL",
        H + b"Content-Length: 5\r\ncontent-length: 5\r\n\r\nhelloGET",
        "length",
        5,
        b"hello",
        71,
    ),
    ("CL leading zeros", H + b"Content-Length: 005\r\n\r\nhello", "length", 5, b"hello", 54),
    (
        "TE with OWS",
        H + b"Transfer-Encoding: \t chunked \t\r\n\r\n5\r\nhello\r\n0\r\n\r\nX",
        "chunked",
        0,
        b"hello",
        None,
    ),
    ("TE mixed case", H + b"transfer-encoding: ChUnKeD\r\n\r\n0\r\n\r\n", "chunked", 0, b"", None),
    ("GET without framing has no body", b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n", "none", 0, b"", 27),
    (
        "chunk size 2^62 is representable",
        H + b"Transfer-Encoding: chunked\r\n\r\n4000000000000000\r\n",
        "chunked",
        0,
        None,
        None,
    ),
]


@pytest.mark.parametrize("data,body,cl,payload,end", [c[1:] for c in FRAMED], ids=[c[0] for c in FRAMED])
def test_unambiguous_framing(data, body, cl, payload, end):
    head = _native.h1_parse_request(data)
    assert isinstance(head, dict), head
    assert _native.h1_feed_request([data[i : i + 1] for i in range(len(data))]) == head
    assert (head["body"], head["content_length"]) == (body, cl)
    assert data[head["head_len"] - 4 : head["head_len"]] == b"\r\n\r\n"
    rest = data[head["head_len"] :]
    if body == "chunked":
        res = _native.h1_dechunk(rest)
        if payload is None:
            assert res is None  # waits for 2^62 bytes, nothing overflowed
        else:
            assert res[0] == payload
            assert rest[res[1] :] in (b"", b"X")
    else:
        assert rest[:cl] == payload
        assert head["head_len"] + cl == end


# Chunk framing attacks on the body scanner: (id, body bytes, error expected)
CHUNK_REJECTED = [
    ("size overflow to 0", b"10000000000000000\r\n\r\n0\r\n\r\n"),
    ("size overflow to 1", b"10000000000000001\r\nx\r\n0\r\n\r\n"),
    ("size above 2^62", b"4000000000000001\r\n"),
    ("size with 0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("size with space", b"5 \r\nhello\r\n0\r\n\r\n"),
    ("size with sign", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("bare LF after size", b"5\nhello\r\n0\r\n\r\n"),
    ("data longer than size", b"3\r\nhello\r\n0\r\n\r\n"),
    ("ext with bare LF", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
    ("ext with space", b"5; a=b\r\nhello\r\n0\r\n\r\n"),
    ("ext unterminated quote", b'5;a="b\r\nhello\r\n0\r\n\r\n'),
    ("trailer obs-fold", b"0\r\nA: b\r\n c\r\n\r\n"),
    ("trailer bare LF", b"0\r\nA: b\nB: c\r\n\r\n"),
    ("oversized trailer", b"0\r\n" + b"A: bbbbbbbbbbbbbbbbbbbbbbbbb\r\n" * 400 + b"\r\n"),
]


@pytest.mark.parametrize("data", [c[1] for c in CHUNK_REJECTED], ids=[c[0] for c in CHUNK_REJECTED])
def test_chunked_rejected(data):
    res = _native.h1_dechunk(data)
    assert isinstance(res, str) and res, res
    assert _native.h1_dechunk_pieces([data[i : i + 1] for i in range(len(data))]) == res
