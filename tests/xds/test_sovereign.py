"""REST-JSON interop with the real sovereign control plane (pip package `sovereign`, in its own virtual environment
built by scripts/sovereign-env.sh): zlbfast polls CDS/EDS/LDS/RDS over REST like Envoy's `api_type: REST`; an
endpoint added to sovereign's file source reaches real TCP traffic through zlbfast, and a domain added to an HTTP
listener's RouteConfiguration reaches real HTTP requests."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.httputil import RecordingUpstream
from tests.netutil import free_port, read_label, wait_for
from tests.xds.agentrun import AgentThread
from tests.xds.envoy_res import rest_bootstrap
from tests.xds.traffic import label_or_empty, routed

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Path(__file__).with_name("sovereign_template.py")
NODE_CLUSTER = "zlb-sovereign"  # sovereign matches node.cluster against an instance's service_clusters


def write_instances(path: Path, listen_port: int, endpoints: list[str], **extra: object) -> None:
    """One instance "svc"; extra: domains, for an HTTP listener with routes over RDS."""
    data = [{"name": "svc", "service_clusters": [NODE_CLUSTER], "listen_port": listen_port, "endpoints": endpoints,
             **extra}]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)  # sovereign re-reads the file every second: it must never see half of it


@pytest.fixture(scope="session")
def sovereign_bin() -> str:
    """The `sovereign` entry point of the venv that scripts/sovereign-env.sh creates (once; pip needs PyPI)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "sovereign-env.sh")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"scripts/sovereign-env.sh failed:\n{out.stderr[-4000:]}"
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def sovereign(tmp_path: Path, sovereign_bin: str) -> Iterator[tuple[int, Path]]:
    """A sovereign process on 127.0.0.1 serving the instances file that the test rewrites: (port, file)."""
    port = free_port()
    instances = tmp_path / "instances.yaml"
    template = {"protocol": "python", "path": str(TEMPLATE)}
    config = {
        "templates": {"default": [{"type": t, "spec": template}
                                  for t in ("clusters", "endpoints", "listeners", "routes")]},
        "sources": [{"type": "file", "config": {"spec": {"protocol": "file", "serialization": "yaml",
                                                         "path": str(instances)}}}],
        "source_config": {"refresh_rate": 1},
    }
    (tmp_path / "sovereign.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "SOVEREIGN_CONFIG": f"file://{tmp_path / 'sovereign.yaml'}", "SOVEREIGN_HOST": "127.0.0.1",
           "SOVEREIGN_PORT": str(port), "SOVEREIGN_WORKERS": "1"}
    write_instances(instances, 1, [])
    with open(tmp_path / "sovereign.log", "wb") as log:
        proc = subprocess.Popen([sovereign_bin], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield port, instances
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def test_endpoint_added_in_sovereign_reaches_traffic(tmp_path, sovereign, backends):
    b0, b1 = backends(2)
    cp_port, instances = sovereign
    port = free_port()
    write_instances(instances, port, [b0.address])
    agent = AgentThread(rest_bootstrap(cp_port, NODE_CLUSTER, refresh="0.2s"), str(tmp_path / "cache")).start()
    try:
        # sovereign takes a few seconds to import and start; the poller backs off and retries meanwhile.
        wait_for(lambda: label_or_empty(port) == "b0", timeout=60, what="listener and endpoint from sovereign")
        st = agent.state()
        assert st["connected"] and st["nacks"] == 0 and st["last_error"] == ""
        first_versions, first_updates = st["last_version"], st["updates"]
        assert set(first_versions) == {"Cluster", "ClusterLoadAssignment", "Listener"}

        write_instances(instances, port, [b0.address, b1.address])
        wait_for(lambda: label_or_empty(port) == "b1", timeout=30, what="the endpoint added in sovereign's source")
        assert {read_label(port) for _ in range(10)} == {"b0", "b1"}
        assert b1.accepted >= 1
        st = agent.state()
        assert st["nacks"] == 0 and st["endpoints"] == 2
        # Only the endpoints changed, once: sovereign answered every other poll "unchanged" (304), which needs the
        # request's version_info in Envoy's field names.
        assert st["updates"] == first_updates + 1
        assert st["last_version"]["ClusterLoadAssignment"] != first_versions["ClusterLoadAssignment"]
        assert st["last_version"]["Cluster"] == first_versions["Cluster"]
        assert st["last_version"]["Listener"] == first_versions["Listener"]
    finally:
        agent.stop()


def test_http_routes_polled_from_sovereign(tmp_path, sovereign):
    """An HTTP listener whose RouteConfiguration comes over REST RDS: zlbfast asks for the name the listener gives,
    and a domain added in sovereign's source reaches real requests."""
    cp_port, instances = sovereign
    port = free_port()
    with RecordingUpstream("up0") as up:
        endpoint = f"{up.addr[0]}:{up.addr[1]}"
        write_instances(instances, port, [endpoint], domains=["a.example"])
        agent = AgentThread(rest_bootstrap(cp_port, NODE_CLUSTER, refresh="0.2s"), str(tmp_path / "cache")).start()
        try:
            wait_for(lambda: agent.has_listener("svc"), timeout=60, what="the HTTP listener and its routes")
            assert routed(port, "a.example", "/x") == (200, "up0")
            assert routed(port, "b.example", "/x")[0] == 404
            write_instances(instances, port, [endpoint], domains=["a.example", "b.example"])
            wait_for(lambda: routed(port, "b.example", "/x") == (200, "up0"), timeout=30, what="the added domain")
            st = agent.state()
            assert st["nacks"] == 0 and "RouteConfiguration" in st["last_version"]
        finally:
            agent.stop()
