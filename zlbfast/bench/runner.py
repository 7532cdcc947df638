"""Orchestration of one benchmark: backends, targets, warm-up, interleaved
repetitions, and the per-target aggregate that the report prints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from zlbfast._native import BuiltinBackend, Histogram, LoadResult, run_load
from zlbfast.bench import procstat
from zlbfast.bench.progress import Progress
from zlbfast.bench.targets import Addr, Target, TargetFailed, TargetSkipped, check_peer, make_targets

ERROR_KINDS = ("connect", "reset", "timeout", "bad_status", "protocol")
SCENARIOS = ("l4", "tcp", "http")


@dataclass
class BenchConfig:
    scenario: str = "l4"
    duration: float = 2.0
    repetitions: int = 3
    warmup: float = 0.5
    connections: int = 64
    threads: int = 1
    rate: float = 0.0
    body_size: int = 64
    tcp_size: int = 64
    backends: int = 2
    proxy_workers: int = 1
    timeout: float = 5.0
    compare: list[str] = field(default_factory=list)


@dataclass
class TargetResult:
    name: str
    kind: str
    status: str = "ok"  # ok, skipped, failed
    reason: str | None = None
    install_hint: str | None = None
    command: list[str] | None = None
    rps_per_rep: list[float] = field(default_factory=list)
    requests: int = 0
    duration_s: float = 0.0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    latency: Histogram = field(default_factory=Histogram)
    labels: dict[str, int] = field(default_factory=dict)
    cpu_s: float | None = None
    peak_rss_kib: int | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def cpu_per_1k(self) -> float | None:
        if self.cpu_s is None or self.requests == 0:
            return None
        return self.cpu_s / (self.requests / 1000.0)

    def add(self, r: LoadResult, cpu_s: float | None) -> None:
        self.rps_per_rep.append(r.rps)
        self.requests += r.requests
        self.duration_s += r.duration_s
        for k, v in r.errors.items():
            self.errors[k] += v
        self.latency.merge(r.latency)
        for k, v in r.labels.items():
            self.labels[k] = self.labels.get(k, 0) + v
        if cpu_s is not None:
            self.cpu_s = (self.cpu_s or 0.0) + cpu_s

    def fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason


def load_kwargs(cfg: BenchConfig) -> dict[str, Any]:
    """run_load() keywords for the scenario (the address comes separately)."""
    common: dict[str, Any] = {"threads": cfg.threads, "connections": cfg.connections,
                                 "rate": cfg.rate, "timeout": cfg.timeout}
    if cfg.scenario == "tcp":
        return {**common, "mode": "tcp", "tcp_size": cfg.tcp_size}
    return {**common, "mode": "http", "path": "/", "label_header": "x-backend"}


@contextlib.contextmanager
def builtin_backends(cfg: BenchConfig, host: str = "127.0.0.1") -> Iterator[list[BuiltinBackend]]:
    """cfg.backends in-process backends: HTTP responders labelled b1, b2, ...
    for l4 and http, echo servers for tcp. Stopped on exit."""
    started: list[BuiltinBackend] = []
    try:
        for i in range(cfg.backends):
            if cfg.scenario == "tcp":
                started.append(BuiltinBackend("echo", host))
            else:
                started.append(BuiltinBackend("http", host, body_size=cfg.body_size, label=f"b{i + 1}"))
        yield started
    finally:
        for b in started:
            b.stop()


def measure(target: Target, addr: Addr, cfg: BenchConfig, seconds: float) -> tuple[LoadResult, float | None]:
    """One load run against addr; returns it and the target's CPU seconds."""
    pid = target.pid
    cpu0 = procstat.cpu_seconds(pid) if pid else None
    r = run_load(addr[0], addr[1], duration=seconds, **load_kwargs(cfg))
    cpu = procstat.cpu_seconds(pid) - cpu0 if pid and cpu0 is not None else None
    return r, cpu


def run_bench(cfg: BenchConfig, progress: Progress) -> list[TargetResult]:
    """Runs every target; never raises for a target that fails (it is marked
    failed with the reason), so the others are still measured."""
    targets = make_targets(cfg.compare, cfg.proxy_workers, cfg.scenario)
    results = {t.name: TargetResult(t.name, t.kind) for t in targets}
    live: list[Target] = []
    with builtin_backends(cfg) as backends:
        addrs = [(b.host, b.port) for b in backends]
        try:
            for t in targets:
                res = results[t.name]
                try:
                    if t.kind == "peer":
                        check_peer(t.name, cfg.scenario)
                    t.start(addrs)
                    res.command = t.command
                    live.append(t)
                except TargetSkipped as exc:
                    res.status, res.reason, res.install_hint = "skipped", str(exc), exc.hint
                except TargetFailed as exc:
                    res.command = t.command
                    res.fail(str(exc))
            progress.set_total(len(live) * (cfg.warmup + cfg.repetitions * cfg.duration))
            for t in live:
                assert t.address is not None
                progress.step(f"warm-up {t.name}", cfg.warmup,
                              lambda t=t: measure(t, t.address, cfg, cfg.warmup))  # type: ignore[misc]
            for rep in range(cfg.repetitions):
                for t in live:
                    res = results[t.name]
                    if res.status != "ok":
                        continue
                    if not t.alive():
                        res.fail(f"{t.name} exited during the run")
                        continue
                    r, cpu = progress.step(
                        f"{t.name} {rep + 1}/{cfg.repetitions}", cfg.duration,
                        lambda t=t: measure(t, t.address, cfg, cfg.duration))  # type: ignore[misc]
                    res.add(r, cpu)
            for t in live:
                res = results[t.name]
                if t.pid:
                    res.peak_rss_kib = procstat.peak_rss_kib(t.pid)
                if res.status == "ok" and res.requests == 0:
                    res.fail(f"no successful request through {t.name} (errors: {res.errors})")
        finally:
            for t in targets:
                t.stop()
            progress.finish()
    return [results[t.name] for t in targets]


def direct_rps(results: Sequence[TargetResult]) -> float | None:
    for r in results:
        if r.kind == "baseline" and r.status == "ok" and r.requests:
            return r.rps
    return None
