"""Byte-level behaviour of the L4 proxy: integrity in both directions with
half-close, idle timeout, connect timeouts, and a data path that needs no GIL."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time

from tests.netutil import Backend, connect, wait_for
from zlbfast.model import Cluster, Config, Endpoint, Listener

MIB = 1024 * 1024


def one_backend_config(backend_addr: tuple[str, int], **listener_kw: object) -> Config:
    host, port = backend_addr
    return Config(
        listeners=(Listener("l", "127.0.0.1", 0, "c", **listener_kw),),  # type: ignore[arg-type]
        clusters=(Cluster("c", (Endpoint(host, port),)),),
        workers=1,
    )


def pattern(seed: bytes, total: int, chunk: int = MIB):
    """Deterministic pseudo-random stream (sha256 counter mode, 1 MiB chunks)."""
    block = hashlib.sha256(seed).digest() * (chunk // 32)
    for i in range(total // chunk):
        yield bytes([i & 0xFF]) + block[1:]


def test_64mib_each_way_intact_with_half_close(engine_factory):
    size = 64 * MIB
    received: dict[str, str] = {}

    def handler(conn: socket.socket) -> None:
        # Read until the client's half-close arrives through the proxy, then answer.
        h = hashlib.sha256()
        buf = bytearray(MIB)
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            h.update(memoryview(buf)[:n])
        received["upstream"] = h.hexdigest()
        for chunk in pattern(b"down", size):
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)

    b = Backend(handler)
    eng = engine_factory()
    try:
        eng.apply(one_backend_config((b.host, b.port)))
        s = connect(eng.listener_port("l"))
        s.settimeout(60)
        sent = hashlib.sha256()
        for chunk in pattern(b"up", size):
            sent.update(chunk)
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        got = hashlib.sha256()
        n_got = 0
        buf = bytearray(MIB)
        while True:
            n = s.recv_into(buf)
            if n == 0:
                break
            n_got += n
            got.update(memoryview(buf)[:n])
        s.close()
        expected_down = hashlib.sha256(b"".join(pattern(b"down", size))).hexdigest()
        assert n_got == size
        assert got.hexdigest() == expected_down
        wait_for(lambda: "upstream" in received, what="backend digest")
        assert received["upstream"] == sent.hexdigest()
        wait_for(lambda: eng.active_connections() == 0, what="connection closed")
        st = eng.stats()
        assert st["bytes_down_up"] == size and st["bytes_up_down"] == size
    finally:
        b.stop()


def test_idle_timeout_closes_quiet_connections(engine_factory):
    def handler(conn: socket.socket) -> None:
        conn.settimeout(10)
        while conn.recv(1024):
            pass

    b = Backend(handler)
    eng = engine_factory()
    try:
        eng.apply(one_backend_config((b.host, b.port), idle_timeout_ms=300))
        s = connect(eng.listener_port("l"))
        s.settimeout(5)
        assert s.recv(16) == b""  # closed by the proxy, not by us
        assert eng.stats()["idle_timeouts"] == 1
        s.close()
    finally:
        b.stop()


def test_connect_timeout_retries_elsewhere(engine_factory):
    """An endpoint that never answers SYNs (full backlog) times out; the
    connection is retried on the live endpoint."""
    good = Backend(lambda c: c.sendall(b"good\n"))
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    # Fill the backlog so further SYNs are dropped.
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(blackhole.getsockname())
        fillers.append(f)
    eng = engine_factory()
    try:
        eps = (Endpoint("127.0.0.1", blackhole.getsockname()[1]), Endpoint(good.host, good.port))
        cfg = Config(listeners=(Listener("l", "127.0.0.1", 0, "c"),),
                     clusters=(Cluster("c", eps, connect_timeout_ms=200),), workers=1)
        eng.apply(cfg)
        port = eng.listener_port("l")
        for _ in range(4):
            s = connect(port)
            assert s.recv(16) == b"good\n"
            s.close()
        assert eng.stats()["connect_timeouts"] >= 1
    finally:
        for f in fillers:
            f.close()
        blackhole.close()
        good.stop()


BACKEND_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(128)
    print(srv.getsockname()[1], flush=True)
    srv.settimeout(30)
    while True:
        try:
            c, _ = srv.accept()
        except OSError:
            break
        with c:
            data = c.recv(64)
            c.sendall(data)
    """
)

CLIENT_SCRIPT = textwrap.dedent(
    """
    import socket, sys, time
    port, duration = int(sys.argv[1]), float(sys.argv[2])
    end = time.monotonic() + duration
    stamps = []
    while time.monotonic() < end and len(stamps) < 200000:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"ping")
            assert s.recv(64) == b"ping"
        stamps.append(time.monotonic())
    print(" ".join(f"{t:.6f}" for t in stamps))
    """
)


def test_data_path_needs_no_gil(engine_factory):
    """Backend and client are other processes; while this process's only
    Python thread holds the GIL for 2 s, connections still complete."""
    backend = subprocess.Popen([sys.executable, "-c", BACKEND_SCRIPT], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert backend.stdout is not None
        bport = int(backend.stdout.readline())
        eng = engine_factory()
        eng.apply(one_backend_config(("127.0.0.1", bport)))
        from zlbfast import _native

        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, str(eng.listener_port("l")), "4"],
            stdout=subprocess.PIPE, text=True,
        )
        # Start holding once the client is demonstrably flowing.
        wait_for(lambda: eng.stats()["conns_accepted"] >= 20, what="client traffic")
        start = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
        _native.hold_gil(2.0)
        end = time.monotonic()
        out, _ = client.communicate(timeout=30)
        stamps = [float(x) for x in out.split()]
        during = [t for t in stamps if start + 0.1 < t < end - 0.1]
        assert len(during) >= 20, f"only {len(during)} round trips completed while the GIL was held"
    finally:
        if client and client.poll() is None:
            client.kill()
            client.wait()
        backend.kill()
        backend.wait()


def test_cli_missing_cluster_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("listeners: [{name: l, address: '127.0.0.1:0', cluster: nope}]\n"
                   "clusters: [{name: c, endpoints: ['127.0.0.1:1']}]\n")
    r = subprocess.run([sys.executable, "-m", "zlbfast", "validate", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode != 0
    assert "bad.yaml" in r.stderr and "listeners[0].cluster" in r.stderr

