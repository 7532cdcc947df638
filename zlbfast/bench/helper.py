"""Helper processes for the namespace topology: `python -m
zlbfast.bench.helper backends|load ...`, run under `ip netns exec` so that
their sockets live in that namespace.

backends: starts built-in backends, prints {"ports": [...]} on one line and
serves until stdin closes. load: runs one load test and prints its summary
plus the latency buckets as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

from zlbfast._native import BuiltinBackend, run_load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zlbfast.bench.helper")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backends")
    b.add_argument("--host", required=True)
    b.add_argument("--count", type=int, default=2)
    b.add_argument("--kind", choices=("http", "echo"), default="http")
    b.add_argument("--body-size", type=int, default=64)
    ld = sub.add_parser("load")
    ld.add_argument("--host", required=True)
    ld.add_argument("--port", type=int, required=True)
    ld.add_argument("--mode", choices=("http", "tcp"), default="http")
    ld.add_argument("--duration", type=float, required=True)
    ld.add_argument("--connections", type=int, default=32)
    ld.add_argument("--rate", type=float, default=0.0)
    ld.add_argument("--tcp-size", type=int, default=64)
    args = p.parse_args(argv)
    if args.cmd == "backends":
        started = [BuiltinBackend(args.kind, args.host, body_size=args.body_size, label=f"b{i + 1}")
                   for i in range(args.count)]
        print(json.dumps({"ports": [s.port for s in started]}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)
        for s in started:
            s.stop()
        return 0
    r = run_load(args.host, args.port, mode=args.mode, duration=args.duration, connections=args.connections,
                 rate=args.rate, tcp_size=args.tcp_size,
                 label_header="x-backend" if args.mode == "http" else "")
    out = r.summary()
    out["buckets"] = r.latency.buckets()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
