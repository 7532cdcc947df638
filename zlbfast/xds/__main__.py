"""`python -m zlbfast.xds -c bootstrap.yaml`: runs an Envoy v3 bootstrap until SIGTERM/SIGINT.

Stand-in for `zlbfast run -c bootstrap.yaml` until the CLI hands Envoy bootstraps to zlbfast.xds.serve.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

START = time.monotonic()


async def _main(args: argparse.Namespace) -> int:
    from zlbfast.config import ConfigError
    from zlbfast.runtime import Engine
    from zlbfast.xds import serve

    log = logging.getLogger("zlbfast.xds")
    engine = Engine(args.workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.call_soon(lambda: log.info("started in %.1f ms", (time.monotonic() - START) * 1000))
    try:
        await serve(args.config, engine, stop, cache_dir=args.cache_dir, node_id=args.node_id,
                    node_cluster=args.node_cluster, zone=args.zone, backoff_max_s=args.backoff_max)
    except ConfigError as exc:
        print(f"zlbfast: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.stop_accepting()
        engine.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zlbfast.xds", description=__doc__)
    parser.add_argument("-c", "--config", required=True, help="Envoy v3 bootstrap (YAML or JSON)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="where accepted xDS state is kept")
    parser.add_argument("--node-id", default="")
    parser.add_argument("--node-cluster", default="")
    parser.add_argument("--zone", default="", help="node locality zone (also the local zone for LB)")
    parser.add_argument("--backoff-max", type=float, default=30.0, help="longest reconnect delay, seconds")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
