"""The runtime: compiles the configuration model into native snapshots and
listeners, and applies configuration changes without disturbing traffic.

Threading: an Engine is driven from one Python thread (the asyncio thread in
`zlbfast run`). The C workers never call back into Python.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from zlbfast import _native
from zlbfast.config import validate
from zlbfast.identity import IdentityFiles, IdentityWatcher
from zlbfast.model import AuthzRule, Cluster, ClusterTls, Config, Listener, ListenerTls, PeerMatch, Route

tls_log = logging.getLogger("zlbfast.tls")

# TLS events of one kind logged one by one per drain (about a second); the rest of that kind get one summary line.
# A scan or a misconfigured client can fail thousands of handshakes a second: the counters count every one, the
# log shows what they look like without drowning everything else.
TLS_LOG_LINES_PER_DRAIN = 20

# The heap is trimmed after an apply at most this often (seconds): the first apply's trim returns startup's
# garbage; a control plane pushing many updates a second should not pay for a heap walk on each.
HEAP_TRIM_INTERVAL_S = 10.0


class ApplyError(Exception):
    """The new configuration could not be installed; the previous one stays active."""


@dataclass
class _InstalledListener:
    spec: Listener
    native_id: int
    port: int


def _tls_log_level(event: str) -> int:
    return logging.DEBUG if event.endswith("verified") else logging.WARNING


def default_workers() -> int:
    """Workers to run when the config says 0: one per CPU this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _add_route(table: _native.RouteTable, vh: int, route: Route, cluster_index: dict[str, int]) -> None:
    rt = table.add_route(vh, route.name, route.path_kind, route.path)
    for is_query, matches in ((False, route.headers), (True, route.query)):
        for m in matches:
            table.add_match(vh, rt, is_query, m.name, m.kind, m.value, m.invert)
    if route.peer is not None:
        # The router matches an exact ID or an ID prefix; a trust domain is the prefix of its IDs.
        kind, value = route.peer.kind, route.peer.value
        if kind == "trust_domain":
            kind, value = "spiffe_prefix", f"spiffe://{value.removeprefix('spiffe://')}/"
        table.set_peer(vh, rt, "exact" if kind == "spiffe_id" else "prefix", value)
    for wc in route.clusters:
        table.add_cluster(vh, rt, cluster_index[wc.name], wc.weight)
    if route.direct_status:
        table.set_direct(vh, rt, route.direct_status, route.direct_body)
    if route.redirect is not None:
        r = route.redirect
        table.set_redirect(vh, rt, r.status, r.scheme, r.host, r.path)
    if route.prefix_rewrite or route.host_rewrite:
        table.set_rewrite(vh, rt, route.prefix_rewrite, route.host_rewrite)
    ops = route.header_ops
    for op, pairs in (("request_add", ops.request_add), ("request_set", ops.request_set),
                      ("response_add", ops.response_add), ("response_set", ops.response_set)):
        for name, value in pairs:
            table.add_header_op(vh, rt, op, name, value)
    for op, names in (("request_remove", ops.request_remove), ("response_remove", ops.response_remove)):
        for name in names:
            table.add_header_op(vh, rt, op, name)
    if route.hash_on:
        table.set_hash(vh, rt, route.hash_on, route.hash_name)
    p = route.retry
    table.set_policy(vh, rt, route.timeout_ms, p.retry_on, p.num_retries, p.per_try_timeout_ms,
                     p.retriable_status_codes, p.retry_non_idempotent, p.backoff_base_ms, p.backoff_max_ms)


def _route_table(listener: Listener, cluster_index: dict[str, int]) -> _native.RouteTable:
    """The listener's virtual hosts as a native route table named after the listener."""
    table = _native.RouteTable(listener.name, listener.match_host_port)
    for vhost in listener.virtual_hosts:
        vh = table.add_vhost(vhost.name, vhost.domains)
        for route in vhost.routes:
            _add_route(table, vh, route, cluster_index)
    return table


def _same_socket(a: Listener, b: Listener) -> bool:
    """Whether b runs on a's listening sockets: everything but the routing (in the snapshot) is the same."""
    return replace(a, virtual_hosts=(), match_host_port=False) == replace(b, virtual_hosts=(), match_host_port=False)


def _add_cluster(builder: _native.SnapshotBuilder, cluster: Cluster) -> None:
    idx = builder.add_cluster(
        cluster.name,
        cluster.policy,
        connect_timeout_ms=cluster.connect_timeout_ms,
        connect_retries=cluster.connect_retries,
        panic_threshold=cluster.panic_threshold,
        ring_size=cluster.ring_size,
        maglev_table_size=cluster.maglev_table_size,
        overprovisioning=cluster.overprovisioning,
        ewma_decay_ms=cluster.ewma_decay_ms,
        consecutive_failures=cluster.outlier.consecutive_failures,
        base_ejection_ms=cluster.outlier.base_ejection_time_ms,
        max_ejection_ms=cluster.outlier.max_ejection_time_ms,
        max_ejection_percent=cluster.outlier.max_ejection_percent,
        max_connections=cluster.circuit_breakers.max_connections,
        max_pending_requests=cluster.circuit_breakers.max_pending_requests,
        max_requests=cluster.circuit_breakers.max_requests,
        max_retries=cluster.circuit_breakers.max_retries,
        retry_budget_percent=cluster.circuit_breakers.retry_budget_percent,
        min_retry_concurrency=cluster.circuit_breakers.min_retry_concurrency,
        tcp_congestion=cluster.tcp_congestion,
    )
    builder.add_endpoints(idx, cluster.endpoints)


def _peer(match: PeerMatch | None) -> tuple[str, str] | None:
    return None if match is None else (match.kind, match.value)


def _rules(rules: tuple[AuthzRule, ...]) -> list[dict[str, object]]:
    return [{"peer": _peer(r.peer), "ports": list(r.ports), "methods": list(r.methods),
             "paths": [(p.kind, p.value) for p in r.paths]} for r in rules]  # fmt: skip


def _tls_options(tls: ListenerTls | ClusterTls, identity: str, protocol: str = "tcp") -> dict[str, object]:
    """The native TLS options (see _tls_opts in zlbfast/_native.pyx) of a listener or cluster tls section. An http
    listener offers ALPN http/1.1 (the only protocol it speaks) unless its section says otherwise."""
    alpn = list(tls.alpn) or (["http/1.1"] if protocol == "http" else [])
    opts: dict[str, object] = {"identity": identity, "min_version": tls.min_version, "alpn": alpn,
                               "peer": _peer(tls.peer)}
    if isinstance(tls, ListenerTls):
        opts.update(mode=tls.mode, allow=_rules(tls.allow), deny=_rules(tls.deny),
                    handshake_timeout_ms=tls.handshake_timeout_ms)
    else:
        opts["sni"] = tls.sni
    return opts


class Engine:
    """A running data plane: worker threads plus the configuration applied to them."""

    def __init__(self, workers: int = 0, seed: int = 0x5EED) -> None:
        self.native = _native.NativeEngine(workers or default_workers(), seed)
        self.config: Config | None = None
        self._trimmed_at: float | None = None  # time.monotonic() of the last heap trim
        self._listeners: dict[str, _InstalledListener] = {}
        self._watchers: dict[str, IdentityWatcher] = {}
        self._tls_stop: asyncio.Event | None = None
        self._tls_task: asyncio.Task[None] | None = None
        self.identity_poll_s = 1.0

    # -- identities (TLS) ----------------------------------------------------

    def set_identity(self, name: str, cert_pem: str | bytes, key_pem: str | bytes,
                     bundles: Mapping[str, str | bytes]) -> None:
        """Installs or rotates identity `name` (SVID chain PEM, key PEM, trust bundles {trust_domain: PEM},
        "" = the SVID's own trust domain). New handshakes use it at once; established connections are untouched.
        The file watcher and the SDS client both come through here. Raises NativeError (never quoting the key)."""
        self.native.set_identity(name, cert_pem, key_pem, dict(bundles))

    def identity_info(self, name: str) -> dict[str, object] | None:
        """SPIFFE ID, leaf serial (hex) and rotation count of an installed identity."""
        return self.native.identity_info(name)

    def use_identity_files(self, files: IdentityFiles) -> str:
        """Loads an identity from files (once per distinct set of paths) and keeps watching it while an asyncio
        loop runs; returns the identity name that TLS options refer to."""
        watcher = self._watchers.get(files.name)
        if watcher is None:
            watcher = IdentityWatcher(self, files, interval_s=self.identity_poll_s)
            watcher.load()
            self._watchers[files.name] = watcher
        self._ensure_tls_task()
        return files.name

    def poll_identities(self) -> int:
        """One synchronous poll of every watched identity; returns how many rotated."""
        return sum(1 for w in list(self._watchers.values()) if w.poll())

    def tls_events(self) -> list[dict[str, object]]:
        """Drains TLS events from the workers and logs them (failures and denials at WARNING with the peer's
        address and SPIFFE ID, verified peers at DEBUG): the first TLS_LOG_LINES_PER_DRAIN of each kind one by
        one, then one line saying how many more of that kind there were."""
        events = self.native.drain_tls_events()
        seen: collections.Counter[str] = collections.Counter()
        for ev in events:
            kind = str(ev["event"])
            seen[kind] += 1
            if seen[kind] <= TLS_LOG_LINES_PER_DRAIN:
                tls_log.log(_tls_log_level(kind), "tls %s listener=%s cluster=%s peer=%s peer_id=%s cause=%s: %s",
                            kind, ev["listener"], ev["cluster"], ev["peer_address"], ev["peer_id"] or "-",
                            ev["cause"] or "-", ev["reason"])
        for kind, n in seen.items():
            if n > TLS_LOG_LINES_PER_DRAIN:
                tls_log.log(_tls_log_level(kind), "tls %s: %d more not logged one by one (the counters have them all)",
                            kind, n - TLS_LOG_LINES_PER_DRAIN)
        return events

    def _ensure_tls_task(self) -> None:
        """Starts the identity watchers + TLS event logger on the running loop, if there is one (zlbfast run)."""
        if self._tls_task is not None and not self._tls_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tests, tools): callers poll themselves
        self._tls_stop = asyncio.Event()
        self._tls_task = loop.create_task(self._tls_loop(self._tls_stop))

    async def _tls_loop(self, stop: asyncio.Event) -> None:
        self.native.set_tls_log_peers(tls_log.isEnabledFor(logging.DEBUG))
        while not stop.is_set():
            self.poll_identities()
            self.tls_events()
            try:
                await asyncio.wait_for(stop.wait(), self.identity_poll_s)
            except asyncio.TimeoutError:
                pass

    # -- configuration -------------------------------------------------------

    def _publish(self, cfg: Config) -> None:
        builder = _native.SnapshotBuilder(self.native, cfg.local_zone)
        try:
            for cluster in cfg.clusters:
                _add_cluster(builder, cluster)
            cluster_index = {c.name: i for i, c in enumerate(cfg.clusters)}
            for listener in cfg.listeners:
                if listener.protocol == "http":
                    builder.add_route_table(_route_table(listener, cluster_index))
            self.native.publish(builder)
        except _native.NativeError as exc:
            raise ApplyError(f"{cfg.source}: {exc}") from exc

    def apply(self, cfg: Config) -> None:
        """Installs cfg. Established connections are untouched; on any error
        the previous configuration stays fully active and ApplyError is raised."""
        validate(cfg)
        previous = self.config
        try:
            listener_tls = self._apply_identities(cfg)
        except (OSError, _native.NativeError) as exc:
            raise ApplyError(f"{cfg.source}: {exc}") from exc
        self._publish(cfg)
        self._apply_cluster_tls(cfg, previous)
        added: dict[str, _InstalledListener] = {}
        kept: list[tuple[_InstalledListener, Listener]] = []
        try:
            for spec in cfg.listeners:
                current = self._listeners.get(spec.name)
                if current is not None and _same_socket(current.spec, spec):
                    # Routes live in the snapshot just published (looked up by listener name for every
                    # request), so a listener whose routes alone changed keeps its sockets and connections.
                    kept.append((current, spec))
                    continue
                # With SO_REUSEPORT the replacement binds next to the old socket,
                # so a changed listener never stops accepting.
                lid = self.native.add_listener(
                    spec.name,
                    spec.cluster,
                    spec.address,
                    spec.port,
                    max_connections=spec.max_connections,
                    idle_timeout_ms=spec.idle_timeout_ms,
                    http=asdict(spec.http) if spec.protocol == "http" else None,
                    tls=listener_tls.get(spec.name),
                    tcp_congestion=spec.tcp_congestion,
                )
                added[spec.name] = _InstalledListener(spec, lid, self.native.listener_port(lid))
        except _native.NativeError as exc:
            for inst in added.values():
                self.native.remove_listener(inst.native_id)
            if previous is not None:
                self._publish(previous)
            raise ApplyError(f"{cfg.source}: {exc}") from exc
        wanted = {spec.name for spec in cfg.listeners}
        for name, inst in list(self._listeners.items()):
            if name not in wanted or name in added:
                self.native.remove_listener(inst.native_id)
                del self._listeners[name]
        self._listeners.update(added)
        for inst, spec in kept:
            inst.spec = spec
        self.config = cfg
        self._trim_heap()

    def _trim_heap(self) -> None:
        """Returns free heap pages to the OS after an apply, at most every HEAP_TRIM_INTERVAL_S."""
        now = time.monotonic()
        if self._trimmed_at is None or now - self._trimmed_at >= HEAP_TRIM_INTERVAL_S:
            self._trimmed_at = now
            _native.trim_heap()

    def _apply_identities(self, cfg: Config) -> dict[str, dict[str, object]]:
        """Loads every identity the config names (files read once per distinct path set) and returns the native
        TLS options of each TLS listener. Raises OSError or NativeError before anything is changed."""
        out: dict[str, dict[str, object]] = {}
        for listener in cfg.listeners:
            if listener.tls is not None:
                out[listener.name] = _tls_options(listener.tls, self._use_identity(listener.tls), listener.protocol)
        for cluster in cfg.clusters:
            if cluster.tls is not None:
                self._use_identity(cluster.tls)
        return out

    def _use_identity(self, tls: ListenerTls | ClusterTls) -> str:
        """The identity a tls section names: installed by its source (SDS), or loaded from its files."""
        return tls.identity or self.use_identity_files(IdentityFiles(tls.cert, tls.key, tls.bundle))

    def _apply_cluster_tls(self, cfg: Config, previous: Config | None) -> None:
        """Upstream TLS per cluster name; clusters that lost their tls section go back to plaintext."""
        for cluster in cfg.clusters:
            t = cluster.tls
            if t is not None:
                name = t.identity or IdentityFiles(t.cert, t.key, t.bundle).name
                self.native.set_cluster_tls(cluster.name, _tls_options(t, name))
        now_tls = {c.name for c in cfg.clusters if c.tls is not None}
        for cluster in previous.clusters if previous is not None else ():
            if cluster.tls is not None and cluster.name not in now_tls:
                self.native.set_cluster_tls(cluster.name, None)

    # -- inspection ----------------------------------------------------------

    def listener_port(self, name: str) -> int:
        return self._listeners[name].port

    def listener_addresses(self) -> dict[str, tuple[str, int]]:
        return {name: (inst.spec.address, inst.port) for name, inst in self._listeners.items()}

    def stats(self) -> dict[str, int]:
        return dict(self.native.stats())

    def endpoints(self) -> dict[str, list[dict[str, object]]]:
        return dict(self.native.endpoints())

    def active_connections(self) -> int:
        return int(self.native.stats()["conns_active"])

    # -- shutdown --------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Closes every listener; open connections continue."""
        for inst in self._listeners.values():
            self.native.remove_listener(inst.native_id)
        self._listeners.clear()

    def wait_idle(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Blocks until no connection is open or the deadline passes; True when idle."""
        deadline = time.monotonic() + timeout_s
        while self.active_connections() > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True

    def close(self) -> None:
        """Stops workers; connections still open are reset."""
        if self._tls_stop is not None:
            self._tls_stop.set()
        if self._tls_task is not None and not self._tls_task.done():
            self._tls_task.cancel()
        self.native.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
