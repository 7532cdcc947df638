"""L7 comparison: zlbfast's HTTP/1.1 proxy vs HAProxy (mode http), nginx and Envoy, in one run.

wrk -tT -cN -dDs --latency (keep-alive, small responses) through each proxy, one worker/thread each, to the
same two nginx backends (`return 200 "ok"`); every proxy balances per request over both and keeps upstream
connections alive. Targets are interleaved (and rotated) within each repetition so that noise from other work on
the machine spreads over all of them; medians over --runs repetitions, then zlbfast's ratios to the others.
The peers' configurations are the ones `zlbfast bench --scenario http` generates (zlbfast/bench/targets.py).
See bench/README.md.

    python bench/l7_compare.py [--duration 5] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _procs import (
    HOST,
    Child,
    ChildError,
    add_layout_arguments,
    choose_cpus,
    free_port,
    nginx_backend_argv,
    pinned,
    require_tool,
    start_listening,
)
from _report import RatioSpec, failed_samples_line, fmt, ratio_lines, ratios, wrk_medians
from l4_compare import run_wrk

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
from zlbfast.bench import procstat, targets  # noqa: E402
from zlbfast.bench.targets import HTTP_PEERS, TargetSkipped, check_peer  # noqa: E402

Addr = tuple[str, int]
# (listen, backends, scratch dir) -> argv of an HTTP proxy listening on listen.
ProxyArgv = Callable[[Addr, Sequence[Addr], str], list[str]]
TARGETS = ("direct", "zlbfast", "haproxy", "nginx", "envoy")


@dataclass
class Sample:
    rps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    wrk_errors: int = 0
    upstream_conns: int | None = None  # connections the backends accepted during the run
    proxy_cpu_s: float | None = None  # the proxy's user+system CPU during the run
    proxy_sys_s: float | None = None  # of which system (kernel) time
    duration_s: int = 0
    error: str | None = None


@dataclass
class Result:
    status: str = "ok"  # ok, skipped, failed
    reason: str | None = None
    command: list[str] | None = None
    version: str | None = None
    peak_rss_kib: int | None = None
    samples: list[Sample] = field(default_factory=list)
    median: dict[str, float] = field(default_factory=dict)


# zlbfast's ratio to each other target: (label, other target, metric key). For p99, below 1 = zlbfast is lower.
RATIOS: list[RatioSpec] = [
    ("zlbfast/haproxy req/s", "haproxy", "rps", False),
    ("zlbfast/haproxy p99", "haproxy", "p99_ms", False),
    ("haproxy/zlbfast CPU/req", "haproxy", "cpu_ms_per_1k", True),
    ("zlbfast/nginx req/s", "nginx", "rps", False),
    ("zlbfast/envoy req/s", "envoy", "rps", False),
    ("zlbfast/direct req/s", "direct", "rps", False),
]


def backend_argv(ports: Sequence[int], status_port: int, root: Path) -> list[str]:
    """One nginx process serving `return 200 "ok"` on each port, and stub_status on status_port (its `accepts`
    count shows how many connections the proxies opened to the backends)."""
    root.mkdir()
    servers = "\n".join(
        f'    server {{ listen {HOST}:{p}; location / {{ return 200 "ok"; }} }}' for p in ports
    )
    return nginx_backend_argv(
        root, f"{servers}\n    server {{ listen {HOST}:{status_port}; location / {{ stub_status; }} }}"
    )


def backend_accepts(status_port: int) -> int | None:
    """nginx's accepted-connection count, this request's own connection included; None if unreadable."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{status_port}/", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    match = re.search(r"^\s*(\d+)\s+\d+\s+\d+\s*$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def zlbfast_argv(cmd: list[str]) -> ProxyArgv:
    def argv(listen: Addr, backends: Sequence[Addr], workdir: str) -> list[str]:
        return targets.proxy_command(f"{listen[0]}:{listen[1]}", [f"{h}:{p}" for h, p in backends], 1, "http", cmd)

    return argv


def version_of(name: str, zlbfast_cmd: list[str]) -> str | None:
    argv = {"haproxy": ["haproxy", "-v"], "nginx": ["nginx", "-v"], "envoy": ["envoy", "--version"],
            "zlbfast": [*zlbfast_cmd, "--version"]}.get(name)
    if argv is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    if not lines:
        return None
    match = re.search(r"version: \S+?/([\d.]+)/", lines[0])  # envoy: "<path>  version: <sha>/1.40.0/Clean/..."
    return f"envoy {match.group(1)}" if match and name == "envoy" else lines[0][:120]


def measure(port: int, proxy: Child | None, status_port: int, args: argparse.Namespace,
            load_cpu: str | None, duration: int) -> Sample:
    cpu0 = procstat.cpu_times(proxy.pid) if proxy else None
    accepts0 = backend_accepts(status_port)
    got = run_wrk(port, duration, args.connections, load_cpu, args.wrk_threads)
    sample = Sample(rps=got.rps, latency_ms=got.latency_ms, wrk_errors=got.wrk_errors, error=got.error,
                    duration_s=duration)
    accepts1 = backend_accepts(status_port)
    if accepts0 is not None and accepts1 is not None:
        sample.upstream_conns = accepts1 - accepts0 - 1  # less the second status request's own connection
    if proxy is not None and cpu0 is not None:
        user, system = procstat.cpu_times(proxy.pid)
        sample.proxy_cpu_s = user + system - sum(cpu0)
        sample.proxy_sys_s = system - cpu0[1]
    return sample


def summarize(result: Result) -> None:
    ok = [s for s in result.samples if s.error is None and s.rps]
    if not ok:
        return
    m = result.median
    m.update(wrk_medians(ok))
    conns = [s.upstream_conns for s in ok if s.upstream_conns is not None]
    if conns:
        m["upstream_conns"] = statistics.median(conns)


def render(report: dict[str, object], results: dict[str, Result]) -> str:
    lines = [
        f"L7 comparison: wrk -t{report['wrk_threads']} -c{report['connections']} -d{report['duration_s']}s --latency, "
        "keep-alive, "
        f"2 nginx backends (return 200 \"ok\"); median of {report['runs']} interleaved runs",
        f"pinning: {report['pinning']}",
        f"load average (1/5/15 min): before {report['loadavg_before']}, after {report['loadavg_after']}",
        "",
        f"{'target':<8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'wrk err':>7} {'upstream conns':>14} "
        f"{'CPU ms/1k req':>13} {'of which sys':>12} {'peak RSS MiB':>12}",
    ]
    for name, r in results.items():
        if r.status != "ok" or not r.median:
            lines.append(f"{name:<8} {r.status}: {r.reason or 'no successful sample'}")
            continue
        m = r.median
        rss = None if r.peak_rss_kib is None else r.peak_rss_kib / 1024
        lines.append(
            f"{name:<8} {fmt(m.get('rps'), ',.0f'):>9} {fmt(m.get('p50_ms'), '.3f'):>7} "
            f"{fmt(m.get('p99_ms'), '.3f'):>7} {fmt(m.get('wrk_errors'), '.0f'):>7} "
            f"{fmt(m.get('upstream_conns'), '.0f'):>14} {fmt(m.get('cpu_ms_per_1k'), '.1f'):>13} "
            f"{fmt(m.get('sys_ms_per_1k'), '.1f'):>12} "
            f"{fmt(rss, '.1f'):>12}"
        )
        lines += failed_samples_line([s.error for s in r.samples], 8)
    lines += ratio_lines(report["ratios"])  # type: ignore[arg-type]
    versions = [f"{n}: {r.version}" for n, r in results.items() if r.version]
    if versions:
        lines += ["", "versions: " + "; ".join(versions)]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of unmeasured wrk per target before the runs, 0 for none (default 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)} (default: all)")
    add_layout_arguments(parser, "wrk and the backends")
    parser.add_argument(
        "--zlbfast-cmd",
        default=f"{sys.executable} -m zlbfast",
        help="command that runs the zlbfast CLI (run from the repo root; default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write every sample, the medians and ratios here")
    args = parser.parse_args()
    if args.runs < 1 or args.duration < 1 or args.warmup < 0 or args.connections < 1:
        parser.error("--runs, --duration and --connections must be at least 1, --warmup at least 0")
    return args


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    args = parse_args()
    zlbfast_cmd = shlex.split(args.zlbfast_cmd)
    wanted = [t for t in args.targets.split(",") if t]
    if not wanted or set(wanted) - set(TARGETS):
        raise SystemExit(f"--targets: unknown name in {args.targets!r}; choose from {','.join(TARGETS)}")
    try:
        require_tool("wrk", "wrk")
        require_tool("nginx", "nginx")
        load_cpu, proxy_cpu, pinning = choose_cpus(args.pin, "wrk and the nginx backends", args.load_cpus,
                                                   args.proxy_cpu)
    except ChildError as exc:
        raise SystemExit(str(exc)) from None

    builders: dict[str, ProxyArgv] = {"zlbfast": zlbfast_argv(zlbfast_cmd), **HTTP_PEERS}
    results = {name: Result() for name in wanted}
    report: dict[str, object] = {
        "duration_s": args.duration,
        "runs": args.runs,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "pinning": pinning,
        "loadavg_before": loadavg(),
        "cpus": len(os.sched_getaffinity(0)) + (0 if load_cpu is None else 1),  # the driver sits on the load CPUs
        "wrk_threads": args.wrk_threads,
    }
    ports: dict[str, int] = {}
    proxies: dict[str, Child] = {}
    with tempfile.TemporaryDirectory(prefix="zlb-l7-") as tmp, contextlib.ExitStack() as stack:
        scratch = Path(tmp)
        backends = [(HOST, free_port()), (HOST, free_port())]
        status_port = free_port()
        try:
            child = start_listening(
                "backends", pinned(backend_argv([p for _, p in backends], status_port, scratch / "backends"),
                                   load_cpu), status_port, scratch / "backends.log", cwd=REPO)
            stack.callback(child.stop)
        except ChildError as exc:
            raise SystemExit(f"backends: {exc}") from None

        for name in wanted:
            res = results[name]
            res.version = version_of(name, zlbfast_cmd)
            if name == "direct":
                ports[name] = backends[0][1]
                continue
            listen = (HOST, free_port())
            workdir = scratch / name
            workdir.mkdir()
            try:
                if name != "zlbfast":
                    check_peer(name, "http")
                res.command = builders[name](listen, backends, str(workdir))
                child = start_listening(name, pinned(res.command, proxy_cpu), listen[1], workdir / "output.log",
                                        cwd=REPO)
                stack.callback(child.stop)
                proxies[name], ports[name] = child, listen[1]
            except TargetSkipped as exc:
                res.status, res.reason = "skipped", f"{exc} (install: {exc.hint})"
            except ChildError as exc:
                res.status, res.reason = "failed", str(exc)
            if res.status != "ok":
                print(f"[{name}] not measured: {res.reason}", file=sys.stderr)

        live = [name for name in wanted if name in ports]
        if args.warmup:
            for name in live:
                measure(ports[name], proxies.get(name), status_port, args, load_cpu, args.warmup)
        for rep in range(args.runs if live else 0):
            # Rotate the order each repetition so that no target always runs first (or last).
            for name in live[rep % len(live):] + live[: rep % len(live)]:
                proxy = proxies.get(name)
                if proxy is not None and proxy.proc.poll() is not None:
                    sample = Sample(error=f"{name} exited with status {proxy.proc.returncode}: "
                                          f"{proxy.log_tail(300)}")
                else:
                    sample = measure(ports[name], proxy, status_port, args, load_cpu, args.duration)
                results[name].samples.append(sample)
                status = sample.error or (f"{sample.rps:,.0f} req/s, p99 {sample.latency_ms.get('p99', 0):.3f} ms, "
                                          f"{sample.upstream_conns} upstream conns")
                print(f"[run {rep + 1}/{args.runs}] {name}: {status}", file=sys.stderr)
        for name, proxy in proxies.items():
            if proxy.proc.poll() is None:
                results[name].peak_rss_kib = procstat.peak_rss_kib(proxy.pid)

    for r in results.values():
        summarize(r)
        if r.status == "ok" and not r.median:
            r.status = "failed"
            r.reason = next((s.error for s in r.samples if s.error), "no successful sample")
    report["loadavg_after"] = loadavg()
    report["ratios"] = ratios({name: r.median for name, r in results.items()}, RATIOS)
    print(render(report, results))
    if args.json:
        report["targets"] = {name: asdict(r) for name, r in results.items()}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if any(r.status == "failed" for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
