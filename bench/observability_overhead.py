"""Cost of observability on the L7 path: the same HTTP proxy with metrics scraped and every request written
to a JSON access log, against the same proxy with both off, in one interleaved run.

    python bench/observability_overhead.py [--duration 5] [--runs 5] [--sample 1] [--pin] [--json out.json]

Both targets are `zlbfast proxy --mode http --workers 1` in front of two built-in C backends, loaded by the
built-in C load generator (64 keep-alive connections). "on" adds `--admin 127.0.0.1:P --access-log FILE` and
scrapes /stats/prometheus once a second during the run. Reported: medians of req/s and of the proxy's CPU
time per 1,000 requests, and the overheads 1 - on/off req/s and on/off - 1 CPU per request (the issue's
target: <= 5 %), the same from the median of each round's on/off ratio (steadier when other processes share
the CPUs), and the CPU per request split by thread: the main thread (event loop, admin server), the workers,
and the access-log thread.

Fairness, stated: the access log is written by a thread of the proxy's own (csrc/accesslog_writer.h), as
Envoy flushes its file access logs from a thread of their own, and nothing here pins it. Without --pin every
process floats over every CPU (the default, as before): on a 2-core machine the req/s ratio then also charges
the proxy's extra work to the load generator and backends sharing the cores, and the CPU per request is the
proxy's own cost. With --pin the whole proxy (worker, event loop and access-log thread) is confined to one
CPU and the load generator and backends to another: the log thread then takes its time from the worker's own
CPU, the strictest setting.
Each "on" proxy is scraped once during the warm-up, so the admin server's one-time import of
prometheus_client (deliberately lazy, for the idle footprint) is not charged to a measured run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._procs import Child, choose_cpus, free_port, pinned, start_listening  # noqa: E402
from zlbfast import _native  # noqa: E402
from zlbfast.bench.procstat import cpu_seconds  # noqa: E402
from zlbfast.bench.targets import proxy_command  # noqa: E402

# Where the proxy's CPU goes, by thread (csrc/worker.c, csrc/accesslog_writer.c name theirs).
PARTS = ("main", "workers", "access log")


def part_of(pid: int, tid: int, name: str) -> str:
    if tid == pid:
        return "main"  # the event loop: admin server, scrapes, health checks, config
    if name.startswith("zlb-worker"):
        return "workers"
    return "access log" if name == "zlb-accesslog" else "main"  # short-lived Python helper threads


def start_proxy(name: str, backends: list[str], workdir: Path, observed: bool, sample: float,
                cpu: str | None) -> tuple[Child, int, int | None]:
    """The proxy, its port and (observed only) its admin port."""
    port = free_port()
    argv = proxy_command(f"127.0.0.1:{port}", backends, 1, "http")
    admin = None
    if observed:
        admin = free_port()
        argv += ["--admin", f"127.0.0.1:{admin}", "--access-log", str(workdir / f"{name}.jsonl"),
                 "--access-log-sample", str(sample)]
    return start_listening(name, pinned(argv, cpu), port, workdir / f"{name}.log", cwd=ROOT), port, admin


def scrape(admin: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
        r.read()


def scrape_while(admin: int, stop: threading.Event) -> None:
    """Scrapes the admin server once a second, like a Prometheus server would, until `stop`."""
    while not stop.wait(1.0):
        scrape(admin)


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime + stime of pid's live threads, summed by PARTS."""
    total = dict.fromkeys(PARTS, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        total[part_of(pid, int(task.name), name)] += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure(port: int, admin: int | None, pid: int, duration: float) -> tuple[float, float, dict[str, float]]:
    """(req/s, proxy CPU ms per 1,000 requests, the same by PARTS) of one run."""
    stop = threading.Event()
    scraper = threading.Thread(target=scrape_while, args=(admin, stop)) if admin else None
    if scraper:
        scraper.start()
    cpu0, parts0 = cpu_seconds(pid), thread_cpu_seconds(pid)
    try:
        result = _native.run_load("127.0.0.1", port, connections=64, duration=duration)
        cpu, parts1 = cpu_seconds(pid) - cpu0, thread_cpu_seconds(pid)
    finally:
        stop.set()
        if scraper:
            scraper.join(timeout=10)
    if sum(result.errors.values()):
        raise RuntimeError(f"load errors: {result.errors}")
    per_1k = 1e6 / max(result.requests, 1)
    return float(result.rps), cpu * per_1k, {k: (parts1[k] - parts0[k]) * per_1k for k in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument("--sample", type=float, default=1.0, help="access-log sample rate of 'on' (default 1: all)")
    parser.add_argument("--pin", action="store_true",
                        help="the proxy alone on one CPU, the load generator and backends on another (see above)")
    parser.add_argument("--json", type=Path, help="write the samples and medians here")
    args = parser.parse_args()

    # Before the backends start: their threads inherit this process's CPU.
    _, proxy_cpu, pinning = choose_cpus(args.pin, "the load generator and backends")
    backends = [_native.BuiltinBackend(label=f"b{i}") for i in range(2)]
    children: list[Child] = []
    try:
        with tempfile.TemporaryDirectory(prefix="zlb-obs-") as tmp:
            workdir = Path(tmp)
            targets: dict[str, tuple[int, int | None, int]] = {}
            for name, observed in (("off", False), ("on", True)):
                child, port, admin = start_proxy(name, [f"{b.host}:{b.port}" for b in backends], workdir, observed,
                                                 args.sample, proxy_cpu)
                children.append(child)
                targets[name] = (port, admin, child.pid)
            samples: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {name: [] for name in targets}
            parts: dict[str, dict[str, list[float]]] = {name: {k: [] for k in PARTS} for name in targets}
            for port, admin, pid in targets.values():  # warm-up: pools, page cache, the first scrape's imports
                measure(port, admin, pid, 1.0)
                if admin:
                    scrape(admin)
            for run in range(args.runs):
                order = list(targets) if run % 2 == 0 else list(reversed(targets))
                for name in order:
                    rps, cpu_ms, by_part = measure(*targets[name], args.duration)
                    samples[name].append(rps)
                    cpu[name].append(cpu_ms)
                    for k, v in by_part.items():
                        parts[name][k].append(v)
                    print(f"run {run + 1}/{args.runs} {name}: {rps:,.0f} req/s, {cpu_ms:.2f} CPU ms/1k req",
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
    # Each round's "on" against the "off" run next to it: slow drifts of the machine's load (other tenants of
    # the CPUs) cancel out of the ratio, so this is the steadier figure on a shared machine.
    paired = 1 - statistics.median(n / o for n, o in zip(samples["on"], samples["off"], strict=True))
    paired_cpu = statistics.median(n / o for n, o in zip(cpu["on"], cpu["off"], strict=True)) - 1
    med_parts = {name: {k: statistics.median(v) for k, v in by.items()} for name, by in parts.items()}

    def split(name: str) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in med_parts[name].items())

    print(f"L7, medians of {args.runs} interleaved {args.duration:.0f}s runs, 1 worker, 64 connections, "
          f"pinning: {pinning}:")
    print(f"  off (no admin, no access log):   {med['off']:,.0f} req/s  {med_cpu['off']:.2f} CPU ms/1k req"
          f"  ({split('off')})")
    print(f"  on (scraped 1/s, {args.sample:.0%} logged): {med['on']:,.0f} req/s  {med_cpu['on']:.2f} CPU ms/1k req"
          f"  ({split('on')})  {logged:,} access-log lines written")
    print(f"  overhead: req/s {overhead * 100:.1f} %, proxy CPU per request {cpu_overhead * 100:.1f} %"
          "  (target <= 5 %)")
    print(f"  median of the rounds' on/off ratios: req/s {paired * 100:.1f} %, proxy CPU per request "
          f"{paired_cpu * 100:.1f} %")
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "cpu_ms_per_1k": cpu, "cpu_ms_per_1k_by_thread": parts,
                                         "medians": med, "cpu_medians": med_cpu, "overhead": overhead,
                                         "cpu_overhead": cpu_overhead, "paired_overhead": paired,
                                         "paired_cpu_overhead": paired_cpu, "access_log_lines": logged,
                                         "pinning": pinning}, indent=2))


if __name__ == "__main__":
    main()
