"""What the wrk-based comparison scripts (l4_compare.py, l7_compare.py) share when they summarise: the medians of
a target's wrk runs (rate, latency, the proxy's CPU cost per request) and zlbfast's ratios to the other targets."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol


class WrkSample(Protocol):
    """The fields of one successful wrk run that both scripts' samples carry."""

    rps: float | None
    latency_ms: dict[str, float]
    wrk_errors: int
    proxy_cpu_s: float | None  # the proxy's user+system CPU during the run, None for direct
    proxy_sys_s: float | None  # of which system (kernel) time
    duration_s: int

# (label, other target, metric, inverted): zlbfast's median over the other's, or the other's over zlbfast's when
# inverted (for costs, where a ratio above 1 should still mean "zlbfast is better").
RatioSpec = tuple[str, str, str, bool]


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cpu_ms_per_1k(runs: Iterable[tuple[float | None, float | None, float]]) -> list[float]:
    """CPU ms per 1,000 requests of each (proxy CPU s, req/s, duration s) run that has both figures:
    CPU s / (req/s x s) x 10^6."""
    return [cpu / (rps * duration) * 1e6 for cpu, rps, duration in runs if cpu is not None and rps]


def wrk_medians(ok: Sequence[WrkSample]) -> dict[str, float]:
    """Medians over successful runs: rps, wrk_errors, p50_ms/p99_ms, and the proxy's cpu_ms_per_1k and
    sys_ms_per_1k where it was measured."""
    out = {"rps": statistics.median(s.rps for s in ok if s.rps is not None),
           "wrk_errors": statistics.median(s.wrk_errors for s in ok)}
    for p in ("p50", "p99"):
        values = [s.latency_ms[p] for s in ok if p in s.latency_ms]
        if values:
            out[f"{p}_ms"] = statistics.median(values)
    for key, cost in (("cpu_ms_per_1k", lambda s: s.proxy_cpu_s), ("sys_ms_per_1k", lambda s: s.proxy_sys_s)):
        values = cpu_ms_per_1k((cost(s), s.rps, s.duration_s) for s in ok)
        if values:
            out[key] = statistics.median(values)
    return out


def failed_samples_line(errors: Sequence[str | None], width: int) -> list[str]:
    """The table line under a target whose runs partly failed (none when all succeeded)."""
    failed = [e for e in errors if e]
    return [f"{'':<{width}} {len(failed)} failed sample(s), first: {failed[0]}"] if failed else []


def ratio_lines(values: Mapping[str, float | None]) -> list[str]:
    return ["", "ratios of medians:", *(f"  {label:<24} {fmt(value, '.2f')}" for label, value in values.items())]


def ratios(medians: Mapping[str, Mapping[str, float]], specs: Sequence[RatioSpec]) -> dict[str, float | None]:
    def ratio(other: str, metric: str, inverted: bool) -> float | None:
        mine = medians.get("zlbfast", {}).get(metric)
        theirs = medians.get(other, {}).get(metric)
        num, den = (theirs, mine) if inverted else (mine, theirs)
        return num / den if num is not None and den else None

    return {label: ratio(other, metric, inverted) for label, other, metric, inverted in specs}
