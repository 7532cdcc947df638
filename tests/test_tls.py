"""TLS on the L4 path with SPIFFE identities: real OpenSSL handshakes between
two zlbfast engines and Python ssl clients, real sockets, no mocks.

Topology of most tests:
    client (plaintext) -> engine A "out" listener -> cluster "mesh" (originates mTLS)
        -> engine B "in" listener (terminates mTLS) -> cluster "backend" (plaintext) -> backend
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.httputil import Client, Reader, RecordingUpstream, build_request, cluster, http_config, read_body, read_head
from tests.netutil import DEADLINE_S, Backend, access_log_records, echo_handler, label_handler, read_line, wait_for
from tests.tlsutil import CA, Svid, client_context, peer_serial, tls_connect, wait_event, write_svid_files
from tests.wrkutil import rotate_under_wrk
from zlbfast import _native, runtime
from zlbfast.identity import IdentityFiles
from zlbfast.model import Cluster, Config, Endpoint, Listener, ListenerTls, PeerMatch, Route, WeightedCluster
from zlbfast.runtime import Engine

TD = "prod.example"
SERVER_ID = f"spiffe://{TD}/ns/shop/sa/server"
CLIENT_ID = f"spiffe://{TD}/ns/shop/sa/client"


@dataclass
class Mesh:
    ca: CA
    server_svid: Svid
    client_svid: Svid
    backend: Backend
    server: Engine
    client: Engine
    server_port: int = 0
    client_port: int = 0
    extra: list[Engine] = field(default_factory=list)

    def stat(self, eng: Engine, name: str) -> int:
        return int(eng.stats()[name])

    def events(self, eng: Engine, acc: list[dict[str, Any]]) -> list[dict[str, Any]]:
        acc.extend(eng.tls_events())
        return acc


@pytest.fixture
def mesh_factory() -> Iterator[Callable[..., Mesh]]:
    made: list[Mesh] = []

    def make(*, listener_tls: dict[str, Any] | None = None, cluster_tls: dict[str, Any] | None = None,
             handler: Callable[[socket.socket], None] | None = None) -> Mesh:
        ca = CA(TD)
        m = Mesh(ca, ca.issue("/ns/shop/sa/server"), ca.issue("/ns/shop/sa/client"),
                 Backend(handler or label_handler("b0")), Engine(workers=1), Engine(workers=1))
        made.append(m)
        m.server.set_identity("server", m.server_svid.cert_pem, m.server_svid.key_pem, {"": ca.pem})
        m.client.set_identity("client", m.client_svid.cert_pem, m.client_svid.key_pem, {"": ca.pem})
        m.server.apply(Config((), (Cluster("backend", (Endpoint("127.0.0.1", m.backend.port),)),)))
        ltls = {"identity": "server", "mode": "strict", "peer": ("trust_domain", TD)}
        ltls.update(listener_tls or {})
        lid = m.server.native.add_listener("in", "backend", "127.0.0.1", 0, tls=ltls)
        m.server_port = m.server.native.listener_port(lid)
        m.client.apply(Config((Listener("out", "127.0.0.1", 0, "mesh"),),
                              (Cluster("mesh", (Endpoint("127.0.0.1", m.server_port),), connect_retries=0),)))
        ctls = {"identity": "client", "peer": ("spiffe_id", SERVER_ID)}
        ctls.update(cluster_tls or {})
        m.client.native.set_cluster_tls("mesh", ctls)
        m.client_port = m.client.listener_port("out")
        return m

    yield make
    for m in made:
        for eng in (m.client, m.server, *m.extra):
            eng.close()
        m.backend.stop()
    if made:
        assert _native.debug_counters() == {"conns": 0, "pipes": 0, "snapshots": 0}
        assert _native.debug_live_tls() == 0


def plain_label(port: int, first: bytes = b"") -> str:
    """The backend's label over plaintext, '' when the proxy closed (or reset) the connection. `first` is sent
    before reading: a permissive listener tells plaintext from TLS by the client's first bytes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as s:
            if first:
                s.sendall(first)
            return read_line(s).decode().strip()
    except ConnectionResetError:
        return ""


def tls_label(port: int, ctx: ssl.SSLContext) -> str:
    """The backend's label through a TLS connection, '' when the proxy closed it (any TLS error included)."""
    try:
        with tls_connect(port, ctx) as s:
            return read_line(s).decode().strip()
    except (ssl.SSLError, ConnectionError):
        return ""


def tls_get(sock: ssl.SSLSocket) -> str:
    """One keep-alive GET over an established TLS connection: the answering backend's x-backend label."""
    sock.sendall(build_request())
    reader = Reader(sock)
    head = read_head(reader)
    read_body(reader, head, is_response=True)
    assert head.start[1] == "200", head.raw
    return head.get("x-backend") or ""


def test_two_engines_talk_mtls_and_resume(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory()
    m.server.native.set_tls_log_peers(True)
    for _ in range(5):
        assert plain_label(m.client_port) == "b0"
    wait_for(lambda: m.stat(m.server, "conns_active") == 0 and m.stat(m.client, "conns_active") == 0,
             what="connections closed")
    assert m.stat(m.client, "tls_handshakes_up") == 5
    assert m.stat(m.server, "tls_handshakes_down") == 5
    # Tickets from the first handshake let the later ones resume.
    assert m.stat(m.client, "tls_resumed_up") >= 1
    assert m.stat(m.client, "tls_bytes_up_down") == 5 * len("b0\n")
    events: list[dict[str, Any]] = []
    ev = wait_event(m.server, events, lambda e: e["event"] == "downstream_verified", "verified peer event")
    assert ev["peer_id"] == CLIENT_ID and ev["listener"] == "in"


def test_bulk_both_ways_through_two_tls_hops(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory(handler=echo_handler)
    payload = bytes(range(256)) * 4096  # 1 MiB, several TLS records and back-pressure
    with socket.create_connection(("127.0.0.1", m.client_port), timeout=DEADLINE_S) as s:
        got = bytearray()

        def reader() -> None:
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(payload)
        t.join(DEADLINE_S * 3)
        assert bytes(got) == payload
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""


def test_access_log_records_the_peer_identity(mesh_factory: Callable[..., Mesh], tmp_path: Path) -> None:
    m = mesh_factory(listener_tls={"mode": "permissive"})
    m.server.native.set_access_log(True)
    assert tls_label(m.server_port, client_context(m.client_svid, m.ca.pem)) == "b0"
    assert plain_label(m.server_port, b"hello\n") == "b0"
    records = access_log_records(m.server.native, tmp_path / "access.log", 2)
    assert sorted(r.get("peer_identity", "") for r in records) == ["", CLIENT_ID]


def test_python_client_sees_server_svid_and_alpn(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory(listener_tls={"alpn": ["zlb/1", "h2"], "min_version": "1.2"})
    ctx = client_context(m.client_svid, m.ca.pem)
    ctx.set_alpn_protocols(["h2"])
    with tls_connect(m.server_port, ctx) as s:
        assert read_line(s) == b"b0\n"
        assert s.selected_alpn_protocol() == "h2"
        assert peer_serial(s) == m.server_svid.serial
    ctx12 = client_context(m.client_svid, m.ca.pem)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(m.server_port, ctx12) as s:
        assert s.version() == "TLSv1.2"
        assert read_line(s) == b"b0\n"


@pytest.mark.parametrize("case", ["untrusted_ca", "expired", "wrong_spiffe_id", "no_spiffe_id", "no_client_cert"])
def test_listener_rejects_bad_clients(mesh_factory: Callable[..., Mesh], case: str) -> None:
    m = mesh_factory(listener_tls={"peer": ("spiffe_prefix", f"spiffe://{TD}/ns/shop/")})
    if case == "untrusted_ca":
        svid: Svid | None = CA(TD).issue("/ns/shop/sa/client")  # same trust domain name, another CA
        counter, cause, text = "tls_verify_untrusted", "untrusted", "unable to get local issuer certificate"
    elif case == "expired":
        svid = m.ca.issue("/ns/shop/sa/client", expired=True)
        counter, cause, text = "tls_verify_expired", "expired", "certificate has expired"
    elif case == "wrong_spiffe_id":
        svid = m.ca.issue("/ns/other/sa/client")
        counter, cause, text = "tls_verify_spiffe_id", "spiffe_id", "does not match spiffe_prefix"
    elif case == "no_spiffe_id":
        svid = m.ca.issue("", uri="https://client.example/")
        counter, cause, text = "tls_verify_spiffe_id", "spiffe_id", "not a valid SPIFFE ID"
    else:
        svid = None
        counter, cause, text = "tls_no_peer_cert", "no_certificate", "certificate"
    assert tls_label(m.server_port, client_context(svid, m.ca.pem)) == ""
    wait_for(lambda: m.stat(m.server, counter) == 1, what=counter)
    assert m.stat(m.server, "tls_handshake_failures_down") == 1
    assert m.stat(m.server, "tls_handshakes_down") == 0
    assert m.backend.accepted == 0
    ev = wait_event(m.server, [], lambda e: e["event"] == "downstream_handshake_failed", "failure event")
    assert ev["cause"] == cause and text in ev["reason"], ev
    if case == "wrong_spiffe_id":
        assert "spiffe://prod.example/ns/other/sa/client" in ev["reason"]


def test_strict_listener_rejects_plaintext(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory()
    with socket.create_connection(("127.0.0.1", m.server_port), timeout=DEADLINE_S) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            assert s.recv(16) == b""
        except ConnectionResetError:
            pass
    wait_for(lambda: m.stat(m.server, "tls_plaintext_rejected") == 1, what="plaintext rejection")
    ev = wait_event(m.server, [], lambda e: e["event"] == "plaintext_rejected", "plaintext event")
    assert "plaintext connection on a strict mTLS listener" in ev["reason"]
    assert m.backend.accepted == 0


def test_a_flood_of_rejections_is_logged_in_summary(mesh_factory: Callable[..., Mesh], monkeypatch, caplog) -> None:
    """Past TLS_LOG_LINES_PER_DRAIN events of one kind per drain, one summary line stands for the rest; every
    event is still returned and counted."""
    monkeypatch.setattr(runtime, "TLS_LOG_LINES_PER_DRAIN", 3)
    m = mesh_factory()
    clients = 8
    for _ in range(clients):
        with socket.create_connection(("127.0.0.1", m.server_port), timeout=DEADLINE_S) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                s.recv(16)
            except ConnectionResetError:
                pass
    wait_for(lambda: m.stat(m.server, "tls_plaintext_rejected") == clients, what="plaintext rejections")
    caplog.set_level(logging.WARNING, logger="zlbfast.tls")
    drained = one_by_one = summarised = 0
    deadline = time.monotonic() + DEADLINE_S
    while drained < clients and time.monotonic() < deadline:
        caplog.clear()
        n = sum(1 for ev in m.server.tls_events() if ev["event"] == "plaintext_rejected")
        drained += n
        lines = [r.getMessage() for r in caplog.records]
        singles = [line for line in lines if line.startswith("tls plaintext_rejected listener=")]
        summaries = [line for line in lines if line.startswith("tls plaintext_rejected: ")]
        assert len(singles) == min(n, 3), lines
        assert len(summaries) == (1 if n > 3 else 0), lines
        one_by_one += len(singles)
        summarised += sum(int(line.split()[2]) for line in summaries)
    assert drained == clients
    assert one_by_one + summarised == clients and summarised > 0


def test_upstream_with_wrong_spiffe_id_is_refused(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory(cluster_tls={"peer": ("spiffe_id", f"spiffe://{TD}/ns/shop/sa/somebody-else")})
    assert plain_label(m.client_port) == ""
    wait_for(lambda: m.stat(m.client, "tls_handshake_failures_up") == 1, what="upstream failure")
    assert m.stat(m.client, "tls_verify_spiffe_id") == 1
    assert m.stat(m.client, "upstream_exhausted") == 1
    ev = wait_event(m.client, [], lambda e: e["event"] == "upstream_handshake_failed", "upstream event")
    assert SERVER_ID in ev["reason"] and "somebody-else" in ev["reason"]
    assert m.backend.accepted == 0


def test_upstream_from_another_trust_domain_needs_its_bundle(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory(cluster_tls={"peer": ("trust_domain", TD)})
    other = CA("partner.example")
    # The client trusts only partner.example: the server's prod.example SVID has no bundle.
    m.client.set_identity("client", m.client_svid.cert_pem, m.client_svid.key_pem, {"partner.example": other.pem})
    assert plain_label(m.client_port) == ""
    ev = wait_event(m.client, [], lambda e: e["event"] == "upstream_handshake_failed", "upstream event")
    assert "no trust bundle for trust domain prod.example" in ev["reason"]
    # Federation: both bundles, keyed by trust domain.
    m.client.set_identity("client", m.client_svid.cert_pem, m.client_svid.key_pem,
                          {"partner.example": other.pem, TD: m.ca.pem})
    assert plain_label(m.client_port) == "b0"


def test_permissive_accepts_plaintext_and_tls(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory(listener_tls={"mode": "permissive"})
    assert plain_label(m.server_port, b"hello\n") == "b0"
    assert tls_label(m.server_port, client_context(m.client_svid, m.ca.pem)) == "b0"
    assert plain_label(m.client_port) == "b0"  # through engine A: TLS
    wait_for(lambda: m.stat(m.server, "tls_handshakes_down") == 2, what="two TLS handshakes")
    assert m.stat(m.server, "tls_permissive_plaintext") == 1
    assert m.stat(m.server, "tls_plaintext_rejected") == 0
    # TLS in permissive mode is still mutual.
    assert tls_label(m.server_port, client_context(None, m.ca.pem)) == ""
    wait_for(lambda: m.stat(m.server, "tls_no_peer_cert") == 1, what="no client cert")


def test_authorization_allow_and_deny(mesh_factory: Callable[..., Mesh]) -> None:
    m = mesh_factory(listener_tls={
        "allow": [{"peer": ("spiffe_prefix", f"spiffe://{TD}/ns/shop/")}],
        "deny": [{"peer": ("spiffe_id", f"spiffe://{TD}/ns/shop/sa/intruder")}],
    })
    ok = client_context(m.client_svid, m.ca.pem)
    assert tls_label(m.server_port, ok) == "b0"
    assert tls_label(m.server_port, client_context(m.ca.issue("/ns/shop/sa/intruder"), m.ca.pem)) == ""
    assert tls_label(m.server_port, client_context(m.ca.issue("/ns/ops/sa/admin"), m.ca.pem)) == ""
    wait_for(lambda: m.stat(m.server, "authz_denied") == 2, what="two denials")
    assert m.backend.accepted == 1
    acc: list[dict[str, Any]] = []
    wait_event(m.server, acc, lambda e: e["event"] == "denied" and e["peer_id"].endswith("/sa/intruder"), "deny")
    wait_event(m.server, acc, lambda e: e["event"] == "denied" and e["peer_id"].endswith("/sa/admin"), "deny")


def test_authorization_by_port_and_plaintext_peers(mesh_factory: Callable[..., Mesh]) -> None:
    # Only connections to port 1 are allowed: this listener's port is not, so everyone is denied.
    m = mesh_factory(listener_tls={"mode": "permissive", "allow": [{"peer": ("trust_domain", TD), "ports": [1]}]})
    assert tls_label(m.server_port, client_context(m.client_svid, m.ca.pem)) == ""
    assert plain_label(m.server_port, b"hello\n") == ""  # plaintext has no identity: no allow rule matches
    wait_for(lambda: m.stat(m.server, "authz_denied") == 2, what="denials")
    ev = wait_event(m.server, [], lambda e: e["event"] == "denied" and e["peer_id"] == "", "plaintext denial")
    assert "plaintext peer" in ev["reason"]
    assert m.backend.accepted == 0


def test_rotation_under_load(mesh_factory: Callable[..., Mesh], tmp_path: Path) -> None:
    """The server's SVID files are replaced every second for 30 s while wrk sends HTTP requests through both
    engines (every 20th request closes, so new mTLS handshakes happen all through the run): no request fails,
    new connections present the new certificate, and a connection opened before the rotations keeps working."""
    m = mesh_factory()
    web = _native.BuiltinBackend("http", label="web")
    m.server.apply(Config((), (Cluster("backend", (Endpoint("127.0.0.1", m.backend.port),)),
                               Cluster("web", (Endpoint(web.host, web.port),)))))
    first = m.ca.issue("/ns/shop/sa/server")
    files = IdentityFiles(*map(str, write_svid_files(tmp_path / "svid", first, m.ca.pem)))
    name = m.server.use_identity_files(files)
    lid = m.server.native.add_listener("in-files", "web", "127.0.0.1", 0,
                                       tls={"identity": name, "mode": "strict", "peer": ("trust_domain", TD)})
    port = m.server.native.listener_port(lid)
    m.client.apply(Config((Listener("out", "127.0.0.1", 0, "mesh"),),
                          (Cluster("mesh", (Endpoint("127.0.0.1", port),), connect_retries=0),)))
    m.client.native.set_cluster_tls("mesh", {"identity": "client", "peer": ("spiffe_id", SERVER_ID)})
    ctx = client_context(m.client_svid, m.ca.pem)
    long_lived = tls_connect(port, ctx)
    try:
        assert peer_serial(long_lived) == first.serial
        assert tls_get(long_lived) == "web"

        def rotate() -> None:
            svid = m.ca.issue("/ns/shop/sa/server")
            write_svid_files(tmp_path / "svid", svid, m.ca.pem)
            m.server.poll_identities()
            with tls_connect(port, ctx) as s:
                assert peer_serial(s) == svid.serial
                assert tls_get(s) == "web"

        rotations = rotate_under_wrk(m.client.listener_port("out"), tmp_path, rotate)
        info = m.server.identity_info(name)
        assert info is not None and info["rotations"] == rotations
        # The connection opened before the rotations is still served, by its old SSL_CTX.
        assert tls_get(long_lived) == "web"
    finally:
        long_lived.close()
        web.stop()
    assert m.stat(m.server, "tls_handshake_failures_down") == 0
    assert m.stat(m.client, "tls_handshake_failures_up") == 0
    # wrk's reconnects went through fresh handshakes to the rotated identities.
    assert m.stat(m.client, "tls_handshakes_up") > rotations, m.client.stats()


def test_half_written_identity_keeps_the_old_one(mesh_factory: Callable[..., Mesh], tmp_path: Path) -> None:
    m = mesh_factory()
    svid = m.ca.issue("/ns/shop/sa/server")
    cert, key, bundle = write_svid_files(tmp_path, svid, m.ca.pem)
    files = IdentityFiles(str(cert), str(key), str(bundle))
    name = m.server.use_identity_files(files)
    # A new certificate whose key has not been written yet: refused, old identity stays.
    cert.write_text(m.ca.issue("/ns/shop/sa/server").cert_pem)
    assert m.server.poll_identities() == 0
    info = m.server.identity_info(name)
    assert info is not None and int(str(info["serial"]), 16) == svid.serial
    with pytest.raises(_native.NativeError) as exc:
        m.server.set_identity("x", svid.cert_pem, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                              {"": m.ca.pem})
    assert "AAAA" not in str(exc.value) and "private key" in str(exc.value)


def test_tls_on_http_listener_serves_https(tmp_path: Path) -> None:
    """An http listener takes a tls section: mTLS terminated in the worker, then HTTP/1.1 with ALPN http/1.1
    (tests/test_tls_http.py covers the rest of TLS on HTTP)."""
    ca = CA(TD)
    cert, key, bundle = write_svid_files(tmp_path, ca.issue("/ns/shop/sa/server"), ca.pem)
    up = RecordingUpstream("b0")
    eng = Engine(workers=1)
    try:
        cfg = http_config([cluster("c", [up.addr])], [Route(clusters=(WeightedCluster("c"),))])
        tls = ListenerTls(str(cert), str(key), str(bundle), peer=PeerMatch("trust_domain", TD))
        eng.apply(dataclasses.replace(cfg, listeners=(dataclasses.replace(cfg.listeners[0], tls=tls),)))
        ctx = client_context(ca.issue("/ns/shop/sa/client"), ca.pem)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with Client(eng.listener_port("web"), ctx=ctx) as cl:
            assert cl.request("GET", "/x").body == b"b0:GET:/x"
            assert isinstance(cl.sock, ssl.SSLSocket) and cl.sock.selected_alpn_protocol() == "http/1.1"
        assert eng.stats()["tls_handshakes_down"] == 1
    finally:
        eng.close()
        up.stop()


def test_http_authorization_keys_are_refused_on_tcp_listeners() -> None:
    eng = Engine(workers=1)
    try:
        for rule in ({"methods": ["GET"]}, {"paths": [("prefix", "/api/")]}):
            with pytest.raises(_native.NativeError, match="needs an http listener"):
                eng.native.add_listener("t", "c", "127.0.0.1", 0, tls={"identity": "x", "allow": [rule]})
    finally:
        eng.close()


def test_yaml_config_wires_tls_end_to_end(tmp_path: Path) -> None:
    """The documented tls sections, loaded from YAML: engine A originates mTLS, engine B terminates it and
    authorizes by SPIFFE ID; the identities come from spiffe-helper style files."""
    from zlbfast.config import parse_config

    ca = CA(TD)
    srv_files = write_svid_files(tmp_path / "srv", ca.issue("/ns/shop/sa/server"), ca.pem)
    cli_files = write_svid_files(tmp_path / "cli", ca.issue("/ns/shop/sa/client"), ca.pem)
    backend = Backend(label_handler("b0"))
    server, client = Engine(workers=1), Engine(workers=1)
    try:
        files = dict(zip(("cert", "key", "bundle"), map(str, srv_files), strict=True))
        server.apply(parse_config({
            "listeners": [{"name": "in", "address": "127.0.0.1:0", "cluster": "backend", "tls": {
                **files, "mode": "strict", "peer": {"trust_domain": TD},
                "allow": [{"spiffe_id": CLIENT_ID}]}}],
            "clusters": [{"name": "backend", "endpoints": [backend.address]}],
        }, "server.yaml"))
        cfiles = dict(zip(("cert", "key", "bundle"), map(str, cli_files), strict=True))
        client.apply(parse_config({
            "listeners": [{"name": "out", "address": "127.0.0.1:0", "cluster": "mesh"}],
            "clusters": [{"name": "mesh", "endpoints": [f"127.0.0.1:{server.listener_port('in')}"],
                          "tls": {**cfiles, "peer": {"spiffe_id": SERVER_ID}, "alpn": ["zlb"]}}],
        }, "client.yaml"))
        assert plain_label(client.listener_port("out")) == "b0"
        assert server.stats()["tls_handshakes_down"] == 1
        # Removing the cluster's tls section turns upstream TLS off: the strict listener refuses plaintext.
        client.apply(parse_config({
            "listeners": [{"name": "out", "address": "127.0.0.1:0", "cluster": "mesh"}],
            "clusters": [{"name": "mesh", "endpoints": [f"127.0.0.1:{server.listener_port('in')}"]}],
        }, "client.yaml"))
        assert plain_label(client.listener_port("out"), b"hi\n") == ""
        wait_for(lambda: server.stats()["tls_plaintext_rejected"] == 1, what="plaintext rejected")
    finally:
        client.close()
        server.close()
        backend.stop()
