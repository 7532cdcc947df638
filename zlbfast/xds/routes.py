"""Envoy v3 RouteConfiguration -> the model's virtual hosts and routes (zlbfast.model.VirtualHost, Route).

The router of csrc/router.c has fewer forms than Envoy's route table, so some Envoy features are rewritten into
forms it has, with the same effect on every request:

* header mutations of the route configuration, the virtual host and the route are folded into each route's
  HeaderOps by running Envoy's evaluation (level by level, in its order: removals, then overwrites, then
  appends) on every header name (zlbfast.xds.route_headers);
* an inverted value match also requires the header, because Envoy never matches a missing header with one, and
  suffix, contains and ignore_case string matchers, and case-insensitive paths, become POSIX regexes
  (zlbfast.xds.route_matches);
* weighted clusters of weight 0 (never picked) are left out, and a cluster listed twice gets the sum;
* a route without a retry policy gets none (zlbfast's default would retry connect failures once), a policy's
  conditions get what Envoy's imply (5xx and gateway-error cover resets and connect failures), and any method
  may be retried, as Envoy does.

Whatever the router cannot do as Envoy does raises ResourceError naming the field (a NACK). Afterwards the model's
own rules (zlbfast.config.validate_virtual_hosts) judge the values the translation passed through.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from zlbfast import model
from zlbfast.config import (
    MAX_DURATION_MS,
    MAX_RETRIABLE_STATUS_CODES,
    MAX_RETRIES,
    MAX_WEIGHT,
    ConfigError,
    validate_virtual_hosts,
)
from zlbfast.xds.resources import Ctx, ResourceError, data_source, duration_ms, join
from zlbfast.xds.route_headers import HeaderLevel, fold_headers, header_level
from zlbfast.xds.route_matches import PathMatch, header_match, path_match, query_match

# Envoy's limit on direct response bodies when max_direct_response_body_size_bytes is not set.
ENVOY_MAX_DIRECT_BODY = 4096
# Envoy's backoff when retry_back_off is not set (the model's defaults are the same).
ENVOY_BACKOFF_BASE_MS = 25

_REDIRECT_CODES = {
    rc.RedirectAction.MOVED_PERMANENTLY: 301,
    rc.RedirectAction.FOUND: 302,
    rc.RedirectAction.SEE_OTHER: 303,
    rc.RedirectAction.TEMPORARY_REDIRECT: 307,
    rc.RedirectAction.PERMANENT_REDIRECT: 308,
}

# Envoy's retry_on conditions -> zlbfast's. In Envoy, 5xx and gateway-error also retry upstream resets and connect
# failures ("we count an upstream reset as a 5xx"), and reset includes connect failures; zlbfast's conditions
# are narrower, so each gets the ones it implies.
_RETRY_ON = {
    "5xx": ("5xx", "connect-failure"),
    "gateway-error": ("gateway-error", "reset", "connect-failure"),
    "reset": ("reset", "connect-failure"),
    "connect-failure": ("connect-failure",),
    "retriable-status-codes": ("retriable-status-codes",),
    # HTTP/2 and HTTP/3 upstream events; zlbfast's upstreams speak HTTP/1.1, where they never happen.
    "refused-stream": (),
    "http3-post-connect-failure": (),
}


@dataclass(frozen=True)
class ClusterRef:
    """A cluster a route forwards to, and where it is named (for validate_clusters)."""

    name: str
    field: str


@dataclass(frozen=True)
class RouteTable:
    """A translated RouteConfiguration (from RDS, or inline in a listener): the virtual hosts an http listener
    gets, and whether the Host's port takes part in choosing one (Envoy's default)."""

    name: str
    virtual_hosts: tuple[model.VirtualHost, ...]
    match_host_port: bool = True
    clusters: tuple[ClusterRef, ...] = ()
    # Envoy's validate_clusters: the table is refused while a route names a cluster that does not exist.
    validate_clusters: bool = False
    # Who is blamed for an unknown cluster: the RouteConfiguration, or the listener it is inline in.
    kind: str = "RouteConfiguration"
    owner: str = ""

    def check_clusters(self, known: Iterable[str]) -> None:
        """With validate_clusters, raises ResourceError for the first route that names an unknown cluster."""
        if not self.validate_clusters:
            return
        names = set(known)
        for ref in self.clusters:
            if ref.name not in names:
                raise ResourceError(self.kind, self.owner, ref.field, f"unknown cluster {ref.name!r} "
                                    "(validate_clusters is on: true by default for a route_config inline in a "
                                    "listener)")


def translate_route(msg: route_pb2.RouteConfiguration, *, owner: Ctx | None = None, field: str = "",
                    validate_clusters: bool = False) -> RouteTable:
    """A RouteConfiguration from RDS, or (owner, field) the route_config inline in a listener's connection manager,
    whose validate_clusters defaults to True as in Envoy."""
    ctx = owner or Ctx("RouteConfiguration", msg.name)
    if owner is None and not msg.name:
        raise ctx.fail("name", "must not be empty")
    ctx.only(msg, field, ("name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
                          "response_headers_to_add", "response_headers_to_remove", "validate_clusters",
                          "most_specific_header_mutations_wins", "max_direct_response_body_size_bytes",
                          "ignore_port_in_host_matching", "metadata"))
    if msg.HasField("validate_clusters"):
        validate_clusters = msg.validate_clusters.value
    max_body = ENVOY_MAX_DIRECT_BODY
    if msg.HasField("max_direct_response_body_size_bytes"):
        max_body = msg.max_direct_response_body_size_bytes.value
    table = _Builder(ctx, header_level(ctx, msg, field), msg.most_specific_header_mutations_wins, max_body)
    vhosts = tuple(table.virtual_host(vh, join(field, f"virtual_hosts[{i}]")) for i, vh in enumerate(msg.virtual_hosts))
    match_host_port = not msg.ignore_port_in_host_matching
    try:
        validate_virtual_hosts(vhosts, join(field, "virtual_hosts"), "", None, match_host_port=match_host_port)
    except ConfigError as exc:
        raise ctx.fail(exc.path, exc.problem) from exc
    return RouteTable(msg.name, vhosts, match_host_port, tuple(table.clusters), validate_clusters, ctx.kind, ctx.name)


# ---------------------------------------------------------------------------------------------------------
# Virtual hosts and routes


@dataclass
class _Builder:
    """Translates the virtual hosts of one RouteConfiguration, collecting the clusters its routes name."""

    ctx: Ctx
    top: HeaderLevel
    most_specific_wins: bool
    max_body: int
    clusters: list[ClusterRef] = dataclasses.field(default_factory=list)

    def virtual_host(self, vh: rc.VirtualHost, path: str) -> model.VirtualHost:
        ctx = self.ctx
        ctx.only(vh, path, ("name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
                            "response_headers_to_add", "response_headers_to_remove", "retry_policy", "metadata"))
        for d, domain in enumerate(vh.domains):
            if "*" in domain and domain != "*" and not (domain.startswith("*.") and "*" not in domain[2:]):
                raise ctx.fail(f"{path}.domains[{d}]", f"{domain!r}: zlbfast's wildcards are '*' alone and a "
                               "leading '*.' (no other suffix or prefix wildcards)")
        level = header_level(ctx, vh, path)
        retry = (vh.retry_policy, f"{path}.retry_policy") if vh.HasField("retry_policy") else None
        routes = tuple(self.route(r, f"{path}.routes[{j}]", level, retry) for j, r in enumerate(vh.routes))
        return model.VirtualHost(vh.name, tuple(vh.domains), routes)

    def route(self, r: rc.Route, path: str, vhost: HeaderLevel,
              vhost_retry: tuple[rc.RetryPolicy, str] | None) -> model.Route:
        ctx = self.ctx
        ctx.only(r, path, ("name", "match", "route", "redirect", "direct_response", "metadata", "stat_prefix",
                           "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
                           "response_headers_to_remove"))
        mpath = f"{path}.match"
        ctx.only(r.match, mpath, ("prefix", "path", "safe_regex", "case_sensitive", "headers", "query_parameters"))
        pm = path_match(ctx, r.match, mpath)
        headers = [m for i, hm in enumerate(r.match.headers) for m in header_match(ctx, hm, f"{mpath}.headers[{i}]")]
        query = [query_match(ctx, qm, f"{mpath}.query_parameters[{i}]")
                 for i, qm in enumerate(r.match.query_parameters)]
        kw: dict[str, object] = {"name": r.name, "path_kind": pm.kind, "path": pm.path, "headers": tuple(headers),
                                 "query": tuple(query)}
        # Envoy evaluates the levels from the most specific (route) up unless most_specific_header_mutations_wins;
        # the level evaluated last wins.
        levels = [header_level(ctx, r, path), vhost, self.top]
        if self.most_specific_wins:
            levels.reverse()
        response = fold_headers([lvl.response for lvl in levels])
        action = r.WhichOneof("action")
        if action == "route":
            kw.update(self.route_action(r.route, f"{path}.route", pm, vhost_retry))
            req_add, req_set, req_remove = fold_headers([lvl.request for lvl in levels])
            kw["header_ops"] = model.HeaderOps(req_add, req_set, req_remove, *response)
        elif action in ("redirect", "direct_response"):
            if any(response):
                blame = next(lvl.response.path for lvl in levels if lvl.response.path)
                raise ctx.fail(blame, f"Envoy adds these response headers to the {action} of {path} too; zlbfast "
                               "answers a redirect or direct response without configured headers")
            # Request header mutations have no request to act on: nothing is forwarded.
            if action == "redirect":
                kw["redirect"] = _redirect(ctx, r.redirect, f"{path}.redirect")
            else:
                kw["direct_status"], kw["direct_body"] = self.direct(r.direct_response, f"{path}.direct_response")
        else:
            raise ctx.fail(path, "needs route, redirect or direct_response")
        return model.Route(**kw)  # type: ignore[arg-type]

    def route_action(self, ra: rc.RouteAction, path: str, pm: PathMatch,
                     vhost_retry: tuple[rc.RetryPolicy, str] | None) -> dict[str, object]:
        ctx = self.ctx
        ctx.only(ra, path, ("cluster", "weighted_clusters", "prefix_rewrite", "host_rewrite_literal", "timeout",
                            "retry_policy", "hash_policy"))
        kw: dict[str, object] = {}
        spec = ra.WhichOneof("cluster_specifier")
        if spec == "cluster":
            self.clusters.append(ClusterRef(ra.cluster, f"{path}.cluster"))
            kw["clusters"] = (model.WeightedCluster(ra.cluster),)
        elif spec == "weighted_clusters":
            kw["clusters"] = self.weighted(ra.weighted_clusters, f"{path}.weighted_clusters")
        else:
            raise ctx.fail(path, "needs cluster or weighted_clusters")
        if ra.prefix_rewrite:
            if pm.prefix is None:
                raise ctx.fail(f"{path}.prefix_rewrite", "zlbfast rewrites the prefix of prefix routes only "
                               "(match.prefix, case-sensitive)")
            # The empty prefix matched as "/": its replacement keeps the "/" it took.
            kw["prefix_rewrite"] = ra.prefix_rewrite if pm.prefix else ra.prefix_rewrite + "/"
        if ra.host_rewrite_literal:
            kw["host_rewrite"] = ra.host_rewrite_literal
        if ra.HasField("timeout"):
            ms = duration_ms(ra.timeout)
            if ms > MAX_DURATION_MS:
                raise ctx.fail(f"{path}.timeout", f"at most {MAX_DURATION_MS // 3_600_000}h")
            # 0 disables Envoy's route timeout; zlbfast's longest stands for it (0 there means the listener's).
            kw["timeout_ms"] = ms or MAX_DURATION_MS
        if ra.HasField("retry_policy"):
            kw["retry"] = _retry(ctx, ra.retry_policy, f"{path}.retry_policy")
        elif vhost_retry is not None:
            kw["retry"] = _retry(ctx, *vhost_retry)
        else:
            kw["retry"] = model.RetryPolicy(num_retries=0)  # Envoy retries nothing without a policy
        if ra.hash_policy:
            kw.update(_hash_policy(ctx, ra.hash_policy, f"{path}.hash_policy"))
        return kw

    def weighted(self, wc: rc.WeightedCluster, path: str) -> tuple[model.WeightedCluster, ...]:
        ctx = self.ctx
        ctx.only(wc, path, ("clusters", "total_weight"))
        weights: dict[str, int] = {}
        for k, cw in enumerate(wc.clusters):
            cpath = f"{path}.clusters[{k}]"
            ctx.only(cw, cpath, ("name", "weight"))
            if not cw.name:
                raise ctx.fail(f"{cpath}.name", "must name a cluster")
            if cw.name not in weights:
                self.clusters.append(ClusterRef(cw.name, f"{cpath}.name"))
            # A cluster listed twice is picked by the sum of its weights.
            weights[cw.name] = weights.get(cw.name, 0) + (cw.weight.value if cw.HasField("weight") else 0)
        total = sum(weights.values())
        if total == 0:
            raise ctx.fail(f"{path}.clusters", "the weights must add up to more than 0")
        if wc.HasField("total_weight") and wc.total_weight.value and wc.total_weight.value != total:
            raise ctx.fail(f"{path}.total_weight", f"must equal the sum of the weights ({total}), as in Envoy")
        for name, weight in weights.items():
            if weight > MAX_WEIGHT:
                raise ctx.fail(f"{path}.clusters", f"cluster {name!r} has weight {weight}; at most {MAX_WEIGHT}")
        # Weight 0 is never picked.
        return tuple(model.WeightedCluster(name, weight) for name, weight in weights.items() if weight)

    def direct(self, dr: rc.DirectResponseAction, path: str) -> tuple[int, str]:
        ctx = self.ctx
        ctx.only(dr, path, ("status", "body"))
        body = ""
        if dr.HasField("body"):
            bpath = f"{path}.body"
            ctx.only(dr.body, bpath, ("inline_string", "inline_bytes", "filename"))
            raw = data_source(ctx, dr.body, bpath)
            if len(raw) > self.max_body:
                raise ctx.fail(bpath, f"is {len(raw)} bytes; the limit is {self.max_body} "
                               "(max_direct_response_body_size_bytes, 4096 by default as in Envoy)")
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ctx.fail(bpath, f"must be UTF-8 text: {exc}") from exc
        return dr.status, body


def _redirect(ctx: Ctx, rd: rc.RedirectAction, path: str) -> model.Redirect:
    """zlbfast answers a redirect with a fixed Location (scheme://host/path), so the parts Envoy would take from
    the request must be given."""
    ctx.only(rd, path, ("https_redirect", "scheme_redirect", "host_redirect", "path_redirect", "response_code",
                        "strip_query"))
    scheme = rd.scheme_redirect or ("https" if rd.https_redirect else "")
    if not scheme:
        raise ctx.fail(path, "needs scheme_redirect or https_redirect: zlbfast does not keep the request's scheme")
    if not rd.host_redirect:
        raise ctx.fail(f"{path}.host_redirect", "required: zlbfast does not keep the request's host")
    if not rd.path_redirect:
        raise ctx.fail(f"{path}.path_redirect", "required: zlbfast does not keep the request's path")
    if "?" not in rd.path_redirect and not rd.strip_query:
        raise ctx.fail(f"{path}.strip_query", "must be true (or path_redirect must carry a query): zlbfast does not "
                       "keep the request's query")
    return model.Redirect(_REDIRECT_CODES[rd.response_code], scheme, rd.host_redirect, rd.path_redirect)


def _retry(ctx: Ctx, rp: rc.RetryPolicy, path: str) -> model.RetryPolicy:
    ctx.only(rp, path, ("retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off"))
    conditions: dict[str, None] = {}
    for cond in (c.strip() for c in rp.retry_on.split(",")):
        if not cond:
            continue
        if cond not in _RETRY_ON:
            raise ctx.fail(f"{path}.retry_on", f"{cond!r} is not supported; use {', '.join(_RETRY_ON)}")
        conditions.update(dict.fromkeys(_RETRY_ON[cond]))
    num = rp.num_retries.value if rp.HasField("num_retries") else 1
    if num > MAX_RETRIES:
        raise ctx.fail(f"{path}.num_retries", f"at most {MAX_RETRIES}, got {num}")
    if not conditions:
        return model.RetryPolicy(num_retries=0)  # no condition: Envoy never retries
    # Status codes without the retriable-status-codes condition have no effect in Envoy.
    codes = tuple(rp.retriable_status_codes) if "retriable-status-codes" in conditions else ()
    if len(codes) > MAX_RETRIABLE_STATUS_CODES:
        raise ctx.fail(f"{path}.retriable_status_codes", f"at most {MAX_RETRIABLE_STATUS_CODES}, got {len(codes)}")
    base, cap = ENVOY_BACKOFF_BASE_MS, 10 * ENVOY_BACKOFF_BASE_MS
    if rp.HasField("retry_back_off"):
        bo = rp.retry_back_off
        bpath = f"{path}.retry_back_off"
        ctx.only(bo, bpath, ("base_interval", "max_interval"))
        base = duration_ms(bo.base_interval)
        if base <= 0:
            raise ctx.fail(f"{bpath}.base_interval", "must be more than 0")
        cap = duration_ms(bo.max_interval) if bo.HasField("max_interval") else 10 * base  # Envoy's default
        if cap < base:
            raise ctx.fail(f"{bpath}.max_interval", "must not be less than base_interval")
    per_try = duration_ms(rp.per_try_timeout) if rp.HasField("per_try_timeout") else 0
    return model.RetryPolicy(retry_on=tuple(conditions), num_retries=num, per_try_timeout_ms=per_try,
                             retriable_status_codes=codes, retry_non_idempotent=True, backoff_base_ms=base,
                             backoff_max_ms=cap)


def _hash_policy(ctx: Ctx, policies: Sequence[rc.RouteAction.HashPolicy], path: str) -> dict[str, str]:
    if len(policies) > 1:
        raise ctx.fail(path, f"at most one hash policy is supported, got {len(policies)}")
    hp = policies[0]
    hpath = f"{path}[0]"
    ctx.only(hp, hpath, ("header", "cookie", "connection_properties", "terminal"))  # terminal: one policy anyway
    kind = hp.WhichOneof("policy_specifier")
    if kind == "header":
        ctx.only(hp.header, f"{hpath}.header", ("header_name",))
        return {"hash_on": "header", "hash_name": hp.header.header_name.lower()}
    if kind == "cookie":
        # ttl would make Envoy generate the cookie; zlbfast only reads it.
        ctx.only(hp.cookie, f"{hpath}.cookie", ("name",))
        return {"hash_on": "cookie", "hash_name": hp.cookie.name}
    if kind == "connection_properties":
        ctx.only(hp.connection_properties, f"{hpath}.connection_properties", ("source_ip",))
        # source_ip: false yields no hash, as a missing header does: the endpoint is picked at random.
        return {"hash_on": "source_ip"} if hp.connection_properties.source_ip else {}
    raise ctx.fail(hpath, "needs header, cookie or connection_properties")
