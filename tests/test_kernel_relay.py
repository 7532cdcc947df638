"""The kernel relay (csrc/krelay.h): plaintext TCP moved by a BPF sockmap program instead of the worker. Runs where
the kernel and privileges allow it (root here); elsewhere the skip says why."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from tests.netutil import Backend, connect, wait_for
from tests.test_l4_proxy import MIB, one_backend_config, pattern
from zlbfast import _native


def _relay_unavailable() -> str | None:
    probe = _native.NativeEngine(1, kernel_relay="auto")
    try:
        return probe.kernel_relay_status
    finally:
        probe.close()


WHY_NOT = _relay_unavailable()
needs_relay = pytest.mark.skipif(WHY_NOT is not None, reason=f"kernel relay unavailable: {WHY_NOT}")


@needs_relay
def test_64mib_each_way_intact_with_half_close_through_the_kernel(engine_factory):
    size = 64 * MIB
    received: dict[str, str] = {}

    def handler(conn: socket.socket) -> None:
        h = hashlib.sha256()
        while chunk := conn.recv(MIB):
            h.update(chunk)
        received["upstream"] = h.hexdigest()
        for block in pattern(b"down", size):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)

    b = Backend(handler)
    eng = engine_factory(kernel_relay="on")
    eng.apply(one_backend_config((b.host, b.port)))
    s = connect(eng.listener_port("l"))
    s.settimeout(60)
    sent = hashlib.sha256()
    for block in pattern(b"up", size):
        sent.update(block)
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    got = hashlib.sha256()
    n_got = 0
    while chunk := s.recv(MIB):
        n_got += len(chunk)
        got.update(chunk)
    s.close()
    assert n_got == size
    assert got.hexdigest() == hashlib.sha256(b"".join(pattern(b"down", size))).hexdigest()
    wait_for(lambda: received.get("upstream") == sent.hexdigest(), what="backend digest")
    wait_for(lambda: eng.active_connections() == 0, what="connection closed")
    stats = eng.native.stats()
    assert stats["kernel_relayed"] == 1
    assert stats["splice_fallbacks"] == 0
    # The bytes the kernel moved are counted when the connection ends.
    assert stats["bytes_down_up"] == size and stats["bytes_up_down"] == size
    b.stop()


@needs_relay
def test_bytes_sent_before_the_upstream_connects_and_many_exchanges(engine_factory):
    """The client's first request is already queued when the connection is linked; then 200 round trips."""

    def echo(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)

    b = Backend(echo)
    eng = engine_factory(kernel_relay="on")
    eng.apply(one_backend_config((b.host, b.port)))
    s = socket.create_connection(("127.0.0.1", eng.listener_port("l")), timeout=10)
    for i in range(200):
        msg = f"request {i:04d}".encode() * 8
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += s.recv(65536)
        assert got == msg
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b""
    s.close()
    wait_for(lambda: eng.active_connections() == 0, what="connection closed")
    assert eng.native.stats()["kernel_relayed"] == 1
    b.stop()


@needs_relay
def test_an_upstream_reset_resets_the_client(engine_factory):
    def reset_after_first_message(conn: socket.socket) -> None:
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    b = Backend(reset_after_first_message)
    eng = engine_factory(kernel_relay="on")
    eng.apply(one_backend_config((b.host, b.port)))
    s = socket.create_connection(("127.0.0.1", eng.listener_port("l")), timeout=10)
    s.sendall(b"hello")
    with pytest.raises(ConnectionResetError):
        while s.recv(100):
            pass
    s.close()
    wait_for(lambda: eng.active_connections() == 0, what="connection closed")
    stats = eng.native.stats()
    assert stats["kernel_relayed"] == 1 and stats["resets"] == 1
    b.stop()


@needs_relay
def test_a_quiet_relayed_connection_meets_its_idle_timeout_and_a_busy_one_does_not(engine_factory):
    def echo(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)

    b = Backend(echo)
    eng = engine_factory(kernel_relay="on")
    eng.apply(one_backend_config((b.host, b.port), idle_timeout_ms=400))
    busy = socket.create_connection(("127.0.0.1", eng.listener_port("l")), timeout=10)
    quiet = socket.create_connection(("127.0.0.1", eng.listener_port("l")), timeout=10)
    quiet.sendall(b"x")
    assert quiet.recv(1) == b"x"
    # The busy one exchanges a message every 100 ms for 1.2 s: three idle periods of the quiet one.
    for _ in range(12):
        busy.sendall(b"ping")
        assert busy.recv(4) == b"ping"
        time.sleep(0.1)  # pacing the traffic, not waiting for a condition
    assert quiet.recv(1) == b""  # closed by the idle timeout
    busy.sendall(b"still")
    assert busy.recv(5) == b"still"
    busy.close()
    quiet.close()
    wait_for(lambda: eng.active_connections() == 0, what="connections closed")
    assert eng.native.stats()["idle_timeouts"] == 1
    b.stop()


def test_kernel_relay_modes_are_checked():
    with pytest.raises(ValueError, match="kernel_relay must be one of"):
        _native.NativeEngine(1, kernel_relay="maybe")
    off = _native.NativeEngine(1)
    try:
        assert off.kernel_relay_status == "off"
    finally:
        off.close()
