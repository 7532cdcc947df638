"""``ObservedEngine``, the Engine ``zlbfast run`` uses: it counts configuration updates and failures, logs
what changed and tells the health checker about every new configuration. The Prometheus exposition of
these counts lives in zlbfast.prometheus, imported on the first scrape only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from zlbfast.config import ConfigError
from zlbfast.model import HEALTH_STATES, Config
from zlbfast.runtime import ApplyError, Engine

log = logging.getLogger("zlbfast.config")


class ObservedEngine(Engine):
    """An Engine whose apply() is counted, logged and announced to `on_apply` callbacks."""

    def __init__(self, workers: int = 0, seed: int = 0x5EED) -> None:
        super().__init__(workers, seed)
        self.config_updates = 0
        self.config_update_failures = 0
        self.last_update_time = 0.0  # unix seconds of the last successful apply, 0 = never
        self.on_apply: list[Callable[[Config], None]] = []

    def apply(self, cfg: Config) -> None:
        previous = self.config
        try:
            super().apply(cfg)
        except (ApplyError, ConfigError) as exc:
            self.config_update_failures += 1
            log.warning("configuration from %s rejected, the previous one stays active: %s", cfg.source, exc,
                        extra={"event": "config", "source": cfg.source, "accepted": False})
            raise
        self.config_updates += 1
        self.last_update_time = time.time()
        changed = _changed_clusters(previous, cfg)
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        log.info("configuration from %s applied: %d listeners, %d clusters, %d endpoints; clusters changed: %s",
                 cfg.source, len(cfg.listeners), len(cfg.clusters), sum(len(c.endpoints) for c in cfg.clusters),
                 shown or "none", extra={"event": "config", "source": cfg.source, "accepted": True,
                                         "changed_clusters": changed})
        for callback in self.on_apply:
            callback(cfg)


def _changed_clusters(previous: Config | None, cfg: Config) -> list[str]:
    """Names of clusters added, removed or changed. Unchanged clusters are usually the very same frozen
    objects (xDS reuses them), so equality is mostly an identity check."""
    before = {c.name: c for c in previous.clusters} if previous is not None else {}
    after = {c.name: c for c in cfg.clusters}
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def effective_health(configured: str, active: str | None) -> str:
    """What the data plane acts on: the worse of the configured health and the active check's verdict."""
    if active is None:
        return configured
    return max(configured, active, key=HEALTH_STATES.index)
