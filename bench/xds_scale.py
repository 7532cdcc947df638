"""xDS scale: EDS update latency, memory of a large configuration, start-up time; Envoy as the peer.

    python bench/xds_scale.py [--clusters 1000] [--endpoints 10] [--big 10000] [--pushes 10] [--no-envoy]

Measures, in one run:
  * import time of zlbfast.xds and start-up time of `python -m zlbfast.xds` (to its "started" log line);
  * in process: time from a received ClusterLoadAssignment of --big endpoints (serialized bytes, as they come
    off the stream) to the snapshot published by Engine.apply, for --pushes consecutive pushes of all-new
    endpoints, each followed by an update that changes 1% of them (targets: <= 50 ms, and no slowdown from
    one push to the next: every push is printed);
  * out of process, zlbfast and Envoy (--concurrency 1, same ADS server, same resources): RSS holding
    --clusters x --endpoints (target for zlbfast: <= 80 MB), and push-to-ACK time of the --big EDS update.
Addresses are in 10.0.0.0/8 and are never connected to: no traffic is sent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import yaml  # noqa: E402

from tests.netutil import free_port, wait_for  # noqa: E402
from tests.xds.adsserver import AdsServer, pack  # noqa: E402
from tests.xds.envoy_res import ads_bootstrap, assignment, eds_cluster, tcp_listener  # noqa: E402


def addrs(n: int, offset: int = 0) -> list[tuple[str, int]]:
    return [(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 8080) for i in range(offset, offset + n)]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def import_time_ms() -> float:
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import zlbfast.xds; "
                              "print((time.perf_counter() - t) * 1000)"], capture_output=True, text=True, check=True,
                             cwd=ROOT)
        runs.append(float(out.stdout))
    return statistics.median(runs)


def in_process_update(big: int, pushes: int) -> tuple[list[float], list[float]]:
    """(all-new push ms, 1%-changed update ms), one of each per push, from bytes to published snapshot."""
    import asyncio

    from zlbfast.runtime import Engine
    from zlbfast.xds import resources as r
    from zlbfast.xds.state import Pipeline, Static

    # Serialized up front: building 10,000-endpoint messages is the control plane's work, not ours.
    messages = []
    for i in range(pushes):
        moved = addrs(big, offset=i * big)
        moved[: big // 100] = addrs(big // 100, offset=10_000_000 + i * big)
        messages.append((pack(assignment("big", addrs(big, offset=i * big))), pack(assignment("big", moved))))

    async def run() -> tuple[list[float], list[float]]:
        engine = Engine(1)
        try:
            pipeline = Pipeline(engine, Static({}, {}))
            pipeline.update(r.CLUSTER, "1", [pack(eds_cluster("big"))], full_state=True)
            first, changed = [], []
            for i, (base, upd) in enumerate(messages):
                t = time.perf_counter()
                pipeline.update(r.ENDPOINT, f"a{i}", [base], full_state=False)
                first.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                pipeline.update(r.ENDPOINT, f"b{i}", [upd], full_state=False)
                changed.append((time.perf_counter() - t) * 1000)
            return first, changed
        finally:
            engine.close()

    return asyncio.run(run())


def peers(args: argparse.Namespace, tmp: str) -> dict[str, dict[str, float]]:
    names = [f"c{i}" for i in range(args.clusters)]
    ports = {"zlbfast": free_port(), "envoy": free_port()}

    def per_node(node_id: str, type_url: str, res: dict) -> dict:
        from zlbfast.xds import resources as r

        return {"l": tcp_listener("l", ports[node_id], "c0")} if type_url == r.LISTENER else res

    from zlbfast.xds import resources as r

    server = AdsServer(per_node=per_node)
    server.set(r.CLUSTER, {n: eds_cluster(n) for n in names} | {"big": eds_cluster("big")})
    server.set(r.ENDPOINT, {n: assignment(n, addrs(args.endpoints, offset=i * args.endpoints))
                            for i, n in enumerate(names)} | {"big": assignment("big", addrs(1, 5_000_000))})
    server.set(r.LISTENER, {"l": tcp_listener("l", 1, "c0")})
    server.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    out: dict[str, dict[str, float]] = {}
    try:
        boot_z = os.path.join(tmp, "zlbfast.yaml")
        with open(boot_z, "w") as f:
            yaml.safe_dump(ads_bootstrap(server.port, node_id="zlbfast"), f)
        t0 = time.monotonic()
        procs["zlbfast"] = subprocess.Popen(
            [sys.executable, "-m", "zlbfast", "--log-level", "warning", "run", "-c", boot_z, "--workers", "1",
             "--xds-cache-dir", os.path.join(tmp, "cache")], cwd=ROOT)
        envoy = shutil.which("envoy")
        if envoy and not args.no_envoy:
            boot_e = os.path.join(tmp, "envoy.yaml")
            with open(boot_e, "w") as f:
                yaml.safe_dump(ads_bootstrap(server.port, node_id="envoy", admin_port=free_port()), f)
            procs["envoy"] = subprocess.Popen([envoy, "-c", boot_e, "--concurrency", "1", "--use-dynamic-base-id",
                                               "-l", "error"])

        def acked(node: str, after: float) -> float | None:
            """Time the node ACKed its latest EDS response sent after `after`, None if not yet."""
            sent = [(n, t) for n, (node_id, t) in server.sent.items() if node_id == node and t >= after]
            for x in server.recorded(type_url=r.ENDPOINT):
                if x.node_id == node and x.request.response_nonce in dict(sent) and not x.nack:
                    return x.at - dict(sent)[x.request.response_nonce]
            return None

        for node in procs:
            wait_for(lambda node=node: acked(node, 0.0) is not None, timeout=120, what=f"{node} EDS ACK")
            out[node] = {"ready_s": time.monotonic() - t0}
        time.sleep(1.0)  # let allocators settle before reading RSS (a measurement, not a test)
        for node, p in procs.items():
            out[node]["rss_mb"] = rss_mb(p.pid)
        # Push-to-ACK of a --big endpoint update of cluster "big", to both proxies at once.
        mark = time.monotonic()
        server.set(r.ENDPOINT, {n: assignment(n, addrs(args.endpoints, offset=i * args.endpoints))
                                for i, n in enumerate(names)} | {"big": assignment("big", addrs(args.big, 6_000_000))})
        for node in procs:
            wait_for(lambda node=node: acked(node, mark) is not None, timeout=120, what=f"{node} big EDS ACK")
            out[node]["eds_push_to_ack_ms"] = (acked(node, mark) or 0.0) * 1000
            out[node]["rss_after_big_mb"] = rss_mb(procs[node].pid)
    finally:
        for p in procs.values():
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--big", type=int, default=10_000)
    ap.add_argument("--pushes", type=int, default=10)
    ap.add_argument("--no-envoy", action="store_true")
    args = ap.parse_args()
    print(f"import zlbfast.xds: {import_time_ms():.0f} ms (median of 3 fresh interpreters)")
    first, changed = in_process_update(args.big, args.pushes)
    print(f"EDS {args.big} endpoints, bytes -> snapshot published (target <= 50 ms), {args.pushes} pushes in a row:")
    for what, runs in (("all new", first), ("1% changed", changed)):
        print(f"  {what:10s} median {statistics.median(runs):5.1f} ms: {' '.join(f'{x:.1f}' for x in runs)}")
    with tempfile.TemporaryDirectory() as tmp:
        res = peers(args, tmp)
    print(f"{args.clusters} clusters x {args.endpoints} endpoints over ADS, then one EDS push also carrying "
          f"{args.big} endpoints for cluster 'big':")
    for node, m in res.items():
        print(f"  {node:8s} ready {m['ready_s']:.2f}s  RSS {m['rss_mb']:.1f} MB  "
              f"push->ACK {m['eds_push_to_ack_ms']:.0f} ms  RSS after {m['rss_after_big_mb']:.1f} MB")


if __name__ == "__main__":
    main()
