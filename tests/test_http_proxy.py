"""The HTTP/1.1 proxy of the C workers end to end: real backends, the real
engine (one worker, so counts are exact), raw client sockets.

Balancing per request, routing, rewrites and header operations, streamed
bodies of 64 MiB, retries and timeouts, outlier ejection on 5xx, upgrades,
pipelining and 100-continue, forwarding headers, malformed requests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from dataclasses import replace

from tests.httputil import (
    MIB,
    NO_EJECTION,
    Client,
    Reader,
    Received,
    RecordingUpstream,
    build_request,
    cluster,
    http_config,
    parse_head,
    pattern,
    pattern_sha,
    read_body,
    read_head,
    start,
)
from tests.netutil import DEADLINE_S, Backend, wait_for
from zlbfast import _native
from zlbfast.model import (
    CircuitBreakers,
    HeaderOps,
    HttpOptions,
    OutlierDetection,
    Redirect,
    RetryPolicy,
    Route,
    ValueMatch,
    VirtualHost,
    WeightedCluster,
)


def to(*names: str) -> tuple[WeightedCluster, ...]:
    return tuple(WeightedCluster(n) for n in names)


def builtin(n: int, prefix: str = "b", **kw: object) -> list[_native.BuiltinBackend]:
    return [_native.BuiltinBackend(label=f"{prefix}{i}", **kw) for i in range(n)]  # type: ignore[arg-type]


def addrs(backends: list[_native.BuiltinBackend]) -> list[tuple[str, int]]:
    return [(b.host, b.port) for b in backends]


# ---- balancing -------------------------------------------------------------------------------------------------


def test_round_robin_per_request_over_one_keepalive_connection(engine_factory):
    bs = builtin(3)
    try:
        eng, port = start(engine_factory, http_config([cluster("c", addrs(bs))], [Route(clusters=to("c"))]))
        labels: dict[str, int] = {}
        with Client(port) as cl:
            for _ in range(30):
                r = cl.request("GET", "/")
                assert r.status == 200
                labels[r.header("x-backend")] = labels.get(r.header("x-backend"), 0) + 1
        assert labels == {"b0": 10, "b1": 10, "b2": 10}
        st = eng.stats()
        assert st["conns_accepted"] == 1
        assert st["http_requests"] == 30 and st["http_2xx"] == 30
        # One upstream connection per endpoint, reused for the other nine requests.
        assert st["http_upstream_reused"] == 27
        assert [b.connections for b in bs] == [1, 1, 1]
    finally:
        for b in bs:
            b.stop()


def test_weighted_clusters_split_90_10(engine_factory):
    heavy, light = _native.BuiltinBackend(label="heavy"), _native.BuiltinBackend(label="light")
    try:
        cfg = http_config([cluster("h", [(heavy.host, heavy.port)]), cluster("l", [(light.host, light.port)])],
                          [Route(clusters=(WeightedCluster("h", 90), WeightedCluster("l", 10)))])
        _, port = start(engine_factory, cfg)
        n = 2000
        res = _native.run_load("127.0.0.1", port, connections=4, duration=30, max_requests=n,
                               label_header="x-backend")
        assert sum(res.errors.values()) == 0, res.errors
        assert res.requests == n
        # Binomial(2000, 0.1): mean 200, sd 13.4; 5 sd either side.
        assert 133 <= res.labels.get("light", 0) <= 267, res.labels
        assert res.labels.get("heavy", 0) + res.labels.get("light", 0) == n
    finally:
        heavy.stop()
        light.stop()


# ---- routing -------------------------------------------------------------------------------------------------------


def test_routing_matches_actions_rewrites_and_header_ops(engine_factory):
    def answer_main(req: Received):
        return 200, [("x-upstream", "main"), ("x-internal", "secret"), ("server", "up")], req.target.encode()

    with RecordingUpstream("main", answer_main) as main, RecordingUpstream("canary") as canary:
        routes = (
            Route(name="hdr", path="/", headers=(ValueMatch("x-canary", "exact", "1"),), clusters=to("canary")),
            Route(name="qry", path="/q", query=(ValueMatch("v", "exact", "2"),), clusters=to("canary")),
            Route(name="direct", path_kind="exact", path="/direct", direct_status=203, direct_body="hello\n"),
            Route(name="redir", path="/old", redirect=Redirect(301, "https", "new.example", "/new")),
            Route(name="api", path="/api/", prefix_rewrite="/v2/", host_rewrite="internal.svc",
                  header_ops=HeaderOps(request_add=(("x-added", "1"),), request_set=(("x-set", "ours"),),
                                       request_remove=("x-secret",), response_add=(("x-resp", "yes"),),
                                       response_set=(("server", "zlbfast"),), response_remove=("x-internal",)),
                  clusters=to("main")),
            Route(name="default", path="/", clusters=to("main")),
        )
        strict = VirtualHost("strict", ("strict.example",), (Route(path="/x", clusters=to("main")),))
        cfg = http_config([cluster("main", [main.addr]), cluster("canary", [canary.addr])], routes, vhosts=[strict])
        eng, port = start(engine_factory, cfg)
        with Client(port) as cl:
            r = cl.request("GET", "/p", [("X-Canary", "1")])
            assert (r.status, r.header("x-upstream")) == (200, "canary")
            r = cl.request("GET", "/p", [("X-Canary", "2")])
            assert (r.status, r.header("x-upstream")) == (200, "main")
            r = cl.request("GET", "/q?a=1&v=2")
            assert r.header("x-upstream") == "canary"
            r = cl.request("GET", "/q?v=3")
            assert r.header("x-upstream") == "main"

            r = cl.request("GET", "/direct")
            assert (r.status, r.body) == (203, b"hello\n")
            r = cl.request("GET", "/old/page")
            assert r.status == 301
            assert r.header("location") == "https://new.example/new"

            r = cl.request("GET", "/api/users?id=7", [("X-Secret", "pw"), ("X-Set", "theirs"), ("Host", "a.b")])
            assert r.status == 200
            assert r.body == b"/v2/users?id=7"
            assert r.header("x-resp") == "yes"
            assert r.head.all("server") == ["zlbfast"]
            assert r.header("x-internal") is None

            # Host picks the virtual host: strict.example has only /x.
            r = cl.request("GET", "/x", host="strict.example")
            assert r.status == 200
            r = cl.request("GET", "/y", host="strict.example")
            assert r.status == 404
            # A 404 keeps the connection usable.
            r = cl.request("GET", "/p")
            assert r.header("x-upstream") == "main"

        api = [q for q in main.requests if q.target.startswith("/v2/")]
        assert len(api) == 1
        q = api[0]
        assert q.all("host") == ["internal.svc"]
        assert q.get("x-secret") is None
        assert q.all("x-added") == ["1"]
        assert q.all("x-set") == ["ours"]
        # Only requests routed to the clusters reached them.
        assert [x.target for x in canary.requests] == ["/p", "/q?a=1&v=2"]
        assert [x.target for x in main.requests] == ["/p", "/q?v=3", "/v2/users?id=7", "/x", "/p"]
        st = eng.stats()
        assert st["http_4xx"] == 1 and st["http_3xx"] == 1


# ---- large bodies --------------------------------------------------------------------------------------------------


class Digest:
    """sha256 and length of a streamed body."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.size = 0

    def update(self, b: bytes) -> None:
        self.size += len(b)
        self.h.update(b)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


class HashingUpstream:
    """Hashes each request body it receives (Content-Length or chunked) and
    answers with `x-want` bytes of pattern(b"down"), Content-Length framed,
    or chunked when the request asks with x-chunked."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int, str]] = []  # (framing, size, sha256)
        self.lock = threading.Lock()
        self.backend = Backend(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        r = Reader(conn)
        while True:
            try:
                head = read_head(r)
            except EOFError:
                return
            digest = Digest()
            read_body(r, head, is_response=False, sink=digest.update)
            framing = "chunked" if head.get("transfer-encoding") else "length"
            with self.lock:
                self.got.append((framing, digest.size, digest.hexdigest()))
            want = int(head.get("x-want") or 0)
            if head.get("x-chunked"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for piece in pattern(b"down", want):
                    conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                conn.sendall(b"0\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % want)
                for piece in pattern(b"down", want):
                    conn.sendall(piece)


def test_match_host_port_picks_virtual_hosts_by_host_and_port(engine_factory):
    """With match_host_port the Host's port takes part in choosing the virtual host (Envoy's default); without it the
    port is dropped before matching."""
    with (RecordingUpstream("with_port") as a, RecordingUpstream("without_port") as b,
          RecordingUpstream("suffix") as c, RecordingUpstream("any") as d):
        clusters = [cluster(up.label, [up.addr]) for up in (a, b, c, d)]

        def vhosts(with_ports: bool) -> list[VirtualHost]:
            port_domains = ("a.example:8080", "[::1]:8080") if with_ports else ("b.example",)
            return [VirtualHost("with_port", port_domains, (Route(clusters=to("with_port")),)),
                    VirtualHost("without_port", ("a.example",), (Route(clusters=to("without_port")),)),
                    VirtualHost("suffix", ("*.example:8080",) if with_ports else ("*.example",),
                                (Route(clusters=to("suffix")),)),
                    VirtualHost("any", ("*",), (Route(clusters=to("any")),))]

        cfg = http_config(clusters, vhosts=vhosts(True))
        cfg = replace(cfg, listeners=(replace(cfg.listeners[0], match_host_port=True),))
        eng, port = start(engine_factory, cfg)
        expect = {"a.example:8080": "with_port", "A.Example:8080": "with_port", "[::1]:8080": "with_port",
                  "a.example": "without_port", "a.example:9090": "any", "x.example:8080": "suffix",
                  "x.example": "any", "other:8080": "any"}
        with Client(port) as cl:
            got = {host: cl.request("GET", "/", host=host).header("x-upstream") for host in expect}
        assert got == expect
        eng.apply(http_config(clusters, vhosts=vhosts(False)))  # type: ignore[attr-defined]
        # Only the routing changed: the listener keeps its socket (its ephemeral port) and the snapshot brings it.
        assert eng.listener_port("web") == port  # type: ignore[attr-defined]
        expect = {"a.example:8080": "without_port", "a.example:9090": "without_port", "x.example:8080": "suffix",
                  "b.example:1": "with_port", "other:8080": "any"}
        with Client(port) as cl:
            got = {host: cl.request("GET", "/", host=host).header("x-upstream") for host in expect}
        assert got == expect


def test_64mib_bodies_stream_intact_both_framings_and_response(engine_factory):
    up = HashingUpstream()
    try:
        _, port = start(engine_factory, http_config([cluster("c", [(up.backend.host, up.backend.port)])],
                                                    [Route(clusters=to("c"), timeout_ms=60000)]))
        size = 64 * MIB
        up_sha = pattern_sha(b"up", size)
        with Client(port, timeout=60) as cl:
            # Content-Length request, 64 MiB response streamed back.
            cl.send(build_request("POST", "/cl", [("Content-Length", str(size)), ("x-want", str(size))]))
            for piece in pattern(b"up", size):
                cl.send(piece)
            got = Digest()
            r = cl.response("POST", sink=got.update)
            assert r.status == 200
            assert got.size == size and got.hexdigest() == pattern_sha(b"down", size)

            # Chunked request (1 MiB chunks plus a few odd-sized ones), chunked response, same connection.
            cl.send(build_request("POST", "/chunked", [("Transfer-Encoding", "chunked"), ("x-want", str(4 * MIB)),
                                                       ("x-chunked", "1")]))
            for piece in pattern(b"up", size):
                cl.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            cl.send(b"3\r\nabc\r\n1;ext=1\r\nd\r\n0\r\n\r\n")
            r = cl.response("POST")
            assert r.status == 200
            assert r.body == b"".join(pattern(b"down", 4 * MIB))
        tail_sha = hashlib.sha256(b"".join(pattern(b"up", size)) + b"abcd").hexdigest()
        assert up.got == [("length", size, up_sha), ("chunked", size + 4, tail_sha)]
    finally:
        up.backend.stop()


# ---- retries and timeouts ----------------------------------------------------------------------------------------


class DroppingUpstream:
    """Reads a request (head + Content-Length body); while `drop` > 0 it
    closes the connection without answering (and counts down), else it
    answers 200. Records (method, path, dropped) per request."""

    def __init__(self) -> None:
        self.drop = 0
        self.seen: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.backend = Backend(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        r = Reader(conn)
        while True:
            try:
                head = read_head(r)
                read_body(r, head, is_response=False)
            except EOFError:
                return
            with self.lock:
                dropped = self.drop > 0
                self.drop -= dropped
                self.seen.append((head.start[0], head.start[1], dropped))
            if dropped:
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def test_reset_retries_get_but_not_post(engine_factory):
    up = DroppingUpstream()
    try:
        policy = RetryPolicy(retry_on=("reset", "connect-failure"), num_retries=2)
        eng, port = start(engine_factory, http_config([cluster("c", [(up.backend.host, up.backend.port)])],
                                                      [Route(clusters=to("c"), retry=policy)]))
        up.drop = 1
        with Client(port) as cl:
            r = cl.request("POST", "/p", body=b"payload")
            assert r.status == 502
            assert cl.closed()
        assert up.seen == [("POST", "/p", True)]
        assert eng.stats()["http_retries"] == 0

        up.drop = 1
        with Client(port) as cl:
            r = cl.request("GET", "/g")
            assert (r.status, r.body) == (200, b"ok")
            # The connection the upstream kept is pooled: a second GET reuses it.
            up.drop = 0
            assert cl.request("GET", "/g2").status == 200
            # Now the pooled connection is closed under a request (the keep-alive race): GET retried.
            up.drop = 1
            assert cl.request("GET", "/g3").status == 200
            up.drop = 1
            r = cl.request("POST", "/p2", body=b"x")
            assert r.status == 502
        assert up.seen[1:] == [("GET", "/g", True), ("GET", "/g", False), ("GET", "/g2", False),
                               ("GET", "/g3", True), ("GET", "/g3", False), ("POST", "/p2", True)]
        assert eng.stats()["http_retries"] == 2
    finally:
        up.backend.stop()


def test_route_timeout_answers_504(engine_factory):
    slow = _native.BuiltinBackend(label="slow", delay=5.0)
    try:
        eng, port = start(engine_factory, http_config([cluster("c", [(slow.host, slow.port)])],
                                                      [Route(clusters=to("c"), timeout_ms=200)]))
        with Client(port) as cl:
            r = cl.request("GET", "/")
            assert r.status == 504
            assert cl.closed()
        assert slow.connections == 1
        st = eng.stats()
        assert st["http_request_timeouts"] == 1 and st["http_5xx"] == 1
    finally:
        slow.stop()


def test_per_try_timeout_retries_on_a_healthy_endpoint(engine_factory):
    slow = _native.BuiltinBackend(label="slow", delay=5.0)
    fast = _native.BuiltinBackend(label="fast")
    try:
        policy = RetryPolicy(retry_on=("5xx",), num_retries=1, per_try_timeout_ms=150)
        cfg = http_config([cluster("c", [(slow.host, slow.port), (fast.host, fast.port)], outlier=NO_EJECTION)],
                          [Route(clusters=to("c"), timeout_ms=5000, retry=policy)])
        eng, port = start(engine_factory, cfg)
        with Client(port) as cl:
            for _ in range(4):
                r = cl.request("GET", "/")
                assert (r.status, r.header("x-backend")) == (200, "fast")
        assert fast.requests == 4
        st = eng.stats()
        # Every try that went to the slow endpoint timed out and was retried.
        assert st["http_retries"] >= 1
        assert st["http_retries"] == st["http_request_timeouts"]
        wait_for(lambda: slow.connections == st["http_retries"], what="one connection per timed-out try")
    finally:
        slow.stop()
        fast.stop()


def test_slowloris_cut_at_header_timeout(engine_factory):
    b = _native.BuiltinBackend(label="b")
    try:
        eng, port = start(engine_factory, http_config([cluster("c", [(b.host, b.port)])], [Route(clusters=to("c"))],
                                                      http=HttpOptions(header_timeout_ms=300)))
        with Client(port) as cl:
            cl.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
            got = b""
            cl.sock.settimeout(0.05)
            # Dribble one header byte at a time until the proxy answers (bounded).
            for i in range(400):
                try:
                    cl.send(b"X-Slow-%d: 1\r\n" % i)
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    got = cl.sock.recv(65536)
                except TimeoutError:
                    continue
                break
            cl.sock.settimeout(DEADLINE_S)
            cl.r.buf += got
            r = cl.response()
            assert r.status == 408
            assert r.header("connection") == "close"
            assert cl.closed()
        assert b.requests == 0
        st = eng.stats()
        assert st["http_header_timeouts"] == 1
        wait_for(lambda: eng.active_connections() == 0, what="slowloris connection closed")
    finally:
        b.stop()


def test_backend_answering_503_is_ejected(engine_factory):
    bad = _native.BuiltinBackend(label="bad", status=503)
    good = _native.BuiltinBackend(label="good")
    try:
        outlier = OutlierDetection(consecutive_failures=3, base_ejection_time_ms=60000, max_ejection_percent=50)
        cfg = http_config([cluster("c", [(bad.host, bad.port), (good.host, good.port)], outlier=outlier)],
                          [Route(clusters=to("c"))])
        eng, port = start(engine_factory, cfg)
        statuses = []
        with Client(port) as cl:
            for _ in range(30):
                statuses.append(cl.request("GET", "/").status)
        assert statuses.count(503) == 3
        assert bad.requests == 3
        assert good.requests == 27
        eps = {f"{e['address']}": e for e in eng.endpoints()["c"]}
        assert eps[bad.address]["ejected_until_ns"] > 0
        assert eps[good.address]["ejected_until_ns"] == 0
        assert _native.total_ejections() >= 1
    finally:
        bad.stop()
        good.stop()


# ---- upgrades, pipelining, 100-continue ----------------------------------------------------------------------------


def test_websocket_upgrade_tunnel_round_trip(engine_factory):
    heads: list[bytes] = []

    def ws(conn: socket.socket) -> None:
        r = Reader(conn)
        head = read_head(r)
        heads.append(head.raw)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Accept: abc\r\n\r\nserver-hello")
        # Echo upper-cased until the client goes away.
        while True:
            if not r.buf:
                try:
                    r._fill()
                except EOFError:
                    return
            data = bytes(r.buf)
            r.buf.clear()
            conn.sendall(data.upper())

    up = Backend(ws)
    try:
        eng, port = start(engine_factory, http_config([cluster("c", [(up.host, up.port)])], [Route(clusters=to("c"))]))
        with Client(port) as cl:
            cl.send(build_request("GET", "/chat", [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"),
                                                   ("Sec-WebSocket-Key", "k")]) + b"early")
            head = read_head(cl.r)
            assert head.start[1] == "101"
            assert head.get("upgrade") == "websocket"
            assert [v.lower() for v in head.all("connection")] == ["upgrade"]
            assert cl.r.read_exact(len(b"server-helloEARLY")) == b"server-helloEARLY"
            for i in range(20):
                msg = b"frame-%d-" % i + bytes(range(97, 123)) * 100
                cl.send(msg)
                assert cl.r.read_exact(len(msg)) == msg.upper()
        up_head = parse_head(heads[0])
        assert up_head.get("upgrade") == "websocket"
        assert [v.lower() for v in up_head.all("connection")] == ["upgrade"]
        assert up_head.get("sec-websocket-key") == "k"
        assert eng.stats()["http_upgrades"] == 1
        wait_for(lambda: eng.active_connections() == 0, what="tunnel closed after the client left")
    finally:
        up.stop()


def test_pipelined_requests_answered_in_order(engine_factory):
    with RecordingUpstream("a") as a, RecordingUpstream("b") as b:
        _, port = start(engine_factory, http_config([cluster("c", [a.addr, b.addr])], [Route(clusters=to("c"))]))
        with Client(port) as cl:
            paths = [f"/r{i}" for i in range(8)]
            cl.send(b"".join(build_request("GET" if i % 2 else "POST", p, body=b"x" * i) for i, p in enumerate(paths)))
            bodies = [cl.response().body for _ in paths]
        assert [x.split(b":")[2] for x in bodies] == [p.encode() for p in paths]
        assert {x.split(b":")[0] for x in bodies} == {b"a", b"b"}
        got = sorted(a.requests + b.requests, key=lambda q: q.target)
        assert [(q.target, q.body) for q in got] == [(p, b"x" * i) for i, p in enumerate(paths)]


def test_expect_100_continue_forwarded(engine_factory):
    with RecordingUpstream("up", lambda q: (201, [], q.body[::-1])) as up:
        _, port = start(engine_factory, http_config([cluster("c", [up.addr])], [Route(clusters=to("c"))]))
        with Client(port) as cl:
            cl.send(build_request("PUT", "/obj", [("Expect", "100-continue"), ("Content-Length", "5")]))
            interim = read_head(cl.r)
            assert interim.start[1] == "100"
            cl.send(b"hello")
            r = cl.response("PUT")
            assert (r.status, r.body) == (201, b"olleh")
            # The connection stays usable.
            assert cl.request("GET", "/next").status == 201
        assert [(q.method, q.get("expect"), q.body) for q in up.requests] == [
            ("PUT", "100-continue", b"hello"), ("GET", None, b"")]


# ---- forwarding headers ------------------------------------------------------------------------------------------


def test_hop_by_hop_removed_forwarding_headers_and_ids(engine_factory):
    def answer(q: Received):
        return 200, [("Connection", "X-Up-Hop"), ("X-Up-Hop", "1"), ("Keep-Alive", "timeout=5"),
                     ("X-Up-Kept", "1")], b"ok"

    with RecordingUpstream("up", answer) as up:
        _, port = start(engine_factory, http_config([cluster("c", [up.addr])], [Route(clusters=to("c"))]))
        with Client(port) as cl:
            r = cl.request("GET", "/a", [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "300"),
                                         ("Proxy-Connection", "keep-alive"), ("TE", "trailers"),
                                         ("Upgrade", "h2c"), ("X-Kept", "1")])
            assert r.status == 200
            assert r.header("x-up-hop") is None and r.header("keep-alive") is None
            assert r.header("x-up-kept") == "1"
            cl.request("GET", "/b", [("X-Forwarded-For", "203.0.113.7"), ("X-Request-Id", "rid-1"),
                                     ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")])
            cl.request("GET", "/c", [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.7")])
        a, b, c = up.requests
        for name in ("connection", "x-hop", "keep-alive", "proxy-connection", "te", "upgrade"):
            assert a.get(name) is None, name
        assert a.get("x-kept") == "1"
        assert a.all("x-forwarded-for") == ["127.0.0.1"]
        assert a.all("x-forwarded-proto") == ["http"]
        assert re.fullmatch(r"[0-9a-f]{32}", a.get("x-request-id") or "")
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", a.get("traceparent") or "")
        assert b.all("x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
        assert b.all("x-request-id") == ["rid-1"]
        assert b.all("traceparent") == ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        # Two X-Forwarded-For fields are one list: the client goes once, at its end.
        assert ", ".join(c.all("x-forwarded-for")) == "198.51.100.1, 203.0.113.7, 127.0.0.1"
        # Generated ids differ per request.
        assert c.get("x-request-id") != a.get("x-request-id")


def test_x_forwarded_for_passes_unchanged_when_not_appending(engine_factory):
    with RecordingUpstream("up") as up:
        _, port = start(engine_factory, http_config([cluster("c", [up.addr])], [Route(clusters=to("c"))],
                                                    http=HttpOptions(append_x_forwarded_for=False)))
        with Client(port) as cl:
            assert cl.request("GET", "/a").status == 200
            assert cl.request("GET", "/b", [("X-Forwarded-For", "203.0.113.7")]).status == 200
        a, b = up.requests
        assert (a.all("x-forwarded-for"), b.all("x-forwarded-for")) == ([], ["203.0.113.7"])


# ---- malformed requests --------------------------------------------------------------------------------------------


def test_malformed_requests_answered_and_closed(engine_factory):
    with RecordingUpstream("up") as up:
        eng, port = start(engine_factory, http_config(
            [cluster("c", [up.addr])], [Route(clusters=to("c"))],
            http=HttpOptions(max_request_line=1024, max_head=8192, max_headers=20)))
        cases = [
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
            (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
            (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
            (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n", 431),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        ]
        for raw, status in cases:
            with Client(port) as cl:
                cl.send(raw)
                r = cl.response()
                assert r.status == status, raw[:60]
                assert r.header("connection") == "close"
                assert cl.closed()
        assert up.requests == [] and up.raw == []
        st = eng.stats()
        assert st["http_bad_requests"] == len(cases)
        assert st["http_4xx"] + st["http_5xx"] == len(cases)
        # A good request still works.
        with Client(port) as cl:
            assert cl.request("GET", "/ok").status == 200


def test_bodiless_responses_and_http10_keep_connections_in_step(engine_factory):
    """HEAD (Content-Length but no body) and 204 must not make the proxy wait
    for body bytes or hand the next response's bytes to the wrong request."""

    def answer(q: Received):
        return (204, [], b"") if q.target == "/204" else (200, [], b"body-" + q.target.encode())

    with RecordingUpstream("up", answer) as up:
        _, port = start(engine_factory, http_config([cluster("c", [up.addr])], [Route(clusters=to("c"))]))
        with Client(port) as cl:
            r = cl.request("HEAD", "/h")
            assert (r.status, r.header("content-length"), r.body) == (200, "7", b"")
            assert cl.request("GET", "/204").status == 204
            assert cl.request("GET", "/g").body == b"body-/g"
        with Client(port) as cl:
            cl.send(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = cl.response()
            assert (r.head.start[0], r.header("connection"), r.body) == ("HTTP/1.0", "keep-alive", b"body-/ka")
            cl.send(b"GET /last HTTP/1.0\r\n\r\n")
            r = cl.response()
            assert (r.header("connection"), r.body) == ("close", b"body-/last")
            assert cl.closed()
        assert [q.target for q in up.requests] == ["/h", "/204", "/g", "/ka", "/last"]


# ---- circuit breakers, retry budget, accounting ----------------------------------------------------------------


def test_circuit_breaker_max_requests_answers_503_overflow(engine_factory):
    slow = _native.BuiltinBackend(label="slow", delay=1.0)
    clients: list[Client] = []
    try:
        breakers = CircuitBreakers(max_requests=2)
        eng, port = start(engine_factory, http_config(
            [cluster("c", [(slow.host, slow.port)], circuit_breakers=breakers)], [Route(clusters=to("c"))]))
        for _ in range(2):  # two requests in flight: the limit
            cl = Client(port)
            cl.send(build_request("GET", "/"))
            clients.append(cl)
        wait_for(lambda: slow.connections == 2, what="two requests at the backend")
        with Client(port) as third:
            r = third.request("GET", "/")
            assert r.status == 503 and r.header("x-zlbfast-overflow") == "requests"
        for cl in clients:
            assert cl.response().status == 200
        assert eng.stats()["http_overflow"] == 1
        st = eng.native.cluster_stats()["c"]
        assert st["overflow"] == 1 and st["rq_2xx"] == 2 and st["rq_5xx"] == 1
        assert slow.requests == 2
    finally:
        for cl in clients:
            cl.close()
        slow.stop()


def _retries_when_all_fail(engine_factory, breakers: CircuitBreakers, n: int) -> tuple[dict, dict]:
    """n concurrent GETs to a cluster whose endpoints all answer 503 after 200 ms, with 2 retries each
    allowed by the route: returns the engine stats and the cluster stats."""
    failing = builtin(2, prefix="f", status=503, delay=0.2)
    clients: list[Client] = []
    try:
        policy = RetryPolicy(retry_on=("5xx",), num_retries=2)
        eng, port = start(engine_factory, http_config(
            [cluster("c", addrs(failing), outlier=NO_EJECTION, circuit_breakers=breakers)],
            [Route(clusters=to("c"), retry=policy)]))
        clients = [Client(port) for _ in range(n)]
        for cl in clients:
            cl.send(build_request("GET", "/"))
        for cl in clients:
            assert cl.response().status == 503
        return eng.stats(), eng.native.cluster_stats()["c"]
    finally:
        for cl in clients:
            cl.close()
        for b in failing:
            b.stop()


def test_retry_budget_caps_retries_when_all_endpoints_fail(engine_factory):
    n = 10
    # Budget effectively off (100 % of active requests, at least 100): every request is retried twice.
    st, cs = _retries_when_all_fail(engine_factory, CircuitBreakers(retry_budget_percent=100,
                                                                    min_retry_concurrency=100), n)
    assert st["http_retries"] == 2 * n and cs["retry_overflow"] == 0
    # One retry in flight at a time for the whole cluster: the concurrent failures cannot all retry.
    st, cs = _retries_when_all_fail(engine_factory, CircuitBreakers(retry_budget_percent=1,
                                                                    min_retry_concurrency=1), n)
    assert cs["retry_overflow"] >= 1
    assert st["http_retries"] < 2 * n
    assert cs["retries"] == st["http_retries"]


def test_requests_feed_cluster_counters_histogram_and_access_log(engine_factory, tmp_path):
    backends = builtin(2)
    try:
        eng, port = start(engine_factory, http_config([cluster("c", addrs(backends))], [Route(clusters=to("c"))]))
        log_path = tmp_path / "access.log"
        eng.native.set_access_log(True)
        eng.native.start_access_log(os.open(log_path, os.O_WRONLY | os.O_CREAT), flush_interval_ms=10)
        with Client(port) as cl:
            for i in range(5):
                assert cl.request("GET", f"/item/{i}", host="shop.test").status == 200
            assert cl.request("GET", "/missing", host="nowhere.test").status == 200
        st = eng.native.cluster_stats()["c"]
        assert st["rq_2xx"] == 6 and st["rq_5xx"] == 0
        assert st["latency_buckets"][-1] == (float("inf"), 6)
        counts = [count for _, count in st["latency_buckets"]]
        assert counts == sorted(counts)  # cumulative
        assert st["bytes_received"] > 0 and st["bytes_sent"] > 0
        wait_for(lambda: len(log_path.read_text().splitlines()) == 6, what="6 access-log records")
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
        paths = [r["path"] for r in records]
        assert paths == [f"/item/{i}" for i in range(5)] + ["/missing"]
        first = records[0]
        assert (first["method"], first["authority"], first["status"], first["cluster"]) == ("GET", "shop.test",
                                                                                              200, "c")
        assert first["upstream"] in {f"{b.host}:{b.port}" for b in backends}
        assert first["bytes_sent"] > 0 and first["bytes_received"] > 0 and first["flags"] == []
    finally:
        for b in backends:
            b.stop()


def test_error_reply_survives_unread_request_bytes(engine_factory):
    """A head over the limit is answered 431 while the client is still sending: the lingering close keeps
    the answer from being destroyed by a reset."""
    b = builtin(1)
    try:
        _, port = start(engine_factory, http_config([cluster("c", addrs(b))], [Route(clusters=to("c"))],
                                                    http=HttpOptions(max_head=4096, max_request_line=1024)))
        s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
        with s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            big = b"x-filler: " + b"y" * 1000 + b"\r\n"
            try:
                for _ in range(200):  # ~200 KB: far past the limit, still being sent when the proxy answers
                    s.sendall(big)
            except (BrokenPipeError, ConnectionResetError):
                pass
            head = parse_head(Reader(s).read_until(b"\r\n\r\n"))
            assert head.start[1] == "431"
    finally:
        b[0].stop()
