"""SDS: Secret resources pushed over the ADS stream become the identity of zlbfast's TLS data plane.

A test ADS server feeds an in-process agent (real Engine); a strict mTLS listener on that engine uses the
identity named after the tls_certificate secret. Python ssl clients read the serial of the certificate the
listener presents. Checked: rotation (new connections get the new certificate, established ones keep going),
a bad Secret is NACKed and the old identity stays, a new Secret every second for 30 s under wrk fails no request, and
no secret reaches the on-disk xDS cache.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netutil import Backend, echo_handler, wait_for
from tests.tlsutil import CA, Svid, client_context, peer_serial, tls_connect
from tests.wrkutil import rotate_under_wrk
from tests.xds.adsserver import AdsServer
from tests.xds.agentrun import AgentThread
from tests.xds.envoy_res import assignment, ca_secret, eds_cluster, tls_secret
from zlbfast import _native
from zlbfast.model import Cluster, Config, Endpoint, Listener
from zlbfast.runtime import Engine
from zlbfast.xds import resources as r

TD = "prod.example"


def round_trip(s: socket.socket, payload: bytes) -> bytes:
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


class Sds:
    """One agent, one echo backend behind EDS cluster "backend", a strict mTLS listener using identity
    "default" (the tls_certificate secret's name) and a client SVID of the same trust domain."""

    def __init__(self, server: AdsServer, agent: AgentThread, backend: Backend, ca: CA) -> None:
        self.server, self.agent, self.backend, self.ca = server, agent, backend, ca
        self.client_ctx = client_context(ca.issue("/ns/shop/sa/client"), ca.pem)
        self.port = 0

    def serial(self) -> int | None:
        engine = self.agent.engine
        assert engine is not None
        info = self.agent.call(lambda: engine.identity_info("default"))
        return None if info is None else int(str(info["serial"]), 16)

    def push(self, svid: Svid, key_pem: str | None = None) -> None:
        self.server.set(r.SECRET, {"default": tls_secret("default", svid, key_pem), "ROOTCA": ca_secret("ROOTCA",
                                                                                                         self.ca)})

    def presented_serial(self) -> int:
        """Serial of the certificate the listener presents to a new connection (which must also echo)."""
        with tls_connect(self.port, self.client_ctx) as s:
            assert round_trip(s, b"ping\n") == b"ping\n"
            return peer_serial(s)

    def stats(self) -> dict[str, int]:
        engine = self.agent.engine
        assert engine is not None
        return self.agent.call(engine.stats)


@pytest.fixture
def sds_factory(ads_server: AdsServer, tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[AgentThread, Backend]] = []

    def make(first: Svid, ca: CA, *, delta: bool = False) -> Sds:
        from tests.xds.envoy_res import ads_bootstrap

        backend = Backend(echo_handler)
        ads_server.set(r.CLUSTER, {"backend": eds_cluster("backend")})
        ads_server.set(r.ENDPOINT, {"backend": assignment("backend", [(backend.host, backend.port)])})
        agent = AgentThread(ads_bootstrap(ads_server.port, delta=delta), str(tmp_path / "cache")).start()
        made.append((agent, backend))
        sds = Sds(ads_server, agent, backend, ca)
        engine = agent.engine
        assert engine is not None and agent.agent is not None and agent.agent.ads is not None
        wait_for(lambda: "backend" in agent.call(engine.endpoints), what="cluster from CDS/EDS")
        sds.push(first)
        ads = agent.agent.ads
        agent.call(lambda: ads.subscribe(r.SECRET, {"default", "ROOTCA"}))
        wait_for(lambda: sds.serial() == first.serial, what="identity from SDS")
        lid = agent.call(lambda: engine.native.add_listener(
            "in", "backend", "127.0.0.1", 0, tls={"identity": "default", "mode": "strict",
                                                  "peer": ("trust_domain", TD)}))
        sds.port = agent.call(lambda: engine.native.listener_port(lid))
        return sds

    yield make
    for agent, backend in made:
        agent.stop()
        backend.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_secret_rotates_identity_and_bad_secret_is_nacked(sds_factory: Any, tmp_path: Path, delta: bool) -> None:
    ca = CA(TD)
    first, second = ca.issue("/ns/shop/sa/server"), ca.issue("/ns/shop/sa/server")
    sds = sds_factory(first, ca, delta=delta)
    assert sds.presented_serial() == first.serial

    # A connection established before the rotation.
    old = tls_connect(sds.port, sds.client_ctx)
    try:
        assert round_trip(old, b"before\n") == b"before\n"

        sds.push(second)
        sds.server.wait_ack(r.SECRET)
        assert sds.serial() == second.serial
        assert sds.presented_serial() == second.serial
        # The established connection keeps its session (and the old certificate) and still carries bytes.
        assert peer_serial(old) == first.serial
        assert round_trip(old, b"after\n") == b"after\n"

        # A bad Secret (a new certificate with the previous key) is NACKed naming the secret; the key text is not
        # in the message; the previous identity keeps serving.
        third = ca.issue("/ns/shop/sa/server")
        sds.push(third, key_pem=second.key_pem)
        wait_for(lambda: sds.server.nacks(r.SECRET), what="NACK of the bad secret")
        nack = sds.server.nacks(r.SECRET)[0]
        assert "Secret 'default': tls_certificate:" in nack and "private key" in nack, nack
        assert "PRIVATE KEY" not in nack and second.key_pem.splitlines()[1] not in nack
        assert sds.serial() == second.serial
        assert sds.presented_serial() == second.serial
        st = sds.agent.state()
        assert st["nacks"] == 1
        if not delta:  # the NACK carries the last accepted version
            bad = [x for x in sds.server.recorded(type_url=r.SECRET) if x.nack][0]
            assert bad.request.version_info == st["last_version"]["Secret"]
        assert round_trip(old, b"still\n") == b"still\n"
    finally:
        old.close()
    assert sds.stats()["tls_handshake_failures_down"] == 0

    # No private key on disk: secrets are kept out of the xDS cache.
    cache = tmp_path / "cache" / "xds-state.json"
    wait_for(cache.exists, what="xDS cache written")  # written whole (temp file + rename): any version will do
    data = json.loads(cache.read_text())
    assert r.SECRET not in data["types"] and r.CLUSTER in data["types"]


def test_secret_without_validation_context_waits() -> None:
    """A tls_certificate secret needs a trust bundle (a validation_context secret) before it becomes an identity."""
    from zlbfast.xds.state import identity_bundles, identity_material

    ca = CA(TD)
    svid = ca.issue("/ns/shop/sa/server")
    spec = r.translate_secret(tls_secret("default", svid))
    assert identity_material(spec, identity_bundles({"default": spec})) is None
    other = CA("partner.example")
    secrets = {"default": spec, "ROOTCA": r.translate_secret(ca_secret("ROOTCA", ca)),
               "spiffe://partner.example": r.translate_secret(ca_secret("spiffe://partner.example", other))}
    material = identity_material(spec, identity_bundles(secrets))
    assert material is not None
    assert dict(material[2]) == {"": ca.pem.encode(), "partner.example": other.pem.encode()}


def test_rotation_every_second_under_wrk(sds_factory: Any, tmp_path: Path) -> None:
    """A new Secret every second for 30 s while wrk sends HTTP requests through a client engine that originates
    mTLS to the SDS identity's listener (every 20th request closes, so handshakes happen all through the run): no
    request fails, and each rotation is what new connections see."""
    ca = CA(TD)
    first = ca.issue("/ns/shop/sa/server")
    sds = sds_factory(first, ca)
    web = _native.BuiltinBackend("http", label="web")
    client = Engine(workers=1)
    try:
        sds.server.set(r.CLUSTER, {"backend": eds_cluster("backend"), "web": eds_cluster("web")})
        sds.server.set(r.ENDPOINT, {"backend": assignment("backend", [(sds.backend.host, sds.backend.port)]),
                                    "web": assignment("web", [(web.host, web.port)])})
        engine = sds.agent.engine
        assert engine is not None
        wait_for(lambda: "web" in sds.agent.call(engine.endpoints), what="cluster web from CDS/EDS")
        lid = sds.agent.call(lambda: engine.native.add_listener(
            "in-web", "web", "127.0.0.1", 0, tls={"identity": "default", "mode": "strict",
                                                  "peer": ("trust_domain", TD)}))
        web_port = sds.agent.call(lambda: engine.native.listener_port(lid))
        client_svid = ca.issue("/ns/shop/sa/client")
        client.set_identity("client", client_svid.cert_pem, client_svid.key_pem, {"": ca.pem})
        client.apply(Config((Listener("out", "127.0.0.1", 0, "mesh"),),
                            (Cluster("mesh", (Endpoint("127.0.0.1", web_port),), connect_retries=0),)))
        client.native.set_cluster_tls("mesh", {"identity": "client", "peer": ("trust_domain", TD)})

        def rotate() -> None:
            svid = ca.issue("/ns/shop/sa/server")
            sds.push(svid)
            sds.server.wait_ack(r.SECRET)
            assert sds.serial() == svid.serial
            assert sds.presented_serial() == svid.serial

        rotations = rotate_under_wrk(client.listener_port("out"), tmp_path, rotate)
        info = sds.agent.call(lambda: engine.identity_info("default"))
        assert info is not None and info["rotations"] == rotations
        assert sds.stats()["tls_handshake_failures_down"] == 0
        assert client.stats()["tls_handshake_failures_up"] == 0
        assert client.stats()["tls_handshakes_up"] > rotations  # wrk's reconnects: fresh handshakes
        assert sds.server.nacks(r.SECRET) == []
    finally:
        client.close()
        web.stop()
