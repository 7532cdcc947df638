"""What the wrk-based comparison scripts (l4_compare.py, l7_compare.py) share when they summarise: the proxy's
CPU cost per request and zlbfast's ratios to the other targets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

# (label, other target, metric, inverted): zlbfast's median over the other's, or the other's over zlbfast's when
# inverted (for costs, where a ratio above 1 should still mean "zlbfast is better").
RatioSpec = tuple[str, str, str, bool]


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cpu_ms_per_1k(runs: Iterable[tuple[float | None, float | None, float]]) -> list[float]:
    """CPU ms per 1,000 requests of each (proxy CPU s, req/s, duration s) run that has both figures:
    CPU s / (req/s x s) x 10^6."""
    return [cpu / (rps * duration) * 1e6 for cpu, rps, duration in runs if cpu is not None and rps]


def ratios(medians: Mapping[str, Mapping[str, float]], specs: Sequence[RatioSpec]) -> dict[str, float | None]:
    def ratio(other: str, metric: str, inverted: bool) -> float | None:
        mine = medians.get("zlbfast", {}).get(metric)
        theirs = medians.get(other, {}).get(metric)
        num, den = (theirs, mine) if inverted else (mine, theirs)
        return num / den if num is not None and den else None

    return {label: ratio(other, metric, inverted) for label, other, metric, inverted in specs}
