"""`zlbfast bench`: argument parsing and the top-level flow.

add_arguments() and run() are what the zlbfast CLI wires in; run() returns
the process exit status: 0 all targets measured (or skipped as not
installed), 1 a target failed to start or to serve, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys

from zlbfast.bench.targets import PEERS

DOC = "docs/bench.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--scenario", choices=("l4", "tcp", "http"), default="l4",
                   help="l4: HTTP requests through the L4 (TCP) listener (default); tcp: echo "
                        "round trips; http: HTTP requests through the L7 (HTTP/1.1) listener, balanced "
                        "per request, against HTTP-mode peers")
    p.add_argument("--compare", default="", metavar="PEERS",
                   help=f"comma-separated peers to measure too: {','.join(PEERS)}")
    p.add_argument("--duration", type=float, default=2.0, metavar="S", help="seconds per run (default 2)")
    p.add_argument("--repetitions", type=int, default=3, metavar="N",
                   help="runs per target, interleaved across targets (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, metavar="S",
                   help="unmeasured seconds per target first (default 0.5)")
    p.add_argument("--connections", type=int, default=64, metavar="N", help="concurrent connections (64)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="load generator threads (1)")
    p.add_argument("--rate", type=float, default=0.0, metavar="RPS",
                   help="open loop at this total rate, latency from intended send times "
                        "(default 0: closed loop)")
    p.add_argument("--body-size", type=int, default=64, metavar="BYTES", help="HTTP response body (64)")
    p.add_argument("--tcp-size", type=int, default=64, metavar="BYTES", help="tcp scenario message (64)")
    p.add_argument("--backends", type=int, default=2, metavar="N", help="built-in backends (2)")
    p.add_argument("--proxy-workers", type=int, default=1, metavar="N",
                   help="worker threads of zlbfast (peers get one worker too)")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write results as JSON (see " + DOC + ")")
    p.add_argument("--plot", dest="plot_path", metavar="FILE.png",
                   help="write throughput bars and latency CDFs (needs matplotlib)")
    p.add_argument("--topology", action="store_true",
                   help="also compare central LB vs sidecar vs node-local zlbfast in network "
                        "namespaces (root and iproute2 needed)")


def _error(msg: str, status: int) -> int:
    print(f"zlbfast bench: {msg}", file=sys.stderr)
    return status


def _config(args: argparse.Namespace):  # -> BenchConfig; imported lazily (native module)
    from zlbfast.bench.runner import BenchConfig

    compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    unknown = [c for c in compare if c not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    if args.duration <= 0 or args.repetitions < 1 or args.warmup < 0:
        raise ValueError("--duration must be > 0, --repetitions >= 1, --warmup >= 0")
    if args.connections < args.threads or args.threads < 1 or args.backends < 1:
        raise ValueError("need --threads >= 1, --connections >= --threads and --backends >= 1")
    return BenchConfig(scenario=args.scenario, duration=args.duration, repetitions=args.repetitions,
                       warmup=args.warmup, connections=args.connections, threads=args.threads,
                       rate=args.rate, body_size=args.body_size, tcp_size=args.tcp_size,
                       backends=args.backends, proxy_workers=args.proxy_workers, compare=compare)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "bench_import_error", None):
        return _error(f"the bench package failed to import: {args.bench_import_error}", 2)
    if args.plot_path:
        try:
            import matplotlib  # noqa: F401 - checked before spending minutes measuring
        except ImportError:
            return _error("--plot needs matplotlib: pip install matplotlib", 2)
    try:
        cfg = _config(args)
    except ValueError as exc:
        return _error(str(exc), 2)

    from zlbfast.bench import report
    from zlbfast.bench.progress import Progress
    from zlbfast.bench.runner import run_bench

    progress = Progress(0)  # run_bench sets the total once the targets are up
    results = run_bench(cfg, progress)
    topo = None
    topo_status = 0
    if args.topology:
        from zlbfast.bench.topology import run_topology

        topo, topo_status = run_topology(cfg)
    doc = report.document(cfg, results, topo)
    report.print_table(doc)
    if topo:
        print(report.topology_table(topo), flush=True)
    if args.json_path:
        report.write_json(args.json_path, doc)
    if args.plot_path:
        report.plot(args.plot_path, doc)
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        return _error(f"target(s) failed: {', '.join(failed)} (see the table)", 1)
    return topo_status
