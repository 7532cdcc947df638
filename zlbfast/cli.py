"""The `zlbfast` command: run, proxy, validate, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import yaml

from zlbfast import __version__, admin, logs
from zlbfast.bench import cli as bench
from zlbfast.config import ConfigError, is_envoy_bootstrap, load_config, proxy_config
from zlbfast.metrics import ObservedEngine
from zlbfast.model import POLICIES, Config
from zlbfast.runtime import ApplyError, Engine

log = logging.getLogger("zlbfast")


class _Source(Protocol):
    """Where a running proxy's configuration comes from."""

    async def run(self, engine: Engine, stop: asyncio.Event) -> int:
        """Installs configuration on `engine` and keeps it current until `stop` is set.
        Returns non-zero when the configuration could not be installed at all."""
        ...


@dataclass
class _StaticSource:
    """A zlbfast YAML file (re-read on SIGHUP) or a config built from flags."""

    cfg: Config
    reload: Callable[[], Config] | None

    async def run(self, engine: Engine, stop: asyncio.Event) -> int:
        try:
            engine.apply(self.cfg)
        except ApplyError as exc:
            log.error("%s", exc)
            return 1
        for name, (host, port) in engine.listener_addresses().items():
            log.info("listener %s listening on %s:%d", name, host, port)
        log.info("ready: %d workers, %d clusters", engine.native.workers, len(self.cfg.clusters))
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_hup, engine)
        await stop.wait()
        return 0

    def _on_hup(self, engine: Engine) -> None:
        if self.reload is None:
            log.warning("SIGHUP ignored: no configuration file to reload")
            return
        try:
            new_cfg = self.reload()
            engine.apply(new_cfg)
        except (ConfigError, ApplyError) as exc:
            log.error("reload rejected, keeping the running configuration: %s", exc)
            return
        log.info("reloaded %s: %d listeners, %d clusters", new_cfg.source, len(new_cfg.listeners),
                 len(new_cfg.clusters))


@dataclass
class _XdsSource:
    """An Envoy v3 bootstrap: static resources plus xDS (see docs/xds.md)."""

    args: argparse.Namespace

    async def run(self, engine: Engine, stop: asyncio.Event) -> int:
        from zlbfast import xds  # grpc and protobuf load only for bootstraps

        a = self.args
        try:
            await xds.serve(a.config, engine, stop, cache_dir=a.xds_cache_dir, node_id=a.node_id,
                            node_cluster=a.node_cluster, zone=a.zone, backoff_max_s=a.xds_backoff_max)
        except ConfigError as exc:
            print(f"zlbfast: {exc}", file=sys.stderr)
            return 1
        return 0


async def _serve(source: _Source, workers: int, drain_timeout_ms: int, ops: admin.OpsOptions) -> int:
    """Runs the engine fed by `source` until SIGTERM/SIGINT (or POST /drain), then drains. The admin server,
    health checks and access log (zlbfast.admin.Operations) run from before the first config to after the drain."""
    engine = ObservedEngine(workers)
    try:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            async with admin.Operations(engine, ops, stop.set) as operations:
                rc = await source.run(engine, stop)
                if rc != 0:
                    return rc
                operations.draining()
                drain_s = (engine.config.drain_timeout_ms if engine.config else drain_timeout_ms) / 1000
                log.info("draining: stopped accepting, %d connections open, deadline %.1fs",
                         engine.active_connections(), drain_s)
                engine.stop_accepting()
                if not await asyncio.to_thread(engine.wait_idle, drain_s):
                    log.warning("drain deadline passed with %d connections open; closing them",
                                engine.active_connections())
        except admin.StartError as exc:
            log.error("%s", exc)
            return 1
        log.info("stopped")
        return 0
    finally:
        engine.close()


def _read_yaml(path: str) -> object:
    """The parsed file, or None when it cannot be read or parsed (the loaders then say why)."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None


def _is_envoy_bootstrap(path: str) -> bool:
    return is_envoy_bootstrap(_read_yaml(path))


def _cmd_run(args: argparse.Namespace) -> int:
    if _is_envoy_bootstrap(args.config):
        return asyncio.run(_serve(_XdsSource(args), args.workers, Config((), ()).drain_timeout_ms,
                                  admin.OpsOptions.from_args(args)))
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"zlbfast: {exc}", file=sys.stderr)
        return 1
    source = _StaticSource(cfg, lambda: load_config(args.config))
    return asyncio.run(_serve(source, args.workers or cfg.workers, cfg.drain_timeout_ms,
                              admin.OpsOptions.from_args(args)))


def _cmd_proxy(args: argparse.Namespace) -> int:
    try:
        cfg = proxy_config(args.listen, args.targets, args.policy, args.workers, args.mode, args.tcp_congestion)
    except ConfigError as exc:
        print(f"zlbfast: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_serve(_StaticSource(cfg, None), args.workers, cfg.drain_timeout_ms,
                              admin.OpsOptions.from_args(args)))


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        if _is_envoy_bootstrap(args.config):
            from zlbfast.xds import bootstrap

            bootstrap.load(args.config)
            print(f"{args.config}: OK (Envoy v3 bootstrap)")
            return 0
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
    parser.add_argument("--log-level", default="info", choices=logs.LEVELS)
    parser.add_argument("--log-format", default="text", choices=logs.FORMATS, help="stderr log lines: text or JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run with a zlbfast YAML file or an Envoy v3 bootstrap")
    run.add_argument("-c", "--config", required=True, help="zlbfast YAML, or Envoy v3 bootstrap (YAML/JSON)")
    run.add_argument("--workers", type=int, default=0, help="worker threads (default: config, else CPUs)")
    xds_group = run.add_argument_group("xDS (Envoy bootstraps only)")
    xds_group.add_argument("--xds-cache-dir", default=None, help="where accepted xDS state is persisted")
    xds_group.add_argument("--node-id", default="", help="overrides node.id of the bootstrap")
    xds_group.add_argument("--node-cluster", default="", help="overrides node.cluster of the bootstrap")
    xds_group.add_argument("--zone", default="", help="node locality zone (also the local zone for balancing)")
    xds_group.add_argument("--xds-backoff-max", type=float, default=30.0, help="longest reconnect delay, seconds")
    admin.add_arguments(run, admin_default=admin.DEFAULT_ADMIN)
    run.set_defaults(func=_cmd_run)

    proxy = sub.add_parser("proxy", help="one-line proxy: --from ADDR --to ADDR [--to ADDR ...] [--mode http]")
    proxy.add_argument("--from", dest="listen", required=True, metavar="HOST:PORT")
    proxy.add_argument("--to", dest="targets", action="append", required=True, metavar="HOST:PORT")
    proxy.add_argument("--policy", default="round_robin", choices=POLICIES)
    proxy.add_argument("--mode", default="tcp", choices=("tcp", "http"),
                       help="tcp: balance per connection; http: per request (HTTP/1.1)")
    proxy.add_argument("--workers", type=int, default=0, help="worker threads (default: CPUs)")
    proxy.add_argument("--tcp-congestion", default="", metavar="NAME",
                       help="TCP congestion control of both sides' sockets, e.g. cubic (default: the system's)")
    admin.add_arguments(proxy, admin_default=None)
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
    logs.setup_logging(args.log_level, args.log_format)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
