"""Presenting results: the text table, the --json document (schema in
docs/bench-schema.json) and the --plot PNG."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from zlbfast._native import Histogram
from zlbfast.bench.runner import BenchConfig, TargetResult, direct_rps

SCHEMA_ID = "zlbfast-bench/1"
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999))


def latency_ms(h: Histogram) -> dict[str, float]:
    out = {name: h.percentile(q) / 1e6 for name, q in QUANTILES}
    out["max"] = h.max / 1e6
    out["mean"] = h.mean / 1e6
    return out


def latency_cdf(h: Histogram) -> list[list[float]]:
    """[latency_ms, fraction of requests <= it] at each non-empty bucket's top."""
    out, seen = [], 0
    for _lo, hi, n in h.buckets():
        seen += n
        out.append([min(hi, h.max) / 1e6, seen / h.count])
    return out


def target_json(r: TargetResult, direct: float | None) -> dict[str, Any]:
    measured = r.status == "ok"
    return {
        "name": r.name,
        "kind": r.kind,
        "status": r.status,
        "reason": r.reason,
        "install_hint": r.install_hint,
        "command": r.command,
        "requests": r.requests,
        "duration_s": r.duration_s,
        "rps": r.rps if measured else None,
        "rps_per_rep": r.rps_per_rep,
        "ratio_to_direct": r.rps / direct if measured and direct else None,
        "errors": dict(r.errors),
        "latency_ms": latency_ms(r.latency) if measured else None,
        "latency_cdf": latency_cdf(r.latency) if measured else [],
        "cpu_s_per_1k_requests": r.cpu_per_1k if measured else None,
        "peak_rss_kib": r.peak_rss_kib,
        "labels": dict(r.labels),
    }


def document(cfg: BenchConfig, results: Sequence[TargetResult],
             topology: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    direct = direct_rps(results)
    return {
        "schema": SCHEMA_ID,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count() or 0, "kernel": platform.release(),
                 "python": platform.python_version()},
        "config": asdict(cfg),
        "targets": [target_json(r, direct) for r in results],
        "topology": topology,
    }


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _grid(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned text columns: the first left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def table(doc: dict[str, Any]) -> str:
    head = ("target", "req/s", "x direct", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors",
            "CPU s/1k req", "peak RSS MiB")
    rows, notes = [], []
    for t in doc["targets"]:
        if t["status"] != "ok":
            what = f"{t['name']}: {t['status']}: {t['reason']}"
            notes.append(what + (f" (install: {t['install_hint']})" if t["install_hint"] else ""))
            rows.append((t["name"], t["status"], *["-"] * (len(head) - 2)))
            continue
        lat = t["latency_ms"]
        rss = t["peak_rss_kib"]
        rows.append((
            t["name"], f"{t['rps']:,.0f}", _num(t["ratio_to_direct"], ".2f"),
            *(f"{lat[k]:.3f}" for k in ("p50", "p90", "p99", "p99_9")),
            str(sum(t["errors"].values())), _num(t["cpu_s_per_1k_requests"], ".3f"),
            "-" if rss is None else f"{rss / 1024:.1f}",
        ))
    return "\n".join([*_grid(head, rows), *notes])


def plot(path: str, doc: dict[str, Any]) -> None:
    """Throughput bars and latency CDFs into a PNG (matplotlib, Agg)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [t for t in doc["targets"] if t["status"] == "ok"]
    fig, (bars, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [t["name"] for t in measured]
    rps = [t["rps"] for t in measured]
    lo = [t["rps"] - min(t["rps_per_rep"] or [t["rps"]]) for t in measured]
    hi = [max(t["rps_per_rep"] or [t["rps"]]) - t["rps"] for t in measured]
    bars.bar(names, rps, yerr=[lo, hi], capsize=4, color="#4c72b0")
    bars.set_ylabel("requests/s")
    bars.set_title(f"throughput ({doc['config']['scenario']}, min..max over repetitions)")
    for t in measured:
        pts = t["latency_cdf"]
        if pts:
            cdf.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=t["name"])
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of requests")
    cdf.set_title("latency CDF")
    cdf.grid(True, alpha=0.3)
    if measured:
        cdf.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(doc: dict[str, Any]) -> None:
    print(table(doc), file=sys.stdout, flush=True)


def topology_table(cases: list[dict[str, Any]]) -> str:
    head = ("topology", "proxies", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "CPU s/1k req")
    rows, notes = [], []
    for c in cases:
        if c["status"] != "ok":
            notes.append(f"{c['name']}: {c['status']}: {c['reason']}")
            rows.append((c["name"], c["status"], *["-"] * (len(head) - 2)))
            continue
        lat = c["latency_ms"]
        rows.append((c["name"], str(c["proxies"]), f"{c['rps']:,.0f}", f"{lat['p50']:.3f}", f"{lat['p99']:.3f}",
                     f"{lat['p99_9']:.3f}", str(sum(c["errors"].values())),
                     _num(c["cpu_s_per_1k_requests"], ".3f")))
    delay = next((c.get("network_delay") for c in cases if c["status"] == "ok"), None)
    notes.append(f"host-to-host delay: {delay or 'none (netem unavailable)'}")
    return "\n".join(["", *_grid(head, rows), *notes])
