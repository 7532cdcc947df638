"""Is the built-in load generator a bottleneck? It must reach at least what wrk reaches against the same
backend in the same run (the condition for trusting `zlbfast bench`).

    python bench/loadgen_vs_wrk.py [--runs 5] [--duration 3]

Both drive one built-in C HTTP backend with 64 keep-alive connections from one thread (`wrk -t1 -c64`),
interleaved, order alternating; medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _procs import require_tool  # noqa: E402

from zlbfast import _native  # noqa: E402


def run_wrk(wrk: str, port: int, duration: float) -> float:
    out = subprocess.run([wrk, "-t1", "-c64", f"-d{duration:g}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk's output: {out!r}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    wrk = require_tool("wrk", "wrk")
    backend = _native.BuiltinBackend(label="b")
    ours: list[float] = []
    theirs: list[float] = []
    try:
        for run in range(args.runs):
            for which in (("ours", "wrk") if run % 2 == 0 else ("wrk", "ours")):
                if which == "ours":
                    ours.append(_native.run_load("127.0.0.1", backend.port, connections=64,
                                                 duration=args.duration).rps)
                else:
                    theirs.append(run_wrk(wrk, backend.port, args.duration))
    finally:
        backend.stop()
    print(f"zlbfast load generator: {statistics.median(ours):,.0f} req/s  (runs: {[round(x) for x in ours]})")
    print(f"wrk -t1 -c64:           {statistics.median(theirs):,.0f} req/s  (runs: {[round(x) for x in theirs]})")
    print(f"ratio: {statistics.median(ours) / statistics.median(theirs):.2f}")


if __name__ == "__main__":
    main()
