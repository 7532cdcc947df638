"""`zlbfast run` as a real process: SIGHUP reloads under load, a bad reload
keeps the running config, SIGTERM drains open connections and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netutil import Backend, connect, echo_handler, free_port, read_label, wait_for


class ProxyProcess:
    def __init__(self, config: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zlbfast", "run", "-c", str(config), "--workers", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: self.seen("ready:") or self.proc.poll() is not None, what="zlbfast ready")
        assert self.proc.poll() is None, "\n".join(self.lines)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def seen(self, text: str) -> int:
        return sum(1 for line in list(self.lines) if text in line)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def write_config(path: Path, port: int, backends: list[Backend], drain: str = "30s") -> None:
    eps = "\n".join(f"      - {b.address}" for b in backends)
    path.write_text(
        f"drain_timeout: {drain}\n"
        f"listeners:\n  - name: l\n    address: 127.0.0.1:{port}\n    cluster: c\n"
        f"clusters:\n  - name: c\n    policy: round_robin\n    endpoints:\n{eps}\n"
    )


@pytest.fixture
def proxy_env(tmp_path: Path) -> Iterator[tuple[Path, int, list[ProxyProcess]]]:
    procs: list[ProxyProcess] = []
    yield tmp_path / "zlb.yaml", free_port(), procs
    for p in procs:
        p.stop()


class Load:
    """Sequential connections in a thread, bounded in count and time; records
    every outcome so a single failed connection is visible."""

    def __init__(self, port: int, max_conns: int = 50000, max_s: float = 60.0):
        self.port = port
        self.results: Counter[str] = Counter()
        self.stop = threading.Event()
        self.max_conns = max_conns
        self.deadline = time.monotonic() + max_s
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline and self.results.total() < self.max_conns:
            try:
                self.results[read_label(self.port) or "EMPTY"] += 1
            except OSError as exc:
                self.results[f"error:{type(exc).__name__}"] += 1

    def finish(self) -> Counter[str]:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.results


def test_sighup_swaps_endpoints_under_load_without_failures(proxy_env, backends):
    cfg, port, procs = proxy_env
    old = backends(2, prefix="old")
    new = backends(2, prefix="new")
    write_config(cfg, port, old)
    procs.append(p := ProxyProcess(cfg))
    load = Load(port)
    wait_for(lambda: load.results.total() >= 200, what="load before reload")
    for step in range(6):
        write_config(cfg, port, new if step % 2 == 0 else old)
        p.signal(signal.SIGHUP)
        wait_for(lambda s=step: p.seen("reloaded") >= s + 1, what=f"reload {step}")
        seen = load.results.total()
        wait_for(lambda s=seen: load.results.total() >= s + 100, what="load after reload")
    results = load.finish()
    failures = {k: v for k, v in results.items() if not (k.startswith("old") or k.startswith("new"))}
    assert failures == {}, results
    assert {k for k in results if k.startswith("new")} == {"new2", "new3"}


def test_bad_reload_is_rejected_and_old_config_keeps_serving(proxy_env, backends):
    cfg, port, procs = proxy_env
    bs = backends(2)
    write_config(cfg, port, bs)
    procs.append(p := ProxyProcess(cfg))
    cfg.write_text(cfg.read_text().replace("round_robin", "no_such_policy"))
    p.signal(signal.SIGHUP)
    wait_for(lambda: p.seen("reload rejected") == 1, what="reload rejection")
    line = next(line for line in p.lines if "reload rejected" in line)
    assert "zlb.yaml: clusters[0].policy" in line and "no_such_policy" in line
    assert {read_label(port) for _ in range(10)} == {"b0", "b1"}
    assert p.proc.poll() is None


def test_sigterm_drains_open_connections_then_exits_zero(proxy_env):
    cfg, port, procs = proxy_env
    echo = Backend(echo_handler)
    try:
        write_config(cfg, port, [echo])
        p = ProxyProcess(cfg)
        procs.append(p)
        s = connect(port)
        s.sendall(b"before")
        assert s.recv(64) == b"before"
        p.signal(signal.SIGTERM)
        wait_for(lambda: p.seen("draining") == 1, what="drain start")
        # New connections are refused once draining...
        wait_for(lambda: _refused(port), what="listener closed")
        # ...while the open one still carries bytes both ways.
        s.sendall(b"during")
        assert s.recv(64) == b"during"
        assert p.proc.poll() is None
        s.close()
        assert p.proc.wait(timeout=20) == 0
        wait_for(lambda: p.seen("zlbfast: stopped") == 1, what="final log line")
    finally:
        echo.stop()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_proxy_one_liner(backends):
    bs = backends(2)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zlbfast", "proxy", "--from", f"127.0.0.1:{port}", "--to", bs[0].address,
         "--to", bs[1].address, "--workers", "1"],
        stderr=subprocess.PIPE, text=True, env={**os.environ},
    )
    try:
        wait_for(lambda: not _refused(port) or proc.poll() is not None, what="proxy listening")
        assert Counter(read_label(port) for _ in range(10)) == {"b0": 5, "b1": 5}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
