"""TLS configured over xDS: a Listener's DownstreamTlsContext and a Cluster's UpstreamTlsContext, their identity and
trust bundle from SDS Secrets on the same ADS stream.

A test ADS server feeds an in-process agent (real Engine, real sockets):
  * listener "in" terminates mutual TLS (clients under spiffe://prod.example/ns/shop/) in front of a plaintext
    backend "b0";
  * listener "out" is plaintext in front of cluster "secure", which originates mutual TLS to a Python TLS backend
    that must be spiffe://prod.example/ns/shop/sa/backend; the backend requires a client certificate and answers
    with the SPIFFE ID and SNI it saw, then echoes.
Checked: both wait (warming) until their Secrets arrive, then traffic flows with SPIFFE verification both ways
(and wrong peers are refused in the handshake); a rotated certificate Secret reaches new connections; a listener
moved to a Secret not sent yet keeps serving its old version meanwhile; contexts using what zlbfast does not
implement are NACKed naming resource and field while the old config keeps serving. An HTTP connection manager
listener terminates mutual TLS the same way and sets x-forwarded-client-cert as its forward_client_cert_details
says.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from tests.httputil import Client, RecordingUpstream
from tests.netutil import DEADLINE_S, Backend, connect, free_port, label_handler, read_line, wait_for
from tests.tlsutil import (
    CA,
    Svid,
    cert_sha256,
    client_context,
    peer_serial,
    peer_spiffe_id,
    server_context,
    tls_connect,
)
from tests.xds.adsserver import AdsServer
from tests.xds.agentrun import AgentThread
from tests.xds.envoy_res import (
    assignment,
    ca_secret,
    common_tls,
    eds_cluster,
    http_listener,
    tcp_listener,
    tls_cluster,
    tls_listener,
    tls_secret,
    tls_socket,
    to_cluster,
    vhost,
)
from zlbfast import model
from zlbfast.xds import resources as r
from zlbfast.xds.listeners import translate_listener

TD = "prod.example"
PROXY = "/ns/mesh/sa/proxy"
BACKEND = "/ns/shop/sa/backend"
CLIENTS = f"spiffe://{TD}/ns/shop/"


def tls_echo(ctx: ssl.SSLContext) -> Callable[[socket.socket], None]:
    """Handshake (client certificate required), send the client's SPIFFE ID and the SNI it asked for, then echo.
    (One connection at a time: the SNI is the latest one seen.)"""
    sni: list[str] = []
    ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name or "")  # type: ignore[assignment, misc]

    def handle(conn: socket.socket) -> None:
        conn.settimeout(DEADLINE_S)
        with ctx.wrap_socket(conn, server_side=True) as s:
            s.sendall(f"{peer_spiffe_id(s)} {sni[-1] if sni else '-'}\n".encode())
            while data := s.recv(65536):
                s.sendall(data)

    return handle


@dataclass
class Mesh:
    server: AdsServer
    agent: AgentThread
    ca: CA
    proxy: Svid
    in_port: int
    out_port: int
    backends: list[Backend] = field(default_factory=list)

    def listener_in(self, validation: str = "ROOTCA", **common: Any) -> listener_pb2.Listener:
        return tls_listener("in", self.in_port, "local", common_tls("default", validation, spiffe_prefix=CLIENTS,
                                                                      **common))

    def cluster_secure(self, **fields: Any) -> cluster_pb2.Cluster:
        return tls_cluster("secure", common_tls("default", "ROOTCA", spiffe_exact=f"spiffe://{TD}{BACKEND}"),
                           sni="backend.example", **fields)

    def tls_backend(self, path: str) -> Backend:
        b = Backend(tls_echo(server_context(self.ca.issue(path), self.ca.pem)))
        self.backends.append(b)
        return b

    def push_secrets(self, proxy: Svid | None = None, **extra: Any) -> None:
        self.server.set(r.SECRET, {"default": tls_secret("default", proxy or self.proxy),
                                   "ROOTCA": ca_secret("ROOTCA", self.ca), **extra})

    def client(self, path: str = "/ns/shop/sa/client") -> ssl.SSLContext:
        return client_context(self.ca.issue(path), self.ca.pem)

    def stat(self, name: str) -> int:
        engine = self.agent.engine
        assert engine is not None
        return int(self.agent.call(engine.stats)[name])

    def waiting(self) -> list[str]:
        return list(self.agent.state()["waiting_for_secrets"])


def through_in(mesh: Mesh, ctx: ssl.SSLContext) -> tuple[bytes, int]:
    """(what listener "in" relays from its backend, serial of the certificate it presented); (b"", 0) when the
    handshake or the connection fails."""
    try:
        with tls_connect(mesh.in_port, ctx) as s:
            serial = peer_serial(s)
            return read_line(s), serial
    except (ssl.SSLError, ConnectionError):
        return b"", 0


def through_out(mesh: Mesh) -> bytes:
    """The upstream TLS backend's first line through plaintext listener "out" (b"" when zlbfast refused it), after
    checking an echo."""
    with connect(mesh.out_port) as s:
        s.settimeout(DEADLINE_S)
        try:
            line = read_line(s)
        except ConnectionResetError:
            return b""
        if line:
            s.sendall(b"ping\n")
            assert read_line(s) == b"ping\n"
        return line


@pytest.fixture(params=["sotw", "delta"])
def mesh(ads_server: AdsServer, agent_factory: Any, request: Any) -> Any:
    ca = CA(TD)
    local = Backend(label_handler("b0"))
    m = Mesh(ads_server, None, ca, ca.issue(PROXY), free_port(), free_port(), [local])  # type: ignore[arg-type]
    upstream = m.tls_backend(BACKEND)
    ads_server.set(r.CLUSTER, {"local": eds_cluster("local"), "secure": m.cluster_secure()})
    ads_server.set(r.ENDPOINT, {"local": assignment("local", [(local.host, local.port)]),
                                "secure": assignment("secure", [(upstream.host, upstream.port)])})
    ads_server.set(r.LISTENER, {"in": m.listener_in(), "out": tcp_listener("out", m.out_port, "secure")})
    m.agent = agent_factory(ads_server, delta=request.param == "delta")
    yield m
    for b in m.backends:
        b.stop()


def secrets_subscribed(server: AdsServer) -> set[str]:
    """The Secret names the agent's requests subscribe to (state of the world or delta)."""
    names: set[str] = set()
    for x in server.recorded(type_url=r.SECRET):
        q = x.request
        if q.DESCRIPTOR.name == "DeltaDiscoveryRequest":
            names = (names | set(q.resource_names_subscribe)) - set(q.resource_names_unsubscribe)
        else:
            names = set(q.resource_names)
    return names


def serving(mesh: Mesh) -> None:
    mesh.push_secrets()
    wait_for(lambda: mesh.agent.has_listener("in") and mesh.agent.has_listener("out"), what="TLS listeners")


def test_tls_from_xds_waits_for_its_secrets_then_verifies_both_ways(mesh: Mesh) -> None:
    # Warming: the cluster and the listener wait for the Secrets their contexts name, which the agent subscribes to;
    # "out" waits for its cluster.
    wait_for(lambda: mesh.waiting() == ["cluster secure", "listener in"], what="TLS contexts waiting for Secrets")
    wait_for(lambda: secrets_subscribed(mesh.server) == {"default", "ROOTCA"}, what="SDS subscription")
    assert not mesh.agent.has_listener("in") and not mesh.agent.has_listener("out")

    serving(mesh)
    assert mesh.waiting() == []

    # Downstream: zlbfast presents the SDS identity and verifies the client's SPIFFE ID by prefix.
    line, serial = through_in(mesh, mesh.client())
    assert line == b"b0\n" and serial == mesh.proxy.serial
    assert through_in(mesh, mesh.client("/ns/other/sa/client"))[0] == b""
    wait_for(lambda: mesh.stat("tls_verify_spiffe_id") == 1, what="the refused client counted")
    assert through_in(mesh, client_context(CA(TD).issue("/ns/shop/sa/client"), mesh.ca.pem))[0] == b""
    wait_for(lambda: mesh.stat("tls_verify_untrusted") == 1, what="a client of another CA refused")

    # Upstream: the backend sees zlbfast's SPIFFE ID and the configured SNI; zlbfast checked the backend's exact ID.
    assert through_out(mesh) == f"spiffe://{TD}{PROXY} backend.example\n".encode()
    assert mesh.stat("tls_handshakes_up") >= 1

    # A backend with another SPIFFE ID is refused by zlbfast in the handshake.
    impostor = mesh.tls_backend("/ns/shop/sa/impostor")
    mesh.server.set(r.ENDPOINT, {"local": assignment("local", [(mesh.backends[0].host, mesh.backends[0].port)]),
                                 "secure": assignment("secure", [(impostor.host, impostor.port)])})
    mesh.server.wait_ack(r.ENDPOINT)
    wait_for(lambda: through_out(mesh) == b"", what="the impostor refused")
    assert mesh.stat("tls_verify_spiffe_id") >= 2 and mesh.stat("tls_handshake_failures_up") >= 1


def test_sds_rotation_and_a_listener_moving_to_a_new_secret(mesh: Mesh) -> None:
    serving(mesh)
    rotated = mesh.ca.issue(PROXY)
    mesh.push_secrets(rotated)
    wait_for(lambda: through_in(mesh, mesh.client())[1] == rotated.serial, what="rotated certificate downstream")
    assert through_out(mesh).startswith(f"spiffe://{TD}{PROXY} ".encode())

    # Listener "in" now trusts the bundle of Secret "NEWCA", not sent yet: the old version keeps serving.
    new_ca = CA(TD)
    mesh.server.set(r.LISTENER, {"in": mesh.listener_in("NEWCA"), "out": tcp_listener("out", mesh.out_port, "secure")})
    mesh.server.wait_ack(r.LISTENER)
    assert mesh.waiting() == ["listener in"]
    assert through_in(mesh, mesh.client())[0] == b"b0\n"
    mesh.push_secrets(rotated, NEWCA=ca_secret("NEWCA", new_ca))
    wait_for(lambda: mesh.waiting() == [], what="listener in with its new Secret")
    # Only the named validation context is trusted now: clients of the old CA are refused, the new CA's accepted.
    wait_for(lambda: through_in(mesh, mesh.client())[0] == b"", what="old CA no longer trusted")
    assert through_in(mesh, client_context(new_ca.issue("/ns/shop/sa/client"), mesh.ca.pem))[0] == b"b0\n"


@pytest.mark.parametrize("what", ["listener", "cluster"])
def test_unsupported_tls_fields_are_nacked_and_the_old_config_keeps_serving(mesh: Mesh, what: str) -> None:
    serving(mesh)
    if what == "listener":
        bad = mesh.listener_in(tls_params={"cipher_suites": ["ECDHE-ECDSA-AES128-GCM-SHA256"]})
        mesh.server.set(r.LISTENER, {"in": bad, "out": tcp_listener("out", mesh.out_port, "secure")})
        expected = ("Listener 'in': filter_chains[0].transport_socket.typed_config.common_tls_context.tls_params."
                    "cipher_suites: field is not supported")
    else:
        mesh.server.set(r.CLUSTER, {"local": eds_cluster("local"), "secure": mesh.cluster_secure(
            allow_renegotiation=True)})
        expected = "Cluster 'secure': transport_socket.typed_config.allow_renegotiation: field is not supported"
    type_url = r.LISTENER if what == "listener" else r.CLUSTER
    wait_for(lambda: mesh.server.nacks(type_url), what="NACK")
    assert expected in mesh.server.nacks(type_url)[0]
    assert through_in(mesh, mesh.client())[0] == b"b0\n"
    assert through_out(mesh).startswith(f"spiffe://{TD}{PROXY} ".encode())


def _listener(socket_fields: dict[str, Any] | None = None, **common: Any) -> listener_pb2.Listener:
    msg = tls_listener("l", 1, "c", common_tls("cert", "ca", **common))
    if socket_fields:
        json_format.ParseDict(socket_fields, msg.filter_chains[0].transport_socket.typed_config)
    return msg


_CONTEXT = "filter_chains[0].transport_socket.typed_config"
_COMMON = f"{_CONTEXT}.common_tls_context"


def _tls_of(msg: listener_pb2.Listener) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    msg.filter_chains[0].transport_socket.typed_config.Unpack(ctx)
    return ctx


def _edited(edit: Callable[[Any], None]) -> listener_pb2.Listener:
    msg = _listener(spiffe_exact=f"spiffe://{TD}/a")
    ctx = _tls_of(msg)
    edit(ctx)
    msg.filter_chains[0].transport_socket.typed_config.Pack(ctx)
    return msg


REFUSED = {
    "no client certificate": (_edited(lambda c: c.require_client_certificate.Clear()),
                              f"{_CONTEXT}.require_client_certificate: zlbfast listeners are mutual TLS only"),
    "session tickets": (_edited(lambda c: setattr(c, "disable_stateless_session_resumption", True)),
                        f"{_CONTEXT}.disable_stateless_session_resumption"),
    "inline certificate": (_edited(lambda c: c.common_tls_context.tls_certificates.add()),
                           f"{_COMMON}.tls_certificates: field is not supported"),
    "two certificates": (_edited(lambda c: c.common_tls_context.tls_certificate_sds_secret_configs.add(name="x")),
                         f"{_COMMON}.tls_certificate_sds_secret_configs: exactly one is supported, got 2"),
    "no validation": (_edited(lambda c: c.common_tls_context.ClearField("combined_validation_context")),
                      f"{_COMMON}: needs validation_context_sds_secret_config or combined_validation_context"),
    "inline CA": (_edited(lambda c: setattr(c.common_tls_context.combined_validation_context
                                            .default_validation_context.trusted_ca, "inline_string", "x")),
                  f"{_COMMON}.combined_validation_context.default_validation_context.trusted_ca"),
    "DNS SAN": (_edited(lambda c: setattr(c.common_tls_context.combined_validation_context.default_validation_context
                                          .match_typed_subject_alt_names[0], "san_type", 2)),
                "match_typed_subject_alt_names[0].san_type: DNS is not supported"),
    "suffix matcher": (_edited(lambda c: setattr(c.common_tls_context.combined_validation_context
                                                 .default_validation_context.match_typed_subject_alt_names[0].matcher,
                                                 "suffix", "/a")), "matcher.suffix: field is not supported"),
    "ignore case": (_edited(lambda c: setattr(c.common_tls_context.combined_validation_context
                                              .default_validation_context.match_typed_subject_alt_names[0].matcher,
                                              "ignore_case", True)), "matcher.ignore_case: field is not supported"),
    "not a SPIFFE ID": (_edited(lambda c: setattr(c.common_tls_context.combined_validation_context
                                                  .default_validation_context.match_typed_subject_alt_names[0].matcher,
                                                  "exact", "backend.example")),
                        "matcher.exact: expected a spiffe:// ID"),
    "two matchers": (_edited(lambda c: c.common_tls_context.combined_validation_context.default_validation_context
                             .match_typed_subject_alt_names.add(san_type=3)), "at most one matcher is supported"),
    "TLS 1.1": (_edited(lambda c: setattr(c.common_tls_context.tls_params, "tls_minimum_protocol_version", 2)),
                "tls_params.tls_minimum_protocol_version: TLSv1_1 is not supported"),
    "TLS 1.2 at most": (_edited(lambda c: setattr(c.common_tls_context.tls_params, "tls_maximum_protocol_version", 3)),
                        "tls_params.tls_maximum_protocol_version: zlbfast always allows TLS 1.3"),
    "SDS from elsewhere": (_edited(lambda c: c.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config
                                   .ClearField("ads")),
                           f"{_COMMON}.tls_certificate_sds_secret_configs[0].sds_config: Secrets come over the ADS"),
    "SDS fetch timeout": (_edited(lambda c: c.common_tls_context.tls_certificate_sds_secret_configs[0].sds_config
                                  .initial_fetch_timeout.FromSeconds(5)), "sds_config.initial_fetch_timeout"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_tls_context_refusals_name_the_field(name: str) -> None:
    msg, problem = REFUSED[name]
    with pytest.raises(r.ResourceError) as exc:
        translate_listener(msg)
    assert problem in str(exc.value) and str(exc.value).startswith("Listener 'l': ")


def test_tls_context_translation() -> None:
    lst = translate_listener(_listener(spiffe_prefix=f"spiffe://{TD}/ns/", alpn_protocols=["h2"]))
    tls = lst.listener.tls
    assert lst.sds == r.SdsRef("cert", "ca") and tls is not None
    assert (tls.identity, tls.mode, tls.min_version, tls.alpn, tls.peer, tls.cert) == (
        r.SdsRef("cert", "ca").identity, "strict", "1.2", ("h2",), model.PeerMatch("spiffe_prefix",
                                                                                        f"spiffe://{TD}/ns/"), "")
    # The identity of a pair of Secret names is distinct for every pair.
    assert r.SdsRef("a,b", "c").identity != r.SdsRef("a", "b,c").identity
    cl = r.translate_cluster(tls_cluster("c", common_tls("cert", "ca", spiffe_exact=f"spiffe://{TD}/b",
                                                         tls_params={"tls_minimum_protocol_version": "TLSv1_3"}),
                                         sni="b.example"))
    ctls = cl.cluster.tls
    assert ctls is not None and cl.sds == r.SdsRef("cert", "ca")
    assert (ctls.sni, ctls.min_version, ctls.peer) == ("b.example", "1.3", model.PeerMatch("spiffe_id",
                                                                                             f"spiffe://{TD}/b"))


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_http_listener_terminates_mtls_and_sets_the_client_cert_header(ads_server, agent_factory, delta):
    ca = CA(TD)
    proxy = ca.issue(PROXY)
    client = ca.issue("/ns/shop/sa/client")
    port = free_port()
    with RecordingUpstream("up0") as up:
        ads_server.set(r.CLUSTER, {"local": eds_cluster("local")})
        ads_server.set(r.ENDPOINT, {"local": assignment("local", [up.addr])})
        msg = http_listener("web", port, route_config={"virtual_hosts": [vhost("all", ["*"], to_cluster("local"))]},
                            forward_client_cert_details="SANITIZE_SET", set_current_client_cert_details={"uri": True})
        json_format.ParseDict(tls_socket("DownstreamTlsContext", require_client_certificate=True,
                                         common_tls_context=common_tls("default", "ROOTCA", spiffe_prefix=CLIENTS)),
                              msg.filter_chains[0].transport_socket)
        ads_server.set(r.LISTENER, {"web": msg})
        agent = agent_factory(ads_server, delta=delta)
        wait_for(lambda: agent.state()["waiting_for_secrets"] == ["listener web"], what="the listener's Secrets")
        ads_server.set(r.SECRET, {"default": tls_secret("default", proxy), "ROOTCA": ca_secret("ROOTCA", ca)})
        wait_for(lambda: agent.has_listener("web"), what="the HTTP listener with its identity")
        with Client(port, ctx=client_context(client, ca.pem)) as cl:
            resp = cl.request("GET", "/x", [("X-Forwarded-Client-Cert", "By=spiffe://forged")], host="a.example")
        assert (resp.status, resp.header("x-upstream")) == (200, "up0")
        # SANITIZE_SET: the client's header is replaced by this hop's element, Envoy's keys with uri: true.
        assert up.requests[-1].all("x-forwarded-client-cert") == [
            f"By={proxy.spiffe_id};Hash={cert_sha256(client.cert_pem)};URI={client.spiffe_id}"]
        # A client outside the SPIFFE prefix fails in the handshake (or at the first read, with TLS 1.3).
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            with Client(port, ctx=client_context(ca.issue("/ns/other/sa/client"), ca.pem)) as cl:
                cl.request("GET", "/x", host="a.example")
