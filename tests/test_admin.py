"""The admin server: readiness, drain, log level, config dump redaction, and refusal of non-loopback peers.

`ZlbProcess` (a real `zlbfast run` with JSON logs and an admin port) and `LoopThread` (an admin server on an
event loop in a thread of the test process) are shared with test_metrics, test_health and test_access_log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from tests.netutil import DEADLINE_S, Backend, connect, echo_handler, free_port, wait_for
from tests.xds.envoy_res import assignment
from zlbfast.admin import REDACTED, AdminServer, redact
from zlbfast.metrics import ObservedEngine
from zlbfast.model import Cluster, Config, Endpoint, Listener
from zlbfast.xds.resources import decode_assignment

T = TypeVar("T")


def http(url: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of one admin request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE_S) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


class ZlbProcess:
    """`zlbfast run` with --log-format json and an admin server on a free port; every stderr line is parsed as
    JSON (a line that is not fails the test)."""

    def __init__(self, config: Path, *extra: str, workers: int = 1, stdout: IO[bytes] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zlbfast", "--log-format", "json", "run", "-c", str(config),
             "--workers", str(workers), "--admin", "127.0.0.1:0", *extra],
            stdout=subprocess.DEVNULL if stdout is None else stdout, stderr=subprocess.PIPE, text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self.find("ready:") is not None or self.proc.poll() is not None, what="zlbfast ready")
        assert self.proc.poll() is None, self.records or self.bad_lines
        admin = next(r for r in self.records if r.get("event") == "admin")
        self.admin = f"http://{admin['address']}"
        self.ports = {m.group(1): int(m.group(2)) for r in self.records
                      if (m := re.match(r"listener (\S+) listening on \S+:(\d+)", r["msg"]))}

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                self.bad_lines.append(line)

    def find(self, text: str, **fields: Any) -> dict[str, Any] | None:
        """The first log record whose message contains text and whose fields match."""
        for r in list(self.records):
            if text in r["msg"] and all(r.get(k) == v for k, v in fields.items()):
                return r
        return None

    def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        return http(self.admin + path, method)

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert self.bad_lines == [], self.bad_lines
        return code


@contextlib.contextmanager
def running(tmp_path: Path, text: str, *extra: str, workers: int = 1,
            stdout: IO[bytes] | None = None) -> Iterator[ZlbProcess]:
    """A ZlbProcess on the YAML `text` (written to tmp_path/zlb.yaml), stopped on the way out."""
    path = tmp_path / "zlb.yaml"
    path.write_text(text)
    p = ZlbProcess(path, *extra, workers=workers, stdout=stdout)
    try:
        yield p
    finally:
        p.stop()


class LoopThread:
    """An asyncio loop in a thread that owns an ObservedEngine (an engine is driven from one thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.engine = self.call(lambda: ObservedEngine(1))
        self.servers: list[AdminServer] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE_S)

    def call(self, fn: Callable[[], T]) -> T:
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(DEADLINE_S)

    def admin(self, host: str = "127.0.0.1", **kw: Any) -> AdminServer:
        async def start() -> AdminServer:
            server = AdminServer(self.engine, host=host, port=0, **kw)
            await server.start()
            self.servers.append(server)
            return server

        return self.run(start())

    def close(self) -> None:
        for s in self.servers:
            self.run(s.close())
        self.call(self.engine.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE_S)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def one_cluster(port: int, backends: list[Backend]) -> Config:
    return Config(listeners=(Listener("l", "127.0.0.1", port, "c"),),
                  clusters=(Cluster("c", tuple(Endpoint(b.host, b.port) for b in backends)),), workers=1)


# ---------------------------------------------------------------------------------------------------------


def test_ready_is_503_until_the_first_config_then_200(loop_thread: LoopThread, backends) -> None:
    server = loop_thread.admin()
    base = f"http://127.0.0.1:{server.port}"
    assert http(base + "/ready") == (503, "no configuration active yet\n")
    assert http(base + "/healthz") == (200, "OK\n")
    assert http(base + "/config_dump")[0] == 200 and json.loads(http(base + "/config_dump")[1])["config"] is None
    loop_thread.call(lambda: loop_thread.engine.apply(one_cluster(0, backends(1))))
    assert http(base + "/ready") == (200, "ready\n")


def test_unknown_paths_methods_and_malformed_requests(loop_thread: LoopThread) -> None:
    server = loop_thread.admin()
    base = f"http://127.0.0.1:{server.port}"
    assert http(base + "/nope")[0] == 404
    assert http(base + "/ready", method="POST")[0] == 405
    assert http(base + "/drain")[0] == 405
    status, body = http(base + "/")
    assert status == 200 and "GET /stats/prometheus" in body and "POST /drain" in body
    with connect(server.port) as s:
        s.sendall(b"garbage\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 400 ")


def test_log_level_changes_at_run_time(loop_thread: LoopThread) -> None:
    import logging

    root = logging.getLogger()
    before = root.level
    server = loop_thread.admin()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert http(base + "/logging?level=debug", "POST") == (200, "level=debug\n")
        assert root.level == logging.DEBUG
        assert http(base + "/logging") == (200, "level=debug\n")
        status, body = http(base + "/logging?level=loud", "POST")
        assert status == 400 and "unknown log level 'loud'" in body
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


@dataclasses.dataclass(frozen=True)
class _Tls:
    certificate: str
    private_key: str
    ca: str


PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIUfakecertbody\n-----END CERTIFICATE-----\n"


def test_config_dump_holds_no_key_material(loop_thread: LoopThread, backends) -> None:
    # Secrets by field name (anywhere in nested dataclasses, mappings and lists) and PEM private keys by value.
    dump = json.dumps(redact({
        "clusters": [{"name": "c", "tls": _Tls(PEM_CERT, PEM_KEY, "ca-bundle")}],
        "auth": {"password": "hunter2", "api_token": "t0k3n", "user": "ops"},
        "notes": ["misplaced: " + PEM_KEY],
    }))
    for secret in ("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "hunter2", "t0k3n", "PRIVATE KEY"):
        assert secret not in dump
    assert dump.count(REDACTED) == 4
    assert "MIIDdzCCAl+gAwIBAgIUfakecertbody" in dump and "ca-bundle" in dump and '"user": "ops"' in dump

    server = loop_thread.admin()
    cfg = one_cluster(0, backends(2))
    loop_thread.call(lambda: loop_thread.engine.apply(cfg))
    status, body = http(f"http://127.0.0.1:{server.port}/config_dump")
    assert status == 200 and "PRIVATE KEY" not in body
    got = json.loads(body)
    assert got["updates"] == 1
    assert [ep["port"] for ep in got["config"]["clusters"][0]["endpoints"]] == [ep.port for ep in
                                                                                cfg.clusters[0].endpoints]


def test_config_dump_lists_endpoints_from_eds() -> None:
    # EDS endpoints are a native EndpointTable, not a tuple; the dump lists them like any others.
    decoded = decode_assignment(assignment("c", [("10.0.0.1", 80), ("2001:db8::2", 81)], zone="z").SerializeToString())
    assert decoded is not None and not isinstance(decoded.endpoints, tuple)
    dump = json.loads(json.dumps(redact(Cluster("c", decoded.endpoints))))
    assert [(e["address"], e["port"], e["zone"]) for e in dump["endpoints"]] == [("10.0.0.1", 80, "z"),
                                                                                 ("2001:db8::2", 81, "z")]


# ---------------------------------------------------------------------------------------------------------
# A peer that is not on the loopback: a veth pair into a network namespace of our own.


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """(namespace, host-side address, namespace-side address) on a veth pair made for this test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace and a veth pair (a non-loopback peer)")
    ns, host_if = f"zlbadm{os.getpid()}", f"zadm{os.getpid() % 100000}"
    host_ip, ns_ip = "10.231.77.1", "10.231.77.2"  # a /30 that exists only between this host and ns

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", ns)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _status_from_ns(ns: str, url: str) -> str:
    """The status line (or the error) a client inside `ns` gets for url."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=10); print(r.status, r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n")
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_non_loopback_peers_are_refused_unless_allowed(loop_thread: LoopThread, netns) -> None:
    ns, host_ip, _ = netns
    closed = loop_thread.admin(host="0.0.0.0")
    opened = loop_thread.admin(host="0.0.0.0", allow_remote=True)
    assert _status_from_ns(ns, f"http://{host_ip}:{closed.port}/healthz") == \
        "403 admin is only served to loopback peers"
    assert closed.refused == 1
    assert http(f"http://127.0.0.1:{closed.port}/healthz") == (200, "OK\n")  # loopback still served
    assert _status_from_ns(ns, f"http://{host_ip}:{opened.port}/healthz") == "200 OK"
    assert opened.refused == 0


# ---------------------------------------------------------------------------------------------------------
# Through the command line


def l4_yaml(listeners: dict[str, str], clusters: dict[str, list[str]], cluster_extra: str = "") -> str:
    """A zlbfast YAML: listeners {name: cluster} on ephemeral ports, clusters {name: [endpoint lines]}."""
    out = ["listeners:"]
    out += [f"  - {{name: {name}, address: 127.0.0.1:0, cluster: {cluster}}}" for name, cluster in listeners.items()]
    out.append("clusters:")
    for name, eps in clusters.items():
        out += [f"  - name: {name}", *(f"    {line}" for line in cluster_extra.splitlines()), "    endpoints:"]
        out += [f"      - {ep}" for ep in eps]
    return "\n".join(out) + "\n"


def test_post_drain_works_like_sigterm(tmp_path: Path) -> None:
    echo = Backend(echo_handler)
    try:
        with running(tmp_path, l4_yaml({"l": "c"}, {"c": [echo.address]})) as p, connect(p.ports["l"]) as s:
            s.sendall(b"before")
            assert s.recv(64) == b"before"
            assert p.get("/ready") == (200, "ready\n")
            assert p.get("/drain", "POST") == (202, "draining\n")
            wait_for(lambda: p.find("draining:") is not None, what="drain start")
            # Draining: not ready, still alive, and the open connection still carries bytes.
            assert p.get("/ready") == (503, "draining\n")
            assert p.get("/healthz") == (200, "OK\n")
            s.sendall(b"during")
            assert s.recv(64) == b"during"
            s.close()
            assert p.proc.wait(timeout=20) == 0
            assert p.find("stopped") is not None
    finally:
        echo.stop()


def test_admin_address_on_the_command_line(tmp_path: Path, backends) -> None:
    cfg = tmp_path / "zlb.yaml"
    cfg.write_text(l4_yaml({"l": "c"}, {"c": [backends(1)[0].address]}))
    bad = subprocess.run([sys.executable, "-m", "zlbfast", "run", "-c", str(cfg), "--admin", "localhost:9901"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "argument --admin" in bad.stderr and "host names are not resolved" in bad.stderr
    # An admin address given explicitly must be usable: a taken port stops the start with a message.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "zlbfast", "run", "-c", str(cfg), "--workers", "1",
                               "--admin", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"admin server cannot listen on 127.0.0.1:{port}" in done.stderr


def test_proxy_command_has_no_admin_unless_asked(backends) -> None:
    b = backends(1)[0]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "zlbfast", "--log-format", "json", "proxy", "--from",
                             f"127.0.0.1:{port}", "--to", b.address, "--workers", "1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(json.loads(line))
            if lines[-1]["msg"].startswith("ready:"):
                break
        assert not any(r.get("event") == "admin" for r in lines), lines
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0

