"""The access log, written by the engine's own C thread (csrc/accesslog_writer.h): sampling is random and
counted, a blocked destination drops and counts without slowing traffic, and end to end N proxied connections
give N lines that match them field by field, in a file, on stdout or in a FIFO opened after the proxy started."""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httputil import Client, cluster, http_config, start
from tests.netutil import DEADLINE_S, Backend, connect, free_port, wait_for
from tests.test_admin import l4_yaml, running
from zlbfast import _native
from zlbfast.admin import OpsOptions, add_arguments
from zlbfast.model import Route, WeightedCluster


@pytest.fixture
def http_engine(engine_factory: object) -> Iterator[tuple[object, int]]:
    """An in-process engine with one HTTP listener in front of one built-in backend, and its port."""
    backend = _native.BuiltinBackend(label="b0")
    try:
        yield start(engine_factory, http_config([cluster("c", [(backend.host, backend.port)])],  # type: ignore[arg-type]
                                                [Route(clusters=(WeightedCluster("c"),))]))
    finally:
        backend.stop()


def test_sampling_keeps_a_random_share_and_counts_the_rest(http_engine: tuple[object, int], tmp_path: Path) -> None:
    eng, port = http_engine
    native = eng.native  # type: ignore[attr-defined]
    out = tmp_path / "access.log"
    native.set_access_log(True)
    native.start_access_log(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND), sample=0.1)
    total = 3000
    with Client(port) as cl:
        for i in range(total):
            assert cl.request("GET", f"/{i}").status == 200
    native.set_access_log(False)
    assert native.stop_access_log(DEADLINE_S)
    kept = [int(json.loads(line)["path"][1:]) for line in out.read_text().splitlines()]
    st = native.access_log_stats()
    assert st["written"] == len(kept) and st["written"] + st["sampled_out"] == total
    assert st["write_errors"] == 0 and st["queued"] == 0 and native.stats()["access_log_dropped"] == 0
    assert 200 < len(kept) < 400  # Binomial(3000, 0.1): mean 300, sd 16
    # Random, not every tenth: the kept requests are not one residue class.
    assert len({k % 10 for k in kept}) == 10


def test_a_blocked_destination_drops_and_counts_without_slowing_traffic(http_engine: tuple[object, int],
                                                                          tmp_path: Path) -> None:
    eng, port = http_engine
    native = eng.native  # type: ignore[attr-defined]
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    # A reader that never reads: the writer's open succeeds, then its writes block once the pipe (64 KiB) is full.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        native.set_access_log(True)
        native.start_access_log(os.open(fifo, os.O_WRONLY))
        load = _native.run_load("127.0.0.1", port, connections=8, duration=1.0)
        assert sum(load.errors.values()) == 0
        total = native.stats()["http_requests"]
        # The workers went on serving once the ring was full: a waiting producer would never drop.
        assert native.stats()["access_log_dropped"] > 0

        def accounted() -> bool:  # every record is somewhere: written, dropped, or waiting in a ring or the buffer
            st = native.access_log_stats()
            return st["written"] + st["queued"] + native.stats()["access_log_dropped"] == total

        wait_for(accounted, what="every record accounted for")
        got = bytearray()

        def read_available() -> None:
            try:
                while chunk := os.read(reader, 1 << 16):
                    got.extend(chunk)
            except BlockingIOError:
                pass

        # Unblock by reading: what waited gets written, nothing more is lost, and the stop returns.
        native.set_access_log(False)
        stopped: list[bool] = []
        closer = threading.Thread(target=lambda: stopped.append(native.stop_access_log(DEADLINE_S)))
        closer.start()
        wait_for(lambda: read_available() is None and not closer.is_alive(), what="writer flushed and stopped")
        read_available()
        st = native.access_log_stats()
        assert stopped == [True]
        assert st["written"] + native.stats()["access_log_dropped"] == total and st["queued"] == 0
        assert got.count(b"\n") == st["written"] and st["write_errors"] == 0
    finally:
        os.close(reader)


def test_a_writer_blocked_at_stop_is_left_behind_and_counted(http_engine: tuple[object, int],
                                                             tmp_path: Path) -> None:
    eng, port = http_engine
    native = eng.native  # type: ignore[attr-defined]
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        native.set_access_log(True)
        native.start_access_log(os.open(fifo, os.O_WRONLY))
        _native.run_load("127.0.0.1", port, connections=8, duration=0.5)
        native.set_access_log(False)
        assert native.stop_access_log(0.2) is False
        st = native.access_log_stats()
        assert st["write_errors"] > 0 and st["queued"] > 0  # the buffer is lost, the rings keep their records
        # The rings are the engine's again: a new writer takes what they hold.
        out = tmp_path / "after.log"
        native.start_access_log(os.open(out, os.O_WRONLY | os.O_CREAT))
        assert native.stop_access_log(DEADLINE_S)
        assert native.access_log_stats()["queued"] == 0
        assert len(out.read_text().splitlines()) == st["queued"]
    finally:
        os.close(reader)


# ---------------------------------------------------------------------------------------------------------


def test_every_proxied_connection_gives_one_matching_line(tmp_path: Path) -> None:
    echo = Backend(lambda c: [c.sendall(d.upper()) for d in iter(lambda: c.recv(4096), b"")])
    dead = free_port()
    log_path = tmp_path / "access.log"
    n = 12
    text = l4_yaml({"ok": "c", "down": "d"}, {"c": [echo.address], "d": [f"127.0.0.1:{dead}"]},
                   cluster_extra="connect_retries: 1")
    clients: list[tuple[str, int]] = []
    try:
        with running(tmp_path, text, "--access-log", str(log_path)) as p:
            for i in range(n):
                with connect(p.ports["ok"]) as s:
                    clients.append(s.getsockname())
                    payload = b"x" * (i + 1)
                    s.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        got += s.recv(4096)
                    assert got == payload.upper()
            with socket.socket() as s:
                # Bound first: the proxy's reset may already surface in connect().
                s.bind(("127.0.0.1", 0))
                down_client = s.getsockname()
                s.settimeout(DEADLINE_S)
                try:
                    s.connect(("127.0.0.1", p.ports["down"]))
                    assert s.recv(64) == b""
                except ConnectionResetError:
                    pass
            wait_for(lambda: log_path.exists() and len(log_path.read_text().splitlines()) == n + 1,
                     what="one access line per connection")
            status, metrics = p.get("/stats/prometheus")
            assert 'zlbfast_access_log_records_total{outcome="written"} 13.0' in metrics
    finally:
        echo.stop()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    by_client = {r["downstream"]: r for r in records}
    for i, (host, port) in enumerate(clients):
        r = by_client[f"{host}:{port}"]
        assert (r["listener"], r["cluster"], r["upstream"], r["attempts"], r["flags"]) == (
            "ok", "c", echo.address, 1, [])
        assert (r["bytes_received"], r["bytes_sent"]) == (i + 1, i + 1)
        assert r["duration_ms"] >= 0 and r["start_time"] > 1_600_000_000
    r = by_client[f"{down_client[0]}:{down_client[1]}"]
    assert (r["listener"], r["cluster"], r["attempts"], r["bytes_received"], r["bytes_sent"]) == ("down", "d", 2, 0, 0)
    assert "UF" in r["flags"]


def echo_backend() -> Backend:
    return Backend(lambda c: [c.sendall(d) for d in iter(lambda: c.recv(4096), b"")])


def echo_once(port: int, payload: bytes = b"ping") -> tuple[str, int]:
    """One proxied connection that echoes payload; returns the client's address."""
    with connect(port) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += s.recv(4096)
        assert got == payload
        return s.getsockname()  # type: ignore[no-any-return]


def test_stdout_gets_the_lines_with_dash(tmp_path: Path) -> None:
    echo = echo_backend()
    out = tmp_path / "stdout"
    try:
        with out.open("wb") as stdout, running(tmp_path, l4_yaml({"l": "c"}, {"c": [echo.address]}),
                                               "--access-log", "-", "--access-log-flush-ms", "10",
                                               "--access-log-buffer", "65536", stdout=stdout) as p:
            clients = [echo_once(p.ports["l"]) for _ in range(3)]
            wait_for(lambda: len(out.read_text().splitlines()) == 3, what="three lines on stdout")
    finally:
        echo.stop()
    assert {json.loads(line)["downstream"] for line in out.read_text().splitlines()} == {
        f"{h}:{port}" for h, port in clients}


def test_a_fifo_without_reader_does_not_hold_up_the_proxy(tmp_path: Path) -> None:
    echo = echo_backend()
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    try:
        with running(tmp_path, l4_yaml({"l": "c"}, {"c": [echo.address]}), "--access-log", str(fifo)) as p:
            # Served while the destination's open waits for a reader: the records wait in the ring.
            clients = [echo_once(p.ports["l"]) for _ in range(3)]
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                got = bytearray()

                def three_lines() -> bool:
                    if select.select([reader], [], [], 0.05)[0]:
                        got.extend(os.read(reader, 1 << 16))
                    return got.count(b"\n") == 3

                wait_for(three_lines, what="three lines in the FIFO")
            finally:
                os.close(reader)
    finally:
        echo.stop()
    assert {json.loads(line)["downstream"] for line in got.decode().splitlines()} == {
        f"{h}:{port}" for h, port in clients}


def test_an_unopenable_destination_is_reported_and_traffic_flows(tmp_path: Path) -> None:
    echo = echo_backend()
    try:
        with running(tmp_path, l4_yaml({"l": "c"}, {"c": [echo.address]}),
                     "--access-log", str(tmp_path / "no-such-dir" / "access.log")) as p:
            wait_for(lambda: p.find("cannot be opened") is not None, what="the error logged")
            assert p.find("cannot be opened")["level"] == "error"  # type: ignore[index]
            echo_once(p.ports["l"])
    finally:
        echo.stop()


def test_a_ring_holds_as_many_records_as_it_was_sized_for(http_engine: tuple[object, int]) -> None:
    engine, port = http_engine
    native = engine.native  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="power of two"):
        native.set_access_log(True, 1000)
    native.set_access_log(True, 64)  # and no writer: records wait in the ring until it is full, then drop
    with Client(port) as cl:
        for _ in range(100):
            assert cl.request("GET", "/").status == 200

    def accounted() -> bool:
        return native.access_log_stats()["queued"] + native.stats()["access_log_dropped"] == 100

    wait_for(accounted, what="a record per request, queued or dropped")
    assert native.access_log_stats()["queued"] == 64 and native.stats()["access_log_dropped"] == 36
    native.set_access_log(False)


def test_writer_settings_are_bounded_on_the_command_line() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, admin_default=None)
    opts = OpsOptions.from_args(parser.parse_args(["--access-log", "-", "--access-log-flush-ms", "5",
                                                   "--access-log-buffer", "65536", "--access-log-ring", "1024"]))
    assert (opts.access_log_flush_ms, opts.access_log_buffer, opts.access_log_ring) == (5, 65536, 1024)
    for bad in (["--access-log-flush-ms", "0"], ["--access-log-flush-ms", "x"], ["--access-log-buffer", "1024"],
                ["--access-log-ring", "1000"], ["--access-log-ring", "32"], ["--access-log-ring", str(1 << 21)]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_failed_writes_are_logged_and_counted(tmp_path: Path) -> None:
    echo = echo_backend()
    try:
        # /dev/full refuses every write with ENOSPC, like a full disk.
        with running(tmp_path, l4_yaml({"l": "c"}, {"c": [echo.address]}), "--access-log", "/dev/full",
                     "--access-log-flush-ms", "10") as p:
            for _ in range(3):
                echo_once(p.ports["l"])
            wait_for(lambda: 'zlbfast_access_log_records_total{outcome="write_errors"} 3.0' in p.get(
                "/stats/prometheus")[1], what="three write errors counted")
            assert 'zlbfast_access_log_records_total{outcome="written"} 0.0' in p.get("/stats/prometheus")[1]
            wait_for(lambda: p.find("write failed") is not None, what="the failed write logged")
            assert "No space left on device" in p.find("write failed")["msg"]  # type: ignore[index]
    finally:
        echo.stop()
