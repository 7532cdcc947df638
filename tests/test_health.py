"""Active health checks: an endpoint that starts failing its check is marked unhealthy, stops receiving
traffic and comes back when it recovers (HTTP and TCP checks); the probe's verdicts on real servers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.netutil import Backend, connect, free_port, wait_for
from tests.test_admin import ZlbProcess, l4_yaml, running
from zlbfast.health import ProbeFailed, probe
from zlbfast.model import HealthCheck

# Checks every 100 ms with thresholds of 2: a transition takes about 0.2-0.3 s; the deadline allows far more.
FAST_CHECK = ("health_check: {type: %s, path: /health, interval: 100ms, jitter: 0ms, timeout: 500ms, "
              "healthy_threshold: 2, unhealthy_threshold: 2}")
TRANSITION_DEADLINE_S = 10.0


class Service:
    """A backend that answers `GET /health` with its current status and any other client with its label."""

    def __init__(self, label: str, port: int = 0) -> None:
        self.label = label
        self.healthy = threading.Event()
        self.healthy.set()
        self.backend = Backend(self._handle, port=port)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        first = conn.recv(4096)
        if first.startswith(b"GET /health"):
            status = b"200 OK" if self.healthy.is_set() else b"503 Service Unavailable"
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            conn.sendall(self.label.encode() + b"\n")


def labels_through(port: int, n: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        with connect(port) as s:
            s.sendall(b"hi\n")
            out[s.recv(64).decode().strip()] += 1
    return out


def active_health(p: ZlbProcess, address: str) -> str | None:
    (row,) = [e for e in p.json("/clusters")["clusters"][0]["endpoints"] if e["address"] == address]
    return row["active_health"]  # type: ignore[no-any-return]


def test_failing_http_check_takes_the_endpoint_out_and_back(tmp_path: Path) -> None:
    a, b = Service("a"), Service("b")
    text = l4_yaml({"l": "c"}, {"c": [a.backend.address, b.backend.address]}, cluster_extra=FAST_CHECK % "http")
    try:
        with running(tmp_path, text) as p:
            wait_for(lambda: active_health(p, a.backend.address) == "healthy", what="first check of a")
            assert labels_through(p.ports["l"], 10) == {"a": 5, "b": 5}

            a.healthy.clear()
            wait_for(lambda: active_health(p, a.backend.address) == "unhealthy", TRANSITION_DEADLINE_S,
                     what="a marked unhealthy")
            assert labels_through(p.ports["l"], 10) == {"b": 10}
            line = p.find("is unhealthy", event="health", endpoint=a.backend.address)
            assert line is not None and line["health"] == "unhealthy" and "HTTP status 503" in line["reason"]
            m = p.get("/stats/prometheus")[1]
            assert (f'zlbfast_endpoint_health{{cluster="c",endpoint="{a.backend.address}",state="unhealthy"}} 1.0'
                    in m)

            a.healthy.set()
            wait_for(lambda: active_health(p, a.backend.address) == "healthy", TRANSITION_DEADLINE_S,
                     what="a healthy again")
            assert labels_through(p.ports["l"], 10) == {"a": 5, "b": 5}
            assert p.find("is healthy (2 successes in a row)", event="health", endpoint=a.backend.address)
    finally:
        a.backend.stop()
        b.backend.stop()


def test_tcp_check_follows_a_backend_that_stops_and_restarts(tmp_path: Path) -> None:
    port = free_port()
    a, b = Service("a", port=port), Service("b")
    text = l4_yaml({"l": "c"}, {"c": [a.backend.address, b.backend.address]}, cluster_extra=FAST_CHECK % "tcp")
    try:
        with running(tmp_path, text) as p:
            wait_for(lambda: active_health(p, a.backend.address) == "healthy", what="first check of a")
            a.backend.stop()
            wait_for(lambda: active_health(p, a.backend.address) == "unhealthy", TRANSITION_DEADLINE_S,
                     what="a marked unhealthy")
            # No connection is even tried on a: nothing is refused, no retry is needed.
            failures_before = _failures(p, a.backend.address)
            assert labels_through(p.ports["l"], 6) == {"b": 6}
            assert _failures(p, a.backend.address) == failures_before
            a = Service("a", port=port)
            wait_for(lambda: active_health(p, a.backend.address) == "healthy", TRANSITION_DEADLINE_S,
                     what="a healthy again")
            assert labels_through(p.ports["l"], 6) == {"a": 3, "b": 3}
    finally:
        a.backend.stop()
        b.backend.stop()


def _failures(p: ZlbProcess, address: str) -> int:
    (row,) = [e for e in p.json("/clusters")["clusters"][0]["endpoints"] if e["address"] == address]
    return int(row["failures"])


def test_removing_the_health_check_clears_the_verdict(tmp_path: Path) -> None:
    import signal

    a, b = Service("a"), Service("b")
    a.healthy.clear()
    text = l4_yaml({"l": "c"}, {"c": [a.backend.address, b.backend.address]}, cluster_extra=FAST_CHECK % "http")
    cfg = tmp_path / "zlb.yaml"
    try:
        with running(tmp_path, text) as p:
            wait_for(lambda: active_health(p, a.backend.address) == "unhealthy", what="a unhealthy at first check")
            assert labels_through(p.ports["l"], 4) == {"b": 4}
            cfg.write_text(l4_yaml({"l": "c"}, {"c": [a.backend.address, b.backend.address]}).replace(
                "127.0.0.1:0", f"127.0.0.1:{p.ports['l']}"))
            p.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: active_health(p, a.backend.address) is None, what="check removed")
            assert labels_through(p.ports["l"], 4) == {"a": 2, "b": 2}
    finally:
        a.backend.stop()
        b.backend.stop()


# ---------------------------------------------------------------------------------------------------------
# The probe on its own


def _run_probe(check: HealthCheck, port: int) -> str:
    try:
        asyncio.run(probe(check, "127.0.0.1", port))
    except ProbeFailed as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize(("reply", "statuses", "verdict"), [
    (b"HTTP/1.1 204 No Content\r\n\r\n", ((204, 204),), "ok"),
    (b"HTTP/1.0 302 Found\r\n\r\n", ((200, 399),), "ok"),
    (b"HTTP/1.1 500 Oops\r\n\r\n", ((200, 399),), "HTTP status 500"),
    (b"HTTP/1.1 404 Not Found\r\n\r\n", ((200, 299), (404, 404)), "ok"),
    (b"SSH-2.0-OpenSSH\r\n", ((200, 399),), "not an HTTP/1.x status line"),
    (b"", ((200, 399),), "connection closed before a status line"),
])
def test_http_probe_verdicts(reply: bytes, statuses: tuple[tuple[int, int], ...], verdict: str) -> None:
    requests: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        requests.append(conn.recv(4096))
        conn.sendall(reply)

    server = Backend(handle)
    try:
        got = _run_probe(HealthCheck(type="http", path="/ready?full=1", expected_statuses=statuses), server.port)
        assert got.startswith(verdict), got
        assert requests[0].startswith(b"GET /ready?full=1 HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in requests[0]
    finally:
        server.stop()


def test_probe_timeout_and_refusal() -> None:
    silent = Backend(lambda conn: conn.recv(4096) and threading.Event().wait(5))
    try:
        check = HealthCheck(type="http", timeout_ms=200)
        assert _run_probe(check, silent.port) == "no answer within 200ms"
        assert _run_probe(HealthCheck(type="tcp"), silent.port) == "ok"
    finally:
        silent.stop()
    assert "refused" in _run_probe(HealthCheck(type="tcp"), free_port()).lower()
