"""The `zlbfast` command: run, proxy, validate, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from zlbfast import __version__
from zlbfast.bench import cli as bench
from zlbfast.config import ConfigError, load_config, proxy_config
from zlbfast.model import POLICIES, Config

log = logging.getLogger("zlbfast")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(cfg: Config, workers: int, reload: Callable[[], Config] | None) -> int:
    """Runs the engine until SIGTERM/SIGINT; SIGHUP re-reads the config via `reload`."""
    from zlbfast.runtime import ApplyError, Engine

    engine = Engine(workers or cfg.workers)
    try:
        try:
            engine.apply(cfg)
        except ApplyError as exc:
            log.error("%s", exc)
            return 1
        for name, (host, port) in engine.listener_addresses().items():
            log.info("listener %s listening on %s:%d", name, host, port)
        log.info("ready: %d workers, %d clusters", engine.native.workers, len(cfg.clusters))

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_hup() -> None:
            if reload is None:
                log.warning("SIGHUP ignored: no configuration file to reload")
                return
            try:
                new_cfg = reload()
                engine.apply(new_cfg)
            except (ConfigError, ApplyError) as exc:
                log.error("reload rejected, keeping the running configuration: %s", exc)
                return
            log.info("reloaded %s: %d listeners, %d clusters", new_cfg.source, len(new_cfg.listeners),
                     len(new_cfg.clusters))

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()

        drain_s = (engine.config or cfg).drain_timeout_ms / 1000
        active = engine.active_connections()
        log.info("draining: stopped accepting, %d connections open, deadline %.1fs", active, drain_s)
        engine.stop_accepting()
        idle = await asyncio.to_thread(engine.wait_idle, drain_s)
        if not idle:
            log.warning("drain deadline passed with %d connections open; closing them",
                        engine.active_connections())
        log.info("stopped")
        return 0
    finally:
        engine.close()


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"zlbfast: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_serve(cfg, args.workers, lambda: load_config(args.config)))


def _cmd_proxy(args: argparse.Namespace) -> int:
    try:
        cfg = proxy_config(args.listen, args.targets, args.policy, args.workers)
    except ConfigError as exc:
        print(f"zlbfast: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_serve(cfg, args.workers, None))


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"zlbfast: {exc}", file=sys.stderr)
        return 1
    print(f"{cfg.source}: OK ({len(cfg.listeners)} listeners, {len(cfg.clusters)} clusters)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zlbfast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"zlbfast {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run with a configuration file")
    run.add_argument("-c", "--config", required=True, help="zlbfast YAML configuration")
    run.add_argument("--workers", type=int, default=0, help="worker threads (default: config, else CPUs)")
    run.set_defaults(func=_cmd_run)

    proxy = sub.add_parser("proxy", help="one-line TCP proxy: --from ADDR --to ADDR [--to ADDR ...]")
    proxy.add_argument("--from", dest="listen", required=True, metavar="HOST:PORT")
    proxy.add_argument("--to", dest="targets", action="append", required=True, metavar="HOST:PORT")
    proxy.add_argument("--policy", default="round_robin", choices=POLICIES)
    proxy.add_argument("--workers", type=int, default=0, help="worker threads (default: CPUs)")
    proxy.set_defaults(func=_cmd_proxy)

    validate = sub.add_parser("validate", help="check a configuration file and exit")
    validate.add_argument("-c", "--config", required=True)
    validate.set_defaults(func=_cmd_validate)

    bench_parser = sub.add_parser("bench", help="measure throughput and latency (see docs/bench.md)")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
