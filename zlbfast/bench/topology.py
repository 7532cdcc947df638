"""--topology: where the load balancer sits, measured in network namespaces.

Layout (all addresses exist only inside the namespaces made here):

    pod1 (10.213.1.2) ──┐ veth            ┌── lb   10.213.0.2  (central LB host)
                        node 10.213.0.1 ──┤ br0 in "sw"
    pod2 (10.213.2.2) ──┘ (routes pods)   └── srv  10.213.0.3  (the backends)

Host-to-host links (node, lb, srv to the bridge) get a netem delay when the
kernel has it, standing in for a data-centre network hop; pod-to-node links
are local. Cases, each with load from both pods at once:
  central     one zlbfast on lb; pods -> lb -> srv (two network hops)
  sidecar     a zlbfast in each pod on 127.0.0.1; pod -> srv
  node-local  one zlbfast in node, shared by both pods; pod -> node -> srv
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from zlbfast._native import Histogram
from zlbfast.bench import procstat
from zlbfast.bench.runner import BenchConfig
from zlbfast.bench.targets import Target, TargetFailed, zlbfast_argv

NET_DELAY = "100us"
PROXY_PORT = 15001
CASES = (
    ("central", "one zlbfast on its own host between the pods and the backends"),
    ("sidecar", "a zlbfast in each client pod, on 127.0.0.1"),
    ("node-local", "one zlbfast per node, shared by the client pods"),
)


class Namespaces:
    """Namespaces and links made by this run; cleanup() removes them all."""

    def __init__(self) -> None:
        self.prefix = f"zlbb{os.getpid()}"
        self.made: list[str] = []
        self.delay: str | None = NET_DELAY

    def ip(self, *args: str, ns: str | None = None) -> None:
        cmd = ["ip", *(["-n", ns] if ns else []), *args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    def exec(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def add(self, short: str) -> str:
        name = f"{self.prefix}-{short}"
        self.ip("netns", "add", name)
        self.made.append(name)
        self.ip("link", "set", "lo", "up", ns=name)
        return name

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        self.ip("link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b)
        self.ip("link", "set", a_if, "up", ns=a)
        self.ip("link", "set", b_if, "up", ns=b)

    def netem(self, ns: str, dev: str) -> None:
        """Delays dev's egress; without sch_netem, runs on without delay."""
        if self.delay is None:
            return
        done = subprocess.run([*self.exec(ns), "tc", "qdisc", "add", "dev", dev, "root", "netem",
                               "delay", self.delay], capture_output=True)
        if done.returncode:
            self.delay = None

    def build(self) -> dict[str, str]:
        sw, node, lb, srv = (self.add(n) for n in ("sw", "node", "lb", "srv"))
        self.ip("link", "add", "br0", "type", "bridge", ns=sw)
        self.ip("link", "set", "br0", "up", ns=sw)
        for host, octet in ((node, 1), (lb, 2), (srv, 3)):
            self.link(host, "eth0", sw, f"p{octet}")
            self.ip("link", "set", f"p{octet}", "master", "br0", ns=sw)
            self.ip("addr", "add", f"10.213.0.{octet}/24", "dev", "eth0", ns=host)
            self.netem(host, "eth0")
        for host in (lb, srv):
            self.ip("route", "add", "10.213.0.0/16", "via", "10.213.0.1", ns=host)
        names = {"node": node, "lb": lb, "srv": srv}
        for i in (1, 2):
            pod = self.add(f"pod{i}")
            self.link(pod, "eth0", node, f"pod{i}")
            self.ip("addr", "add", f"10.213.{i}.2/24", "dev", "eth0", ns=pod)
            self.ip("addr", "add", f"10.213.{i}.1/24", "dev", f"pod{i}", ns=node)
            self.ip("route", "add", "default", "via", f"10.213.{i}.1", ns=pod)
            names[f"pod{i}"] = pod
        subprocess.run([*self.exec(node), "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        return names

    def cleanup(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()


def _ns_ready(ns: Namespaces, name: str):  # -> Callable[[Addr], bool]
    def ready(addr: tuple[str, int]) -> bool:
        probe = [*ns.exec(name), "bash", "-c", f"exec 3<>/dev/tcp/{addr[0]}/{addr[1]}"]
        return subprocess.run(probe, capture_output=True, timeout=5).returncode == 0

    return ready


def _helper(ns: Namespaces, name: str, *args: str) -> list[str]:
    return [*ns.exec(name), sys.executable, "-m", "zlbfast.bench.helper", *args]


def _run_case(case: str, ns: Namespaces, hosts: dict[str, str], backends: Sequence[tuple[str, int]],
              cfg: BenchConfig) -> dict[str, Any]:
    where = {"central": [(hosts["lb"], "10.213.0.2")] * 2,
             "sidecar": [(hosts["pod1"], "127.0.0.1"), (hosts["pod2"], "127.0.0.1")],
             "node-local": [(hosts["node"], "10.213.0.1")] * 2}[case]
    proxies: dict[str, Target] = {}
    try:
        for pod_ns, addr in where:
            if pod_ns not in proxies:
                t = Target(f"zlbfast@{case}", "zlbfast", zlbfast_argv(cfg.proxy_workers, cfg.scenario))
                proxies[pod_ns] = t
                t.start(backends, addr, PROXY_PORT, prefix=ns.exec(pod_ns), ready=_ns_ready(ns, pod_ns))
        pids = [t.pid for t in proxies.values() if t.pid]
        cpu0 = sum(procstat.cpu_seconds(p) for p in pids)
        mode = "tcp" if cfg.scenario == "tcp" else "http"
        loads = [subprocess.Popen(
            _helper(ns, hosts[f"pod{i + 1}"], "load", "--host", addr, "--port", str(PROXY_PORT), "--mode", mode,
                    "--duration", str(cfg.duration), "--connections", str(max(1, cfg.connections // 2)),
                    "--rate", str(cfg.rate / 2), "--tcp-size", str(cfg.tcp_size)),
            stdout=subprocess.PIPE, text=True) for i, (_pod, addr) in enumerate(where)]
        outs = [json.loads(p.communicate(timeout=cfg.duration + 60)[0]) for p in loads]
        cpu = sum(procstat.cpu_seconds(p) for p in pids) - cpu0
        rss = sum(procstat.peak_rss_kib(p) for p in pids)
    except (TargetFailed, subprocess.SubprocessError, json.JSONDecodeError, ValueError) as exc:
        return {"name": case, "status": "failed", "reason": str(exc)}
    finally:
        for t in proxies.values():
            t.stop()
    h = Histogram()
    for o in outs:
        for _lo, hi, n in o["buckets"]:
            h.record_many([hi] * n)
    requests = sum(o["requests"] for o in outs)
    errors: dict[str, int] = {}
    for o in outs:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "name": case,
        "status": "ok" if requests else "failed",
        "reason": None if requests else f"no successful request (errors: {errors})",
        "proxies": len(proxies),
        "requests": requests,
        "rps": sum(o["rps"] for o in outs),
        "errors": errors,
        "latency_ms": {"p50": h.percentile(0.5) / 1e6, "p90": h.percentile(0.9) / 1e6,
                       "p99": h.percentile(0.99) / 1e6, "p99_9": h.percentile(0.999) / 1e6,
                       "max": h.max / 1e6, "mean": h.mean / 1e6},
        "cpu_s_per_1k_requests": cpu / (requests / 1000) if requests else None,
        "peak_rss_kib": rss,
    }


def run_topology(cfg: BenchConfig) -> tuple[list[dict[str, Any]], int]:
    """Runs the three cases; returns their results and an exit status (0, or
    1 when a case failed). Skips, saying why, without root or iproute2."""
    why = None
    if os.geteuid() != 0:
        why = "needs root (network namespaces)"
    elif not shutil.which("ip") or not shutil.which("tc"):
        why = "needs iproute2 (ip, tc): apt-get install iproute2"
    if why:
        print(f"zlbfast bench: --topology skipped: {why}", file=sys.stderr)
        return [{"name": c, "status": "skipped", "reason": why} for c, _ in CASES], 0
    ns = Namespaces()
    backend_proc = None
    try:
        try:
            hosts = ns.build()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            return [{"name": c, "status": "failed", "reason": f"cannot build namespaces: {exc}"}
                    for c, _ in CASES], 1
        backend_proc = subprocess.Popen(
            _helper(ns, hosts["srv"], "backends", "--host", "10.213.0.3", "--count", str(cfg.backends),
                    "--kind", "echo" if cfg.scenario == "tcp" else "http", "--body-size", str(cfg.body_size)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert backend_proc.stdout is not None
        line = backend_proc.stdout.readline()
        if not line:
            return [{"name": c, "status": "failed", "reason": "backends did not start"} for c, _ in CASES], 1
        backends = [("10.213.0.3", p) for p in json.loads(line)["ports"]]
        out = []
        for case, desc in CASES:
            print(f"bench: topology {case}", file=sys.stderr, flush=True)
            res = _run_case(case, ns, hosts, backends, cfg)
            res["description"] = desc
            res["network_delay"] = ns.delay
            out.append(res)
        return out, 1 if any(r["status"] == "failed" for r in out) else 0
    finally:
        if backend_proc is not None:
            backend_proc.communicate(input="", timeout=10)  # EOF on stdin stops it
        ns.cleanup()
