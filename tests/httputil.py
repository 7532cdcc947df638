"""HTTP/1.1 helpers for the L7 proxy tests: a raw keep-alive client that can
send anything (pipelined, malformed, slow), a buffered socket reader shared by
clients and hand-written upstreams, an h11 upstream that records exactly the
bytes it received, and builders for HTTP listener configurations.

Everything runs on real sockets on 127.0.0.1; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import h11

from tests.netutil import DEADLINE_S, Backend
from zlbfast.model import (
    Cluster,
    Config,
    Endpoint,
    HttpOptions,
    Listener,
    OutlierDetection,
    Route,
    VirtualHost,
    WeightedCluster,
)

MIB = 1024 * 1024


# ---- configuration -------------------------------------------------------------------------------------------


def cluster(name: str, addresses: Iterable[tuple[str, int]], *, policy: str = "round_robin",
            **kw: object) -> Cluster:
    """A cluster of (host, port) endpoints; kw goes to model.Cluster."""
    eps = tuple(Endpoint(h, p) for h, p in addresses)
    return Cluster(name, eps, policy=policy, **kw)  # type: ignore[arg-type]


def http_config(clusters: Iterable[Cluster], routes: Iterable[Route] = (), *,
                vhosts: Iterable[VirtualHost] = (), http: HttpOptions | None = None,
                idle_timeout_ms: int = 3600000) -> Config:
    """One HTTP listener named "web" on an ephemeral loopback port, workers=1.
    `routes` form a catch-all virtual host appended after `vhosts`."""
    clusters = tuple(clusters)
    hosts = tuple(vhosts)
    routes = tuple(routes)
    if routes:
        hosts += (VirtualHost("default", ("*",), routes),)
    listener = Listener("web", "127.0.0.1", 0, "", idle_timeout_ms=idle_timeout_ms, protocol="http",
                        virtual_hosts=hosts, http=http or HttpOptions())
    return Config(listeners=(listener,), clusters=clusters, workers=1)


def routes_to(cluster: str) -> tuple[VirtualHost, ...]:
    """Virtual hosts that send every request to `cluster`."""
    return (VirtualHost("all", ("*",), (Route(clusters=(WeightedCluster(cluster),)),)),)


def start(engine_factory: Callable[..., object], cfg: Config) -> tuple[object, int]:
    """An in-process engine (one worker, for exact counts) running cfg, and the listener's port."""
    eng = engine_factory(workers=1)
    eng.apply(cfg)  # type: ignore[attr-defined]
    return eng, eng.listener_port("web")  # type: ignore[attr-defined]


NO_EJECTION = OutlierDetection(consecutive_failures=0)


# ---- a buffered socket -------------------------------------------------------------------------------------------


class Reader:
    """A socket with a receive buffer: lines, heads, exact lengths, chunked bodies.
    Reads raise EOFError when the peer closes before the wanted bytes arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self) -> None:
        if self.eof:
            raise EOFError("connection closed")
        data = self.sock.recv(4 * MIB)
        if not data:
            self.eof = True
            raise EOFError("connection closed")
        self.buf += data

    def read_until(self, sep: bytes, limit: int = 4 * MIB) -> bytes:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError(f"no {sep!r} within {limit} bytes")
            start = max(0, len(self.buf) - len(sep) + 1)
            self._fill()

    def read_exact(self, n: int, sink: Callable[[bytes], None] | None = None) -> bytes:
        """n bytes; with a sink they stream into it (and b"" is returned)."""
        out = bytearray()
        while n > 0:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf))
            piece = bytes(self.buf[:take])
            del self.buf[:take]
            n -= take
            if sink is None:
                out += piece
            else:
                sink(piece)
        return bytes(out)

    def read_chunked(self, sink: Callable[[bytes], None] | None = None) -> tuple[bytes, bytes]:
        """A chunked body: (payload or b"" with a sink, raw trailer section)."""
        out = bytearray()
        while True:
            line = self.read_until(b"\r\n", 4096)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                trailers = bytearray()
                while True:
                    t = self.read_until(b"\r\n", 65536)
                    if t == b"\r\n":
                        return bytes(out), bytes(trailers)
                    trailers += t
            self.read_exact(size, sink if sink is not None else out.extend)
            if self.read_exact(2) != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")

    def read_to_eof(self, sink: Callable[[bytes], None] | None = None) -> bytes:
        out = bytearray()
        while True:
            if self.buf:
                piece = bytes(self.buf)
                self.buf.clear()
                if sink is None:
                    out += piece
                else:
                    sink(piece)
            try:
                self._fill()
            except EOFError:
                return bytes(out)
            except ConnectionResetError:
                self.eof = True
                return bytes(out)

    def at_eof(self, timeout: float = DEADLINE_S) -> bool:
        """True when the peer closes (or resets) within timeout with no further bytes;
        False when bytes arrive instead. A timeout fails the test."""
        if self.buf:
            return False
        if self.eof:
            return True
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.eof = True
            return True
        except TimeoutError as exc:
            raise AssertionError(f"connection still open after {timeout}s") from exc
        finally:
            self.sock.settimeout(old)
        if not data:
            self.eof = True
            return True
        self.buf += data
        return False


class HeaderLookup:
    """Header access for the message classes below, which keep `headers` as (lowercased name, value) in order."""

    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        """The first value of the header, or None."""
        return next((v for k, v in self.headers if k == name), None)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Head(HeaderLookup):
    """A parsed message head: start line parts and headers (lowercased names, in order)."""

    start: list[str]
    headers: list[tuple[str, str]]
    raw: bytes


def parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")
    start = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Head(start, headers, raw)


def read_head(r: Reader, limit: int = 1 << 20) -> Head:
    return parse_head(r.read_until(b"\r\n\r\n", limit))


def read_body(r: Reader, head: Head, *, is_response: bool, method: str = "GET",
              sink: Callable[[bytes], None] | None = None) -> bytes:
    """The message body by RFC 9112 framing; a response without framing reads to EOF."""
    if is_response:
        status = int(head.start[1])
        if method == "HEAD" or status < 200 or status in (204, 304):
            return b""
    te = head.get("transfer-encoding")
    if te is not None and te.lower().endswith("chunked"):
        return r.read_chunked(sink)[0]
    cl = head.get("content-length")
    if cl is not None:
        return r.read_exact(int(cl), sink)
    return r.read_to_eof(sink) if is_response else b""


@dataclass
class Response:
    status: int
    reason: str
    head: Head
    body: bytes

    def header(self, name: str) -> str | None:
        return self.head.get(name)


class Client:
    """A raw keep-alive client connection to the proxy; over TLS when an ssl context is given."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEADLINE_S,
                 ctx: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_hostname=None)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.r = Reader(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", target: str = "/", headers: Iterable[tuple[str, str]] = (),
                body: bytes = b"", host: str = "test.local") -> Response:
        self.send(build_request(method, target, headers, body, host))
        return self.response(method)

    def response(self, method: str = "GET", sink: Callable[[bytes], None] | None = None) -> Response:
        head = read_head(self.r)
        body = read_body(self.r, head, is_response=True, method=method, sink=sink)
        return Response(int(head.start[1]), head.start[2] if len(head.start) > 2 else "", head, body)

    def closed(self, timeout: float = DEADLINE_S) -> bool:
        return self.r.at_eof(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_request(method: str = "GET", target: str = "/", headers: Iterable[tuple[str, str]] = (),
                  body: bytes = b"", host: str | None = "test.local") -> bytes:
    """A request with Host first and Content-Length when there is a body (unless headers frame it)."""
    hdrs = list(headers)
    names = {k.lower() for k, _ in hdrs}
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None and "host" not in names:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in hdrs]
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def pattern(seed: bytes, total: int, chunk: int = MIB) -> Iterator[bytes]:
    """A deterministic stream of `total` bytes in `chunk`-sized pieces (total a multiple of chunk)."""
    block = hashlib.sha256(seed).digest() * (chunk // 32)
    for i in range(total // chunk):
        yield bytes([i & 0xFF]) + block[1:]


def pattern_sha(seed: bytes, total: int, chunk: int = MIB) -> str:
    h = hashlib.sha256()
    for piece in pattern(seed, total, chunk):
        h.update(piece)
    return h.hexdigest()


# ---- upstreams ---------------------------------------------------------------------------------------------------


@dataclass
class Received(HeaderLookup):
    """One request an upstream parsed."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int  # index of the upstream connection it came on



Answer = tuple[int, list[tuple[str, str]], bytes]


def default_answer(label: str) -> Callable[[Received], Answer]:
    def answer(req: Received) -> Answer:
        return 200, [("x-upstream", label)], f"{label}:{req.method}:{req.target}".encode()
    return answer


@dataclass
class Recording:
    raw: list[bytearray] = field(default_factory=list)  # per upstream connection, every byte received
    requests: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class RecordingUpstream:
    """An h11 server that records the exact bytes of every connection it
    accepts and answers each complete request with answer(req). Interim 100
    Continue is sent when the client waits for it. A protocol error is
    recorded and closes that connection."""

    def __init__(self, label: str = "up", answer: Callable[[Received], Answer] | None = None) -> None:
        self.label = label
        self.answer = answer or default_answer(label)
        self.rec = Recording()
        self.lock = threading.Lock()
        self.backend = Backend(self._serve)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.backend.host, self.backend.port)

    @property
    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.rec.requests)

    @property
    def raw(self) -> list[bytes]:
        with self.lock:
            return [bytes(b) for b in self.rec.raw]

    @property
    def errors(self) -> list[str]:
        with self.lock:
            return list(self.rec.errors)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(DEADLINE_S * 3)
        with self.lock:
            idx = len(self.rec.raw)
            raw = bytearray()
            self.rec.raw.append(raw)
        h = h11.Connection(h11.SERVER)
        req: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                data = conn.recv(MIB)
            except (TimeoutError, ConnectionResetError):
                return
            with self.lock:
                raw += data
            h.receive_data(data)
            while True:
                try:
                    ev = h.next_event()
                except h11.RemoteProtocolError as exc:
                    with self.lock:
                        self.rec.errors.append(f"conn {idx}: {exc}")
                    return
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.ConnectionClosed):
                    return
                if isinstance(ev, h11.Request):
                    req, body = ev, bytearray()
                    if h.they_are_waiting_for_100_continue:
                        conn.sendall(h.send(h11.InformationalResponse(status_code=100, headers=[])))
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    assert req is not None
                    got = Received(req.method.decode(), req.target.decode(),
                                   [(k.decode().lower(), v.decode("latin-1")) for k, v in req.headers],
                                   bytes(body), idx)
                    with self.lock:
                        self.rec.requests.append(got)
                    status, headers, rbody = self.answer(got)
                    length = [] if status in (204, 304) else [("content-length", str(len(rbody)))]
                    out = h.send(h11.Response(status_code=status,
                                              headers=[*headers, *length]))
                    if got.method != "HEAD" and status not in (204, 304):
                        out += h.send(h11.Data(data=rbody))
                    out += h.send(h11.EndOfMessage())
                    conn.sendall(out)
                    if h.our_state is h11.MUST_CLOSE:
                        return
                    h.start_next_cycle()
            if not data:
                return

    def stop(self) -> None:
        self.backend.stop()

    def __enter__(self) -> RecordingUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def h11_requests(raw: bytes) -> tuple[list[tuple[str, str, bytes]], str | None]:
    """Parses a recorded upstream byte stream independently: the complete
    requests in it as (method, target, body), and an error (a protocol error,
    or bytes left over that do not form a complete request) or None."""
    h = h11.Connection(h11.SERVER)
    h.receive_data(raw)
    h.receive_data(b"")  # EOF: anything incomplete is an error
    out: list[tuple[str, str, bytes]] = []
    req: h11.Request | None = None
    body = bytearray()
    for _ in range(10000):
        try:
            ev = h.next_event()
        except h11.RemoteProtocolError as exc:
            return out, str(exc)
        if isinstance(ev, h11.Request):
            req, body = ev, bytearray()
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            assert req is not None
            out.append((req.method.decode(), req.target.decode(), bytes(body)))
            # Pretend we answered, to read the next pipelined request.
            h.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            h.send(h11.EndOfMessage())
            if h.our_state is h11.MUST_CLOSE:
                return out, None
            h.start_next_cycle()
        elif isinstance(ev, h11.ConnectionClosed):
            return out, None
        else:
            return out, f"unexpected {ev!r}"
    return out, "too many events"

