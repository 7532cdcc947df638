"""tcp_congestion on listeners and clusters: the proxy's own sockets get the named congestion control (read back
with `ss -ti`, as an operator would), the others keep the system default, a reload changes it for new connections,
and a name the kernel lacks is a config error naming the key."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from tests.congestionutil import SYSTEM, alternative, wait_algorithms
from tests.httputil import Client, RecordingUpstream, cluster, http_config, routes_to, start
from tests.netutil import Backend, connect, echo_handler
from zlbfast.config import ConfigError, parse_config, proxy_config
from zlbfast.model import Config, Listener


def _l4_config(backend_port: int, listener_cc: str, cluster_cc: str) -> Config:
    return Config(
        listeners=(Listener("l", "127.0.0.1", 0, "c", tcp_congestion=listener_cc),),
        clusters=(cluster("c", [("127.0.0.1", backend_port)], tcp_congestion=cluster_cc),),
        workers=1,
    )


def _echo_once(port: int) -> socket.socket:
    s = connect(port)
    s.sendall(b"ping\n")
    assert s.recv(16) == b"ping\n"
    return s


def test_l4_sockets_take_the_configured_algorithm_and_a_reload_changes_it(engine_factory):
    alt = alternative()
    backend = Backend(echo_handler)
    eng = engine_factory()
    try:
        eng.apply(_l4_config(backend.port, alt, alt))
        port = eng.listener_port("l")
        with _echo_once(port) as first:
            # The proxy's accepted socket (local port = the listener's) and its upstream one (remote = the backend).
            assert wait_algorithms(f"( sport = :{port} )", 1) == [alt]
            assert wait_algorithms(f"( dport = :{backend.port} )", 1) == [alt]

            # Reloaded without the option, new connections are on the system default on both sides, and the open
            # connection keeps what it had.
            eng.apply(_l4_config(backend.port, "", ""))
            port2 = eng.listener_port("l")
            with _echo_once(port2) as second:
                client_port = second.getsockname()[1]
                assert wait_algorithms(f"( sport = :{port2} and dport = :{client_port} )", 1) == [SYSTEM]
                assert sorted(wait_algorithms(f"( dport = :{backend.port} )", 2)) == sorted([alt, SYSTEM])
            first.sendall(b"still\n")
            assert first.recv(16) == b"still\n"
    finally:
        backend.stop()


def test_http_upstream_and_downstream_sockets_take_the_configured_algorithm(engine_factory):
    alt = alternative()
    up = RecordingUpstream("up")
    try:
        cfg = http_config([cluster("c", [up.addr], tcp_congestion=alt)], vhosts=routes_to("c"))
        cfg = replace(cfg, listeners=(replace(cfg.listeners[0], tcp_congestion=alt),))
        eng, port = start(engine_factory, cfg)
        with Client(port) as client:
            assert client.request().status == 200
            assert wait_algorithms(f"( sport = :{port} )", 1) == [alt]
            assert wait_algorithms(f"( dport = :{up.addr[1]} )", 1) == [alt]
    finally:
        up.backend.stop()


@pytest.mark.parametrize(
    ("section", "path"),
    [("listener", "listeners[0].tcp_congestion"), ("cluster", "clusters[0].tcp_congestion")],
)
def test_an_algorithm_the_kernel_lacks_is_a_config_error_naming_the_key(section, path):
    listener: dict[str, object] = {"name": "l", "address": "127.0.0.1:0", "cluster": "c"}
    clus: dict[str, object] = {"name": "c", "endpoints": ["127.0.0.1:1"]}
    (listener if section == "listener" else clus)["tcp_congestion"] = "nosuchcc"
    with pytest.raises(ConfigError) as exc:
        parse_config({"listeners": [listener], "clusters": [clus]}, "t.yaml")
    assert exc.value.path == path
    assert "no congestion control 'nosuchcc'" in exc.value.problem
    assert SYSTEM in exc.value.problem  # the kernel's list is quoted, and the default is always in it


def test_a_malformed_name_is_refused_before_the_kernel_is_asked():
    with pytest.raises(ConfigError) as exc:
        proxy_config("127.0.0.1:0", ["127.0.0.1:1"], tcp_congestion="Cubic Fast")
    assert exc.value.path == "--tcp-congestion"
    assert "not a congestion control name" in exc.value.problem


def test_proxy_command_reports_an_unknown_algorithm_and_exits_non_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "zlbfast", "proxy", "--from", "127.0.0.1:0", "--to", "127.0.0.1:1",
         "--tcp-congestion", "nosuchcc"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "--tcp-congestion: this kernel has no congestion control 'nosuchcc'" in proc.stderr
