"""Request smuggling through the HTTP/1.1 proxy, end to end.

Each case goes through the real engine to an upstream that records exactly
the bytes it received. A case is either rejected (an error status or a
close to the client, and no complete request from its bytes reaches the
upstream) or normalised: the recorded bytes, parsed on their own by h11,
are exactly the requests the client meant, and the client gets exactly one
answer per request. A sentinel request on a fresh connection afterwards
shows that nothing else arrives later.

tests/test_http_smuggling_parser.py covers the parser alone; this file
covers what the proxy does with its verdicts (what it forwards, what it
drops, whether the connections stay in step)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

from tests.httputil import (
    Client,
    Reader,
    RecordingUpstream,
    build_request,
    cluster,
    h11_requests,
    http_config,
    read_body,
    read_head,
    start,
)
from tests.netutil import Backend, wait_for
from zlbfast.model import HttpOptions, Route, WeightedCluster

LIMITS = HttpOptions(max_request_line=2048, max_head=8192, max_headers=32)

H = b"Host: a\r\n"


@dataclass(frozen=True)
class Case:
    raw: bytes
    forwarded: tuple[tuple[str, str, bytes], ...] = ()  # the requests the client meant, in order
    rejected: bool = True  # after the forwarded ones, the rest is refused and the connection closed


def accept(raw: bytes, *forwarded: tuple[str, str, bytes]) -> Case:
    return Case(raw, forwarded, rejected=False)


def reject(raw: bytes, *forwarded_before: tuple[str, str, bytes]) -> Case:
    return Case(raw, forwarded_before, rejected=True)


def post(*headers: bytes, body: bytes = b"", target: bytes = b"/") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\n" + H + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

CASES: dict[str, Case] = {
    # CL.TE and TE.CL: both framings at once is refused whatever the order.
    "cl-te": reject(post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED)),
    "te-cl": reject(post(b"Transfer-Encoding: chunked", b"Content-Length: 4",
                         body=b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n")),
    "cl-te-zero-length": reject(post(b"Content-Length: 0", b"Transfer-Encoding: chunked",
                                     body=b"5\r\nhello\r\n0\r\n\r\n")),
    # TE.TE: obfuscated Transfer-Encoding that one parser might honour and another ignore.
    "te-te-second-bogus": reject(post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: x", b"Content-Length: 5",
                                      body=b"hello")),
    "te-te-bogus-alone": reject(post(b"Transfer-Encoding: x", body=b"0\r\n\r\n" + SMUGGLED)),
    "te-xchunked": reject(post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n")),
    "te-chunked-x": reject(post(b"Transfer-Encoding: chunked, x", body=b"0\r\n\r\n")),
    "te-identity-chunked": reject(post(b"Transfer-Encoding: identity, chunked", body=b"0\r\n\r\n")),
    "te-chunked-twice": reject(post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n0\r\n\r\n")),
    "te-space-before-colon": reject(post(b"Transfer-Encoding : chunked", b"Content-Length: 5", body=b"hello")),
    "te-obs-fold": reject(post(b"X-Pad: 1", b" Transfer-Encoding: chunked", b"Content-Length: 5", body=b"hello")),
    "te-leading-space-first": reject(b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\n" + H +
                                     b"Content-Length: 5\r\n\r\nhello"),
    "te-vertical-tab": reject(post(b"Transfer-Encoding: chunked\x0b", body=b"0\r\n\r\n")),
    "te-quoted": reject(post(b'Transfer-Encoding: "chunked"', body=b"0\r\n\r\n")),
    "te-nul-in-name": reject(post(b"Transfer-Encoding\x00: chunked", b"Content-Length: 5", body=b"hello")),
    "te-http10": reject(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    # Obfuscations that are valid HTTP: forwarded, and the upstream reads them the same way.
    "te-tab-ows": accept(post(b"Transfer-Encoding:\tchunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
                         ("POST", "/", b"hello")),
    "te-uppercase": accept(post(b"Transfer-Encoding: CHUNKED", body=b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
                           ("POST", "/", b"hello"), ("GET", "/smuggled", b"")),
    "te-underscore-is-another-field": accept(post(b"Transfer_Encoding: chunked", b"Content-Length: 5",
                                                  body=b"0\r\n\r\n"), ("POST", "/", b"0\r\n\r\n")),
    # Content-Length games.
    "cl-duplicate-different": reject(post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!")),
    "cl-list-different": reject(post(b"Content-Length: 5, 6", body=b"hello!")),
    "cl-plus": reject(post(b"Content-Length: +5", body=b"hello")),
    "cl-negative": reject(post(b"Content-Length: -5", body=b"hello")),
    "cl-hex": reject(post(b"Content-Length: 0x5", body=b"hello")),
    "cl-overflow": reject(post(b"Content-Length: 18446744073709551621", body=b"hello")),
    "cl-empty": reject(post(b"Content-Length: ", body=b"hello")),
    "cl-inner-space": reject(post(b"Content-Length: 1 5", body=b"hello")),
    "cl-duplicate-identical": accept(post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello" + SMUGGLED),
                                     ("POST", "/", b"hello"), ("GET", "/smuggled", b"")),
    "cl-leading-zeros": accept(post(b"Content-Length: 005", body=b"hello"), ("POST", "/", b"hello")),
    "cl-body-hides-a-request": accept(post(b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
                                      ("POST", "/", SMUGGLED)),
    "get-with-body": accept(b"GET /g HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + SMUGGLED,
                            ("GET", "/g", b"abc"), ("GET", "/smuggled", b"")),
    # Chunk framing.
    "chunk-size-overflow": reject(post(b"Transfer-Encoding: chunked",
                                       body=b"1" + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n")),
    "chunk-size-over-2^62": reject(post(b"Transfer-Encoding: chunked", body=b"4000000000000001\r\nhello\r\n")),
    # Valid hex to us, but a peer that keeps 16 digits would see a last-chunk: re-framed canonically.
    "chunk-size-many-digits": accept(post(b"Transfer-Encoding: chunked",
                                          body=b"0" * 100 + b"5\r\nhello\r\n0\r\n\r\n"), ("POST", "/", b"hello")),
    "chunk-size-0x": reject(post(b"Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n0\r\n\r\n")),
    "chunk-size-negative": reject(post(b"Transfer-Encoding: chunked", body=b"-5\r\nhello\r\n0\r\n\r\n")),
    "chunk-size-empty": reject(post(b"Transfer-Encoding: chunked", body=b"\r\nhello\r\n0\r\n\r\n")),
    "chunk-data-too-long": reject(post(b"Transfer-Encoding: chunked", body=b"3\r\nhello\r\n0\r\n\r\n")),
    "chunk-bare-lf": reject(post(b"Transfer-Encoding: chunked", body=b"5\nhello\n0\n\n")),
    "chunk-ext-bare-cr": reject(post(b"Transfer-Encoding: chunked", body=b"5;a\rb\r\nhello\r\n0\r\n\r\n")),
    "chunk-ext-long": reject(post(b"Transfer-Encoding: chunked",
                                  body=b"5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n")),
    "chunk-last-not-terminated": reject(post(b"Transfer-Encoding: chunked", body=b"0\r\nX\r\n\r\n")),
    "chunk-trailer-cl": accept(post(b"Transfer-Encoding: chunked",
                                    body=b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n" + SMUGGLED),
                               ("POST", "/", b"hello"), ("GET", "/smuggled", b"")),
    "chunk-ext-valid": accept(post(b"Transfer-Encoding: chunked", body=b"5;name=\"v;x\"\r\nhello\r\n0\r\n\r\n"),
                              ("POST", "/", b"hello")),
    # CR/LF/NUL injection into the head.
    "header-bare-cr": reject(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: foo\rTransfer-Encoding: chunked\r\n\r\n"),
    "header-bare-lf": reject(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: foo\nContent-Length: 5\r\n\r\nhello"),
    "header-nul": reject(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: foo\x00bar\r\n\r\n"),
    "header-obs-fold": reject(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: foo\r\n bar\r\n\r\n"),
    "request-line-bare-lf": reject(b"GET / HTTP/1.1\nHost: a\n\n"),
    "request-line-cr-in-target": reject(b"GET /a\rHost: b HTTP/1.1\r\nHost: a\r\n\r\n"),
    "request-line-lf-in-target": reject(b"GET /a\nHost: b HTTP/1.1\r\nHost: a\r\n\r\n"),
    "request-line-space-in-target": reject(b"GET /a HTTP/1.1 /b HTTP/1.1\r\nHost: a\r\n\r\n"),
    "name-with-slash": reject(b"GET / HTTP/1.1\r\nHost: a\r\nContent/Length: 5\r\n\r\n"),
    "two-hosts": reject(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    # Oversized heads (limits above).
    "head-too-big": reject(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n"),
    "too-many-headers": reject(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(40))
                               + b"\r\n"),
    "request-line-too-long": reject(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    # A valid request, then a bad one pipelined behind it: the first is served, then the connection closes.
    "good-then-cl-te": reject(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" +
                              post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nX"),
                              ("GET", "/first", b"")),
    # Bytes after Connection: close are never read as a request.
    "after-connection-close": accept(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + SMUGGLED,
                                     ("GET", "/last", b"")),
}


def expected_body(method: str, target: str) -> bytes:
    return f"up:{method}:{target}".encode()


def upstream_requests(up: RecordingUpstream) -> list[tuple[str, str, bytes]]:
    """Every request in the recorded upstream bytes, connection by connection,
    by an independent h11 parse; a stream that is not clean fails the test
    unless it is an incomplete request the proxy aborted."""
    out = []
    for raw in up.raw:
        reqs, err = h11_requests(raw)
        assert err is None or "incomplete" in err.lower() or "closed" in err.lower(), (err, raw[:200])
        out += reqs
    return out


def sentinel(port: int, up: RecordingUpstream) -> None:
    """A request on a new connection: once it is answered, the worker has
    forwarded everything it was going to forward for earlier connections."""
    with Client(port) as cl:
        r = cl.request("GET", "/sentinel")
        assert r.status == 200
    wait_for(lambda: any(q.target == "/sentinel" for q in up.requests), what="sentinel at the upstream")


@pytest.mark.parametrize("name", list(CASES))
def test_smuggling_case(engine_factory, name):
    case = CASES[name]
    with RecordingUpstream("up") as up:
        eng, port = start(engine_factory, http_config([cluster("c", [up.addr])],
                                                      [Route(clusters=(WeightedCluster("c"),))], http=LIMITS))
        with Client(port) as cl:
            cl.send(case.raw)
            for method, target, _ in case.forwarded:
                r = cl.response(method)
                assert (r.status, r.body) == (200, expected_body(method, target))
            if case.rejected:
                # An error answer, or (if the proxy had to abort mid-body) a close; never a success.
                try:
                    r = cl.response()
                except (EOFError, ConnectionResetError):
                    pass
                else:
                    assert r.status >= 400, r
                    assert r.header("connection") == "close"
                assert cl.closed()
            elif b"Connection: close" in case.raw:
                assert cl.closed()
        sentinel(port, up)
        got = [q for q in upstream_requests(up) if q[1] != "/sentinel"]
        assert got == list(case.forwarded)
        assert up.errors == []
        wait_for(lambda: eng.active_connections() == 0, what="client connections closed")


def test_bad_chunk_after_dispatch_aborts_the_upstream_connection(engine_factory):
    """The head went upstream before the broken chunk arrived: the upstream
    connection is aborted (never reused), the client gets no success, and the
    upstream never sees a complete request."""
    with RecordingUpstream("up") as up:
        eng, port = start(engine_factory, http_config([cluster("c", [up.addr])],
                                                      [Route(clusters=(WeightedCluster("c"),))], http=LIMITS))
        with Client(port) as cl:
            cl.send(post(b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n"))
            wait_for(lambda: up.raw and up.raw[0].endswith(b"hello\r\n"), what="head and first chunk upstream")
            cl.send(b"1" + b"0" * 16 + b"\r\n" + SMUGGLED)
            try:
                r = cl.response()
            except (EOFError, ConnectionResetError):
                pass
            else:
                assert r.status >= 400
            assert cl.closed()
        sentinel(port, up)
        assert [q.target for q in up.requests] == ["/sentinel"]
        raw = up.raw
        assert len(raw) == 2  # the aborted connection was not pooled: the sentinel needed a new one
        assert SMUGGLED not in raw[0]
        assert h11_requests(raw[0])[0] == []
        wait_for(lambda: eng.active_connections() == 0, what="client connections closed")


class RawUpstream:
    """Answers every request with the given raw bytes (which may be broken or carry extras)."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = responses
        self.heads: list[str] = []
        self.backend = Backend(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        r = Reader(conn)
        while True:
            try:
                head = read_head(r)
                read_body(r, head, is_response=False)
            except EOFError:
                return
            self.heads.append(head.start[1])
            i = min(len(self.heads), len(self.responses)) - 1
            conn.sendall(self.responses[i])


def test_unsolicited_upstream_response_never_reaches_the_next_request(engine_factory):
    """An upstream that answers one request with two responses: the spare
    one must not be handed to the next request (response queue poisoning)."""
    poison = b"HTTP/1.1 200 OK\r\nx-poison: 1\r\ncontent-length: 6\r\n\r\npoison"
    up = RawUpstream([b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst" + poison,
                      b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"])
    try:
        eng, port = start(engine_factory, http_config([cluster("c", [(up.backend.host, up.backend.port)])],
                                                      [Route(clusters=(WeightedCluster("c"),))]))
        with Client(port) as cl:
            assert cl.request("GET", "/1").body == b"first"
            r = cl.request("GET", "/2")
            assert r.header("x-poison") is None
            assert r.body == b"next"
        assert up.heads == ["/1", "/2"]
        assert up.backend.accepted == 2
    finally:
        up.backend.stop()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nx-a: b\nx-c: d\r\ncontent-length: 0\r\n\r\n",
], ids=["cl-te", "cl-cl", "bare-lf"])
def test_ambiguous_upstream_response_is_502(engine_factory, response):
    up = RawUpstream([response])
    try:
        eng, port = start(engine_factory, http_config([cluster("c", [(up.backend.host, up.backend.port)])],
                                                      [Route(clusters=(WeightedCluster("c"),))]))
        with Client(port) as cl:
            r = cl.request("GET", "/")
            assert r.status == 502
            assert cl.closed()
        assert eng.stats()["http_5xx"] == 1
    finally:
        up.backend.stop()


def test_requests_in_one_segment_stay_in_step(engine_factory):
    """Many framings back to back in one write: each request is forwarded
    whole, in order, and answered once."""
    reqs = [
        build_request("POST", "/a", [("Transfer-Encoding", "chunked")], b"3\r\nabc\r\n0\r\n\r\n"),
        build_request("GET", "/b"),
        build_request("POST", "/c", body=b"x" * 1000),
        build_request("PUT", "/d", [("Transfer-Encoding", "chunked")], b"1;e=1\r\nz\r\n0\r\nT: 1\r\n\r\n"),
        build_request("GET", "/e", [("Content-Length", "0")]),
    ]
    want = [("POST", "/a", b"abc"), ("GET", "/b", b""), ("POST", "/c", b"x" * 1000), ("PUT", "/d", b"z"),
            ("GET", "/e", b"")]
    with RecordingUpstream("up") as up:
        _, port = start(engine_factory, http_config([cluster("c", [up.addr])],
                                                    [Route(clusters=(WeightedCluster("c"),))]))
        with Client(port) as cl:
            cl.send(b"".join(reqs))
            for method, target, _ in want:
                assert cl.response(method).body == expected_body(method, target)
        assert upstream_requests(up) == want
