"""Envoy v3 RouteConfiguration -> the model's virtual hosts and routes (zlbfast.model.VirtualHost, Route).

The router of csrc/router.c has fewer forms than Envoy's route table, so some Envoy features are rewritten into
forms it has, with the same effect on every request:

* header mutations of the route configuration, the virtual host and the route are folded into each route's
  HeaderOps by running Envoy's evaluation (level by level, in its order: removals, then overwrites, then
  appends) on every header name (``_fold``);
* an inverted value match also requires the header, because Envoy never matches a missing header with one;
* suffix, contains and ignore_case string matchers, and case-insensitive paths, become POSIX regexes;
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

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf.message import Message

from zlbfast import model
from zlbfast.config import (
    MAX_DURATION_MS,
    MAX_RETRIABLE_STATUS_CODES,
    MAX_RETRIES,
    MAX_WEIGHT,
    ConfigError,
    check_regex,
    validate_virtual_hosts,
)
from zlbfast.xds.resources import Ctx, ResourceError, data_source, duration_ms, join

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

# The specials of POSIX extended regexes, escaped when a literal becomes a regex.
_ERE_SPECIAL = frozenset(".[]()*+?{}|^$\\")


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
    table = _Builder(ctx, _level(ctx, msg, field), msg.most_specific_header_mutations_wins, max_body)
    vhosts = tuple(table.virtual_host(vh, join(field, f"virtual_hosts[{i}]")) for i, vh in enumerate(msg.virtual_hosts))
    match_host_port = not msg.ignore_port_in_host_matching
    try:
        validate_virtual_hosts(vhosts, join(field, "virtual_hosts"), "", None, match_host_port=match_host_port)
    except ConfigError as exc:
        raise ctx.fail(exc.path, exc.problem) from exc
    return RouteTable(msg.name, vhosts, match_host_port, tuple(table.clusters), validate_clusters, ctx.kind, ctx.name)


# ---------------------------------------------------------------------------------------------------------
# Header mutations


@dataclass(frozen=True)
class _Side:
    """One level's mutations of the request or the response headers (names lowercase), grouped as Envoy applies
    them: removals first, then overwrites, then appends."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    # Field path of the first mutation, for messages.
    path: str = ""


@dataclass(frozen=True)
class _Level:
    request: _Side
    response: _Side


def _level(ctx: Ctx, msg: Message, path: str) -> _Level:
    return _Level(_side(ctx, msg, path, "request"), _side(ctx, msg, path, "response"))


def _side(ctx: Ctx, msg: Message, path: str, side: str) -> _Side:
    adds_field, removes_field = f"{side}_headers_to_add", f"{side}_headers_to_remove"
    removes = getattr(msg, removes_field)
    for k, name in enumerate(removes):
        _check_modifiable(ctx, name, join(path, f"{removes_field}[{k}]"))
    sets: list[tuple[str, str]] = []
    adds: list[tuple[str, str]] = []
    option: base_pb2.HeaderValueOption
    for k, option in enumerate(getattr(msg, adds_field)):
        opath = join(path, f"{adds_field}[{k}]")
        ctx.only(option, opath, ("header", "append", "append_action", "keep_empty_value"))
        ctx.only(option.header, f"{opath}.header", ("key", "value"))
        _check_modifiable(ctx, option.header.key, f"{opath}.header.key")
        overwrite = _overwrites(ctx, option, opath)
        value = _literal(ctx, option.header.value, f"{opath}.header.value")
        if not value and not option.keep_empty_value:
            continue  # Envoy adds nothing for an empty value unless keep_empty_value
        (sets if overwrite else adds).append((option.header.key.lower(), value))
    blame = join(path, removes_field) if removes else join(path, adds_field) if sets or adds else ""
    return _Side(tuple(n.lower() for n in removes), tuple(sets), tuple(adds), blame)


def _overwrites(ctx: Ctx, option: base_pb2.HeaderValueOption, path: str) -> bool:
    """Whether the option replaces the header (True) or adds a line to it (False)."""
    action = base_pb2.HeaderValueOption
    if option.HasField("append"):
        if option.append_action != action.APPEND_IF_EXISTS_OR_ADD:
            raise ctx.fail(f"{path}.append", "append and append_action cannot both be set")
        return not option.append.value
    if option.append_action in (action.ADD_IF_ABSENT, action.OVERWRITE_IF_EXISTS):
        name = action.HeaderAppendAction.Name(option.append_action)
        raise ctx.fail(f"{path}.append_action", f"{name} depends on the headers the message already has, which "
                       "zlbfast's header operations do not test; use APPEND_IF_EXISTS_OR_ADD or "
                       "OVERWRITE_IF_EXISTS_OR_ADD")
    return bool(option.append_action == action.OVERWRITE_IF_EXISTS_OR_ADD)


def _check_modifiable(ctx: Ctx, name: str, path: str) -> None:
    # Envoy refuses these too; the model refuses the other headers the proxy manages itself.
    if name.startswith(":") or name.lower() == "host":
        raise ctx.fail(path, f"{name!r}: pseudo-headers and host cannot be modified (use host_rewrite_literal)")


def _literal(ctx: Ctx, value: str, path: str) -> str:
    """A header value without Envoy's %COMMAND% substitutions: '%%' is a literal '%', any other '%' is refused."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("%%", i):
            out.append("%")
            i += 2
        elif value[i] == "%":
            raise ctx.fail(path, f"Envoy substitutes %COMMAND% operators in header values; zlbfast adds literal "
                           f"values only (write %% for a %), got {value!r}")
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _fold(levels: Sequence[_Side]) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The (add, set, remove) operations of one route and side that leave every header as Envoy's evaluation of
    `levels`, in order, does. zlbfast drops the message's own lines of the headers it sets or removes and then
    appends its adds (in order) and sets, so per name: untouched original + appended values -> adds; a single
    value replacing the original -> set; nothing left -> remove; several values replacing it -> remove + adds."""
    state: dict[str, tuple[bool, list[str]]] = {}  # name -> (the message's own lines are kept, values appended)
    for side in levels:
        for name in side.remove:
            state[name] = (False, [])
        for name, value in side.set:
            state[name] = (False, [value])  # a later overwrite of the same level wins
        for name, value in side.add:
            kept, values = state.get(name, (True, []))
            state[name] = (kept, [*values, value])
    add: list[tuple[str, str]] = []
    set_: list[tuple[str, str]] = []
    remove: list[str] = []
    for name, (kept, values) in state.items():
        if not kept and len(values) == 1:
            set_.append((name, values[0]))
            continue
        if not kept:
            remove.append(name)
        add.extend((name, v) for v in values)
    return tuple(add), tuple(set_), tuple(remove)


# ---------------------------------------------------------------------------------------------------------
# Matching


def _ere(text: str, *, fold: bool) -> str:
    """A POSIX extended regex matching `text` literally; fold: ASCII letters in either case (Envoy's ignore_case
    and case_sensitive: false compare ASCII only)."""
    out = []
    for ch in text:
        if ch in _ERE_SPECIAL:
            out.append("\\" + ch)
        elif fold and ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(ch)
    return "".join(out)


def _literal_match(kind: str, value: str, *, fold: bool) -> tuple[str, str]:
    """A value match (model kind, value) for one of Envoy's literal string matchers."""
    folds = fold and any(ch.isascii() and ch.isalpha() for ch in value)
    if kind == "exact" and not folds:
        return "exact", value
    if kind == "prefix" and not folds:
        return "prefix", value
    lead = ".*" if kind in ("suffix", "contains") else ""
    tail = ".*" if kind in ("prefix", "contains") else ""
    return "regex", f"{lead}{_ere(value, fold=fold)}{tail}"


def _regex(ctx: Ctx, rm: regex_pb2.RegexMatcher, path: str) -> str:
    """Envoy's RE2 regex (matched against the whole value, as zlbfast's are): the part of RE2's syntax that POSIX
    extended regexes read the same way; anything else (\\d, (?:...), lazy quantifiers, ...) is refused."""
    ctx.only(rm, path, ("regex", "google_re2"))
    if rm.HasField("google_re2"):
        ctx.only(rm.google_re2, f"{path}.google_re2", ())
    try:
        check_regex(rm.regex, f"{path}.regex", "")
    except ConfigError as exc:
        raise ctx.fail(exc.path, exc.problem) from exc
    return str(rm.regex)


def _string_match(ctx: Ctx, sm: string_pb2.StringMatcher, path: str) -> tuple[str, str]:
    ctx.only(sm, path, ("exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"))
    kind = sm.WhichOneof("match_pattern")
    if kind is None:
        raise ctx.fail(path, "needs exact, prefix, suffix, contains or safe_regex")
    if kind == "safe_regex":
        return "regex", _regex(ctx, sm.safe_regex, f"{path}.safe_regex")  # ignore_case does not apply (Envoy)
    return _literal_match(kind, getattr(sm, kind), fold=sm.ignore_case)


_HEADER_LITERALS = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                    "contains_match": "contains"}


def _header_match(ctx: Ctx, hm: rc.HeaderMatcher, path: str) -> list[model.ValueMatch]:
    ctx.only(hm, path, ("name", "exact_match", "safe_regex_match", "present_match", "prefix_match", "suffix_match",
                        "contains_match", "string_match", "invert_match"))
    name = hm.name.lower()
    if name.startswith(":") or name == "host":
        # Envoy matches pseudo-headers (HTTP/1's Host becomes :authority, so "host" never matches there).
        raise ctx.fail(f"{path}.name", f"{hm.name!r}: pseudo-headers and host are not matched by zlbfast")
    spec = hm.WhichOneof("header_match_specifier")
    if spec is None or spec == "present_match":
        present = hm.present_match if spec else True  # a bare name matches any value
        if spec is None and hm.invert_match:
            raise ctx.fail(f"{path}.invert_match", "without a matcher Envoy matches no request at all; "
                           "use present_match: false for an absent header")
        # present_match: false (or true and inverted) matches an absent header.
        return [model.ValueMatch(name, "present", invert=present == hm.invert_match)]
    if spec == "string_match":
        kind, value = _string_match(ctx, hm.string_match, f"{path}.string_match")
    elif spec == "safe_regex_match":
        kind, value = "regex", _regex(ctx, hm.safe_regex_match, f"{path}.safe_regex_match")
    else:
        kind, value = _literal_match(_HEADER_LITERALS[spec], getattr(hm, spec), fold=False)
    match = model.ValueMatch(name, kind, value, invert=hm.invert_match)
    # Envoy's inverted value match still needs the header: a missing one matches nothing but present_match.
    return [model.ValueMatch(name, "present"), match] if hm.invert_match else [match]


def _query_match(ctx: Ctx, qm: rc.QueryParameterMatcher, path: str) -> model.ValueMatch:
    ctx.only(qm, path, ("name", "string_match", "present_match"))
    if qm.HasField("string_match"):
        kind, value = _string_match(ctx, qm.string_match, f"{path}.string_match")
        return model.ValueMatch(qm.name, kind, value)
    # present_match (true or false alike, in Envoy) or nothing: the parameter is there, with any value.
    return model.ValueMatch(qm.name, "present")


@dataclass(frozen=True)
class _PathMatch:
    kind: str  # model path_kind
    path: str
    prefix: str | None  # Envoy's prefix when it stays a prefix match (prefix_rewrite needs one)


def _path_match(ctx: Ctx, m: rc.RouteMatch, path: str) -> _PathMatch:
    kind = m.WhichOneof("path_specifier")
    sensitive = m.case_sensitive.value if m.HasField("case_sensitive") else True
    if kind == "safe_regex":
        return _PathMatch("regex", _regex(ctx, m.safe_regex, f"{path}.safe_regex"), None)  # case_sensitive n/a
    if kind == "prefix":
        # Envoy's prefix matches the path with its query, zlbfast's the path alone: the same requests, as the model
        # refuses a '?' in a prefix. The empty prefix (every request) is "/" for origin-form targets.
        prefix = m.prefix or "/"
        literal_kind, value = _literal_match("prefix", prefix, fold=not sensitive)
        return _PathMatch(literal_kind, value, m.prefix if literal_kind == "prefix" else None)
    if kind == "path":
        literal_kind, value = _literal_match("exact", m.path, fold=not sensitive)
        return _PathMatch(literal_kind, value, None)
    raise ctx.fail(path, "needs prefix, path or safe_regex")


# ---------------------------------------------------------------------------------------------------------
# Virtual hosts and routes


@dataclass
class _Builder:
    """Translates the virtual hosts of one RouteConfiguration, collecting the clusters its routes name."""

    ctx: Ctx
    top: _Level
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
        level = _level(ctx, vh, path)
        retry = (vh.retry_policy, f"{path}.retry_policy") if vh.HasField("retry_policy") else None
        routes = tuple(self.route(r, f"{path}.routes[{j}]", level, retry) for j, r in enumerate(vh.routes))
        return model.VirtualHost(vh.name, tuple(vh.domains), routes)

    def route(self, r: rc.Route, path: str, vhost: _Level,
              vhost_retry: tuple[rc.RetryPolicy, str] | None) -> model.Route:
        ctx = self.ctx
        ctx.only(r, path, ("name", "match", "route", "redirect", "direct_response", "metadata", "stat_prefix",
                           "request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
                           "response_headers_to_remove"))
        mpath = f"{path}.match"
        ctx.only(r.match, mpath, ("prefix", "path", "safe_regex", "case_sensitive", "headers", "query_parameters"))
        pm = _path_match(ctx, r.match, mpath)
        headers = [m for i, hm in enumerate(r.match.headers) for m in _header_match(ctx, hm, f"{mpath}.headers[{i}]")]
        query = [_query_match(ctx, qm, f"{mpath}.query_parameters[{i}]")
                 for i, qm in enumerate(r.match.query_parameters)]
        kw: dict[str, object] = {"name": r.name, "path_kind": pm.kind, "path": pm.path, "headers": tuple(headers),
                                 "query": tuple(query)}
        # Envoy evaluates the levels from the most specific (route) up unless most_specific_header_mutations_wins;
        # the level evaluated last wins.
        levels = [_level(ctx, r, path), vhost, self.top]
        if self.most_specific_wins:
            levels.reverse()
        response = _fold([lvl.response for lvl in levels])
        action = r.WhichOneof("action")
        if action == "route":
            kw.update(self.route_action(r.route, f"{path}.route", pm, vhost_retry))
            req_add, req_set, req_remove = _fold([lvl.request for lvl in levels])
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

    def route_action(self, ra: rc.RouteAction, path: str, pm: _PathMatch,
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
