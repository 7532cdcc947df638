"""Cost of observability on the L7 path: the same HTTP proxy with metrics scraped and every request written
to a JSON access log, against the same proxy with both off, in one interleaved run.

    python bench/observability_overhead.py [--duration 5] [--runs 5] [--json out.json]

Both targets are `zlbfast proxy --mode http --workers 1` in front of two built-in C backends, loaded by the
built-in C load generator (64 keep-alive connections). "on" adds `--admin 127.0.0.1:P --access-log FILE` and
scrapes /stats/prometheus once a second during the run. Reported: medians of req/s and of the proxy's CPU
time per 1,000 requests, and the overheads 1 - on/off req/s and on/off - 1 CPU per request (the issue's
target: <= 5 %). On a 2-core machine the req/s ratio also charges the proxy's extra work to the load
generator and backends sharing the cores; the CPU per request is the proxy's own cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._procs import Child, free_port, start_listening  # noqa: E402
from zlbfast import _native  # noqa: E402
from zlbfast.bench.procstat import cpu_seconds  # noqa: E402
from zlbfast.bench.targets import proxy_command  # noqa: E402


def start_proxy(name: str, backends: list[str], workdir: Path, observed: bool,
                sample: float) -> tuple[Child, int, int | None]:
    """The proxy, its port and (observed only) its admin port."""
    port = free_port()
    argv = proxy_command(f"127.0.0.1:{port}", backends, 1, "http")
    admin = None
    if observed:
        admin = free_port()
        argv += ["--admin", f"127.0.0.1:{admin}", "--access-log", str(workdir / f"{name}.jsonl"),
                 "--access-log-sample", str(sample)]
    return start_listening(name, argv, port, workdir / f"{name}.log", cwd=ROOT), port, admin


def scrape_while(admin: int, stop: threading.Event, scrapes: list[int]) -> None:
    """Scrapes the admin server once a second, like a Prometheus server would, until `stop`."""
    while not stop.wait(1.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
            r.read()
        scrapes.append(1)


def measure(port: int, admin: int | None, pid: int, duration: float) -> tuple[float, float]:
    """(req/s, proxy CPU ms per 1,000 requests) of one run."""
    stop = threading.Event()
    scrapes: list[int] = []
    scraper = threading.Thread(target=scrape_while, args=(admin, stop, scrapes)) if admin else None
    if scraper:
        scraper.start()
    cpu0 = cpu_seconds(pid)
    try:
        result = _native.run_load("127.0.0.1", port, connections=64, duration=duration)
        cpu = cpu_seconds(pid) - cpu0
    finally:
        stop.set()
        if scraper:
            scraper.join(timeout=10)
    if sum(result.errors.values()):
        raise RuntimeError(f"load errors: {result.errors}")
    return float(result.rps), cpu * 1e6 / max(result.requests, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument("--sample", type=float, default=1.0, help="access-log sample rate of 'on' (default 1: all)")
    parser.add_argument("--json", type=Path, help="write the samples and medians here")
    args = parser.parse_args()

    backends = [_native.BuiltinBackend(label=f"b{i}") for i in range(2)]
    children: list[Child] = []
    try:
        with tempfile.TemporaryDirectory(prefix="zlb-obs-") as tmp:
            workdir = Path(tmp)
            targets: dict[str, tuple[int, int | None, int]] = {}
            for name, observed in (("off", False), ("on", True)):
                child, port, admin = start_proxy(name, [f"{b.host}:{b.port}" for b in backends], workdir, observed,
                                                 args.sample)
                children.append(child)
                targets[name] = (port, admin, child.pid)
            samples: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {name: [] for name in targets}
            for port, admin, pid in targets.values():  # warm-up: pools, page cache
                measure(port, admin, pid, 1.0)
            for run in range(args.runs):
                order = list(targets) if run % 2 == 0 else list(reversed(targets))
                for name in order:
                    rps, cpu_ms = measure(*targets[name], args.duration)
                    samples[name].append(rps)
                    cpu[name].append(cpu_ms)
                    print(f"run {run + 1}/{args.runs} {name}: {rps:,.0f} req/s, {cpu_ms:.1f} CPU ms/1k req",
                          file=sys.stderr)
            logged = sum(1 for _ in (workdir / "on.jsonl").open()) if (workdir / "on.jsonl").exists() else 0
    finally:
        for child in children:
            child.stop()
        for b in backends:
            b.stop()
    med = {name: statistics.median(v) for name, v in samples.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    overhead = 1 - med["on"] / med["off"]
    cpu_overhead = med_cpu["on"] / med_cpu["off"] - 1
    print(f"L7, medians of {args.runs} interleaved {args.duration:.0f}s runs, 1 worker, 64 connections:")
    print(f"  off (no admin, no access log):   {med['off']:,.0f} req/s  {med_cpu['off']:.1f} CPU ms/1k req")
    print(f"  on (scraped 1/s, {args.sample:.0%} logged): {med['on']:,.0f} req/s  {med_cpu['on']:.1f} CPU ms/1k req"
          f"  ({logged:,} access-log lines written)")
    print(f"  overhead: req/s {overhead * 100:.1f} %, proxy CPU per request {cpu_overhead * 100:.1f} %"
          "  (target <= 5 %)")
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "cpu_ms_per_1k": cpu, "medians": med,
                                         "cpu_medians": med_cpu, "overhead": overhead,
                                         "cpu_overhead": cpu_overhead, "access_log_lines": logged}, indent=2))


if __name__ == "__main__":
    main()
