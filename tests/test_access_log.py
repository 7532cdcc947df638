"""The access log: the writer samples, writes JSON lines from its own thread and drops (counting) when its
destination blocks; end to end, N proxied connections give N lines that match them field by field."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from pathlib import Path

from tests.netutil import DEADLINE_S, Backend, connect, free_port, wait_for
from tests.test_admin import l4_yaml, running
from zlbfast.logs import AccessLogWriter


def record(i: int) -> dict[str, object]:
    return {"start_time": 1_700_000_000.0 + i, "duration_ms": 1.5, "downstream": f"127.0.0.1:{40000 + i % 1000}",
            "upstream": "127.0.0.1:9001", "listener": "l", "cluster": "c", "bytes_received": i, "bytes_sent": 2 * i,
            "attempts": 1, "flags": []}


def test_writer_writes_every_record_as_one_json_line(tmp_path: Path) -> None:
    out = tmp_path / "access.log"
    writer = AccessLogWriter(str(out))
    writer.offer(record(i) for i in range(1000))
    assert writer.close()
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record(i) for i in range(1000)]
    assert writer.stats() == {"offered": 1000, "sampled_out": 0, "dropped": 0, "written": 1000, "write_errors": 0,
                              "queued": 0}


def test_sampling_keeps_a_random_share_and_counts_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "access.log"
    writer = AccessLogWriter(str(out), sample=0.1, rng=random.Random(7))
    writer.offer(record(i) for i in range(5000))
    assert writer.close()
    kept = [json.loads(line)["bytes_received"] for line in out.read_text().splitlines()]
    st = writer.stats()
    assert st["written"] == len(kept) and st["written"] + st["sampled_out"] == 5000 and st["dropped"] == 0
    assert 350 < len(kept) < 650  # Binomial(5000, 0.1): mean 500, sd 21
    # Random, not every tenth: the kept records are not one residue class.
    assert len({k % 10 for k in kept}) == 10


def test_a_blocked_destination_drops_and_counts_without_blocking_the_caller(tmp_path: Path) -> None:
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    # A reader that never reads: the writer's open succeeds, then its writes block once the pipe (64 KiB) is full.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer = AccessLogWriter(str(fifo), queue_size=1000)
        total = 50_000  # ~8 MiB of lines: far more than the pipe and the queue hold
        offering = threading.Thread(target=writer.offer, args=((record(i) for i in range(total)),))
        offering.start()
        offering.join(DEADLINE_S)
        assert not offering.is_alive(), "offer() blocked behind a blocked destination"
        st = writer.stats()
        assert st["offered"] == total and st["dropped"] > 0
        # Every record is accounted for: a chunk stuck in the blocked write still counts as queued.
        assert total == st["written"] + st["dropped"] + st["queued"]
        got = bytearray()

        def read_available() -> None:
            try:
                while chunk := os.read(reader, 1 << 16):
                    got.extend(chunk)
            except BlockingIOError:
                pass

        # Unblock by reading: what was queued gets written, nothing more is lost, and close() returns.
        closer = threading.Thread(target=writer.close)
        closer.start()
        wait_for(lambda: read_available() is None and not closer.is_alive(), what="writer flushed and closed")
        read_available()
        st = writer.stats()
        assert st["dropped"] + st["written"] == total and st["queued"] == 0
        assert got.count(b"\n") == st["written"]
    finally:
        os.close(reader)


def test_an_unopenable_destination_is_reported_and_counted(tmp_path: Path) -> None:
    writer = AccessLogWriter(str(tmp_path / "no-such-dir" / "access.log"))
    writer.offer(record(i) for i in range(10))
    assert writer.close()
    assert writer.stats()["write_errors"] == 10 and writer.stats()["written"] == 0


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
