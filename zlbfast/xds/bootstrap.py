"""Envoy v3 bootstrap files (YAML or JSON): node, static_resources and dynamic_resources.

The file is parsed with protobuf's JSON mapping into envoy.config.bootstrap.v3.Bootstrap, so misspelt or
unknown fields are errors exactly as in Envoy. Fields zlbfast does not implement and that would change
behaviour are startup errors naming the field (docs/xds.md lists the supported subset).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2

# Registers the protocol-options type that control-plane clusters carry in an Any, so that the JSON parser can
# read it.
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from zlbfast.config import ConfigError
from zlbfast.xds import resources as r
from zlbfast.xds.listeners import ListenerSpec, translate_listener
from zlbfast.xds.state import Static

# Top-level keys that mark a file as an Envoy bootstrap rather than zlbfast YAML.
_API = config_source_pb2.ApiConfigSource


@dataclass(frozen=True)
class Source:
    """Where dynamic resources come from."""

    kind: str  # "ads", "delta-ads", "rest", "file", "none"
    targets: tuple[tuple[str, int], ...] = ()  # control-plane addresses (ads, rest)
    refresh_s: float = 1.0  # rest
    paths: dict[str, str] = field(default_factory=dict)  # file: type_url -> path
    initial_fetch_timeout_s: float = 15.0


@dataclass(frozen=True)
class Plan:
    node: base_pb2.Node
    static: Static
    source: Source
    path: str


def load(path: str, *, node_id: str = "", node_cluster: str = "", zone: str = "", workers: int = 0) -> Plan:
    """Reads and checks a bootstrap; the keyword arguments override the node (command-line flags)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"invalid YAML/JSON: {exc}") from exc
    return from_dict(data, path, node_id=node_id, node_cluster=node_cluster, zone=zone, workers=workers)


def from_dict(data: Any, source: str, *, node_id: str = "", node_cluster: str = "", zone: str = "",
              workers: int = 0) -> Plan:
    boot = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(data, boot, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ConfigError(source, "", f"not a valid Envoy v3 bootstrap: {exc}") from exc
    _only(boot, "", ("node", "static_resources", "dynamic_resources", "admin"), source)
    node = boot.node
    _only(node, "node", ("id", "cluster", "locality", "metadata", "user_agent_name"), source)
    if node_id:
        node.id = node_id
    if node_cluster:
        node.cluster = node_cluster
    if zone:
        node.locality.zone = zone
    if not node.user_agent_name:
        node.user_agent_name = "zlbfast"
    sr = boot.static_resources
    _only(sr, "static_resources", ("clusters", "listeners", "secrets"), source)
    clusters: dict[str, r.ClusterSpec] = {}
    listeners: dict[str, ListenerSpec] = {}
    # Clusters that only carry control-plane traffic are not data-plane clusters: only their addresses count.
    cp_names = _control_plane_cluster_names(boot)
    targets: dict[str, tuple[tuple[str, int], ...]] = {}
    try:
        for c in sr.clusters:
            if c.name in cp_names:
                targets[c.name] = _control_plane_targets(c)
            else:
                clusters[c.name] = r.translate_cluster(c)
        for lst in sr.listeners:
            spec = translate_listener(lst)
            if spec.routes is not None:
                # Envoy checks an inline route table against the clusters it knows at startup: the static ones.
                spec.routes.check_clusters(clusters)
            listeners[lst.name] = spec
        for s in sr.secrets:
            r.translate_secret(s)
    except r.ResourceError as exc:
        raise ConfigError(source, f"static_resources: {exc.kind} {exc.name!r}: {exc.field}", exc.problem) from exc
    dyn_source = _dynamic(boot, targets, source)
    static = Static(clusters, listeners, node.locality.zone, workers)
    return Plan(node, static, dyn_source, os.fspath(source))


def _only(msg: Any, path: str, allowed: tuple[str, ...], source: str) -> None:
    for fd, _ in msg.ListFields():
        if fd.name not in allowed:
            where = f"{path}.{fd.name}" if path else fd.name
            raise ConfigError(source, where, f"not supported by zlbfast (supported here: {', '.join(allowed)})")


def _control_plane_cluster_names(boot: bootstrap_pb2.Bootstrap) -> set[str]:
    dr = boot.dynamic_resources
    names = {g.envoy_grpc.cluster_name for g in dr.ads_config.grpc_services if g.HasField("envoy_grpc")}
    for cs in (dr.cds_config, dr.lds_config):
        names.update(cs.api_config_source.cluster_names)
    return names


def _control_plane_targets(c: Any) -> tuple[tuple[str, int], ...]:
    """Addresses of a static cluster that leads to the control plane. Its HTTP/2 protocol options are what
    Envoy needs for gRPC; zlbfast's gRPC client speaks HTTP/2 anyway."""
    ctx = r.Ctx("Cluster", c.name)
    ctx.only(c, "", ("name", "type", "connect_timeout", "load_assignment", "typed_extension_protocol_options",
                     "http2_protocol_options"))
    assignment = r.translate_assignment(c.load_assignment, field="load_assignment", owner=ctx)
    return tuple((e.address, e.port) for e in assignment.endpoints)


def _cluster_targets(name: str, targets: dict[str, tuple[tuple[str, int], ...]], path: str,
                     source: str) -> tuple[tuple[str, int], ...]:
    found = targets.get(name)
    if not found:
        raise ConfigError(source, path, f"names cluster {name!r}, which is not a static cluster with endpoints")
    return found


def _dynamic(boot: bootstrap_pb2.Bootstrap, clusters: dict[str, tuple[tuple[str, int], ...]],
             source: str) -> Source:
    if not boot.HasField("dynamic_resources"):
        return Source("none")
    dr = boot.dynamic_resources
    _only(dr, "dynamic_resources", ("lds_config", "cds_config", "ads_config"), source)
    configs = {r.CLUSTER: ("cds_config", dr.cds_config if dr.HasField("cds_config") else None),
               r.LISTENER: ("lds_config", dr.lds_config if dr.HasField("lds_config") else None)}
    kinds: dict[str, str] = {}
    timeout_s = 15.0
    for field_name, cs in configs.values():
        if cs is None:
            continue
        _only(cs, f"dynamic_resources.{field_name}",
              ("ads", "api_config_source", "path_config_source", "path", "initial_fetch_timeout",
               "resource_api_version"), source)
        if cs.HasField("initial_fetch_timeout"):
            timeout_s = r.duration_ms(cs.initial_fetch_timeout) / 1000
        kinds[field_name] = cs.WhichOneof("config_source_specifier") or ""
    if set(kinds.values()) - {"ads", "api_config_source", "path_config_source", "path"}:
        raise ConfigError(source, "dynamic_resources", "each of cds_config/lds_config needs ads, "
                          "api_config_source (REST) or path_config_source")
    if "ads" in kinds.values():
        if set(kinds.values()) != {"ads"}:
            raise ConfigError(source, "dynamic_resources", "mixing ADS with other sources is not supported")
        ads = dr.ads_config
        path = "dynamic_resources.ads_config"
        _only(ads, path, ("api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"),
              source)
        if ads.api_type not in (_API.GRPC, _API.DELTA_GRPC, _API.AGGREGATED_GRPC, _API.AGGREGATED_DELTA_GRPC):
            raise ConfigError(source, f"{path}.api_type", "ADS needs GRPC or DELTA_GRPC")
        if len(ads.grpc_services) != 1 or not ads.grpc_services[0].HasField("envoy_grpc"):
            raise ConfigError(source, f"{path}.grpc_services", "exactly one envoy_grpc service is supported")
        _only(ads.grpc_services[0], f"{path}.grpc_services[0]", ("envoy_grpc", "timeout"), source)
        name = ads.grpc_services[0].envoy_grpc.cluster_name
        targets = _cluster_targets(name, clusters, f"{path}.grpc_services[0].envoy_grpc.cluster_name", source)
        delta = ads.api_type in (_API.DELTA_GRPC, _API.AGGREGATED_DELTA_GRPC)
        return Source("delta-ads" if delta else "ads", targets, initial_fetch_timeout_s=timeout_s)
    if "api_config_source" in kinds.values():
        if set(kinds.values()) != {"api_config_source"}:
            raise ConfigError(source, "dynamic_resources", "mixing REST with other sources is not supported")
        names: set[str] = set()
        refresh_s = 1.0
        for field_name, cs in configs.values():
            if cs is None:
                continue
            api = cs.api_config_source
            path = f"dynamic_resources.{field_name}.api_config_source"
            _only(api, path, ("api_type", "transport_api_version", "cluster_names", "refresh_delay",
                              "request_timeout"), source)
            if api.api_type != _API.REST:
                raise ConfigError(source, f"{path}.api_type", "only REST is supported here; use ads_config for gRPC")
            if len(api.cluster_names) != 1:
                raise ConfigError(source, f"{path}.cluster_names", "exactly one cluster is supported")
            names.add(api.cluster_names[0])
            if api.HasField("refresh_delay"):
                refresh_s = r.duration_ms(api.refresh_delay) / 1000
        if len(names) != 1:
            raise ConfigError(source, "dynamic_resources", "cds_config and lds_config must poll the same cluster")
        name = names.pop()
        targets = _cluster_targets(name, clusters, "dynamic_resources.cds_config.api_config_source.cluster_names",
                                   source)
        return Source("rest", targets, refresh_s, initial_fetch_timeout_s=timeout_s)
    paths = {}
    for type_url, (_field_name, cs) in configs.items():
        if cs is not None:
            paths[type_url] = cs.path_config_source.path if cs.HasField("path_config_source") else cs.path
    return Source("file", paths=paths, initial_fetch_timeout_s=timeout_s)
