"""TLS on HTTP/1.1 listeners and HTTP upstream clusters with SPIFFE identities: real engines, real OpenSSL
handshakes (Python ssl clients and zlbfast to zlbfast), an h11 backend that records every header it got.

Topologies:
    client (python ssl, client SVID) -> engine B "in" (HTTP, terminates mTLS) -> backend
    client (plaintext) -> engine A "out" (HTTP) -> cluster "mesh" (originates mTLS) -> engine B "in" -> backend
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.httputil import MIB, Client, Reader, RecordingUpstream, Response, read_head, routes_to
from tests.netutil import DEADLINE_S, Backend, access_log_records, wait_for
from tests.test_admin import running
from tests.tlsutil import CA, Svid, cert_sha256, client_context, wait_event, write_svid_files
from zlbfast import _native
from zlbfast.config import ConfigError, parse_config
from zlbfast.model import (
    AuthzRule,
    Cluster,
    ClusterTls,
    Config,
    Endpoint,
    HttpOptions,
    Listener,
    ListenerTls,
    PathMatch,
    PeerMatch,
    Route,
    VirtualHost,
    WeightedCluster,
)
from zlbfast.runtime import Engine

TD = "prod.example"
SERVER_ID = f"spiffe://{TD}/ns/shop/sa/server"  # engine B's SVID
PROXY_ID = f"spiffe://{TD}/ns/shop/sa/proxy"  # engine A's SVID (a client of B)
CLIENT_ID = f"spiffe://{TD}/ns/shop/sa/client"  # the Python client's SVID
ADMIN_ID = f"spiffe://{TD}/ns/ops/sa/admin"
XFCC = "x-forwarded-client-cert"


@dataclass
class Mesh:
    """Engine B with an HTTP listener "in" (TLS) in front of an h11 backend; make_front() adds engine A."""

    ca: CA
    tmp: Path
    upstream: RecordingUpstream
    client_svid: Svid
    engines: list[Engine] = field(default_factory=list)
    _files: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def files(self, name: str, path: str) -> tuple[str, str, str]:
        """(cert, key, bundle): an SVID for spiffe://TD<path> in the spiffe-helper layout under tmp/name (written
        once per name), the first three fields of ListenerTls and ClusterTls."""
        if name not in self._files:
            cert, key, bundle = write_svid_files(self.tmp / name, self.ca.issue(path), self.ca.pem)
            self._files[name] = (str(cert), str(key), str(bundle))
        return self._files[name]

    def engine(self, cfg: Config) -> Engine:
        eng = Engine(workers=1)
        self.engines.append(eng)
        eng.apply(cfg)
        return eng

    def make_back(self, *, http: HttpOptions | None = None, **tls: Any) -> tuple[Engine, int]:
        """Engine B; tls: ListenerTls fields (strict, peer = the trust domain, unless given)."""
        tls.setdefault("peer", PeerMatch("trust_domain", TD))
        listener = Listener("in", "127.0.0.1", 0, "", protocol="http", virtual_hosts=routes_to("backend"),
                            http=http or HttpOptions(), tls=ListenerTls(*self.files("server", "/ns/shop/sa/server"),
                                                                        **tls))
        eng = self.engine(Config((listener,), (Cluster("backend", (Endpoint(*self.upstream.addr),)),)))
        return eng, eng.listener_port("in")

    def front_config(self, back_port: int, *, tls: bool = True, http: HttpOptions | None = None,
                     **cluster_tls: Any) -> Config:
        """Engine A's config: plaintext HTTP listener "out" -> cluster "mesh" (B), with mTLS unless tls=False."""
        cluster_tls.setdefault("peer", PeerMatch("spiffe_id", SERVER_ID))
        ctls = ClusterTls(*self.files("proxy", "/ns/shop/sa/proxy"), **cluster_tls) if tls else None
        listener = Listener("out", "127.0.0.1", 0, "", protocol="http", virtual_hosts=routes_to("mesh"),
                            http=http or HttpOptions())
        mesh = Cluster("mesh", (Endpoint("127.0.0.1", back_port),), connect_retries=0, tls=ctls)
        return Config((listener,), (mesh,))

    def client_ctx(self, svid: Svid | None = None) -> ssl.SSLContext:
        return client_context(svid if svid is not None else self.client_svid, self.ca.pem)

    def stat(self, eng: Engine, name: str) -> int:
        return int(eng.stats()[name])


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    ca = CA(TD)
    m = Mesh(ca, tmp_path, RecordingUpstream("b0"), ca.issue("/ns/shop/sa/client"))
    yield m
    for eng in m.engines:
        eng.close()
    m.upstream.stop()
    assert _native.debug_counters() == {"conns": 0, "pipes": 0, "snapshots": 0}
    assert _native.debug_live_tls() == 0


def https_get(port: int, ctx: ssl.SSLContext, target: str = "/", method: str = "GET",
              headers: tuple[tuple[str, str], ...] = ()) -> Response:
    with Client(port, ctx=ctx) as cl:
        return cl.request(method, target, headers)


def refused(port: int, ctx: ssl.SSLContext | None) -> bool:
    """True when the proxy closes the connection (during the handshake, or a plaintext client's request)."""
    try:
        if ctx is None:
            with Client(port) as cl:
                cl.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                return cl.closed()
        with Client(port, ctx=ctx) as cl:
            cl.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # TLS 1.3: a rejected client learns it here
            return cl.closed()
    except (ssl.SSLError, ConnectionError):
        return True


# ---- termination --------------------------------------------------------------------------------------------------


def test_https_client_keepalive_through_strict_listener(mesh: Mesh) -> None:
    back, port = mesh.make_back()
    ctx = mesh.client_ctx()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with Client(port, ctx=ctx) as cl:
        assert isinstance(cl.sock, ssl.SSLSocket) and cl.sock.selected_alpn_protocol() == "http/1.1"
        for i in range(3):
            r = cl.request("GET", f"/item/{i}", [(XFCC, "By=spiffe://evil/x;URI=spiffe://evil/y")])
            assert (r.status, r.body) == (200, f"b0:GET:/item/{i}".encode())
        body = bytes(range(256)) * 64
        assert cl.request("POST", "/upload", body=body).status == 200
    got = mesh.upstream.requests
    assert [r.target for r in got] == ["/item/0", "/item/1", "/item/2", "/upload"]
    assert got[3].body == body
    assert all(r.get(XFCC) is None for r in got)  # sanitize, the default: a client cannot forge it
    assert mesh.stat(back, "tls_handshakes_down") == 1
    assert mesh.stat(back, "http_requests") == 4
    assert mesh.stat(back, "tls_handshake_failures_down") == 0


def test_bulk_bodies_both_ways_over_two_tls_hops(mesh: Mesh) -> None:
    """Bodies much larger than a TLS record and the proxies' buffers: partial SSL writes, WANT_WRITE, and
    back-pressure between the hops."""
    payload = bytes(range(256)) * (8 * MIB // 256)
    mesh.upstream.answer = lambda req: (200, [], req.body[::-1])
    _, back_port = mesh.make_back()
    front = mesh.engine(mesh.front_config(back_port))
    with Client(front.listener_port("out")) as cl:
        r = cl.request("POST", "/echo", body=payload)
        assert r.status == 200 and len(r.body) == len(payload) and r.body == payload[::-1]
    assert mesh.upstream.requests[0].body == payload


@pytest.mark.parametrize("case", ["untrusted_ca", "wrong_spiffe_id", "no_client_cert", "plaintext"])
def test_strict_listener_refuses(mesh: Mesh, case: str) -> None:
    back, port = mesh.make_back(peer=PeerMatch("spiffe_prefix", f"spiffe://{TD}/ns/shop/"))
    ctx: ssl.SSLContext | None
    if case == "untrusted_ca":
        ctx = mesh.client_ctx(CA(TD).issue("/ns/shop/sa/client"))  # same trust domain name, another CA
        counter, event = "tls_verify_untrusted", "downstream_handshake_failed"
    elif case == "wrong_spiffe_id":
        ctx = mesh.client_ctx(mesh.ca.issue("/ns/other/sa/client"))
        counter, event = "tls_verify_spiffe_id", "downstream_handshake_failed"
    elif case == "no_client_cert":
        ctx = client_context(None, mesh.ca.pem)
        counter, event = "tls_no_peer_cert", "downstream_handshake_failed"
    else:
        ctx = None
        counter, event = "tls_plaintext_rejected", "plaintext_rejected"
    assert refused(port, ctx)
    wait_for(lambda: mesh.stat(back, counter) == 1, what=counter)
    ev = wait_event(back, [], lambda e: e["event"] == event, event)
    assert ev["listener"] == "in"
    if case == "wrong_spiffe_id":
        assert "spiffe://prod.example/ns/other/sa/client" in ev["reason"]
    assert mesh.stat(back, "http_requests") == 0
    assert mesh.upstream.backend.accepted == 0


def test_handshake_timeout(mesh: Mesh) -> None:
    back, port = mesh.make_back(handshake_timeout_ms=200)
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as s:
        assert s.recv(1) == b""  # closed by the proxy, not by us
    assert mesh.stat(back, "tls_handshake_timeouts") == 1
    wait_event(back, [], lambda e: e["event"] == "handshake_timeout", "timeout event")


def test_permissive_listener_serves_plaintext_and_tls(mesh: Mesh) -> None:
    back, port = mesh.make_back(mode="permissive", http=HttpOptions(forward_client_cert="append_forward"))
    with Client(port) as cl:
        assert cl.request("GET", "/plain", [(XFCC, "By=spiffe://evil/x")]).status == 200
    assert https_get(port, mesh.client_ctx(), "/tls").status == 200
    assert mesh.stat(back, "tls_permissive_plaintext") == 1
    assert mesh.stat(back, "tls_handshakes_down") == 1
    assert mesh.stat(back, "tls_plaintext_rejected") == 0
    plain, tls = mesh.upstream.requests
    assert plain.get(XFCC) is None  # not mutual TLS: sanitized whatever the mode
    assert tls.get(XFCC) == f"By={SERVER_ID};Hash={cert_sha256(mesh.client_svid.cert_pem)};URI={CLIENT_ID}"
    # The scheme each client used, per connection on the one port.
    assert (plain.all("x-forwarded-proto"), tls.all("x-forwarded-proto")) == (["http"], ["https"])
    # TLS on a permissive listener is still mutual.
    assert refused(port, client_context(None, mesh.ca.pem))


def test_routes_match_the_peer_identity(mesh: Mesh) -> None:
    """Routes may require the client's verified SPIFFE ID (exact, prefix, trust domain); a client whose ID does not
    match, and a plaintext client of a permissive listener (no ID), fall through to the next route."""
    other = RecordingUpstream("b1")
    try:
        def only(path: str, peer: PeerMatch) -> Route:
            return Route(path=path, peer=peer, clusters=(WeightedCluster("backend"),))

        vhosts = (VirtualHost("all", ("*",), (
            only("/exact", PeerMatch("spiffe_id", CLIENT_ID)),
            only("/prefix", PeerMatch("spiffe_prefix", f"spiffe://{TD}/ns/shop/")),
            only("/td", PeerMatch("trust_domain", TD)),
            Route(clusters=(WeightedCluster("other"),)))),)
        listener = Listener("in", "127.0.0.1", 0, "", protocol="http", virtual_hosts=vhosts,
                            tls=ListenerTls(*mesh.files("server", "/ns/shop/sa/server"), mode="permissive",
                                            peer=PeerMatch("trust_domain", TD)))
        eng = mesh.engine(Config((listener,), (Cluster("backend", (Endpoint(*mesh.upstream.addr),)),
                                               Cluster("other", (Endpoint(*other.addr),)))))
        port = eng.listener_port("in")
        ops = mesh.client_ctx(mesh.ca.issue("/ns/ops/sa/admin"))

        def served_by(ctx: ssl.SSLContext | None, path: str) -> str | None:
            if ctx is None:
                with Client(port) as cl:
                    return cl.request("GET", path).header("x-upstream")
            return https_get(port, ctx, path).header("x-upstream")

        got = {(who, path): served_by(ctx, path)
               for who, ctx in (("client", mesh.client_ctx()), ("ops", ops), ("plaintext", None))
               for path in ("/exact", "/prefix", "/td")}
        assert got == {
            ("client", "/exact"): "b0", ("client", "/prefix"): "b0", ("client", "/td"): "b0",
            ("ops", "/exact"): "b1", ("ops", "/prefix"): "b1", ("ops", "/td"): "b0",
            ("plaintext", "/exact"): "b1", ("plaintext", "/prefix"): "b1", ("plaintext", "/td"): "b1",
        }
    finally:
        other.stop()


ROUTE_WITH_PEER = """
listeners:
  - name: web
    address: 127.0.0.1:0
    protocol: http
    TLS
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /, peer: PEER}
            cluster: c
clusters:
  - name: c
    endpoints: [{address: 127.0.0.1:1}]
"""


@pytest.mark.parametrize(("tls", "peer", "message"), [
    ("tls: {cert: c.pem, key: k.pem, bundle: b.pem}", "{spiffe_prefix: ns/shop/}",
     r"routes\[0\]\.match\.peer\.spiffe_prefix: 'ns/shop/' is not a spiffe:// ID"),
    ("", "{trust_domain: prod.example}", r"routes\[0\]\.match\.peer: matches the client's SPIFFE ID, which needs tls"),
], ids=["not-an-id", "plaintext-listener"])
def test_route_peer_matches_are_validated(tls: str, peer: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(yaml.safe_load(ROUTE_WITH_PEER.replace("TLS", tls).replace("PEER", peer)), "t.yaml")


# ---- origination: proxy to proxy ----------------------------------------------------------------------------------


def test_two_proxies_pool_and_resume_upstream_tls(mesh: Mesh) -> None:
    """A -> mTLS -> B with keep-alive pooling: requests share upstream connections; a connection that used up
    max_requests_per_conn is replaced by one that resumes the TLS session (a ticket from the first)."""
    back, back_port = mesh.make_back(http=HttpOptions(forward_client_cert="sanitize_set"))
    front = mesh.engine(mesh.front_config(back_port, http=HttpOptions(max_requests_per_conn=3), sni="b.shop"))
    port = front.listener_port("out")
    for i in range(3):  # three client connections, one request each: one upstream connection
        with Client(port) as cl:
            assert cl.request("GET", f"/a{i}").status == 200
    with Client(port) as cl:  # six more on one client connection: two more upstream connections
        for i in range(6):
            assert cl.request("GET", f"/b{i}").status == 200
    assert mesh.stat(front, "tls_handshakes_up") == 3
    assert mesh.stat(front, "http_upstream_reused") == 6
    assert mesh.stat(front, "tls_resumed_up") == 2
    assert mesh.stat(back, "tls_handshakes_down") == 3
    assert mesh.stat(back, "tls_handshake_failures_down") == 0
    got = mesh.upstream.requests
    assert len(got) == 9
    # B set this hop's XFCC: our local ID, the proxy's certificate hash and ID (A's SVID).
    proxy_hash = cert_sha256((mesh.tmp / "proxy" / "svid.pem").read_text())
    assert {r.get(XFCC) for r in got} == {f"By={SERVER_ID};Hash={proxy_hash};URI={PROXY_ID}"}


def test_upstream_with_wrong_spiffe_id_fails_like_a_connect(mesh: Mesh) -> None:
    _, back_port = mesh.make_back()
    front = mesh.engine(mesh.front_config(back_port, peer=PeerMatch("spiffe_id", f"spiffe://{TD}/ns/shop/sa/x")))
    r = https_or_plain_get(front.listener_port("out"))
    assert r.status == 503
    failures = mesh.stat(front, "tls_handshake_failures_up")
    # The route's default retry policy retries a connect failure once; a handshake failure is one.
    assert failures >= 1 and mesh.stat(front, "tls_verify_spiffe_id") == failures
    assert mesh.stat(front, "connect_failures") == failures
    ev = wait_event(front, [], lambda e: e["event"] == "upstream_handshake_failed", "upstream event")
    assert SERVER_ID in ev["reason"] and ev["cluster"] == "mesh"
    assert mesh.upstream.requests == []


def test_upstream_tls_to_a_python_server_sends_sni_alpn_and_our_svid(mesh: Mesh) -> None:
    """A -> mTLS -> a Python ssl HTTP server (not zlbfast): it sees the cluster's SNI and ALPN and A's client SVID,
    and A verifies its SPIFFE ID; two requests share one pooled TLS connection."""
    server_svid = mesh.ca.issue("/ns/shop/sa/server")
    cert, key, _ = write_svid_files(mesh.tmp / "pyserver", server_svid, mesh.ca.pem)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    sctx.load_verify_locations(cadata=mesh.ca.pem)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.set_alpn_protocols(["http/1.1"])
    seen: list[tuple[str | None, str | None, Any]] = []
    snis: list[str | None] = []

    def on_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        snis.append(name)

    sctx.sni_callback = on_sni

    def serve(conn: socket.socket) -> None:
        with sctx.wrap_socket(conn, server_side=True) as tls:
            uri = dict(tls.getpeercert()["subjectAltName"]).get("URI")  # type: ignore[arg-type,index]
            seen.append((snis[-1] if snis else None, tls.selected_alpn_protocol(), uri))
            r = Reader(tls)
            while True:
                try:
                    read_head(r)
                except EOFError:
                    return
                tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    server = Backend(serve)
    try:
        front = mesh.engine(mesh.front_config(server.port, sni="upstream.shop", alpn=("http/1.1",)))
        with Client(front.listener_port("out")) as cl:
            assert cl.request("GET", "/1").body == b"ok"
            assert cl.request("GET", "/2").body == b"ok"
        assert seen == [("upstream.shop", "http/1.1", PROXY_ID)]
        assert mesh.stat(front, "tls_handshakes_up") == 1 and mesh.stat(front, "http_upstream_reused") == 1
    finally:
        server.stop()


def https_or_plain_get(port: int, target: str = "/") -> Response:
    with Client(port) as cl:
        return cl.request("GET", target)


def test_turning_cluster_tls_off_retires_pooled_tls_connections(mesh: Mesh) -> None:
    back, back_port = mesh.make_back()
    front = mesh.engine(mesh.front_config(back_port))
    port = front.listener_port("out")
    assert https_or_plain_get(port).status == 200  # leaves one pooled TLS connection to B
    front.apply(mesh.front_config(back_port, tls=False))
    # The next request must not ride the pooled TLS connection: it goes out in plaintext and B's strict listener
    # refuses it (the upstream closes before any response: 502/503).
    assert https_or_plain_get(port).status in (502, 503)
    wait_for(lambda: mesh.stat(back, "tls_plaintext_rejected") == 1, what="plaintext reached B")
    assert len(mesh.upstream.requests) == 1
    # Same options set again (a reload): pooled connections stay.
    front.apply(mesh.front_config(back_port))
    assert https_or_plain_get(port).status == 200
    front.apply(mesh.front_config(back_port))
    assert https_or_plain_get(port).status == 200
    assert mesh.stat(front, "http_upstream_reused") >= 1


# ---- authorization ----------------------------------------------------------------------------------------------


def test_authorization_by_identity_method_and_path(mesh: Mesh) -> None:
    back, port = mesh.make_back(
        allow=(AuthzRule(PeerMatch("spiffe_id", CLIENT_ID), methods=("GET", "HEAD"),
                         paths=(PathMatch("prefix", "/api/"), PathMatch("exact", "/healthz"))),
               AuthzRule(PeerMatch("trust_domain", TD), paths=(PathMatch("prefix", "/admin/"),),
                         methods=("POST",)),
               AuthzRule(PeerMatch("spiffe_prefix", f"spiffe://{TD}/ns/ops/"))),
        deny=(AuthzRule(paths=(PathMatch("exact", "/api/secret"),)),),
    )
    client, admin = mesh.client_ctx(), mesh.client_ctx(mesh.ca.issue("/ns/ops/sa/admin"))
    cases = [
        (client, "GET", "/api/items", 200),
        (client, "GET", "/api/items?page=2", 200),  # the query is not part of the path
        (client, "HEAD", "/healthz", 200),
        (client, "GET", "/healthz/x", 403),  # exact
        (client, "POST", "/api/items", 403),  # method
        (client, "GET", "/other", 403),  # path
        (client, "GET", "/api/secret", 403),  # deny wins
        (client, "GET", "/api/../other", 403),  # not canonical: path rules cannot judge it
        (client, "GET", "/api/%2e%2e/other", 403),
        (client, "GET", "/%61pi/items", 403),
        (client, "POST", "/admin/reload", 200),  # second allow rule: any ID of the trust domain
        (admin, "DELETE", "/other", 200),
        (admin, "GET", "/api/secret", 403),
    ]
    with Client(port, ctx=client) as cl_client, Client(port, ctx=admin) as cl_admin:
        for ctx, method, target, status in cases:
            cl = cl_client if ctx is client else cl_admin
            r = cl.request(method, target)
            assert r.status == status, (method, target, r.status, r.body)
            if status == 403:
                assert r.body == b"access denied\n"
    denied = sum(1 for *_, status in cases if status == 403)
    assert mesh.stat(back, "authz_denied") == denied
    assert mesh.stat(back, "http_4xx") == denied
    assert [(r.method, r.target) for r in mesh.upstream.requests] == [
        (m, t) for _, m, t, status in cases if status == 200]
    acc: list[dict[str, Any]] = []
    ev = wait_event(back, acc, lambda e: e["event"] == "denied" and "POST /api/items" in e["reason"], "denial")
    assert ev["peer_id"] == CLIENT_ID
    ev = wait_event(back, acc, lambda e: e["event"] == "denied" and "/api/../other" in e["reason"], "canonical")
    assert "canonical" in ev["reason"]
    ev = wait_event(back, acc, lambda e: e["event"] == "denied" and e["peer_id"] == ADMIN_ID, "admin denial")
    assert "GET /api/secret" in ev["reason"]


def test_authorization_of_plaintext_peers_on_a_permissive_listener(mesh: Mesh) -> None:
    public = AuthzRule(methods=("GET",), paths=(PathMatch("exact", "/public"),))
    back, port = mesh.make_back(mode="permissive", allow=(AuthzRule(PeerMatch("trust_domain", TD)), public))
    with Client(port) as cl:
        assert cl.request("GET", "/public").status == 200  # a rule without an ID matches plaintext peers too
        assert cl.request("GET", "/private").status == 403
    assert https_get(port, mesh.client_ctx(), "/private").status == 200
    ev = wait_event(back, [], lambda e: e["event"] == "denied", "plaintext denial")
    assert ev["peer_id"] == "" and "plaintext peer" in ev["reason"]


# ---- x-forwarded-client-cert --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sanitize", "forward_only", "append_forward", "sanitize_set"])
def test_forward_client_cert_modes(mesh: Mesh, mode: str) -> None:
    _, port = mesh.make_back(http=HttpOptions(forward_client_cert=mode))
    incoming = "By=spiffe://up.example/gw;URI=spiffe://up.example/user"
    mine = f"By={SERVER_ID};Hash={cert_sha256(mesh.client_svid.cert_pem)};URI={CLIENT_ID}"
    with Client(port, ctx=mesh.client_ctx()) as cl:
        assert cl.request("GET", "/with", [(XFCC, incoming)]).status == 200
        assert cl.request("GET", "/without").status == 200
    with_hdr, without = mesh.upstream.requests
    expected = {
        "sanitize": ([], []),
        "forward_only": ([incoming], []),
        "append_forward": ([f"{incoming},{mine}"], [mine]),
        "sanitize_set": ([mine], [mine]),
    }[mode]
    assert (with_hdr.all(XFCC), without.all(XFCC)) == expected


def test_client_cert_details_add_subject_and_dns_names(mesh: Mesh) -> None:
    """subject and dns (Envoy's set_current_client_cert_details) add Subject, the RFC 2253 subject in quotes, and
    one DNS key per DNS name, in Envoy's order; a quote in the subject stays escaped as RFC 2253 escapes it.
    (Cert and Chain are compared with Envoy's in tests/test_tls_envoy.py.)"""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Shop "Inc"'),
                         x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    svid = mesh.ca.issue("/ns/shop/sa/client", dns=("client.shop.svc", "*.shop.example"), subject=subject)
    _, port = mesh.make_back(http=HttpOptions(forward_client_cert="sanitize_set",
                                              client_cert_details=("subject", "dns")))
    _, only_dns = mesh.make_back(http=HttpOptions(forward_client_cert="sanitize_set", client_cert_details=("dns",)))
    for p in (port, only_dns):
        with Client(p, ctx=mesh.client_ctx(svid)) as cl:
            assert cl.request("GET", "/").status == 200
    full, dns_only = (r.get(XFCC) for r in mesh.upstream.requests)
    head = f"By={SERVER_ID};Hash={cert_sha256(svid.cert_pem)}"
    dns = ";DNS=client.shop.svc;DNS=*.shop.example"
    assert full == f'{head};Subject="CN=client,O=Shop \\"Inc\\"";URI={CLIENT_ID}{dns}'
    assert dns_only == f"{head};URI={CLIENT_ID}{dns}"


def test_client_cert_details_are_checked() -> None:
    for details, problem in ((["subject", "uri"], "unknown client_cert_details entry 'uri'"),
                             (["dns", "dns"], "'dns' is listed twice")):
        with pytest.raises(ConfigError, match=re.escape(problem)):
            parse_config({"listeners": [{"name": "l", "address": "127.0.0.1:0", "protocol": "http",
                                         "http": {"client_cert_details": details},
                                         "virtual_hosts": [{"name": "v", "routes": [{"match": {"prefix": "/"},
                                                                                     "cluster": "c"}]}]}],
                          "clusters": [{"name": "c", "endpoints": ["127.0.0.1:9"]}]}, "test")


# ---- access log, YAML end to end --------------------------------------------------------------------------------


def test_access_log_records_the_peer_identity(mesh: Mesh, tmp_path: Path) -> None:
    back, port = mesh.make_back(mode="permissive")
    back.native.set_access_log(True)
    assert https_get(port, mesh.client_ctx(), "/tls").status == 200
    with Client(port) as cl:
        assert cl.request("GET", "/plain").status == 200
    recs = {r["path"]: r for r in access_log_records(back.native, tmp_path / "access.log", 2)}
    assert recs["/tls"]["peer_identity"] == CLIENT_ID and recs["/tls"]["status"] == 200
    assert "peer_identity" not in recs["/plain"]


def test_yaml_config_end_to_end_with_access_log(mesh: Mesh, tmp_path: Path) -> None:
    """`zlbfast run` on YAML: an http listener with tls (allow rules with methods and paths, XFCC), the access log
    line of each request carries the peer's SPIFFE ID, and a denied request is logged with it."""
    cert, key, bundle = mesh.files("server", "/ns/shop/sa/server")
    log = tmp_path / "access.log"
    yaml = f"""
listeners:
  - name: in
    address: 127.0.0.1:0
    protocol: http
    http: {{forward_client_cert: sanitize_set}}
    tls:
      cert: {cert}
      key: {key}
      bundle: {bundle}
      peer: {{trust_domain: {TD}}}
      allow:
        - spiffe_id: {CLIENT_ID}
          methods: [GET]
          paths: [{{prefix: /api/}}]
    virtual_hosts:
      - name: all
        routes: [{{match: {{prefix: /}}, cluster: backend}}]
clusters:
  - name: backend
    endpoints: ["{mesh.upstream.addr[0]}:{mesh.upstream.addr[1]}"]
"""
    with running(tmp_path, yaml, "--access-log", str(log)) as p:
        port = p.ports["in"]
        assert https_get(port, mesh.client_ctx(), "/api/x").status == 200
        assert https_get(port, mesh.client_ctx(), "/admin").status == 403
        wait_for(lambda: p.find("tls denied") is not None, what="denial logged")
        denial = p.find("tls denied")
        assert denial is not None and CLIENT_ID in denial["msg"]

        def lines() -> list[dict[str, Any]]:
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

        wait_for(lambda: len(lines()) == 2, what="two access-log lines")
    assert [(r["path"], r["status"], r["peer_identity"]) for r in lines()] == [
        ("/api/x", 200, CLIENT_ID), ("/admin", 403, CLIENT_ID)]
    assert mesh.upstream.requests[0].get(XFCC) == (
        f"By={SERVER_ID};Hash={cert_sha256(mesh.client_svid.cert_pem)};URI={CLIENT_ID}")


# ---- configuration --------------------------------------------------------------------------------------------------


def _listener_yaml(protocol: str, tls_extra: dict[str, Any], http: dict[str, Any] | None = None) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "l", "address": "127.0.0.1:0", "protocol": protocol,
                                "tls": {"cert": "c.pem", "key": "k.pem", "bundle": "b.pem", **tls_extra}}
    if protocol == "http":
        listener["virtual_hosts"] = [{"name": "v", "routes": [{"match": {"prefix": "/"}, "cluster": "c"}]}]
        if http:
            listener["http"] = http
    else:
        listener["cluster"] = "c"
    return {"listeners": [listener], "clusters": [{"name": "c", "endpoints": ["127.0.0.1:1"]}]}


@pytest.mark.parametrize(("protocol", "tls", "http", "message"), [
    ("tcp", {"allow": [{"methods": ["GET"]}]}, None, "listeners[0].tls.allow[0].methods: only http listeners"),
    ("tcp", {"deny": [{"paths": [{"prefix": "/a"}]}]}, None, "listeners[0].tls.deny[0].paths: only http listeners"),
    ("http", {"allow": [{"methods": ["FETCH"]}]}, None, "unknown HTTP method 'FETCH'"),
    ("http", {"allow": [{"paths": [{"prefix": "api"}]}]}, None, "expected a path starting with /"),
    ("http", {"allow": [{"paths": [{"exact": "/a", "prefix": "/b"}]}]}, None, "needs exactly one of exact, prefix"),
    ("http", {"alpn": ["h2"]}, None, "alpn: an http listener speaks HTTP/1.1 only"),
    ("http", {}, {"forward_client_cert": "always"}, "unknown forward_client_cert 'always'"),
])
def test_config_refuses(protocol: str, tls: dict[str, Any], http: dict[str, Any] | None, message: str) -> None:
    from zlbfast.config import validate

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        validate(parse_config(_listener_yaml(protocol, tls, http), "t.yaml"))


def test_config_accepts_tls_on_http_listeners() -> None:
    from zlbfast.config import validate

    cfg = parse_config(_listener_yaml("http", {"mode": "permissive", "alpn": ["http/1.1"], "allow": [
        {"spiffe_prefix": "spiffe://td/ns/", "methods": ["GET", "HEAD"], "paths": [{"prefix": "/api/"}]},
        {"paths": [{"exact": "/healthz"}]}]}, {"forward_client_cert": "append_forward"}), "t.yaml")
    validate(cfg)
    rule = cfg.listeners[0].tls.allow[0]  # type: ignore[union-attr]
    assert rule.methods == ("GET", "HEAD") and rule.paths == (PathMatch("prefix", "/api/"),)
    assert cfg.listeners[0].http.forward_client_cert == "append_forward"

