"""The xDS agent: one bootstrap, one pipeline, one transport (ADS, delta ADS, REST polling or watched files).

Start-up order matters for control-plane outages: the static resources and then the cached state are
installed before the transport is started, so a proxy restarted while the control plane is down serves its
last accepted state at once and switches to the control plane's state when that arrives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any

from zlbfast.runtime import Engine
from zlbfast.xds import resources as r
from zlbfast.xds.ads import AdsClient, Backoff
from zlbfast.xds.bootstrap import Plan
from zlbfast.xds.files import FileWatcher
from zlbfast.xds.rest import RestPoller
from zlbfast.xds.state import Cache, Pipeline

log = logging.getLogger("zlbfast.xds")


def default_cache_dir(node_id: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "zlbfast", "xds", re.sub(r"[^A-Za-z0-9_.-]", "_", node_id or "default"))


class Agent:
    def __init__(self, plan: Plan, engine: Engine, *, cache_dir: str | None = None,
                 backoff: Backoff | None = None) -> None:
        self.plan = plan
        self.engine = engine
        cache = Cache(cache_dir if cache_dir is not None else default_cache_dir(plan.node.id))
        self.pipeline = Pipeline(engine, plan.static, cache=cache,
                                 initial_fetch_timeout_s=plan.source.initial_fetch_timeout_s, source=plan.path)
        self.backoff = backoff or Backoff()
        self.ads: AdsClient | None = None
        src = plan.source
        if src.kind in ("ads", "delta-ads"):
            self.ads = AdsClient(self.pipeline, plan.node, src.targets, delta=src.kind == "delta-ads",
                                 backoff=self.backoff)

    def state(self) -> dict[str, Any]:
        """xDS gauges and counters: connected, serving_from_cache, last_version, nacks, ..."""
        return self.pipeline.state()

    def start(self) -> None:
        """Installs the static resources, then the cached state if there is one. Must run on the loop."""
        t0 = time.monotonic()
        self.pipeline.update(r.CLUSTER, "", [], full_state=True)  # composes and applies the static part
        if self.pipeline.load_cache():
            st = self.pipeline.state()
            log.warning("serving from cache %s: %d clusters, %d listeners, versions %s (installed in %.1f ms)",
                        self.pipeline.cache.path if self.pipeline.cache else "", st["clusters"], st["listeners"],
                        st["last_version"], (time.monotonic() - t0) * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        src = self.plan.source
        tasks: list[asyncio.Task[None]] = []
        if self.ads is not None:
            tasks.append(asyncio.create_task(self.ads.run(stop)))
        elif src.kind == "rest":
            poller = RestPoller(self.pipeline, self.plan.node, src.targets, refresh_s=src.refresh_s,
                                backoff=self.backoff)
            tasks.append(asyncio.create_task(poller.run(stop)))
        elif src.kind == "file":
            for type_url in (r.CLUSTER, r.LISTENER):
                if type_url in src.paths:
                    watcher = FileWatcher(self.pipeline, type_url, src.paths[type_url])
                    tasks.append(asyncio.create_task(watcher.run(stop)))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.pipeline.flush()


async def serve(path: str, engine: Engine, stop: asyncio.Event, *, cache_dir: str | None = None,
                node_id: str = "", node_cluster: str = "", zone: str = "", backoff_max_s: float = 30.0) -> None:
    """Runs an Envoy v3 bootstrap on `engine` until `stop` is set (the entry point for `zlbfast run`).
    Raises zlbfast.config.ConfigError for a bootstrap that cannot run."""
    from zlbfast.xds import bootstrap

    plan = bootstrap.load(path, node_id=node_id, node_cluster=node_cluster, zone=zone)
    agent = Agent(plan, engine, cache_dir=cache_dir, backoff=Backoff(max_s=backoff_max_s))
    agent.start()
    await agent.run(stop)
