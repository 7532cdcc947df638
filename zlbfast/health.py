"""Active health checks, and the log of passive ejections.

``HealthChecker`` probes every endpoint of each cluster that has a ``health_check`` (TCP connect, or HTTP
GET with expected statuses) from the asyncio loop and hands verdicts to the data plane with
``NativeEngine.set_active_health``. The C side keeps a verdict across reloads and combines it with the
configured health, passive ejection and the panic threshold; Python only decides when a verdict changes:

* the first probe of an endpoint decides at once (nothing is known before it);
* after that, ``unhealthy_threshold`` failures in a row make it unhealthy, ``healthy_threshold``
  successes in a row make it healthy again.

Each endpoint has its own task that waits ``interval`` plus up to ``jitter`` between probes, so a slow
endpoint (one waiting out its ``timeout``) delays no other.

``EjectionWatcher`` polls the endpoint table and logs outlier-detection ejections and their ends, which
the workers record but do not report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass, field

from zlbfast import _native
from zlbfast.config import _format_hostport
from zlbfast.model import Config, HealthCheck
from zlbfast.runtime import Engine

log = logging.getLogger("zlbfast.health")

class ProbeFailed(Exception):
    """A probe's reason for failing, as logged."""


async def probe(check: HealthCheck, host: str, port: int) -> None:
    """One check of one endpoint; raises ProbeFailed saying why it failed."""
    try:
        await asyncio.wait_for(_probe(check, host, port), check.timeout_ms / 1000)
    except asyncio.TimeoutError:
        raise ProbeFailed(f"no answer within {check.timeout_ms}ms") from None
    except OSError as exc:
        # asyncio puts "Connect call failed (addr)" in strerror; the errno says what happened.
        raise ProbeFailed(os.strerror(exc.errno) if exc.errno else str(exc)) from None


async def _probe(check: HealthCheck, host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if check.type == "http":
            await _http_get(check, reader, writer, _format_hostport(host, port))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _http_get(check: HealthCheck, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    authority: str) -> None:
    writer.write(f"GET {check.path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: zlbfast-health-check\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise ProbeFailed("connection closed before a status line") from None
    except asyncio.LimitOverrunError:
        raise ProbeFailed("status line too long") from None
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ProbeFailed(f"not an HTTP/1.x status line: {line[:80]!r}")
    status = int(parts[1])
    if not any(low <= status <= high for low, high in check.expected_statuses):
        raise ProbeFailed(f"HTTP status {status}")


@dataclass
class _Target:
    cluster: str
    host: str
    port: int
    check: HealthCheck
    verdict: str | None = None  # None until the first probe; then "healthy" or "unhealthy"
    successes: int = 0  # in a row
    failures: int = 0  # in a row
    checks_ok: int = 0  # totals, for metrics
    checks_failed: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return _format_hostport(self.host, self.port)


class HealthChecker:
    """Runs the health checks the current configuration asks for; `reconcile` after each apply."""

    def __init__(self, engine: Engine, rng: random.Random | None = None) -> None:
        self.engine = engine
        self.rng = rng or random.Random()
        self.targets: dict[tuple[str, str], _Target] = {}  # (cluster, "ip:port")

    def reconcile(self, cfg: Config) -> None:
        """Starts checks for new endpoints, stops those of removed ones, applies changed settings. An endpoint
        whose cluster lost its health check gets its active verdict cleared."""
        wanted: dict[tuple[str, str], tuple[str, str, int, HealthCheck]] = {}
        for cluster in cfg.clusters:
            if cluster.health_check is None:
                continue
            for ep in cluster.endpoints:
                key = (cluster.name, _format_hostport(ep.address, ep.port))
                wanted[key] = (cluster.name, ep.address, ep.port, cluster.health_check)
        for key in list(self.targets):
            if key in wanted:
                continue
            target = self.targets.pop(key)
            if target.task is not None:
                target.task.cancel()
            if target.verdict == "unhealthy":
                # Still configured (its cluster stopped checking): let it take traffic again.
                with contextlib.suppress(_native.NativeError):
                    self.engine.native.set_active_health(target.cluster, target.address, "healthy")
        for key, (name, host, port, check) in wanted.items():
            existing = self.targets.get(key)
            if existing is not None:
                existing.check = check  # the task reads it before each probe
                continue
            target = self.targets[key] = _Target(name, host, port, check)
            target.task = asyncio.get_running_loop().create_task(self._run(target), name=f"health {key}")

    async def _run(self, target: _Target) -> None:
        # The first probe waits a random part of one interval, so that a cluster's endpoints (and a restart's
        # worth of proxies) spread out instead of probing together.
        await asyncio.sleep(self.rng.uniform(0, target.check.interval_ms / 1000))
        while True:
            check = target.check
            try:
                await probe(check, target.host, target.port)
            except ProbeFailed as exc:
                self._record(target, ok=False, reason=str(exc))
            else:
                self._record(target, ok=True, reason="")
            await asyncio.sleep((check.interval_ms + self.rng.uniform(0, check.jitter_ms)) / 1000)

    def _record(self, target: _Target, *, ok: bool, reason: str) -> None:
        check = target.check
        if ok:
            target.checks_ok += 1
            target.successes += 1
            target.failures = 0
            flip = target.verdict != "healthy" and (
                target.verdict is None or target.successes >= check.healthy_threshold)
            new = "healthy"
        else:
            target.checks_failed += 1
            target.failures += 1
            target.successes = 0
            flip = target.verdict != "unhealthy" and (
                target.verdict is None or target.failures >= check.unhealthy_threshold)
            new = "unhealthy"
        if not flip:
            return
        first = target.verdict is None
        target.verdict = new
        try:
            self.engine.native.set_active_health(target.cluster, target.address, new)
        except _native.NativeError:
            return  # removed by a configuration change since the probe started; reconcile stops this task
        streak = target.successes if ok else target.failures
        why = "first check" if first else f"{streak} {'successes' if ok else 'failures'} in a row"
        fields = {"event": "health", "cluster": target.cluster, "endpoint": target.address, "health": new,
                  "reason": reason}
        if ok:
            log.info("health check: %s in cluster %s is healthy (%s)", target.address, target.cluster, why,
                     extra=fields)
        else:
            log.warning("health check: %s in cluster %s is unhealthy (%s: %s)", target.address, target.cluster,
                        why, reason, extra=fields)

    def verdict(self, cluster: str, address: str) -> str | None:
        target = self.targets.get((cluster, address))
        return target.verdict if target is not None else None

    def close(self) -> None:
        for target in self.targets.values():
            if target.task is not None:
                target.task.cancel()
        self.targets.clear()


class EjectionWatcher:
    """Logs passive (outlier-detection) ejections by watching each endpoint's ejection counter and deadline."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ejections: dict[tuple[str, str], int] = {}
        self._ejected: set[tuple[str, str]] = set()

    def poll(self) -> None:
        now_ns = time.monotonic_ns()  # the data plane's clock too (CLOCK_MONOTONIC)
        seen: dict[tuple[str, str], int] = {}
        for cluster, endpoints in self.engine.native.endpoints().items():
            for ep in endpoints:
                key = (cluster, str(ep["address"]))
                count = int(ep["ejections"])
                seen[key] = count
                ejected = int(ep["ejected_until_ns"]) > now_ns
                fields = {"event": "ejection", "cluster": cluster, "endpoint": key[1], "ejections": count}
                # An endpoint seen for the first time counts from 0: it may have been ejected between its
                # configuration and this poll.
                if count > self._ejections.get(key, 0):
                    remaining_s = max(0, int(ep["ejected_until_ns"]) - now_ns) / 1e9
                    log.warning("outlier detection: %s in cluster %s ejected for %.1fs (ejection %d, %d failures "
                                "in total)", key[1], cluster, remaining_s, count, int(ep["failures"]),
                                extra={**fields, "ejected": True})
                elif key in self._ejected and not ejected:
                    log.info("outlier detection: %s in cluster %s is back from ejection", key[1], cluster,
                             extra={**fields, "ejected": False})
                if ejected:
                    self._ejected.add(key)
                else:
                    self._ejected.discard(key)
        self._ejections = seen
        self._ejected &= set(seen)

    async def run(self, stop: asyncio.Event, interval_s: float = 0.25) -> None:
        while not stop.is_set():
            self.poll()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
