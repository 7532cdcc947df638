"""Control-plane outage: zlbfast (the `zlbfast run -c bootstrap.yaml` process) keeps serving with zero failed
connections while the control plane is dead, restarts from its cache while it is still dead, and takes the
control plane's new state when it returns. This is the one long test (30 s of outage, required by issue 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from tests.netutil import free_port, read_label, wait_for
from tests.xds.adsserver import AdsServer
from tests.xds.envoy_res import ads_bootstrap, assignment, eds_cluster, tcp_listener
from tests.xds.traffic import Load, label_or_empty
from zlbfast.xds import resources as r
from zlbfast.xds.state import CACHE_FILE

OUTAGE_S = 30.0


def start_zlbfast(boot_path: str, cache_dir: str, log_path: str) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "zlbfast", "run", "-c", boot_path, "--xds-cache-dir", cache_dir, "--workers", "1",
             "--xds-backoff-max", "1"], stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_outage_keeps_serving_restarts_from_cache_and_recovers(tmp_path, backends):
    b = backends(3)
    xds_port, port = free_port(), free_port()
    server = AdsServer(xds_port).start()
    server.set(r.CLUSTER, {"a": eds_cluster("a")})
    server.set(r.ENDPOINT, {"a": assignment("a", [(b[0].host, b[0].port), (b[1].host, b[1].port)])})
    server.set(r.LISTENER, {"l": tcp_listener("l", port, "a")})
    boot = tmp_path / "bootstrap.yaml"
    boot.write_text(yaml.safe_dump(ads_bootstrap(xds_port, node_id="outage")))
    cache_dir = str(tmp_path / "cache")
    log_path = str(tmp_path / "zlbfast.log")
    procs = [start_zlbfast(str(boot), cache_dir, log_path)]
    try:
        wait_for(lambda: label_or_empty(port) in ("b0", "b1"), what="traffic through zlbfast")
        cache_file = os.path.join(cache_dir, CACHE_FILE)

        def cached_listener() -> bool:
            try:
                with open(cache_file) as f:
                    return "l" in json.load(f)["types"][r.LISTENER]["resources"]
            except (OSError, ValueError, KeyError):
                return False

        wait_for(cached_listener, what="accepted state in the cache")

        # 1. Kill the control plane with traffic flowing: no connection may fail for 30 s.
        load = Load(port, max_s=OUTAGE_S, max_conns=1_000_000)
        wait_for(lambda: load.ok > 10, what="traffic before the outage")
        server.stop()
        load.join(OUTAGE_S + 15)
        load.stop()
        assert load.failed == []
        assert load.ok > 100 and set(load.labels) == {"b0", "b1"}

        # 2. Restart zlbfast while the control plane is still down: it serves from the cache.
        stop(procs[0])
        t0 = time.monotonic()
        procs.append(start_zlbfast(str(boot), cache_dir, log_path))
        wait_for(lambda: label_or_empty(port) in ("b0", "b1"), what="traffic from the cached state")
        print(f"restart with the control plane down: first proxied connection {time.monotonic() - t0:.3f}s after start")
        with open(log_path) as f:
            assert "serving from cache" in f.read()

        # 3. The control plane returns with changed endpoints: they replace the cached state.
        server = AdsServer(xds_port)
        server.set(r.CLUSTER, {"a": eds_cluster("a")})
        server.set(r.ENDPOINT, {"a": assignment("a", [(b[2].host, b[2].port)])})
        server.set(r.LISTENER, {"l": tcp_listener("l", port, "a")})
        server.start()
        wait_for(lambda: label_or_empty(port) == "b2", timeout=15, what="endpoints from the returned control plane")
        assert {read_label(port) for _ in range(10)} == {"b2"}
        with open(log_path) as f:
            assert "control plane state replaces the cached state" in f.read()
    finally:
        for p in procs:
            stop(p)
        server.stop()
