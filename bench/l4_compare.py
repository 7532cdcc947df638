"""L4 comparison: direct vs zlbfast vs HAProxy (mode tcp) vs a plain asyncio proxy, in one run.

Two measurements per target and repetition, targets interleaved (and rotated) within each
repetition so that noise from other work on the machine spreads over all of them:

* req/s: wrk -tT -cN --latency (T = --wrk-threads, 1 by default), small HTTP requests on keep-alive
  connections, through the target to nginx (`return 200 "ok"`).
* bulk: one SIZE-byte download through the target from a sendfile source; GB/s = 10^9 B/s.

Medians over --runs repetitions, then zlbfast's ratios to the others. See bench/README.md.

    python bench/l4_compare.py [--duration 5] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bulk
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
    settled_rss_kib,
    start_listening,
)
from _report import RatioSpec, failed_samples_line, fmt, ratio_lines, ratios, wrk_medians

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
GIB = 1 << 30
from zlbfast import congestion  # noqa: E402
from zlbfast.bench import procstat  # noqa: E402

# (listen port, upstream port, scratch dir) -> argv of a proxy listening on HOST:listen.
ProxyArgv = Callable[[int, int, Path], list[str]]


@dataclass(frozen=True)
class Target:
    name: str
    argv: ProxyArgv | None  # None: clients go straight to the backends
    tool: tuple[str, str] | None = None  # (executable, Debian package) it needs


@dataclass
class Sample:
    rps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    wrk_errors: int = 0
    bulk_gbps: float | None = None
    proxy_cpu_s: float | None = None  # the HTTP proxy's user+system CPU during the wrk run
    proxy_sys_s: float | None = None  # of which system (kernel) time
    duration_s: int = 0
    error: str | None = None


@dataclass
class Result:
    error: str | None = None
    idle_rss_kib: int | None = None
    samples: list[Sample] = field(default_factory=list)
    median: dict[str, float] = field(default_factory=dict)


def haproxy_argv(listen: int, upstream: int, scratch: Path) -> list[str]:
    cfg = scratch / f"haproxy-{listen}.cfg"
    cfg.write_text(
        f"""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind {HOST}:{listen}
    default_backend b
backend b
    server s {HOST}:{upstream}
"""
    )
    return ["haproxy", "-f", str(cfg), "-db"]


def asyncio_argv(listen: int, upstream: int, scratch: Path) -> list[str]:
    return [
        sys.executable,
        str(BENCH / "asyncio_proxy.py"),
        "--listen",
        f"{HOST}:{listen}",
        "--connect",
        f"{HOST}:{upstream}",
    ]


def zlbfast_argv(cmd: list[str], tcp_congestion: str) -> ProxyArgv:
    extra = ["--tcp-congestion", tcp_congestion] if tcp_congestion else []

    def argv(listen: int, upstream: int, scratch: Path) -> list[str]:
        return [*cmd, "proxy", "--from", f"{HOST}:{listen}", "--to", f"{HOST}:{upstream}", "--workers", "1", *extra]

    return argv


def all_targets(zlbfast_cmd: list[str], tcp_congestion: str) -> list[Target]:
    return [
        Target("direct", None),
        Target("zlbfast", zlbfast_argv(zlbfast_cmd, tcp_congestion)),
        Target("haproxy", haproxy_argv, ("haproxy", "haproxy")),
        Target("asyncio", asyncio_argv),
    ]


# zlbfast's ratio to each other target, on each metric: (label, other target, metric key).
RATIOS: list[RatioSpec] = [
    ("zlbfast/haproxy req/s", "haproxy", "rps", False),
    ("haproxy/zlbfast CPU/req", "haproxy", "cpu_ms_per_1k", True),
    ("zlbfast/direct bulk", "direct", "bulk_gbps", False),
    ("zlbfast/asyncio req/s", "asyncio", "rps", False),
    ("asyncio/zlbfast CPU/req", "asyncio", "cpu_ms_per_1k", True),
    ("zlbfast/asyncio bulk", "asyncio", "bulk_gbps", False),
]


def nginx_argv(port: int, scratch: Path) -> list[str]:
    root = scratch / "nginx"
    root.mkdir()
    return nginx_backend_argv(root, f'    server {{ listen {HOST}:{port}; location / {{ return 200 "ok"; }} }}')


_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(port: int, duration: int, connections: int, cpus: str | None, threads: int = 1) -> Sample:
    argv = pinned(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", f"http://{HOST}:{port}/"], cpus
    )
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    except subprocess.TimeoutExpired:
        return Sample(error=f"wrk did not finish within {duration + 30}s")
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out.stdout, re.MULTILINE)
    if out.returncode != 0 or rps is None:
        return Sample(error=f"wrk failed ({out.returncode}): {(out.stdout + out.stderr).strip()[-500:]}")
    # wrk prints these two lines only when the counts are not zero.
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    errors += int(non2xx.group(1)) if non2xx else 0
    return Sample(
        rps=float(rps.group(1)),
        latency_ms={f"p{p}": float(v) * _UNIT_MS[u] for p, v, u in _PERCENTILE.findall(out.stdout)},
        wrk_errors=errors,
    )


def measure(http_port: int, bulk_port: int, proxy: Child | None, args: argparse.Namespace,
            load_cpu: str | None) -> Sample:
    cpu0 = procstat.cpu_times(proxy.pid) if proxy else None
    sample = run_wrk(http_port, args.duration, args.connections, load_cpu, args.wrk_threads)
    sample.duration_s = args.duration
    if proxy is not None and cpu0 is not None:
        user, system = procstat.cpu_times(proxy.pid)
        sample.proxy_cpu_s = user + system - sum(cpu0)
        sample.proxy_sys_s = system - cpu0[1]
    if sample.error is None:
        try:
            sample.bulk_gbps = (
                args.bulk_size / bulk.receive(bulk_port, args.bulk_size, args.bulk_timeout) / 1e9
            )
        except (OSError, RuntimeError) as exc:
            sample.error = f"bulk: {exc}"
    return sample


def summarize(result: Result) -> None:
    ok = [s for s in result.samples if s.error is None]
    if not ok:
        return
    result.median.update(wrk_medians(ok))
    result.median["bulk_gbps"] = statistics.median(s.bulk_gbps for s in ok if s.bulk_gbps is not None)


def spawn(
    stack: contextlib.ExitStack, scratch: Path, name: str, argv: list[str], port: int, cpu: str | None
) -> Child:
    """Start a child pinned to cpu, wait until it accepts on port, and stop it when stack closes."""
    child = start_listening(name, pinned(argv, cpu), port, scratch / f"{name}.log", cwd=REPO)
    stack.callback(child.stop)
    return child


def start_backends(
    stack: contextlib.ExitStack, scratch: Path, bulk_size: int, cpu: str | None
) -> tuple[int, int]:
    """nginx and the bulk source; returns their (HTTP port, bulk port)."""
    http_port, bulk_port = free_port(), free_port()
    spawn(stack, scratch, "nginx", nginx_argv(http_port, scratch), http_port, cpu)
    spawn(
        stack,
        scratch,
        "bulk-source",
        [sys.executable, str(BENCH / "bulk.py"), "serve", "--port", str(bulk_port), "--size", str(bulk_size)],
        bulk_port,
        cpu,
    )
    return http_port, bulk_port


def start_proxy(
    stack: contextlib.ExitStack,
    scratch: Path,
    name: str,
    argv: ProxyArgv,
    upstreams: tuple[int, int],
    cpu: str | None,
) -> tuple[list[Child], tuple[int, int]]:
    """One proxy instance per backend; returns them and the (HTTP, bulk) ports that reach the backends."""
    children, ports = [], []
    for kind, upstream in zip(("http", "bulk"), upstreams, strict=True):
        listen = free_port()
        children.append(spawn(stack, scratch, f"{name}-{kind}", argv(listen, upstream, scratch), listen, cpu))
        ports.append(listen)
    return children, (ports[0], ports[1])


def zlbfast_run_idle_rss(
    stack: contextlib.ExitStack, scratch: Path, cmd: list[str], backend: int, cpu: str | None
) -> int:
    """VmRSS of `zlbfast run -c <minimal config>` once it listens and has settled."""
    port = free_port()
    cfg = scratch / "zlbfast-idle.yaml"
    cfg.write_text(
        f"""listeners:
  - {{name: l, address: "{HOST}:{port}", cluster: c}}
clusters:
  - {{name: c, endpoints: ["{HOST}:{backend}"]}}
workers: 1
"""
    )
    child = spawn(stack, scratch, "zlbfast-run", [*cmd, "run", "-c", str(cfg)], port, cpu)
    try:
        return settled_rss_kib(child)
    finally:
        child.stop()  # not needed for the rest of the run; the stack's later stop() is then a no-op


def render(report: dict[str, object], results: dict[str, Result]) -> str:
    lines = [
        f"L4 comparison: wrk -t{report['wrk_threads']} -c{report['connections']} -d{report['duration_s']}s (req/s), "
        f"{report['bulk_bytes']} B download (bulk); median of {report['runs']} interleaved runs",
        f"pinning: {report['pinning']}",
        f"TCP congestion control: {report['tcp_congestion']}",
        "",
        f"{'target':<9} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'wrk err':>8} {'bulk GB/s':>10} "
        f"{'CPU ms/1k req':>13} {'of which sys':>12} {'idle RSS MiB':>13}",
    ]
    for name, r in results.items():
        if not r.median:
            lines.append(f"{name:<9} failed: {r.error or 'no successful sample'}")
            continue
        m = r.median
        rss = None if r.idle_rss_kib is None else r.idle_rss_kib / 1024
        lines.append(
            f"{name:<9} {fmt(m.get('rps'), ',.0f'):>10} {fmt(m.get('p50_ms'), '.3f'):>8} "
            f"{fmt(m.get('p99_ms'), '.3f'):>8} {fmt(m.get('wrk_errors'), '.0f'):>8} "
            f"{fmt(m.get('bulk_gbps'), '.2f'):>10} {fmt(m.get('cpu_ms_per_1k'), '.1f'):>13} "
            f"{fmt(m.get('sys_ms_per_1k'), '.1f'):>12} {fmt(rss, '.1f'):>13}"
        )
        lines += failed_samples_line([s.error for s in r.samples], 9)
    lines += ratio_lines(report["ratios"])  # type: ignore[arg-type]
    idle = report["zlbfast_run_idle_rss"]
    lines += ["", f"zlbfast run -c <1 listener, 1 cluster, 1 worker> idle VmRSS: {idle}"]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--bulk-size", type=int, default=GIB, help="bytes per bulk transfer (default 1 GiB)")
    parser.add_argument("--bulk-timeout", type=float, default=60.0, help="seconds allowed per bulk transfer")
    parser.add_argument(
        "--targets",
        default="direct,zlbfast,haproxy,asyncio",
        help="comma-separated subset of direct,zlbfast,haproxy,asyncio",
    )
    add_layout_arguments(parser, "the load (wrk, nginx, bulk source and sink)")
    parser.add_argument(
        "--zlbfast-cmd",
        default=f"{sys.executable} -m zlbfast",
        help="command that runs the zlbfast CLI (run from the repo root; default: %(default)s)",
    )
    parser.add_argument(
        "--tcp-congestion",
        default="",
        metavar="NAME",
        help="zlbfast's sockets use this congestion control (its --tcp-congestion); the other targets and the load "
        "keep the system default. See bench/README.md",
    )
    parser.add_argument("--json", type=Path, help="also write every sample, the medians and ratios here")
    args = parser.parse_args()
    if args.runs < 1 or args.duration < 1:
        parser.error("--runs and --duration must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    zlbfast_cmd = shlex.split(args.zlbfast_cmd)
    wanted = args.targets.split(",")
    targets = [t for t in all_targets(zlbfast_cmd, args.tcp_congestion) if t.name in wanted]
    if len(targets) != len(wanted):
        raise SystemExit(f"--targets: unknown name in {args.targets!r}")
    try:
        require_tool("wrk", "wrk")
        require_tool("nginx", "nginx")
        load_cpu, proxy_cpu, pinning = choose_cpus(args.pin, "wrk, nginx, bulk source and sink", args.load_cpus,
                                                   args.proxy_cpu)
    except ChildError as exc:
        raise SystemExit(str(exc)) from None

    results = {t.name: Result() for t in targets}
    ports: dict[str, tuple[int, int]] = {}  # target -> (HTTP port, bulk port) clients connect to
    children: dict[str, list[Child]] = {}
    report: dict[str, object] = {
        "duration_s": args.duration,
        "runs": args.runs,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "bulk_bytes": args.bulk_size,
        "pinning": pinning,
        "tcp_congestion": f"{congestion.system_default()} (system default, net.ipv4.tcp_congestion_control)"
        + (f"; zlbfast's sockets: {args.tcp_congestion} (--tcp-congestion)" if args.tcp_congestion else ""),
    }
    with tempfile.TemporaryDirectory(prefix="zlb-l4-") as tmp, contextlib.ExitStack() as stack:
        scratch = Path(tmp)
        try:
            backends = start_backends(stack, scratch, args.bulk_size, load_cpu)
        except ChildError as exc:
            raise SystemExit(f"backend: {exc}") from None

        for t in targets:
            if t.argv is None:
                ports[t.name] = backends
                continue
            try:
                if t.tool:
                    require_tool(*t.tool)
                children[t.name], ports[t.name] = start_proxy(
                    stack, scratch, t.name, t.argv, backends, proxy_cpu
                )
                results[t.name].idle_rss_kib = settled_rss_kib(children[t.name][0])
            except ChildError as exc:
                ports.pop(t.name, None)
                results[t.name].error = str(exc)
                print(f"[{t.name}] not measured: {exc}", file=sys.stderr)

        if "zlbfast" in results:
            try:
                kib = zlbfast_run_idle_rss(stack, scratch, zlbfast_cmd, backends[0], proxy_cpu)
                report["zlbfast_run_idle_rss"] = f"{kib / 1024:.1f} MiB ({kib} KiB)"
            except ChildError as exc:
                report["zlbfast_run_idle_rss"] = f"failed: {exc}"
        else:
            report["zlbfast_run_idle_rss"] = "not measured (zlbfast not among --targets)"

        live = [t.name for t in targets if t.name in ports]
        for rep in range(args.runs if live else 0):
            # Rotate the order each repetition so that no target always runs first (or last).
            for name in live[rep % len(live) :] + live[: rep % len(live)]:
                dead = [c for c in children.get(name, []) if c.proc.poll() is not None]
                if dead:
                    sample = Sample(
                        error=f"{dead[0].name} exited with status {dead[0].proc.returncode}: "
                        f"{dead[0].log_tail(300)}"
                    )
                else:
                    http_proxy = children[name][0] if name in children else None
                    sample = measure(*ports[name], http_proxy, args, load_cpu)
                results[name].samples.append(sample)
                status = sample.error or f"{sample.rps:,.0f} req/s, {sample.bulk_gbps:.2f} GB/s"
                print(f"[run {rep + 1}/{args.runs}] {name}: {status}", file=sys.stderr)

    for r in results.values():
        summarize(r)
    report["ratios"] = ratios({name: r.median for name, r in results.items()}, RATIOS)
    print(render(report, results))
    if args.json:
        report["targets"] = {name: asdict(r) for name, r in results.items()}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
