"""The native load generator, test backends and histogram, over real sockets.

Every run is bounded by a request count (and the generator's own timeout);
nothing here asserts speed.
"""

from __future__ import annotations

import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from zlbfast._native import BuiltinBackend, Histogram, NativeError, run_load


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.002)


@pytest.fixture
def http_backend() -> Iterator[BuiltinBackend]:
    with BuiltinBackend("http", label="b1") as b:
        yield b


def no_errors(errors: dict[str, int]) -> bool:
    return all(v == 0 for v in errors.values())


# ---- histogram ---------------------------------------------------------------


def reference(samples: list[int], q: float) -> int:
    """Rank ceil(q*n) of the sorted samples, as the histogram defines it."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_histogram_percentiles_within_one_bucket_of_raw_samples() -> None:
    rng = random.Random(7)
    # Log-uniform from 50 ns to 100 s: every bucket scale gets samples.
    samples = [int(math.exp(rng.uniform(math.log(50), math.log(100e9)))) for _ in range(20000)]
    h = Histogram()
    h.record_many(samples)
    assert h.count == len(samples)
    assert h.max == max(samples) and h.min == min(samples)
    for q in (0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0):
        ref = reference(samples, q)
        lo, hi = Histogram.bucket_bounds(ref)
        got = h.percentile(q)
        assert lo <= got <= hi, (q, ref, got)
        assert abs(got - ref) <= ref / 64, (q, ref, got)  # the documented bound
    assert h.percentile(1.0) == max(samples)


def test_histogram_merge_equals_single_recording() -> None:
    rng = random.Random(3)
    samples = [rng.randrange(1, 10**9) for _ in range(5000)]
    whole, a, b = Histogram(), Histogram(), Histogram()
    whole.record_many(samples)
    a.record_many(samples[:1234])
    b.record_many(samples[1234:])
    a.merge(b)
    assert a.count == whole.count and a.max == whole.max and a.min == whole.min
    assert a.buckets() == whole.buckets()
    assert [a.percentile(q) for q in (0.5, 0.99)] == [whole.percentile(q) for q in (0.5, 0.99)]


def test_histogram_small_values_are_exact() -> None:
    h = Histogram()
    h.record_many(range(100))
    assert [h.percentile(q) for q in (0.01, 0.5, 1.0)] == [0, 49, 99]
    assert Histogram.bucket_bounds(127) == (127, 127)


# ---- load generator against the built-in backends ---------------------------


@pytest.mark.parametrize("threads,connections", [(1, 1), (2, 16)])
def test_request_count_equals_backend_count(http_backend: BuiltinBackend, threads: int,
                                            connections: int) -> None:
    r = run_load("127.0.0.1", http_backend.port, threads=threads, connections=connections,
                 max_requests=3001, duration=0, timeout=10)
    assert no_errors(r.errors), r.errors
    assert r.requests == 3001
    assert http_backend.requests == 3001
    assert r.latency.count == 3001
    assert r.connects == connections == http_backend.connections


def test_label_header_counts_every_response(http_backend: BuiltinBackend) -> None:
    r = run_load("127.0.0.1", http_backend.port, connections=4, max_requests=500, duration=0,
                 label_header="X-Backend")  # header names match case-insensitively
    assert r.labels == {"b1": 500}
    assert r.labels_missing == 0
    with BuiltinBackend("http") as unlabelled:
        r = run_load("127.0.0.1", unlabelled.port, connections=2, max_requests=50, duration=0,
                     label_header="x-backend")
    assert r.labels == {} and r.labels_missing == 50


def test_label_distribution_over_two_backends() -> None:
    """Two backends under one generator run each: the label table keeps them
    apart, so a proxy's spread can be checked the same way."""
    with BuiltinBackend(label="b1") as b1, BuiltinBackend(label="b2") as b2:
        r1 = run_load("127.0.0.1", b1.port, connections=2, max_requests=300, duration=0,
                      label_header="x-backend")
        r2 = run_load("127.0.0.1", b2.port, connections=2, max_requests=200, duration=0,
                      label_header="x-backend")
    assert r1.labels == {"b1": 300} and r2.labels == {"b2": 200}


def test_bad_status_counted_but_still_a_response() -> None:
    with BuiltinBackend(status=503, body_size=10) as b:
        r = run_load("127.0.0.1", b.port, connections=2, max_requests=40, duration=0)
    assert r.requests == 40 and r.errors["bad_status"] == 40


def test_open_loop_charges_a_stall_to_latency(http_backend: BuiltinBackend) -> None:
    """Coordinated omission: at a fixed rate, a 100 ms stall delays every
    request due during it, measured from its intended send time, so more than
    1 % of 1500 requests wait >= 50 ms and p99 shows it."""
    stalled = threading.Event()

    def inject() -> None:
        wait_for(lambda: http_backend.requests >= 300, timeout=10)
        http_backend.stall(0.1)
        stalled.set()

    injector = threading.Thread(target=inject)
    injector.start()
    r = run_load("127.0.0.1", http_backend.port, connections=8, rate=1000, max_requests=1500,
                 duration=0, timeout=10)
    injector.join()
    assert stalled.is_set()
    assert no_errors(r.errors), r.errors
    assert r.requests == 1500
    assert r.latency.percentile(0.99) >= 50e6
    assert r.latency.max >= 90e6


def test_tcp_echo_round_trips() -> None:
    with BuiltinBackend("echo") as echo:
        r = run_load("127.0.0.1", echo.port, mode="tcp", connections=4, max_requests=400, duration=0,
                     tcp_size=3000)
        wait_for(lambda: echo.bytes_received == 400 * 3000)
    assert no_errors(r.errors), r.errors
    assert r.requests == 400 and r.bytes_read == 400 * 3000


def test_connect_errors_consume_the_request_budget() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_load("127.0.0.1", port, connections=2, max_requests=6, duration=0, timeout=2)
    assert r.requests == 0 and r.errors["connect"] == 6


def test_timeouts_are_counted() -> None:
    with BuiltinBackend(delay=2.0) as slow:
        r = run_load("127.0.0.1", slow.port, connections=3, max_requests=3, duration=0, timeout=0.1)
    assert r.requests == 0 and r.errors["timeout"] == 3


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(NativeError, match="duration"):
        run_load("127.0.0.1", 1, duration=0, max_requests=0)
    with pytest.raises(NativeError, match="numeric"):
        run_load("localhost", 1, max_requests=1)
    with pytest.raises(NativeError, match="kind"):
        BuiltinBackend("ftp")


# ---- HTTP framing against a hand-written server -----------------------------

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-backend: chunky\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: t\r\n\r\n"
)
INTERIM_THEN_CLOSE = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
)
UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\n\r\nbody until the connection closes"


class ScriptedServer:
    """Answers every request with `response`, written in small pieces so that
    the client must reassemble heads, chunk sizes and bodies across reads;
    closes after each response when `close` is set."""

    def __init__(self, response: bytes, close: bool) -> None:
        self.response, self.close = response, close
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.served = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                buf = buf.split(b"\r\n\r\n", 1)[1]
                self.served += 1
                for i in range(0, len(self.response), 7):
                    conn.sendall(self.response[i:i + 7])
                if self.close:
                    return

    def stop(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("response,close", [(CHUNKED, False), (INTERIM_THEN_CLOSE, True),
                                            (UNTIL_CLOSE, True)])
def test_response_framing(response: bytes, close: bool) -> None:
    server = ScriptedServer(response, close)
    try:
        r = run_load("127.0.0.1", server.port, connections=2, max_requests=20, duration=0, timeout=5,
                     label_header="x-backend")
    finally:
        server.stop()
    assert no_errors(r.errors), r.errors
    assert r.requests == 20
    if response is CHUNKED:
        assert r.labels == {"chunky": 20}
        assert r.connects == 2  # keep-alive held across chunked responses
    else:
        assert r.connects == 20  # one connection per response, no error
