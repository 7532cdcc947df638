"""A one-route HTTP (L7) zlbfast proxy for the benchmarks, until `zlbfast proxy --mode http` exists.

    python -m zlbfast.bench.l7proxy --from HOST:PORT --to HOST:PORT [--to ...] [--workers N]

It builds the config the CLI will (config.proxy_config(mode="http"): one `http` listener, one virtual host `*`,
one route `prefix /` to one round-robin cluster), applies it to a runtime.Engine and serves until SIGTERM or
SIGINT. `argv()` returns the command line to start such a proxy: the CLI's `proxy --mode http` when this zlbfast
has it, else this module.
"""

from __future__ import annotations

import argparse
import functools
import signal
import subprocess
import sys
from collections.abc import Sequence

from zlbfast.config import ConfigError, proxy_config
from zlbfast.model import Config


def http_config(listen: str, targets: Sequence[str], workers: int) -> Config:
    """What `zlbfast proxy --mode http` runs: config.proxy_config(mode="http"), i.e. the YAML
    listeners: [{name: proxy, address: LISTEN, protocol: http,
                 virtual_hosts: [{name: proxy, routes: [{match: {prefix: /}, cluster: proxy}]}]}]
    with one round-robin cluster of the targets, through the same parsing and validation as a file."""
    return proxy_config(listen, list(targets), "round_robin", workers, mode="http")


@functools.lru_cache(maxsize=4)
def cli_has_http_mode(cmd: tuple[str, ...] = (sys.executable, "-m", "zlbfast")) -> bool:
    """True when `<cmd> proxy --help` offers `--mode` (the CLI's own HTTP proxy)."""
    try:
        out = subprocess.run([*cmd, "proxy", "--help"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "--mode" in out.stdout


def argv(listen: str, targets: Sequence[str], workers: int,
         cmd: Sequence[str] = (sys.executable, "-m", "zlbfast")) -> list[str]:
    """The command line of an HTTP zlbfast proxy from `listen` to `targets` with `workers` workers."""
    tos = [arg for t in targets for arg in ("--to", t)]
    if cli_has_http_mode(tuple(cmd)):
        return [*cmd, "proxy", "--mode", "http", "--from", listen, *tos, "--workers", str(workers)]
    return [sys.executable, "-m", "zlbfast.bench.l7proxy", "--from", listen, *tos, "--workers", str(workers)]


def main(args: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zlbfast.bench.l7proxy")
    p.add_argument("--from", dest="listen", required=True, metavar="HOST:PORT")
    p.add_argument("--to", dest="targets", action="append", required=True, metavar="HOST:PORT")
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(args)
    from zlbfast.runtime import Engine  # the native module, only when serving

    try:
        cfg = http_config(a.listen, a.targets, a.workers)
    except ConfigError as exc:
        print(f"zlbfast.bench.l7proxy: {exc}", file=sys.stderr)
        return 1
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before the workers start, so they inherit the mask
    with Engine(a.workers) as engine:
        engine.apply(cfg)
        print(f"listening on {a.listen} (http), {len(a.targets)} endpoint(s), {a.workers} worker(s)", flush=True)
        signal.sigwait(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
