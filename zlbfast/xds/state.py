"""The xDS pipeline: accepted resources -> one zlbfast.model.Config -> Engine.apply, plus the on-disk cache.

Every transport (ADS state-of-the-world and delta, REST polling, watched files, the cache itself) hands
whole responses to ``Pipeline.update``. An update is all-or-nothing: the resources are translated, the new
config is composed and applied to the engine, and only then is the new state committed. Any failure raises
ResourceError (or ApplyError) and leaves the previous state both stored and running, which is what a NACK
promises the control plane.

Threading: one asyncio thread owns a Pipeline and its Engine.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from google.protobuf import any_pb2

from zlbfast import _native, model
from zlbfast.config import ConfigError
from zlbfast.runtime import ApplyError, Engine
from zlbfast.xds import resources as r
from zlbfast.xds.listeners import ListenerSpec, translate_listener
from zlbfast.xds.routes import RouteTable, translate_route

log = logging.getLogger("zlbfast.xds")

# Order in which a cached state is replayed: endpoints before the clusters that wait for them, clusters
# before the listeners that name them, listeners before the RouteConfigurations they name (which are kept only
# while a listener names them). Secrets are never cached (no private key is written to disk): after a
# restart they come from the control plane again.
REPLAY_ORDER = (r.ENDPOINT, r.CLUSTER, r.LISTENER, r.ROUTE)
# Types whose state-of-the-world responses list every resource (absence means removal); for the others a
# response only carries the named resources it updates.
FULL_STATE_TYPES = (r.LISTENER, r.CLUSTER)

CACHE_FILE = "xds-state.json"
CACHE_FORMAT = 1


@dataclass
class _TypeState:
    version: str = ""
    raw: dict[str, bytes] = field(default_factory=dict)  # name -> serialized resource, for the cache
    resource_versions: dict[str, str] = field(default_factory=dict)  # delta xDS per-resource versions


@dataclass(frozen=True)
class Static:
    """Resources from the bootstrap's static_resources: always present, never replaced by xDS."""

    clusters: dict[str, r.ClusterSpec]
    listeners: dict[str, ListenerSpec]
    local_zone: str = ""
    workers: int = 0


Material = tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]  # cert chain, key, sorted (trust domain, bundle)


def identity_bundles(secrets: dict[str, r.SecretSpec]) -> dict[str, bytes]:
    """Trust bundles by trust domain ("" = the SVID's own) from the validation_context secrets."""
    out: dict[str, bytes] = {}
    for name in sorted(secrets):
        s = secrets[name]
        if s.certificate_chain:
            continue
        td = name[len("spiffe://"):] if name.startswith("spiffe://") else ""
        out[td] = out.get(td, b"") + s.trusted_ca
    return out


def identity_material(s: r.SecretSpec, bundles: dict[str, bytes]) -> Material | None:
    """What Engine.set_identity gets for a tls_certificate secret; None without any bundle."""
    if not bundles:
        return None
    return s.certificate_chain, s.private_key, tuple(sorted(bundles.items()))


def pair_material(secrets: dict[str, r.SecretSpec], ref: r.SdsRef) -> Material | None:
    """The identity of a TLS context (listener or cluster): its tls_certificate secret, trusting exactly the bundle
    of its validation context secret (for the trust domain the secret's name gives, as identity_bundles does), as
    Envoy trusts only the validation context it names. None until both secrets are here and of the right kinds."""
    cert, validation = secrets.get(ref.certificate), secrets.get(ref.validation)
    if cert is None or validation is None or not cert.certificate_chain or validation.certificate_chain:
        return None
    return cert.certificate_chain, cert.private_key, tuple(identity_bundles({ref.validation: validation}).items())


class Cache:
    """The last accepted state on disk, written atomically (temp file + fsync + rename)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, CACHE_FILE)

    def load(self) -> dict[str, _TypeState] | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("xDS cache %s is unreadable, ignoring it: %s", self.path, exc)
            return None
        if data.get("format") != CACHE_FORMAT:
            log.error("xDS cache %s has format %r, expected %d; ignoring it", self.path, data.get("format"),
                      CACHE_FORMAT)
            return None
        out: dict[str, _TypeState] = {}
        for type_url, entry in data["types"].items():
            raw = {name: base64.b64decode(blob) for name, blob in entry["resources"].items()}
            out[type_url] = _TypeState(entry["version"], raw, dict(entry.get("resource_versions", {})))
        return out

    def save(self, types: dict[str, _TypeState]) -> None:
        data = {
            "format": CACHE_FORMAT,
            "saved_at": time.time(),
            "types": {
                t: {"version": s.version, "resource_versions": s.resource_versions,
                    "resources": {n: base64.b64encode(b).decode() for n, b in s.raw.items()}}
                for t, s in types.items()
            },
        }
        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".xds-state.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        # The rename itself must reach the disk, or a crash could bring back the previous file.
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Pipeline:
    def __init__(self, engine: Engine, static: Static, *, cache: Cache | None = None,
                 initial_fetch_timeout_s: float = 15.0, source: str = "xDS") -> None:
        self.engine = engine
        self.static = static
        self.cache = cache
        self.initial_fetch_timeout_s = initial_fetch_timeout_s
        self.source = source
        self.types: dict[str, _TypeState] = {t: _TypeState() for t in r.MESSAGE_TYPES}
        self.clusters: dict[str, r.ClusterSpec] = {}
        self.assignments: dict[str, r.Assignment] = {}
        self.listeners: dict[str, ListenerSpec] = {}
        self.routes: dict[str, RouteTable] = {}
        self.secrets: dict[str, r.SecretSpec] = {}
        # Identities installed from secrets: name -> (cert, key, ((trust domain, bundle), ...)).
        self._identities: dict[str, Material] = {}
        # Installed (composed) clusters by name, reused while neither spec nor assignment changes so that
        # unchanged clusters keep their identity (validation and memory, see resources.py).
        self._composed: dict[str, tuple[r.ClusterSpec, r.Assignment | None, model.Cluster]] = {}
        self._warm_deadline: dict[str, float] = {}  # EDS cluster -> monotonic time it stops waiting
        # RouteConfiguration not received yet -> monotonic time its listeners stop waiting for it (0.0: passed).
        self._route_deadline: dict[str, float] = {}
        self._warm_timer: asyncio.TimerHandle | None = None
        self._stand_ins: set[str] = set()  # clusters routes name that are not installed (see _compose)
        self._save_task: asyncio.Task[None] | None = None
        self._save_again = False
        self._replaying = False
        # Metrics (see state()).
        self.connected = False
        self.serving_from_cache = False
        self.nacks = 0
        self.updates = 0
        self.last_error = ""
        self.last_update_s = 0.0

    # -- metrics -------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What an operator needs to know about the control-plane connection (gauges and counters)."""
        return {
            "connected": self.connected,
            "serving_from_cache": self.serving_from_cache,
            "last_version": {r.KIND[t]: s.version for t, s in self.types.items() if s.version},
            "nacks": self.nacks,
            "updates": self.updates,
            "last_error": self.last_error,
            "warming_clusters": sorted(self.warming()),
            "waiting_for_secrets": sorted(self.waiting_for_secrets()),
            "waiting_for_routes": sorted(self.waiting_for_routes()),
            "clusters": len(self.clusters) + len(self.static.clusters),
            "listeners": len(self.listeners) + len(self.static.listeners),
            "endpoints": sum(len(a.endpoints) for a in self.assignments.values()),
        }

    def warming(self) -> set[str]:
        """EDS clusters waiting for their first endpoints, within their initial fetch timeout."""
        now = time.monotonic()
        return {n for n, spec in self.clusters.items() if spec.eds_name and spec.eds_name not in self.assignments
                and self._warm_deadline.get(n, 0.0) > now}

    def waiting_for_secrets(self) -> set[str]:
        """Listeners and clusters ("listener NAME", "cluster NAME") whose TLS identity is not installed yet."""
        out: set[str] = set()
        for kind, specs in (("listener", self._all_listeners()), ("cluster", self._all_clusters())):
            out.update(f"{kind} {n}" for n, spec in specs.items() if not self._tls_ready(spec))
        return out

    def waiting_for_routes(self) -> set[str]:
        """HTTP listeners whose RouteConfiguration has not arrived, within its initial fetch timeout (warming)."""
        return {n for n, spec in self._all_listeners().items()
                if spec.rds is not None and spec.rds not in self.routes and not self._routes_timed_out(spec.rds)}

    def _routes_timed_out(self, rds: str) -> bool:
        deadline = self._route_deadline.get(rds)
        return deadline is not None and deadline <= time.monotonic()

    def route_names(self) -> set[str]:
        """The RouteConfigurations that HTTP listeners name (RDS, to subscribe to)."""
        return {spec.rds for spec in self._all_listeners().values() if spec.rds}

    def secret_names(self) -> set[str]:
        """The Secrets the TLS contexts of listeners and clusters name (to subscribe to)."""
        return {n for ref in self._sds_refs({}) for n in (ref.certificate, ref.validation)}

    def _all_listeners(self, staged: dict[str, dict[str, Any]] | None = None) -> dict[str, ListenerSpec]:
        return {**self.static.listeners, **(staged or {}).get(r.LISTENER, self.listeners)}

    def _all_clusters(self, staged: dict[str, dict[str, Any]] | None = None) -> dict[str, r.ClusterSpec]:
        return {**self.static.clusters, **(staged or {}).get(r.CLUSTER, self.clusters)}

    def _sds_refs(self, staged: dict[str, dict[str, Any]]) -> set[r.SdsRef]:
        specs: list[ListenerSpec | r.ClusterSpec] = [*self._all_listeners(staged).values(),
                                                        *self._all_clusters(staged).values()]
        return {spec.sds for spec in specs if spec.sds is not None}

    def _tls_ready(self, spec: ListenerSpec | r.ClusterSpec) -> bool:
        return spec.sds is None or spec.sds.identity in self._identities

    def eds_names(self) -> set[str]:
        specs = list(self.clusters.values()) + list(self.static.clusters.values())
        return {s.eds_name for s in specs if s.eds_name}

    def version(self, type_url: str) -> str:
        return self.types[type_url].version

    def resource_versions(self, type_url: str) -> dict[str, str]:
        return dict(self.types[type_url].resource_versions)

    # -- updates ---------------------------------------------------------------

    def update(self, type_url: str, version: str, resources: Sequence[any_pb2.Any], removed: Sequence[str] = (),
               *, full_state: bool, resource_versions: dict[str, str] | None = None) -> None:
        """Applies one response. Raises ResourceError/ApplyError (the NACK message) and keeps the old state."""
        # A full collection of the cyclic GC takes ~10 ms once a large configuration (and grpc, protobuf) is
        # loaded; an update allocates enough (composed clusters, the config, exact-path endpoints) to set one
        # off now and then, which would land in the update's latency. It runs after the snapshot is published.
        paused = gc.isenabled()
        gc.disable()
        try:
            self._update(type_url, version, resources, removed, full_state, resource_versions or {})
        except (r.ResourceError, ApplyError) as exc:
            self.nacks += 1
            self.last_error = str(exc)
            log.error("rejected %s version %r, keeping the previous state: %s", r.KIND[type_url], version, exc)
            raise
        finally:
            if paused:
                gc.enable()

    def _update(self, type_url: str, version: str, resources: Sequence[any_pb2.Any], removed: Sequence[str],
                full_state: bool, resource_versions: dict[str, str]) -> None:
        kind = r.KIND[type_url]
        state = self.types[type_url]
        if type_url == r.ROUTE and removed:
            removed = self._route_removals(removed)
        raw = {} if full_state else dict(state.raw)
        rversions = {} if full_state else dict(state.resource_versions)
        # A state-of-the-world response repeats every resource, and most are byte for byte what is installed (an
        # EDS push for one cluster among 1,000): those keep their translation, so their clusters keep their
        # identity and are neither rebuilt nor validated again.
        table = self._table(type_url)
        installed = {blob: name for name, blob in state.raw.items() if name in table}
        decoded: dict[str, Any] = {}  # name -> message, None for a resource identical to the installed one
        for res in resources:
            name = installed.get(res.value) if res.type_url == type_url else None
            msg = None
            if name is None:
                msg = r.unpack(type_url, res)
                name = r.resource_name(msg)
            if name in decoded:
                raise r.ResourceError(kind, name, "name", "appears twice in one response")
            decoded[name] = msg
            raw[name] = res.value
            if name in resource_versions:
                rversions[name] = resource_versions[name]
        for name in removed:
            raw.pop(name, None)
            rversions.pop(name, None)

        new = {} if full_state else dict(table)
        for name in removed:
            new.pop(name, None)
        for name, msg in decoded.items():
            new[name] = table[name] if msg is None else self._translate(type_url, msg)
        if type_url == r.CLUSTER:
            for name in new:
                if name in self.static.clusters:
                    raise r.ResourceError(kind, name, "name", "a static cluster of the bootstrap cannot be replaced")
        if type_url == r.LISTENER:
            for name in new:
                if name in self.static.listeners:
                    raise r.ResourceError(kind, name, "name", "a static listener of the bootstrap cannot be replaced")
        if type_url in (r.ROUTE, r.LISTENER):
            # Envoy's validate_clusters: judged against the clusters known when the table arrives.
            known = self._all_clusters().keys()
            for name, msg in decoded.items():
                routes = new[name] if type_url == r.ROUTE else new[name].routes
                if msg is not None and routes is not None:
                    routes.check_clusters(known)

        if type_url == r.SECRET:
            # SDS: secrets change identities of the data plane, not the model.
            self._install_identities(new, self._sds_refs({}))
            if not identity_bundles(new):
                for name in sorted(n for n, spec in new.items() if spec.certificate_chain):
                    log.warning("SDS secret %s waits for a validation_context secret (trust bundle)", name)
        else:
            staged = {type_url: new}
            if type_url in (r.LISTENER, r.CLUSTER):
                # TLS contexts that name Secrets this proxy holds already get their identity before they apply.
                self._install_identities(self.secrets, self._sds_refs(staged))
            self._apply(self._compose(staged))

        # Commit.
        table.clear()
        table.update(new)
        if type_url == r.CLUSTER:
            self._track_warming()
        if type_url in (r.LISTENER, r.ROUTE):
            self._track_route_warming()
        state.version = version
        state.raw = raw
        state.resource_versions = rversions
        if type_url == r.LISTENER:
            self._drop_unnamed_routes()
        self.updates += 1
        self.last_update_s = time.monotonic()
        self._schedule_save()
        if type_url == r.SECRET:
            self._activate_waiting()

    def _route_removals(self, removed: Sequence[str]) -> list[str]:
        """The delta RDS removals to carry out. Like Envoy, which ignores them (rds_route_config_subscription.cc),
        a RouteConfiguration that a listener still names is kept: the listener keeps serving its routes."""
        named = self.route_names()
        for name in sorted(set(removed) & named):
            log.warning("the control plane removed RouteConfiguration %s, which a listener still names; keeping it",
                        name)
        return [n for n in removed if n not in named]

    def _drop_unnamed_routes(self) -> None:
        """Forgets RouteConfigurations no listener names any more (the subscription ends with them), so that a
        listener naming one again waits for a fresh copy rather than reviving a stale one."""
        named = self.route_names()
        state = self.types[r.ROUTE]
        for name in [n for n in self.routes if n not in named]:
            del self.routes[name]
            state.raw.pop(name, None)
            state.resource_versions.pop(name, None)

    def _apply(self, cfg: model.Config) -> None:
        """Engine.apply; raises ApplyError (a NACK) and the engine keeps the previous config. The model's
        validation has the last word on values the translators pass through (a zone with a space, say): its
        ConfigError is a NACK too, not an error that would end the stream."""
        try:
            self.engine.apply(cfg)
        except ConfigError as exc:
            raise ApplyError(str(exc)) from exc

    def _table(self, type_url: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {r.LISTENER: self.listeners, r.ROUTE: self.routes, r.CLUSTER: self.clusters,
                r.ENDPOINT: self.assignments, r.SECRET: self.secrets}
        return tables[type_url]

    @staticmethod
    def _translate(type_url: str, msg: Any) -> Any:
        if type_url == r.CLUSTER:
            return r.translate_cluster(msg)
        if type_url == r.ENDPOINT:
            # unpack translated the common case already (csrc/eds.c).
            return msg if isinstance(msg, r.Assignment) else r.translate_assignment(msg)
        if type_url == r.LISTENER:
            return translate_listener(msg)
        if type_url == r.ROUTE:
            return translate_route(msg)
        return r.translate_secret(msg)

    # -- SDS: secrets -> identities of the TLS data plane -------------------------

    def _install_identities(self, secrets: dict[str, r.SecretSpec], refs: set[r.SdsRef]) -> None:
        """Installs or rotates the engine identities made of `secrets`, through Engine.set_identity (the same call
        as the file watcher):

        * one per tls_certificate secret, named after the secret, whose trust bundles are all the
          validation_context secrets: one named `spiffe://<trust domain>` is that trust domain's bundle (SPIRE's
          federated bundles), any other (SPIRE's "ROOTCA") is the SVID's own trust domain. It waits while no
          validation context is known. (For native listeners and clusters that name an identity.)
        * one per pair of secrets that a listener's or cluster's TLS context names (`refs`, see pair_material),
          named SdsRef.identity; the listener or cluster waits until it is installed.

        All or nothing: when one identity is refused (key does not match the certificate, no SPIFFE ID, a bundle
        does not parse) those already rotated by this call get their previous material back, and ResourceError
        (the NACK) names the secret."""
        bundles = identity_bundles(secrets)
        wanted = {name: identity_material(s, bundles) for name, s in secrets.items() if s.certificate_chain}
        blame = {name: (name, "") for name in wanted}
        for ref in refs:
            wanted[ref.identity] = pair_material(secrets, ref)
            blame[ref.identity] = (ref.certificate, f"with validation context {ref.validation!r}: ")
        changed = [name for name, m in wanted.items() if m is not None and self._identities.get(name) != m]
        done: list[str] = []
        for name in changed:
            material = wanted[name]
            assert material is not None
            try:
                self.engine.set_identity(name, material[0], material[1], dict(material[2]))
            except _native.NativeError as exc:
                for prev_name in done:
                    prev = self._identities.get(prev_name)
                    if prev is not None:  # a new identity stays installed, unused: nothing refers to it yet
                        self.engine.set_identity(prev_name, prev[0], prev[1], dict(prev[2]))
                secret, detail = blame[name]
                raise r.ResourceError("Secret", secret, "tls_certificate", f"{detail}{exc}") from exc
            done.append(name)
        for name in done:
            material = wanted[name]
            assert material is not None
            self._identities[name] = material
            info = self.engine.identity_info(name) or {}
            log.info("SDS identity %s installed: %s serial %s", name, info.get("spiffe_id"), info.get("serial"))

    def _activate_waiting(self) -> None:
        """After new Secrets: listeners and clusters that waited for their identities apply now. Their problems
        are theirs, not the Secrets' (which are accepted): logged, and they wait for the next update."""
        cfg = self._compose({})
        if cfg == self.engine.config:
            return
        try:
            self._apply(cfg)
        except ApplyError as exc:
            log.error("could not activate listeners or clusters that waited for Secrets: %s", exc)

    # -- composing the model ---------------------------------------------------

    def _compose(self, staged: dict[str, dict[str, Any]]) -> model.Config:
        clusters = self._all_clusters(staged)
        assignments: dict[str, r.Assignment] = staged.get(r.ENDPOINT, self.assignments)
        listeners = self._all_listeners(staged)
        now = time.monotonic()
        installed: dict[str, model.Cluster] = {}
        for name, spec in clusters.items():
            if not self._tls_ready(spec):
                # Warming for its Secrets, like Envoy's; the version it replaces (if any) keeps serving.
                previous = self._composed.get(name)
                if previous is not None:
                    installed[name] = previous[2]
                continue
            assignment = assignments.get(spec.eds_name) if spec.eds_name else None
            if spec.eds_name and assignment is None:
                previous = self._composed.get(name)
                deadline = self._warm_deadline.get(name)
                if previous is not None and previous[0] == spec:
                    installed[name] = previous[2]  # unchanged cluster whose assignment is being refetched
                    continue
                if deadline is None or now < deadline:
                    # Warming: a new or changed EDS cluster waits for its endpoints; the version it replaces
                    # (if any) keeps serving meanwhile, like Envoy's cluster warming.
                    if previous is not None:
                        installed[name] = previous[2]
                    continue
            installed[name] = self._cluster_for(name, spec, assignment)
        running = {lst.name: lst for lst in self.engine.config.listeners} if self.engine.config else {}
        ready = []
        routes: dict[str, RouteTable] = staged.get(r.ROUTE, self.routes)
        for name, lspec in sorted(listeners.items()):
            listener = lspec.listener
            # An HTTP listener's routes: inline, or its RouteConfiguration (None while that has not arrived).
            table = lspec.routes if lspec.rds is None else routes.get(lspec.rds)
            waits = []
            if lspec.sds is not None and not self._tls_ready(lspec):
                waits.append(f"Secrets {lspec.sds.certificate!r} and {lspec.sds.validation!r}")
            if lspec.rds is not None and table is None:
                if self._routes_timed_out(lspec.rds):
                    table = _no_routes(lspec.rds)
                else:
                    waits.append(f"RouteConfiguration {lspec.rds!r}")
            if waits:
                log.info("listener %s waits for %s", name, " and ".join(waits))
                replaced = running.get(name)  # the version it replaces keeps serving meanwhile
                if replaced is None:
                    continue
                listener = replaced
            elif table is not None and listener.protocol == "http":
                listener = replace(listener, virtual_hosts=table.virtual_hosts, match_host_port=table.match_host_port)
            if listener.protocol == "http" or listener.cluster in installed:
                ready.append(listener)
            else:
                log.info("listener %s waits for cluster %s", name, listener.cluster)
        self._add_stand_ins(ready, installed)
        return model.Config(listeners=tuple(ready), clusters=tuple(installed[n] for n in sorted(installed)),
                            workers=self.static.workers, local_zone=self.static.local_zone, source=self.source)

    def _add_stand_ins(self, listeners: list[model.Listener], installed: dict[str, model.Cluster]) -> None:
        """An HTTP route may name a cluster that is not installed (unknown to CDS, or new and still warming); Envoy
        answers its requests 503 and keeps the listener. An empty cluster of that name stands in for it, which
        answers 503 too ("no healthy upstream"), until the real one is installed."""
        named = {wc.name for lst in listeners for vh in lst.virtual_hosts for rt in vh.routes for wc in rt.clusters}
        stand_ins = named - installed.keys()
        if stand_ins != self._stand_ins:
            if stand_ins:
                log.info("routes name clusters that are not installed, answered 503: %s", ", ".join(sorted(stand_ins)))
            self._stand_ins = stand_ins
        for name in stand_ins:
            installed[name] = model.Cluster(name, ())

    def _cluster_for(self, name: str, spec: r.ClusterSpec, assignment: r.Assignment | None) -> model.Cluster:
        previous = self._composed.get(name)
        if previous is not None and previous[0] is spec and previous[1] is assignment:
            return previous[2]
        cluster = spec.cluster
        if assignment is not None:
            kw: dict[str, Any] = {"endpoints": assignment.endpoints}
            if assignment.overprovisioning is not None:
                kw["overprovisioning"] = assignment.overprovisioning
            cluster = replace(cluster, **kw)
        self._composed[name] = (spec, assignment, cluster)
        return cluster

    def _track_warming(self) -> None:
        """Starts the initial-fetch timer for EDS clusters that have no endpoints yet; drops composed entries
        and assignments of removed clusters."""
        now = time.monotonic()
        for name in list(self._composed):
            if name not in self.clusters and name not in self.static.clusters:
                del self._composed[name]
        wanted = self.eds_names()
        for name in [n for n in self.assignments if n not in wanted]:
            del self.assignments[name]
            self.types[r.ENDPOINT].raw.pop(name, None)
        for name in list(self._warm_deadline):
            if name not in self.clusters:
                del self._warm_deadline[name]
        for name, spec in self.clusters.items():
            if spec.eds_name and spec.eds_name not in self.assignments:
                self._warm_deadline.setdefault(name, now + self.initial_fetch_timeout_s)
        self._arm_warm_timer()

    def _track_route_warming(self) -> None:
        """Starts the initial-fetch timer of each RouteConfiguration that listeners name and that has not arrived
        (the listener's rds config_source initial_fetch_timeout, else the pipeline's; 0 waits for ever), and forgets
        the timers of those that arrived or that no listener names any more."""
        now = time.monotonic()
        waiting: dict[str, float] = {}
        for spec in self._all_listeners().values():
            if spec.rds is not None and spec.rds not in self.routes:
                timeout = self.initial_fetch_timeout_s if spec.rds_fetch_timeout_s is None else spec.rds_fetch_timeout_s
                waiting[spec.rds] = min(timeout, waiting.get(spec.rds, timeout))
        for name in [n for n in self._route_deadline if n not in waiting]:
            del self._route_deadline[name]
        for name, timeout in waiting.items():
            if timeout > 0:
                self._route_deadline.setdefault(name, now + timeout)
        self._arm_warm_timer()

    def _arm_warm_timer(self) -> None:
        if self._warm_timer is not None:
            self._warm_timer.cancel()
            self._warm_timer = None
        now = time.monotonic()
        pending = [self._warm_deadline[n] for n in self.warming()]
        pending += [d for d in self._route_deadline.values() if d > now]
        if pending:
            delay = max(0.0, min(pending) - now)
            self._warm_timer = asyncio.get_running_loop().call_later(delay + 0.001, self._warm_timeout)

    def _warm_timeout(self) -> None:
        self._warm_timer = None
        now = time.monotonic()
        expired = sorted(n for n, d in self._warm_deadline.items() if 0.0 < d <= now)
        for name in expired:
            self._warm_deadline[name] = 0.0  # expired: installed without endpoints, reported once
        # Those whose endpoints came in time are installed already.
        expired = [n for n in expired if self.clusters[n].eds_name not in self.assignments]
        routes = sorted(n for n, d in self._route_deadline.items() if 0.0 < d <= now and n not in self.routes)
        for name in routes:
            self._route_deadline[name] = 0.0  # passed: the listeners serve without routes, reported once
        if expired:
            log.warning("initial fetch timeout: clusters %s start without endpoints", ", ".join(expired))
        if routes:
            log.warning("initial fetch timeout: RouteConfigurations %s have not arrived; the listeners that name "
                        "them start without routes (404 to every request) until they do", ", ".join(routes))
        if expired or routes:
            try:
                self._apply(self._compose({}))
            except ApplyError as exc:
                log.error("could not activate clusters or listeners after the initial fetch timeout: %s", exc)
        self._arm_warm_timer()

    # -- persistence -------------------------------------------------------------

    def load_cache(self) -> bool:
        """Installs the cached state; True when there was one and it applied."""
        if self.cache is None:
            return False
        cached = self.cache.load()
        if not cached:
            return False
        self._replaying = True
        try:
            for type_url in REPLAY_ORDER:
                st = cached.get(type_url)
                if st is None:
                    continue
                anys = [any_pb2.Any(type_url=type_url, value=b) for b in st.raw.values()]
                self._update(type_url, st.version, anys, (), True, st.resource_versions)
        except (r.ResourceError, ApplyError) as exc:
            log.error("xDS cache %s does not apply, ignoring it: %s", self.cache.path, exc)
            return False
        finally:
            self._replaying = False
        self.serving_from_cache = True
        return True

    def _schedule_save(self) -> None:
        if self.cache is None or self._replaying:
            return  # replaying the cache: it already holds this state
        if self._save_task is not None and not self._save_task.done():
            self._save_again = True  # the running writer picks up the latest state when it finishes
            return
        self._save_task = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        assert self.cache is not None
        while True:
            self._save_again = False
            snapshot = {t: _TypeState(s.version, dict(s.raw), dict(s.resource_versions))
                        for t, s in self.types.items() if (s.version or s.raw) and t != r.SECRET}
            try:
                await asyncio.to_thread(self.cache.save, snapshot)
            except OSError as exc:
                log.error("cannot write the xDS cache %s: %s", self.cache.path, exc)
            if not self._save_again:
                return

    async def flush(self) -> None:
        """Waits for pending cache writes (tests and shutdown)."""
        while self._save_task is not None and not self._save_task.done():
            await self._save_task

    def mark_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        log.info("control plane %s", "connected" if connected else "unreachable; keeping the last good state")

    def mark_fresh(self) -> None:
        """The control plane sent state: from now on it, not the cache, is what runs."""
        if self.serving_from_cache:
            log.info("control plane state replaces the cached state")
        self.serving_from_cache = False


def _no_routes(rds: str) -> RouteTable:
    """What a listener serves once its RouteConfiguration's initial fetch timeout has passed without it: every
    request answered 404, as Envoy does with an RDS subscription that has delivered nothing."""
    vhost = model.VirtualHost("rds-not-received", ("*",), (model.Route(direct_status=404),))
    return RouteTable(rds, (vhost,))
