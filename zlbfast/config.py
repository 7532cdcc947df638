"""Loading and validating zlbfast configuration (the YAML format is described in docs/config.md).

Two stages, so that every source shares the same rules:

* ``parse_config`` turns an already-parsed YAML mapping into the typed model
  (``zlbfast.model``): it checks keys and types and converts durations and
  HOST:PORT strings, but judges no values.
* ``validate`` judges values and cross-references on the model itself, so
  configs built in code (the command line, Envoy and xDS translators) are held
  to exactly the rules a YAML file is. Its paths use the YAML key names because
  those are what people read in docs/config.md.

Every problem is raised as a ConfigError naming the file and the field path;
the first problem found stops loading, so a bad config is rejected whole.
"""

from __future__ import annotations

import collections
import difflib
import functools
import ipaddress
import operator
import os
import re
import socket
import threading
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NoReturn, TypeVar

import yaml

from . import congestion
from ._native import EndpointTable
from .model import (
    AUTHZ_METHODS,
    AUTHZ_PATH_KINDS,
    HASH_ON,
    HEALTH_CHECK_TYPES,
    HEALTH_STATES,
    MATCH_KINDS,
    POLICIES,
    PROTOCOLS,
    RETRY_ON,
    SPIFFE_MATCH_KINDS,
    TLS_MODES,
    TLS_VERSIONS,
    XFCC_DETAILS,
    XFCC_MODES,
    AuthzRule,
    CircuitBreakers,
    Cluster,
    ClusterTls,
    Config,
    Endpoint,
    HeaderOps,
    HealthCheck,
    HttpOptions,
    Listener,
    ListenerTls,
    OutlierDetection,
    PathMatch,
    PeerMatch,
    Redirect,
    RetryPolicy,
    Route,
    ValueMatch,
    VirtualHost,
    WeightedCluster,
)

T = TypeVar("T")

# The C side stores durations as uint32 milliseconds; 30 days keeps well inside that and is longer than
# any sensible timeout.
MAX_DURATION_MS = 720 * 3_600_000
# ZLB_NAME_MAX in csrc/snapshot.h is 128 bytes including the terminating NUL.
MAX_NAME_BYTES = 127
MAX_WORKERS = 1024
MAX_CONNECTIONS = 10_000_000
MAX_CONNECT_RETRIES = 100
MAX_WEIGHT = 1_000_000
MAX_PRIORITY = 127
MAX_CONSECUTIVE_FAILURES = 1000
MAX_RING_SIZE = 1_000_000
MIN_MAGLEV_TABLE_SIZE = 7
MAX_MAGLEV_TABLE_SIZE = 1_000_003
MAX_HEALTH_THRESHOLD = 1000
MAX_PATH_BYTES = 1024  # request targets written in the config: health check paths, route paths, rewrites
# HTTP listeners. Header operations are stored with 16-bit lengths (csrc/http1_proxy.c), well above this.
MAX_HEADER_BYTES = 8192
MAX_DIRECT_BODY_BYTES = 65536
# A redirect's Location header goes into the 512-byte head of the reply the proxy writes itself (hc_local_reply).
MAX_REDIRECT_BYTES = 384
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_RETRIES = 10
MAX_BREAKER_LIMIT = 1_000_000
MAX_RETRIABLE_STATUS_CODES = 8  # zlb_retry_policy.codes in csrc/router.h
MIN_REQUEST_LINE = 64
MIN_HTTP_HEAD = 1024
MAX_HTTP_HEAD = 1 << 20
MAX_HTTP_HEADERS = 128  # ZLB_H1_MAX_HEADERS_CAP in csrc/http1_parser.h
MAX_UINT32 = (1 << 32) - 1
MAX_IDLE_PER_ENDPOINT = 10_000
MAX_RETRY_BUFFER = 16 << 20
# Authorization rules of TLS listeners (csrc/tls.h: ZLB_TLS_MAX_RULES, ZLB_TLS_MAX_PORTS, ZLB_AUTHZ_MAX_PATHS,
# ZLB_AUTHZ_PATH_MAX less the NUL).
MAX_AUTHZ_RULES = 32
MAX_AUTHZ_PORTS = 16
MAX_AUTHZ_PATHS = 8
MAX_AUTHZ_PATH_BYTES = 127


class ConfigError(Exception):
    """A configuration problem: which file (or "command line"), which field, what is wrong."""

    def __init__(self, file: str, path: str, problem: str) -> None:
        # Passing all three to Exception keeps the error picklable and its repr complete.
        super().__init__(file, path, problem)
        self.file = file
        self.path = path
        self.problem = problem

    def __str__(self) -> str:
        if self.path:
            return f"{self.file}: {self.path}: {self.problem}"
        return f"{self.file}: {self.problem}"


def _fail(source: str, path: str, problem: str) -> NoReturn:
    raise ConfigError(source, path, problem)


def _describe(value: object) -> str:
    """Shows a wrong value the way its author wrote it, naming the YAML kind where the value alone would
    not explain the error (a bare `yes` is a boolean in YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (str, int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _suggest(value: object, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _format_hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# ---------------------------------------------------------------------------------------------------------
# Scalar parsers (public ones are shared with other configuration sources)

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration_ms(value: object, path: str, source: str) -> int:
    """Milliseconds from "250ms", "1.5s", "2m", "1h" or a plain integer (already milliseconds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            _fail(source, path, f"a duration must not be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match:
            # Fraction, not float: "0.3s" must be exactly 300ms, and "1.5ms" must be refused, not rounded.
            ms = Fraction(match.group(1)) * _UNIT_MS[match.group(2)]
            if ms.denominator != 1:
                _fail(source, path, f"durations have millisecond resolution, got {value!r}")
            return int(ms)
    _fail(
        source,
        path,
        "expected a duration such as 250ms, 1.5s, 2m or 1h (or an integer number of milliseconds), "
        f"got {_describe(value)}",
    )


def parse_hostport(value: str, path: str, source: str) -> tuple[str, int]:
    """("127.0.0.1", 80) from "127.0.0.1:80", ("::1", 80) from "[::1]:80".

    The address comes back in canonical form so that equal addresses compare equal (duplicate checks, and
    the data plane keys per-endpoint state by address across config updates). Port range rules differ
    between listeners and endpoints and are left to validate().
    """
    expected = f"expected HOST:PORT with a numeric IP address, got {value!r}"
    bracketed = value.startswith("[")
    if bracketed:
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            _fail(source, path, f"{expected}; write IPv6 addresses in brackets, e.g. [::1]:80")
    if not sep:
        _fail(source, path, f"{expected}; the :PORT part is missing")
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        _fail(source, path, f"{expected}; the port must be a number from 0 to 65535")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        _fail(source, path, f"{expected} (host names are not resolved)")
    if bracketed and ip.version == 4:
        _fail(source, path, f"{expected}; brackets are only for IPv6 addresses")
    return str(ip), int(port)


def _string(value: object, path: str, source: str) -> str:
    if not isinstance(value, str):
        # YAML reads unquoted `no`, `1.10` or `007` as a boolean or a number, which is rarely what was meant.
        hint = "; put it in quotes" if isinstance(value, (bool, int, float)) else ""
        _fail(source, path, f"expected a string, got {_describe(value)}{hint}")
    return value


def _integer(value: object, path: str, source: str) -> int:
    # bool is an int subclass in Python, but `weight: true` is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(source, path, f"expected an integer, got {_describe(value)}")
    return value


def _boolean(value: object, path: str, source: str) -> bool:
    if not isinstance(value, bool):
        _fail(source, path, f"expected true or false, got {_describe(value)}")
    return value


def _true(value: object, path: str, source: str) -> bool:
    """For keys that choose a kind by being present (`present: true`, `source_ip: true`)."""
    if value is not True:
        _fail(source, path, f"expected true, got {_describe(value)}")
    return value


def _address(value: object, path: str, source: str) -> tuple[str, int]:
    if isinstance(value, str):
        return parse_hostport(value, path, source)
    hint = ""
    if isinstance(value, list):
        # An unquoted [::1]:80 is a YAML flow sequence (or a syntax error), never the address.
        hint = '; quote IPv6 addresses, e.g. "[::1]:80"'
    _fail(source, path, f"expected HOST:PORT with a numeric IP address, got {_describe(value)}{hint}")


def _list_of(item: Callable[[object, str, str], T]) -> Callable[[object, str, str], tuple[T, ...]]:
    def convert(value: object, path: str, source: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            _fail(source, path, f"expected a list, got {_describe(value)}")
        return tuple(item(element, f"{path}[{i}]", source) for i, element in enumerate(value))

    return convert


# ---------------------------------------------------------------------------------------------------------
# Mappings: one table per model class says which YAML key fills which dataclass fields.


@dataclass(frozen=True)
class _Key:
    name: str  # the YAML key
    fields: tuple[str, ...]  # the model fields it fills (HOST:PORT fills address and port)
    convert: Callable[[object, str, str], Any]
    required: bool = False


def _build(
    make: Callable[..., T], keys: tuple[_Key, ...], value: object, path: str, source: str, shape: str
) -> T:
    """Builds a model object from a mapping; absent optional keys keep the dataclass defaults, so the
    defaults live in one place (zlbfast/model.py)."""
    if not isinstance(value, dict):
        _fail(source, path, f"expected {shape}, got {_describe(value)}")
    by_name = {key.name: key for key in keys}
    for name in value:
        if name not in by_name:
            allowed = ", ".join(sorted(by_name))
            _fail(
                source,
                _join(path, str(name)),
                f"unknown key {name!r}{_suggest(name, by_name)}; allowed keys here: {allowed}",
            )
    kwargs: dict[str, Any] = {}
    for key in keys:
        key_path = _join(path, key.name)
        if key.name not in value:
            if key.required:
                _fail(source, key_path, f"required key {key.name!r} is missing")
            continue
        converted = key.convert(value[key.name], key_path, source)
        if len(key.fields) == 1:
            kwargs[key.fields[0]] = converted
        else:
            kwargs.update(zip(key.fields, converted, strict=True))
    return make(**kwargs)


_ENDPOINT_KEYS = (
    _Key("address", ("address", "port"), _address, required=True),
    _Key("weight", ("weight",), _integer),
    _Key("priority", ("priority",), _integer),
    _Key("zone", ("zone",), _string),
    _Key("health", ("health",), _string),
)


def _endpoint(value: object, path: str, source: str) -> Endpoint:
    if isinstance(value, str):  # the shorthand "- 127.0.0.1:9002"
        # Reported as ".address" like the mapping form, so one mistake has one path whichever form is used.
        address, port = parse_hostport(value, f"{path}.address", source)
        return Endpoint(address=address, port=port)
    return _build(Endpoint, _ENDPOINT_KEYS, value, path, source, "HOST:PORT or a mapping with an address")


_OUTLIER_KEYS = (
    _Key("consecutive_failures", ("consecutive_failures",), _integer),
    _Key("base_ejection_time", ("base_ejection_time_ms",), parse_duration_ms),
    _Key("max_ejection_time", ("max_ejection_time_ms",), parse_duration_ms),
    _Key("max_ejection_percent", ("max_ejection_percent",), _integer),
)


def _outlier(value: object, path: str, source: str) -> OutlierDetection:
    return _build(OutlierDetection, _OUTLIER_KEYS, value, path, source, "a mapping")


_BREAKER_KEYS = (
    _Key("max_connections", ("max_connections",), _integer),
    _Key("max_pending_requests", ("max_pending_requests",), _integer),
    _Key("max_requests", ("max_requests",), _integer),
    _Key("max_retries", ("max_retries",), _integer),
    _Key("retry_budget_percent", ("retry_budget_percent",), _integer),
    _Key("min_retry_concurrency", ("min_retry_concurrency",), _integer),
)


def _breakers(value: object, path: str, source: str) -> CircuitBreakers:
    return _build(CircuitBreakers, _BREAKER_KEYS, value, path, source, "a mapping")


_STATUS_RANGE_RE = re.compile(r"([0-9]{3})-([0-9]{3})")


def _status_range(value: object, path: str, source: str) -> tuple[int, int]:
    """(200, 399) from "200-399"; (204, 204) from 204. Bounds are judged by validate()."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, str):
        match = _STATUS_RANGE_RE.fullmatch(value)
        if match:
            return int(match.group(1)), int(match.group(2))
    _fail(source, path, f"expected an HTTP status (204) or an inclusive range (200-399), got {_describe(value)}")


_HEALTH_CHECK_KEYS = (
    _Key("type", ("type",), _string),
    _Key("path", ("path",), _string),
    _Key("expected_statuses", ("expected_statuses",), _list_of(_status_range)),
    _Key("interval", ("interval_ms",), parse_duration_ms),
    _Key("jitter", ("jitter_ms",), parse_duration_ms),
    _Key("timeout", ("timeout_ms",), parse_duration_ms),
    _Key("healthy_threshold", ("healthy_threshold",), _integer),
    _Key("unhealthy_threshold", ("unhealthy_threshold",), _integer),
)


def _health_check(value: object, path: str, source: str) -> HealthCheck:
    return _build(HealthCheck, _HEALTH_CHECK_KEYS, value, path, source, "a mapping")


# TLS sections. The SPIFFE match keys are alternatives: exactly one in `peer`, at most one per rule.
_PEER_MATCH_KEYS = tuple(_Key(kind, (kind,), _string) for kind in SPIFFE_MATCH_KINDS)


def _peer_match(value: object, path: str, source: str) -> PeerMatch:
    fields: dict[str, Any] = _build(dict, _PEER_MATCH_KEYS, value, path, source,
                                    f"a mapping with one of {', '.join(SPIFFE_MATCH_KINDS)}")  # fmt: skip
    kind = _exactly_one(fields, SPIFFE_MATCH_KINDS, path, source)
    return PeerMatch(kind, fields[kind])


_PATH_MATCH_RULE_KEYS = tuple(_Key(kind, (kind,), _string) for kind in AUTHZ_PATH_KINDS)


def _authz_path(value: object, path: str, source: str) -> PathMatch:
    fields: dict[str, Any] = _build(dict, _PATH_MATCH_RULE_KEYS, value, path, source,
                                    f"a mapping with one of {', '.join(AUTHZ_PATH_KINDS)}")  # fmt: skip
    kind = _exactly_one(fields, AUTHZ_PATH_KINDS, path, source)
    return PathMatch(kind, fields[kind])


_AUTHZ_RULE_KEYS = (
    *_PEER_MATCH_KEYS,
    _Key("ports", ("ports",), _list_of(_integer)),
    _Key("methods", ("methods",), _list_of(_string)),
    _Key("paths", ("paths",), _list_of(_authz_path)),
)


def _authz_rule(value: object, path: str, source: str) -> AuthzRule:
    fields: dict[str, Any] = _build(dict, _AUTHZ_RULE_KEYS, value, path, source, "a mapping")
    kinds = [kind for kind in SPIFFE_MATCH_KINDS if kind in fields]
    if len(kinds) > 1:
        _fail(source, path, f"at most one of {', '.join(SPIFFE_MATCH_KINDS)} per rule, got {', '.join(kinds)}")
    if not kinds and not any(key in fields for key in ("ports", "methods", "paths")):
        _fail(source, path, f"a rule needs one of {', '.join(SPIFFE_MATCH_KINDS)}, or ports, methods or paths")
    return AuthzRule(PeerMatch(kinds[0], fields[kinds[0]]) if kinds else None, fields.get("ports", ()),
                     fields.get("methods", ()), fields.get("paths", ()))  # fmt: skip


_TLS_FILE_KEYS = (
    _Key("cert", ("cert",), _string, required=True),
    _Key("key", ("key",), _string, required=True),
    _Key("bundle", ("bundle",), _string, required=True),
    _Key("peer", ("peer",), _peer_match),
    _Key("min_version", ("min_version",), _string),
    _Key("alpn", ("alpn",), _list_of(_string)),
)
_LISTENER_TLS_KEYS = (
    *_TLS_FILE_KEYS,
    _Key("mode", ("mode",), _string),
    _Key("allow", ("allow",), _list_of(_authz_rule)),
    _Key("deny", ("deny",), _list_of(_authz_rule)),
    _Key("handshake_timeout", ("handshake_timeout_ms",), parse_duration_ms),
)
_CLUSTER_TLS_KEYS = (*_TLS_FILE_KEYS, _Key("sni", ("sni",), _string))


def _tls(make: Callable[..., T], keys: tuple[_Key, ...], value: object, path: str, source: str) -> T:
    return _build(make, keys, value, path, source, "a mapping with cert, key and bundle")


_CLUSTER_KEYS = (
    _Key("name", ("name",), _string, required=True),
    _Key("endpoints", ("endpoints",), _list_of(_endpoint), required=True),
    _Key("policy", ("policy",), _string),
    _Key("connect_timeout", ("connect_timeout_ms",), parse_duration_ms),
    _Key("connect_retries", ("connect_retries",), _integer),
    _Key("panic_threshold", ("panic_threshold",), _integer),
    _Key("ring_size", ("ring_size",), _integer),
    _Key("maglev_table_size", ("maglev_table_size",), _integer),
    _Key("overprovisioning", ("overprovisioning",), _integer),
    _Key("ewma_decay", ("ewma_decay_ms",), parse_duration_ms),
    _Key("outlier_detection", ("outlier",), _outlier),
    _Key("health_check", ("health_check",), _health_check),
    _Key("tls", ("tls",), lambda v, p, s: _tls(ClusterTls, _CLUSTER_TLS_KEYS, v, p, s)),
    _Key("circuit_breakers", ("circuit_breakers",), _breakers),
    _Key("tcp_congestion", ("tcp_congestion",), _string),
)


def _cluster(value: object, path: str, source: str) -> Cluster:
    return _build(Cluster, _CLUSTER_KEYS, value, path, source, "a mapping")


# HTTP listeners. Keys that exclude each other (a route's path match, its action, a hash policy) are first read
# into a dict under their own names, so that _exactly_one can name them, and then turned into model fields.


def _exactly_one(fields: dict[str, Any], names: tuple[str, ...], path: str, source: str) -> str:
    """The one of `names` that a mapping sets."""
    given = [name for name in names if name in fields]
    if len(given) != 1:
        found = f"got {' and '.join(given)}" if given else "none is given"
        _fail(source, path, f"needs exactly one of {', '.join(names)}; {found}")
    return given[0]


_VALUE_MATCH_KEYS = (
    _Key("name", ("name",), _string, required=True),
    *(_Key(kind, (kind,), _true if kind == "present" else _string) for kind in MATCH_KINDS),
    _Key("invert", ("invert",), _boolean),
)


def _value_match(value: object, path: str, source: str) -> ValueMatch:
    fields: dict[str, Any] = _build(dict, _VALUE_MATCH_KEYS, value, path, source, "a mapping with a name")
    kind = _exactly_one(fields, MATCH_KINDS, path, source)
    text = fields.pop(kind)
    return ValueMatch(**fields, kind=kind, value="" if kind == "present" else text)


# The YAML key of each path match kind of Route.path_kind.
_PATH_MATCH_KEYS = {"prefix": "prefix", "exact": "path", "regex": "regex"}

_ROUTE_MATCH_KEYS = (
    *(_Key(key, (key,), _string) for key in _PATH_MATCH_KEYS.values()),
    _Key("headers", ("headers",), _list_of(_value_match)),
    _Key("query", ("query",), _list_of(_value_match)),
    _Key("peer", ("peer",), _peer_match),
)


def _route_match(value: object, path: str, source: str) -> dict[str, Any]:
    """The Route fields that a `match` mapping fills."""
    fields: dict[str, Any] = _build(dict, _ROUTE_MATCH_KEYS, value, path, source, "a mapping")
    key = _exactly_one(fields, tuple(_PATH_MATCH_KEYS.values()), path, source)
    text = fields.pop(key)
    kind = next(kind for kind, name in _PATH_MATCH_KEYS.items() if name == key)
    return {**fields, "path_kind": kind, "path": text}


_WEIGHTED_CLUSTER_KEYS = (
    _Key("name", ("name",), _string, required=True),
    _Key("weight", ("weight",), _integer),
)


def _weighted_cluster(value: object, path: str, source: str) -> WeightedCluster:
    return _build(WeightedCluster, _WEIGHTED_CLUSTER_KEYS, value, path, source, "a mapping with a name")


_DIRECT_RESPONSE_KEYS = (
    _Key("status", ("direct_status",), _integer, required=True),
    _Key("body", ("direct_body",), _string),
)


def _direct_response(value: object, path: str, source: str) -> dict[str, Any]:
    return _build(dict, _DIRECT_RESPONSE_KEYS, value, path, source, "a mapping with a status")


_REDIRECT_KEYS = (
    _Key("status", ("status",), _integer),
    _Key("scheme", ("scheme",), _string),
    _Key("host", ("host",), _string),
    _Key("path", ("path",), _string),
)


def _redirect(value: object, path: str, source: str) -> Redirect:
    return _build(Redirect, _REDIRECT_KEYS, value, path, source, "a mapping")


_HEADER_TO_ADD_KEYS = (
    _Key("name", ("name",), _string, required=True),
    _Key("value", ("value",), _string, required=True),
    _Key("append", ("append",), _boolean),
)


def _header_to_add(value: object, path: str, source: str) -> tuple[bool, tuple[str, str]]:
    fields: dict[str, Any] = _build(dict, _HEADER_TO_ADD_KEYS, value, path, source, "a mapping with a name and a value")
    return fields.get("append", True), (fields["name"], fields["value"])


def _headers_to_add(side: str) -> Callable[[object, str, str], dict[str, Any]]:
    """`request_headers_to_add` or `response_headers_to_add`: entries with `append: false` replace the header
    (HeaderOps.<side>_set), the others add a line to it (<side>_add, Envoy's default)."""
    entries_of = _list_of(_header_to_add)

    def convert(value: object, path: str, source: str) -> dict[str, Any]:
        entries = entries_of(value, path, source)
        return {
            f"{side}_add": tuple(header for append, header in entries if append),
            f"{side}_set": tuple(header for append, header in entries if not append),
        }

    return convert


_HASH_POLICY_KEYS = (
    _Key("header", ("header",), _string),
    _Key("cookie", ("cookie",), _string),
    _Key("source_ip", ("source_ip",), _true),
    _Key("path", ("path",), _true),
)


def _hash_policy(value: object, path: str, source: str) -> dict[str, Any]:
    fields: dict[str, Any] = _build(dict, _HASH_POLICY_KEYS, value, path, source, "a mapping")
    hash_on = _exactly_one(fields, HASH_ON[1:], path, source)
    name = fields[hash_on]
    return {"hash_on": hash_on, "hash_name": name if isinstance(name, str) else ""}


def _retry_on(value: object, path: str, source: str) -> tuple[str, ...]:
    """A list of conditions, or Envoy's comma-separated string ("connect-failure,5xx")."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",")) if value.strip() else ()
    return _list_of(_string)(value, path, source)


_RETRY_POLICY_KEYS = (
    _Key("retry_on", ("retry_on",), _retry_on),
    _Key("num_retries", ("num_retries",), _integer),
    _Key("per_try_timeout", ("per_try_timeout_ms",), parse_duration_ms),
    _Key("retriable_status_codes", ("retriable_status_codes",), _list_of(_integer)),
    _Key("retry_non_idempotent", ("retry_non_idempotent",), _boolean),
    _Key("backoff_base_interval", ("backoff_base_ms",), parse_duration_ms),
    _Key("backoff_max_interval", ("backoff_max_ms",), parse_duration_ms),
)


def _retry_policy(value: object, path: str, source: str) -> RetryPolicy:
    return _build(RetryPolicy, _RETRY_POLICY_KEYS, value, path, source, "a mapping")


_ROUTE_ACTIONS = ("cluster", "weighted_clusters", "direct_response", "redirect")
# The YAML key behind each HeaderOps field, for messages.
_HEADER_OP_KEYS = {
    "request_add": "request_headers_to_add",
    "request_set": "request_headers_to_add",
    "request_remove": "request_headers_to_remove",
    "response_add": "response_headers_to_add",
    "response_set": "response_headers_to_add",
    "response_remove": "response_headers_to_remove",
}

_ROUTE_KEYS = (
    _Key("name", ("name",), _string),
    _Key("match", ("match",), _route_match, required=True),
    _Key("cluster", ("cluster",), _string),
    _Key("weighted_clusters", ("weighted_clusters",), _list_of(_weighted_cluster)),
    _Key("direct_response", ("direct_response",), _direct_response),
    _Key("redirect", ("redirect",), _redirect),
    _Key("prefix_rewrite", ("prefix_rewrite",), _string),
    _Key("host_rewrite", ("host_rewrite",), _string),
    _Key("request_headers_to_add", ("request_headers_to_add",), _headers_to_add("request")),
    _Key("request_headers_to_remove", ("request_remove",), _list_of(_string)),
    _Key("response_headers_to_add", ("response_headers_to_add",), _headers_to_add("response")),
    _Key("response_headers_to_remove", ("response_remove",), _list_of(_string)),
    _Key("hash_policy", ("hash_policy",), _hash_policy),
    _Key("timeout", ("timeout_ms",), parse_duration_ms),
    _Key("retry_policy", ("retry",), _retry_policy),
)


def _route(value: object, path: str, source: str) -> Route:
    fields: dict[str, Any] = _build(dict, _ROUTE_KEYS, value, path, source, "a mapping")
    action = _exactly_one(fields, _ROUTE_ACTIONS, path, source)
    if action == "cluster":
        fields["clusters"] = (WeightedCluster(fields.pop("cluster")),)
    elif action == "weighted_clusters":
        # Two or more, so that validate() can tell the forms apart by the model alone and name the YAML key.
        if len(fields["weighted_clusters"]) < 2:
            _fail(source, f"{path}.weighted_clusters", "needs at least two clusters; for one, write cluster: NAME")
        fields["clusters"] = fields.pop("weighted_clusters")
    for key in ("match", "direct_response", "hash_policy", "request_headers_to_add", "response_headers_to_add"):
        fields.update(fields.pop(key, {}))
    header_ops = HeaderOps(**{name: fields.pop(name) for name in _HEADER_OP_KEYS if name in fields})
    return Route(**fields, header_ops=header_ops)


_VIRTUAL_HOST_KEYS = (
    _Key("name", ("name",), _string, required=True),
    _Key("domains", ("domains",), _list_of(_string)),
    _Key("routes", ("routes",), _list_of(_route), required=True),
)


def _virtual_host(value: object, path: str, source: str) -> VirtualHost:
    return _build(VirtualHost, _VIRTUAL_HOST_KEYS, value, path, source, "a mapping")


_HTTP_OPTIONS_KEYS = (
    _Key("max_request_line", ("max_request_line",), _integer),
    _Key("max_head", ("max_head",), _integer),
    _Key("max_headers", ("max_headers",), _integer),
    _Key("header_timeout", ("header_timeout_ms",), parse_duration_ms),
    _Key("request_timeout", ("request_timeout_ms",), parse_duration_ms),
    _Key("upstream_idle", ("upstream_idle_ms",), parse_duration_ms),
    _Key("max_requests_per_conn", ("max_requests_per_conn",), _integer),
    _Key("max_idle_per_endpoint", ("max_idle_per_endpoint",), _integer),
    _Key("retry_buffer", ("retry_buffer",), _integer),
    _Key("forward_client_cert", ("forward_client_cert",), _string),
    _Key("client_cert_details", ("client_cert_details",), _list_of(_string)),
    _Key("append_x_forwarded_for", ("append_x_forwarded_for",), _boolean),
)


def _http_options(value: object, path: str, source: str) -> HttpOptions:
    return _build(HttpOptions, _HTTP_OPTIONS_KEYS, value, path, source, "a mapping")


_LISTENER_KEYS = (
    _Key("name", ("name",), _string, required=True),
    _Key("address", ("address", "port"), _address, required=True),
    _Key("cluster", ("cluster",), _string),
    _Key("max_connections", ("max_connections",), _integer),
    _Key("idle_timeout", ("idle_timeout_ms",), parse_duration_ms),
    _Key("protocol", ("protocol",), _string),
    _Key("virtual_hosts", ("virtual_hosts",), _list_of(_virtual_host)),
    _Key("match_host_port", ("match_host_port",), _boolean),
    _Key("http", ("http",), _http_options),
    _Key("tls", ("tls",), lambda v, p, s: _tls(ListenerTls, _LISTENER_TLS_KEYS, v, p, s)),
    _Key("tcp_congestion", ("tcp_congestion",), _string),
)


def _listener(value: object, path: str, source: str) -> Listener:
    # Which of cluster and virtual_hosts a listener needs depends on its protocol: validate() judges that.
    return _build(functools.partial(Listener, cluster=""), _LISTENER_KEYS, value, path, source, "a mapping")


_CONFIG_KEYS = (
    _Key("listeners", ("listeners",), _list_of(_listener), required=True),
    _Key("clusters", ("clusters",), _list_of(_cluster), required=True),
    _Key("workers", ("workers",), _integer),
    _Key("local_zone", ("local_zone",), _string),
    _Key("drain_timeout", ("drain_timeout_ms",), parse_duration_ms),
)


def parse_config(data: object, source: str) -> Config:
    """The validated model of an already-parsed YAML document; `source` names it in messages."""
    if data is None:
        _fail(source, "", "the configuration is empty; it needs at least 'listeners' and 'clusters'")
    cfg = _build(
        functools.partial(Config, source=source),
        _CONFIG_KEYS,
        data,
        "",
        source,
        "a mapping with the keys 'listeners' and 'clusters' at the top level",
    )
    validate(cfg)
    _check_complete(cfg)
    return cfg


def _check_complete(cfg: Config) -> None:
    """A file or command line must describe a proxy that can run on its own. The model allows empty sets
    because a control plane (zlbfast.xds) delivers clusters before listeners and may empty a cluster, and
    because Envoy's RouteConfiguration may have no virtual hosts, or a virtual host no routes (404 for them)."""
    if not cfg.listeners:
        _fail(cfg.source, "listeners", "at least one listener is required")
    for i, listener in enumerate(cfg.listeners):
        if listener.protocol != "http":
            continue
        if not listener.virtual_hosts:
            _fail(cfg.source, f"listeners[{i}].virtual_hosts", "an http listener needs at least one virtual host")
        for v, vhost in enumerate(listener.virtual_hosts):
            if not vhost.routes:
                _fail(cfg.source, f"listeners[{i}].virtual_hosts[{v}].routes", "at least one route is required")
    for i, cluster in enumerate(cfg.clusters):
        if not cluster.endpoints:
            _fail(cfg.source, f"clusters[{i}].endpoints", "at least one endpoint is required")


# ---------------------------------------------------------------------------------------------------------
# YAML files


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys. Plain YAML keeps the last one silently, so a second
    `endpoints:` in a cluster would drop the first list without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults" may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):  # unhashable keys are reported by the base class
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


# An unquoted "[::1]:80": YAML reads the "[" as the start of a list and fails with a message about flow nodes
# that does not mention the actual mistake.
_UNQUOTED_IPV6 = re.compile(r"(?<![\"'])\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]:[0-9]")


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return f"invalid YAML: {error}"
    mark = error.problem_mark
    problem = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context and error.context_mark is not None:
        problem += f" ({error.context} starting at line {error.context_mark.line + 1})"
    lines = text.splitlines()
    if mark.line < len(lines) and _UNQUOTED_IPV6.search(lines[mark.line]):
        problem += '; IPv6 addresses must be quoted, e.g. "[::1]:80"'
    return problem


def load_config(path: str | os.PathLike[str]) -> Config:
    """Reads, parses and validates a zlbfast YAML file."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(source, "", f"cannot read the file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(source, "", f"the file is not UTF-8 text (bad byte at offset {e.start})") from e
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(source, "", _yaml_problem(e, text)) from e
    return parse_config(data, source)


# ---------------------------------------------------------------------------------------------------------
# Value rules, on the model


def _check_range(value: int, low: int, high: int, path: str, source: str) -> None:
    if not low <= value <= high:
        _fail(source, path, f"must be between {low} and {high}, got {value}")


def _check_duration(value_ms: int, path: str, source: str, minimum_ms: int = 1) -> None:
    if not minimum_ms <= value_ms <= MAX_DURATION_MS:
        _fail(source, path, f"must be between {minimum_ms}ms and 720h, got {value_ms}ms")


def _check_label(value: str, path: str, source: str, *, required: bool) -> None:
    """Names and zones end up in C strings, stats labels and log lines: bounded, printable, no spaces."""
    if not value:
        if required:
            _fail(source, path, "must not be empty")
        return
    if not value.isprintable() or any(ch.isspace() for ch in value):
        _fail(source, path, f"must contain only printable characters and no spaces, got {value!r}")
    size = len(value.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        _fail(source, path, f"must be at most {MAX_NAME_BYTES} bytes long, got {size}")


def _check_choice_list(values: tuple[str, ...], choices: tuple[str, ...], what: str, path: str, source: str) -> None:
    """Each of `values` (the list at `path`) is one of `choices`, and none is listed twice."""
    for i, value in enumerate(values):
        _check_choice(value, choices, what, f"{path}[{i}]", source)
        if value in values[:i]:
            _fail(source, f"{path}[{i}]", f"{value!r} is listed twice")


def _check_choice(value: str, choices: tuple[str, ...], what: str, path: str, source: str) -> None:
    if value not in choices:
        _fail(
            source,
            path,
            f"unknown {what} {value!r}{_suggest(value, choices)}; expected one of: {', '.join(choices)}",
        )


def _check_target(value: str, path: str, source: str) -> None:
    """A path that goes verbatim into a request line or a Location header: an origin-form target that cannot
    split it."""
    if not value.startswith("/") or not value.isprintable() or any(ch.isspace() for ch in value):
        _fail(source, path, f"must start with '/' and contain no spaces or control characters, got {value!r}")
    if len(value.encode("utf-8")) > MAX_PATH_BYTES:
        _fail(source, path, f"must be at most {MAX_PATH_BYTES} bytes long")


def _packed(address: str) -> bytes | None:
    """inet_pton of a numeric IP, None if it is not one. It accepts a subset of what ipaddress does (no scope ids)
    at a tenth of the cost, which matters when an xDS update brings thousands of new endpoints."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except (OSError, ValueError, TypeError):
        return None


def _plain_backend_ip(address: str) -> bool:
    """True for the common case of a backend address that is certainly fine: IPv4 below the multicast range, or
    IPv6 that is neither multicast nor IPv4-mapped/compatible, and not unspecified. Anything else goes through
    ipaddress, which has the last word and names the problem."""
    packed = _packed(address)
    if packed is None:
        return False
    if len(packed) == 4:
        return packed[0] < 224 and packed != b"\0\0\0\0"
    return packed[0] != 0xFF and packed[:10] != bytes(10)


def _check_address(address: str, port: int, path: str, source: str, *, listening: bool) -> None:
    if not listening and _plain_backend_ip(address):
        if not 1 <= port <= 65535:
            _fail(source, path, f"the port must be between 1 and 65535, got {port}")
        return
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        _fail(source, path, f"expected a numeric IP address, got {address!r}")
    shown = _format_hostport(address, port)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        _fail(source, path, f"IPv6 scope ids ('%{ip.scope_id}') are not supported, got {shown}")
    if ip.is_multicast:
        _fail(source, path, f"{shown} is a multicast address; TCP needs a unicast one")
    if not listening and ip.is_unspecified:
        _fail(source, path, f"cannot connect to the unspecified address {shown}; name the backend's own IP")
    low = 0 if listening else 1  # a listener on port 0 takes an ephemeral port
    if not low <= port <= 65535:
        _fail(source, path, f"the port must be between {low} and 65535, got {port}")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _validate_outlier(outlier: OutlierDetection, path: str, source: str) -> None:
    _check_range(
        outlier.consecutive_failures, 0, MAX_CONSECUTIVE_FAILURES, f"{path}.consecutive_failures", source
    )
    _check_duration(outlier.base_ejection_time_ms, f"{path}.base_ejection_time", source)
    _check_duration(outlier.max_ejection_time_ms, f"{path}.max_ejection_time", source)
    if outlier.max_ejection_time_ms < outlier.base_ejection_time_ms:
        _fail(
            source,
            f"{path}.max_ejection_time",
            f"must not be shorter than base_ejection_time ({outlier.base_ejection_time_ms}ms), "
            f"got {outlier.max_ejection_time_ms}ms",
        )
    _check_range(outlier.max_ejection_percent, 0, 100, f"{path}.max_ejection_percent", source)


def _validate_breakers(b: CircuitBreakers, path: str, source: str) -> None:
    for name in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        _check_range(getattr(b, name), 1, MAX_BREAKER_LIMIT, f"{path}.{name}", source)
    _check_range(b.retry_budget_percent, 0, 100, f"{path}.retry_budget_percent", source)
    _check_range(b.min_retry_concurrency, 0, MAX_BREAKER_LIMIT, f"{path}.min_retry_concurrency", source)


def _validate_health_check(check: HealthCheck, path: str, source: str) -> None:
    _check_choice(check.type, HEALTH_CHECK_TYPES, "health check type", f"{path}.type", source)
    _check_target(check.path, f"{path}.path", source)
    if not check.expected_statuses:
        _fail(source, f"{path}.expected_statuses", "at least one status or range is required")
    for i, (low, high) in enumerate(check.expected_statuses):
        if not 100 <= low <= high <= 599:
            _fail(source, f"{path}.expected_statuses[{i}]",
                  f"must be statuses from 100 to 599 with the lower one first, got {low}-{high}")
    _check_duration(check.interval_ms, f"{path}.interval", source)
    _check_duration(check.jitter_ms, f"{path}.jitter", source, minimum_ms=0)
    _check_duration(check.timeout_ms, f"{path}.timeout", source)
    _check_range(check.healthy_threshold, 1, MAX_HEALTH_THRESHOLD, f"{path}.healthy_threshold", source)
    _check_range(check.unhealthy_threshold, 1, MAX_HEALTH_THRESHOLD, f"{path}.unhealthy_threshold", source)


# Clusters that passed validation, by identity (the rules do not depend on path or source). An xDS update replaces
# one cluster among thousands, and Engine.apply validates the whole config; the unchanged clusters are the very
# same frozen objects, and judging them again would cost microseconds per endpoint on every update.
_VALIDATED: dict[int, weakref.ref[Any]] = {}


def _validated_once(check: Callable[[T, str, str], None]) -> Callable[[T, str, str], None]:
    def run(obj: T, path: str, source: str) -> None:
        key = id(obj)
        ref = _VALIDATED.get(key)
        if ref is not None and ref() is obj:
            return
        check(obj, path, source)
        # The callback runs while the object is being freed, before its id can be reused.
        _VALIDATED[key] = weakref.ref(obj, lambda _ref: _VALIDATED.pop(key, None))

    return run


def _ip_key(address: str) -> bytes:
    """The address as bytes for the duplicate check: they hash in C, and IPv4 and IPv6 differ in length."""
    return _packed(address) or ipaddress.ip_address(address).packed


def _validate_endpoint(endpoint: Endpoint, path: str, source: str) -> None:
    _check_address(endpoint.address, endpoint.port, f"{path}.address", source, listening=False)
    _check_range(endpoint.weight, 1, MAX_WEIGHT, f"{path}.weight", source)
    _check_range(endpoint.priority, 0, MAX_PRIORITY, f"{path}.priority", source)
    _check_label(endpoint.zone, f"{path}.zone", source, required=False)
    _check_choice(endpoint.health, HEALTH_STATES, "health state", f"{path}.health", source)


_ADDRESS = operator.attrgetter("address")
_PORT = operator.attrgetter("port")


@functools.lru_cache(maxsize=256)
def _plain_zone(zone: str) -> bool:
    try:
        _check_label(zone, "", "", required=False)
    except ConfigError:
        return False
    return True


def _plain_endpoint(endpoint: Endpoint) -> bool:
    """True when `endpoint` certainly passes _validate_endpoint, at a fraction of its cost (the common case of a
    large xDS update); False leaves the verdict, and the message, to _validate_endpoint."""
    return (
        1 <= endpoint.port <= 65535
        and 1 <= endpoint.weight <= MAX_WEIGHT
        and 0 <= endpoint.priority <= MAX_PRIORITY
        and endpoint.health in HEALTH_STATES
        and _plain_zone(endpoint.zone)
        and _plain_backend_ip(endpoint.address)
    )


def _check_tcp_congestion(name: str, path: str, source: str) -> None:
    if name and (why := congestion.problem(name)):
        _fail(source, path, why)


def _validate_cluster(cluster: Cluster, path: str, source: str) -> None:
    _check_label(cluster.name, f"{path}.name", source, required=True)
    _check_tcp_congestion(cluster.tcp_congestion, f"{path}.tcp_congestion", source)
    if cluster.tls is not None:
        _validate_tls(cluster.tls, f"{path}.tls", source)
    _check_choice(cluster.policy, POLICIES, "policy", f"{path}.policy", source)
    _check_duration(cluster.connect_timeout_ms, f"{path}.connect_timeout", source)
    _check_range(cluster.connect_retries, 0, MAX_CONNECT_RETRIES, f"{path}.connect_retries", source)
    _check_range(cluster.panic_threshold, 0, 100, f"{path}.panic_threshold", source)
    _check_range(cluster.overprovisioning, 100, 1000, f"{path}.overprovisioning", source)
    _check_range(cluster.ring_size, 1, MAX_RING_SIZE, f"{path}.ring_size", source)
    size_path = f"{path}.maglev_table_size"
    _check_range(cluster.maglev_table_size, MIN_MAGLEV_TABLE_SIZE, MAX_MAGLEV_TABLE_SIZE, size_path, source)
    # Maglev's permutations only spread evenly over a prime-sized table.
    if not _is_prime(cluster.maglev_table_size):
        _fail(source, size_path, f"must be a prime number (e.g. 65537), got {cluster.maglev_table_size}")
    _check_duration(cluster.ewma_decay_ms, f"{path}.ewma_decay", source)
    _validate_outlier(cluster.outlier, f"{path}.outlier_detection", source)
    _validate_breakers(cluster.circuit_breakers, f"{path}.circuit_breakers", source)
    if cluster.health_check is not None:
        _validate_health_check(cluster.health_check, f"{path}.health_check", source)

    endpoints = cluster.endpoints
    # An EndpointTable (EDS, decoded in C) holds only endpoints that _plain_endpoint passes, with this module's
    # limits (zlbfast.xds.resources gives them to the decoder), and no duplicates: checked as it was decoded.
    if not isinstance(endpoints, EndpointTable):
        _validate_endpoints(cluster, path, source)

    if cluster.policy == "maglev" and cluster.endpoints:
        # The table is built per priority level; with fewer slots than endpoints some get no traffic at all.
        counts = (endpoints.priority_counts() if isinstance(endpoints, EndpointTable)
                  else collections.Counter(e.priority for e in endpoints))
        priority, count = max(counts.items(), key=operator.itemgetter(1))
        if count > cluster.maglev_table_size:
            _fail(
                source,
                size_path,
                f"{cluster.maglev_table_size} slots cannot hold the {count} endpoints of priority {priority}",
            )


def _validate_endpoints(cluster: Cluster, path: str, source: str) -> None:
    endpoints = cluster.endpoints
    for i, endpoint in enumerate(endpoints):
        if not _plain_endpoint(endpoint):
            _validate_endpoint(endpoint, f"{path}.endpoints[{i}]", source)
    # Compared as packed IPs so that "::1" and "0::1" built in code are still caught. The set is built without a
    # Python-level loop, and only a cluster with a duplicate is walked to name it.
    keys = list(zip(map(_ip_key, map(_ADDRESS, endpoints)), map(_PORT, endpoints), strict=True))
    if len(set(keys)) != len(keys):
        seen: set[tuple[bytes, int]] = set()
        for i, key in enumerate(keys):
            if key in seen:
                shown = _format_hostport(endpoints[i].address, endpoints[i].port)
                _fail(source, f"{path}.endpoints[{i}].address",
                      f"duplicate endpoint {shown} in cluster {cluster.name!r}")
            seen.add(key)


_validate_cluster_once = _validated_once(_validate_cluster)


def _check_cluster_ref(name: str, path: str, source: str, clusters: dict[str, None]) -> None:
    if name not in clusters:
        known = f"known clusters: {', '.join(clusters)}" if clusters else "no clusters are defined"
        _fail(source, path, f"unknown cluster {name!r}{_suggest(name, clusters)}; {known}")


_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUERY_NAME_RE = re.compile(r"[!\"$%'-<>-~]+")  # printable ASCII but '#', '&' and '='
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab
# Headers that frame the message or that the proxy writes itself (csrc/http1_proxy.c): a route that added, set or
# removed them could desynchronise the proxy and the backend (request smuggling) or forge a client identity
# (x-forwarded-client-cert, which forward_client_cert governs).
_MANAGED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
     "trailer", "upgrade", "x-forwarded-client-cert"}
)  # fmt: skip
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOST_NAME_RE = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
_HOST_PORT_RE = re.compile(r"(.+?)(?::([0-9]{1,5}))?")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _check_token(name: str, path: str, source: str) -> None:
    """Header and cookie names."""
    if not _TOKEN_RE.fullmatch(name) or len(name) > MAX_HEADER_BYTES:
        _fail(source, path, f"expected an HTTP token (letters, digits and !#$%&'*+-.^_`|~), got {name!r}")


def _check_header_value(name: str, value: str, path: str, source: str) -> None:
    if _CONTROL_RE.search(value):
        _fail(source, path, f"the value for {name!r} must not contain CR, LF or other control characters, "
                            f"got {value!r}")  # fmt: skip
    if len(value.encode("utf-8")) > MAX_HEADER_BYTES:
        _fail(source, path, f"the value for {name!r} must be at most {MAX_HEADER_BYTES} bytes long")


def _is_host(host: str) -> bool:
    """A host name, an IPv4 address or a bracketed IPv6 address, as in a Host header without the port."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    return len(host) <= 253 and _HOST_NAME_RE.fullmatch(host) is not None


def _check_host(value: str, path: str, source: str) -> None:
    """A Host header value: a host and an optional :PORT."""
    match = _HOST_PORT_RE.fullmatch(value)
    if not match or not _is_host(match.group(1)) or not 1 <= int(match.group(2) or 1) <= 65535:
        _fail(source, path, "expected a host name, an IPv4 address or a bracketed IPv6 address, with an optional "
                            f":PORT, got {value!r}")  # fmt: skip


def _check_domain(domain: str, path: str, source: str, *, with_port: bool) -> None:
    """A domain of a virtual host; with_port (match_host_port): it may end in :PORT, which must then be the Host's."""
    if domain == "*":
        return
    wildcard = domain.startswith("*.")
    name = domain[2:] if wildcard else domain
    host, port = name, None
    match = _HOST_PORT_RE.fullmatch(name)
    if match and match.group(2) is not None:
        host, port = match.group(1), int(match.group(2))
    if not _is_host(host) or (wildcard and host.startswith("[")):
        what = "a host name, '*.' and a host name" + (", either with an optional :PORT," if with_port else ",")
        _fail(source, path, f"expected {what} or '*' alone, got {domain!r}")
    if port is not None and not with_port:
        _fail(source, path, f"the port of the Host header is ignored, so {domain!r} would never match; "
                            "set match_host_port: true on the listener to match it")  # fmt: skip
    if port is not None and not 1 <= port <= 65535:
        _fail(source, path, f"the port must be between 1 and 65535, got {domain!r}")


# Shorthands of Perl-style regexes and the POSIX bracket expressions that mean the same.
_POSIX_CLASSES = {"d": "[[:digit:]]", "D": "[^[:digit:]]", "s": "[[:space:]]", "S": "[^[:space:]]",
                  "w": "[[:alnum:]_]", "W": "[^[:alnum:]_]"}  # fmt: skip
_INTERVAL_RE = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}")


def _bracket_end(pattern: str, start: int) -> int:
    """The index after the bracket expression that opens at `start`: a "]" right after "[" or "[^" is a member,
    and [:class:], [.coll.] and [=equiv=] are nested."""
    i = start + 1
    i += pattern.startswith("^", i)
    i += pattern.startswith("]", i)
    while i < len(pattern) and pattern[i] != "]":
        if pattern[i] == "[" and pattern[i + 1 : i + 2] in (":", ".", "="):
            close = pattern.find(pattern[i + 1] + "]", i + 2)
            i = close + 2 if close >= 0 else len(pattern)
        else:
            i += 1
    return i + 1


def _non_posix_syntax(pattern: str) -> str | None:
    """The first construct of `pattern` that POSIX extended regexes lack or read differently, or None."""
    i, after_quantifier = 0, False
    while i < len(pattern):
        ch = pattern[i]
        quantifier = False
        if ch == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped.isalnum():
                hint = _POSIX_CLASSES.get(escaped)
                return f"'\\{escaped}'" + (f" (write {hint})" if hint else "")
            i += 2
        elif ch == "[":
            end = _bracket_end(pattern, i)
            if "\\" in pattern[i:end]:
                return f"a backslash inside {pattern[i:end]!r} (POSIX reads it as a literal backslash)"
            i = end
        elif pattern.startswith("(?", i):
            return "'(?' (non-capturing groups, lookarounds, named groups and inline flags)"
        else:
            interval = _INTERVAL_RE.match(pattern, i) if ch == "{" else None
            quantifier = ch in "*+?" or interval is not None
            if quantifier and after_quantifier:
                return f"the non-greedy or possessive quantifier {pattern[i - 1 : i + 1]!r}"
            i = interval.end() if interval else i + 1
        after_quantifier = quantifier
    return None


def check_regex(pattern: str, path: str, source: str) -> None:
    """The data plane compiles regexes with POSIX regcomp(REG_EXTENDED), anchored to the whole value. Python's re
    finds the structural mistakes (unbalanced groups, bad ranges, nothing to repeat) first; then the Perl syntax,
    which POSIX lacks or reads differently, is refused."""
    if not pattern.isprintable():
        _fail(source, path, f"a regex must not contain control characters, got {pattern!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set", for POSIX classes like [[:digit:]]
        try:
            re.compile(pattern)
        except re.error as e:
            _fail(source, path, f"invalid regex {pattern!r}: {e}")
    problem = _non_posix_syntax(pattern)
    if problem:
        _fail(source, path, f"{problem} is not POSIX extended regex syntax, which the data plane uses; "
                            f"got {pattern!r}")  # fmt: skip


def _validate_value_match(match: ValueMatch, path: str, source: str, *, query: bool) -> None:
    if not query:
        _check_token(match.name, f"{path}.name", source)
    elif not _QUERY_NAME_RE.fullmatch(match.name):
        _fail(source, f"{path}.name", "expected a query parameter name (printable ASCII without spaces, '#', '&' "
                                      f"or '='), got {match.name!r}")  # fmt: skip
    _check_choice(match.kind, MATCH_KINDS, "match kind", path, source)
    where = f"{path}.{match.kind}"
    if match.kind == "present":
        if match.value:
            _fail(source, where, f"a present match takes no value, got {match.value!r}")
    elif match.kind == "regex":
        check_regex(match.value, where, source)
    else:
        _check_header_value(match.name, match.value, where, source)


def _validate_header_ops(ops: HeaderOps, path: str, source: str) -> None:
    for side, adds, sets, removes in (
        ("request", ops.request_add, ops.request_set, ops.request_remove),
        ("response", ops.response_add, ops.response_set, ops.response_remove),
    ):
        # One YAML list holds both adds and sets, so the message names the header rather than an index.
        where = f"{path}.{side}_headers_to_add"
        replaced: set[str] = set()
        for name, value in (*adds, *sets):
            _check_managed_header(name, where, source)
            _check_header_value(name, value, where, source)
        for name, _ in sets:
            if name.lower() in replaced:
                _fail(source, where, f"header {name!r} is replaced (append: false) twice")
            replaced.add(name.lower())
        for i, name in enumerate(removes):
            _check_managed_header(name, f"{path}.{side}_headers_to_remove[{i}]", source)


def _check_managed_header(name: str, path: str, source: str) -> None:
    _check_token(name, path, source)
    if name.lower() in _MANAGED_HEADERS:
        hint = "; use host_rewrite" if name.lower() == "host" else ""
        _fail(source, path, f"the proxy manages the {name!r} header; routes cannot add, set or remove it{hint}")


def _validate_retry(retry: RetryPolicy, path: str, source: str) -> None:
    if not retry.retry_on:
        _fail(source, f"{path}.retry_on", "at least one condition is required; num_retries: 0 disables retries")
    _check_choice_list(retry.retry_on, RETRY_ON, "retry condition", f"{path}.retry_on", source)
    _check_range(retry.num_retries, 0, MAX_RETRIES, f"{path}.num_retries", source)
    _check_duration(retry.per_try_timeout_ms, f"{path}.per_try_timeout", source, minimum_ms=0)
    _check_duration(retry.backoff_base_ms, f"{path}.backoff_base_interval", source, minimum_ms=0)
    _check_duration(retry.backoff_max_ms, f"{path}.backoff_max_interval", source, minimum_ms=0)
    codes, codes_path = retry.retriable_status_codes, f"{path}.retriable_status_codes"
    if len(codes) > MAX_RETRIABLE_STATUS_CODES:
        _fail(source, codes_path, f"at most {MAX_RETRIABLE_STATUS_CODES} status codes, got {len(codes)}")
    for i, code in enumerate(codes):
        _check_range(code, 100, 599, f"{codes_path}[{i}]", source)
    if "retriable-status-codes" in retry.retry_on and not codes:
        _fail(source, codes_path, "at least one status code is required with retry_on 'retriable-status-codes'")
    if codes and "retriable-status-codes" not in retry.retry_on:
        _fail(source, codes_path, "only used with retry_on 'retriable-status-codes', which is not set")


def _validate_redirect(redirect: Redirect, path: str, source: str) -> None:
    if redirect.status not in REDIRECT_STATUSES:
        _fail(source, f"{path}.status", f"must be one of 301, 302, 303, 307 or 308, got {redirect.status}")
    if redirect.scheme and not _SCHEME_RE.fullmatch(redirect.scheme):
        _fail(source, f"{path}.scheme", f"expected a URI scheme such as https, got {redirect.scheme!r}")
    if not redirect.host:
        _fail(source, f"{path}.host", "the host to redirect to is required")
    _check_host(redirect.host, f"{path}.host", source)
    _check_target(redirect.path, f"{path}.path", source)
    size = len(f"{redirect.scheme or 'http'}{redirect.host}{redirect.path}".encode())
    if size > MAX_REDIRECT_BYTES:
        _fail(source, path, f"scheme, host and path together must be at most {MAX_REDIRECT_BYTES} bytes, got {size}")


def _validate_route_clusters(route: Route, path: str, source: str, clusters: dict[str, None] | None) -> None:
    # The YAML parser makes one cluster `cluster:` and two or more `weighted_clusters:`.
    weighted = len(route.clusters) > 1
    seen: set[str] = set()
    for i, target in enumerate(route.clusters):
        where = f"{path}.weighted_clusters[{i}]" if weighted else f"{path}.cluster"
        name_path = f"{where}.name" if weighted else where
        if clusters is not None:
            _check_cluster_ref(target.name, name_path, source, clusters)
        else:
            _check_label(target.name, name_path, source, required=True)
        if target.name in seen:
            _fail(source, name_path, f"cluster {target.name!r} is listed twice")
        seen.add(target.name)
        _check_range(target.weight, 1, MAX_WEIGHT, f"{where}.weight", source)


def _validate_route(route: Route, path: str, source: str, clusters: dict[str, None] | None) -> None:
    _check_label(route.name, f"{path}.name", source, required=False)
    match = f"{path}.match"
    _check_choice(route.path_kind, tuple(_PATH_MATCH_KEYS), "path match kind", match, source)
    where = f"{match}.{_PATH_MATCH_KEYS[route.path_kind]}"
    if route.path_kind == "regex":
        check_regex(route.path, where, source)
    else:
        _check_target(route.path, where, source)
        if "?" in route.path:
            _fail(source, where, f"the query is not part of the matched path; use match.query, got {route.path!r}")
    if route.peer is not None:
        _validate_peer_match(route.peer, f"{match}.peer", source)
    for i, header in enumerate(route.headers):
        _validate_value_match(header, f"{match}.headers[{i}]", source, query=False)
    for i, param in enumerate(route.query):
        _validate_value_match(param, f"{match}.query[{i}]", source, query=True)

    actions = bool(route.clusters) + (route.direct_status != 0) + (route.redirect is not None)
    if actions != 1:
        _fail(source, path, "needs exactly one action: cluster, weighted_clusters, direct_response (with a status) "
                            f"or redirect; got {actions}")  # fmt: skip
    if route.direct_body and not route.direct_status:
        _fail(source, f"{path}.direct_response.status", "a direct response body needs a status")
    if route.redirect is not None:
        _validate_redirect(route.redirect, f"{path}.redirect", source)
    elif route.direct_status:
        _check_range(route.direct_status, 200, 599, f"{path}.direct_response.status", source)
        body_path = f"{path}.direct_response.body"
        if "\0" in route.direct_body:
            _fail(source, body_path, "must not contain NUL characters")
        if len(route.direct_body.encode("utf-8")) > MAX_DIRECT_BODY_BYTES:
            _fail(source, body_path, f"must be at most {MAX_DIRECT_BODY_BYTES} bytes long")
    if not route.clusters:
        # The proxy answers these itself: nothing is forwarded that could be rewritten, hashed or retried.
        forwarding_only = {
            "prefix_rewrite": bool(route.prefix_rewrite),
            "host_rewrite": bool(route.host_rewrite),
            **{key: True for name, key in _HEADER_OP_KEYS.items() if getattr(route.header_ops, name)},
            "hash_policy": bool(route.hash_on),
            "timeout": route.timeout_ms != 0,
            "retry_policy": route.retry != RetryPolicy(),
        }
        answer = "redirect" if route.redirect is not None else "direct response"
        for key, is_set in forwarding_only.items():
            if is_set:
                _fail(source, f"{path}.{key}", f"only applies to routes that forward to a cluster, not to a {answer}")
        return

    _validate_route_clusters(route, path, source, clusters)
    if route.prefix_rewrite:
        if route.path_kind != "prefix":
            _fail(source, f"{path}.prefix_rewrite", "only applies to routes with a prefix match (match.prefix)")
        _check_target(route.prefix_rewrite, f"{path}.prefix_rewrite", source)
    if route.host_rewrite:
        _check_host(route.host_rewrite, f"{path}.host_rewrite", source)
    _validate_header_ops(route.header_ops, path, source)
    hash_path = f"{path}.hash_policy"
    _check_choice(route.hash_on, HASH_ON, "hash policy", hash_path, source)
    if route.hash_on in ("header", "cookie"):
        _check_token(route.hash_name, f"{hash_path}.{route.hash_on}", source)
    elif route.hash_name:
        _fail(source, hash_path, f"hashing on {route.hash_on or 'nothing'} takes no name, got {route.hash_name!r}")
    _check_duration(route.timeout_ms, f"{path}.timeout", source, minimum_ms=0)
    _validate_retry(route.retry, f"{path}.retry_policy", source)


def _validate_http_options(http: HttpOptions, path: str, source: str) -> None:
    _check_range(http.max_head, MIN_HTTP_HEAD, MAX_HTTP_HEAD, f"{path}.max_head", source)
    _check_range(http.max_request_line, MIN_REQUEST_LINE, MAX_HTTP_HEAD, f"{path}.max_request_line", source)
    if http.max_request_line > http.max_head:
        _fail(source, f"{path}.max_request_line", f"must not exceed max_head ({http.max_head}), "
                                                  f"got {http.max_request_line}")  # fmt: skip
    _check_range(http.max_headers, 1, MAX_HTTP_HEADERS, f"{path}.max_headers", source)
    _check_duration(http.header_timeout_ms, f"{path}.header_timeout", source)
    _check_duration(http.request_timeout_ms, f"{path}.request_timeout", source)
    _check_duration(http.upstream_idle_ms, f"{path}.upstream_idle", source, minimum_ms=0)
    _check_range(http.max_requests_per_conn, 0, MAX_UINT32, f"{path}.max_requests_per_conn", source)
    _check_range(http.max_idle_per_endpoint, 0, MAX_IDLE_PER_ENDPOINT, f"{path}.max_idle_per_endpoint", source)
    _check_range(http.retry_buffer, 0, MAX_RETRY_BUFFER, f"{path}.retry_buffer", source)
    _check_choice(http.forward_client_cert, XFCC_MODES, "forward_client_cert", f"{path}.forward_client_cert",
                  source)  # fmt: skip
    _check_choice_list(http.client_cert_details, XFCC_DETAILS, "client_cert_details entry",
                       f"{path}.client_cert_details", source)


class _PassedRouting:
    """Virtual-host tuples that passed validate_virtual_hosts, with the cluster names and host-port setting they
    were checked against. xDS composes every apply from the same route-table objects until RDS changes them, so an
    EDS push would otherwise re-check thousands of unchanged routes (2,000 routes: 15 ms). Entries keep their
    tuple alive, so an id is never that of another object; the oldest go past MAX. Any thread."""

    MAX = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passed: collections.OrderedDict[int, tuple[tuple[VirtualHost, ...], frozenset[str] | None, bool]] = (
            collections.OrderedDict())

    def holds(self, vhosts: tuple[VirtualHost, ...], clusters: frozenset[str] | None, match_host_port: bool) -> bool:
        with self._lock:
            entry = self._passed.get(id(vhosts))
            return entry is not None and entry[0] is vhosts and entry[1:] == (clusters, match_host_port)

    def add(self, vhosts: tuple[VirtualHost, ...], clusters: frozenset[str] | None, match_host_port: bool) -> None:
        with self._lock:
            self._passed[id(vhosts)] = (vhosts, clusters, match_host_port)
            self._passed.move_to_end(id(vhosts))
            while len(self._passed) > self.MAX:
                self._passed.popitem(last=False)


_passed_routing = _PassedRouting()


def validate_virtual_hosts(vhosts: tuple[VirtualHost, ...], path: str, source: str,
                           clusters: dict[str, None] | None, *, match_host_port: bool) -> None:
    """The routing of an http listener; `path` leads to the list (listeners[i].virtual_hosts). The xDS translator
    checks a RouteConfiguration with it before any listener uses it: it passes clusters=None, as a route may name
    a cluster that CDS has not delivered yet (Envoy answers 503 meanwhile). The same tuple checked against the same
    cluster names before passes at once (the rules depend on nothing else)."""
    cluster_names = None if clusters is None else frozenset(clusters)
    if _passed_routing.holds(vhosts, cluster_names, match_host_port):
        return
    _check_virtual_hosts(vhosts, path, source, clusters, match_host_port)
    _passed_routing.add(vhosts, cluster_names, match_host_port)


def _check_virtual_hosts(vhosts: tuple[VirtualHost, ...], path: str, source: str, clusters: dict[str, None] | None,
                         match_host_port: bool) -> None:
    names: dict[str, str] = {}
    domains: dict[str, str] = {}
    for v, vhost in enumerate(vhosts):
        vpath = f"{path}[{v}]"
        _check_label(vhost.name, f"{vpath}.name", source, required=True)
        first = names.setdefault(vhost.name, vpath)
        if first != vpath:
            _fail(source, f"{vpath}.name", f"duplicate virtual host name {vhost.name!r} (first used by {first})")
        if not vhost.domains:
            _fail(source, f"{vpath}.domains", "at least one domain is required ('*' matches every host)")
        for d, domain in enumerate(vhost.domains):
            dpath = f"{vpath}.domains[{d}]"
            _check_domain(domain, dpath, source, with_port=match_host_port)
            # Host matching ignores case, and one domain must lead to one virtual host.
            first = domains.setdefault(domain.lower(), dpath)
            if first != dpath:
                _fail(source, dpath, f"duplicate domain {domain!r} (first used by {first})")
        for r, route in enumerate(vhost.routes):
            _validate_route(route, f"{vpath}.routes[{r}]", source, clusters)


def _validate_peer_match(match: PeerMatch, path: str, source: str) -> None:
    _check_choice(match.kind, SPIFFE_MATCH_KINDS, "SPIFFE match", path, source)
    if match.kind == "trust_domain":
        td = match.value.removeprefix("spiffe://")
        if not td or not re.fullmatch(r"[a-z0-9._-]+", td):
            _fail(source, f"{path}.{match.kind}", f"{match.value!r} is not a trust domain (lower-case a-z 0-9 . - _)")
    elif not match.value.startswith("spiffe://") or len(match.value) > 255:
        _fail(source, f"{path}.{match.kind}", f"{match.value!r} is not a spiffe:// ID (at most 255 bytes)")


def _validate_authz_rule(rule: AuthzRule, protocol: str, path: str, source: str) -> None:
    if rule.peer is not None:
        _validate_peer_match(rule.peer, path, source)
    if len(rule.ports) > MAX_AUTHZ_PORTS:
        _fail(source, f"{path}.ports", f"at most {MAX_AUTHZ_PORTS} ports per rule")
    for j, port in enumerate(rule.ports):
        _check_range(port, 1, 65535, f"{path}.ports[{j}]", source)
    for key, is_set in (("methods", bool(rule.methods)), ("paths", bool(rule.paths))):
        if is_set and protocol != "http":
            _fail(source, f"{path}.{key}", f"only http listeners authorize by {key}; a {protocol} listener sees no "
                                           "requests")  # fmt: skip
    for j, method in enumerate(rule.methods):
        _check_choice(method, AUTHZ_METHODS, "HTTP method", f"{path}.methods[{j}]", source)
    if len(rule.paths) > MAX_AUTHZ_PATHS:
        _fail(source, f"{path}.paths", f"at most {MAX_AUTHZ_PATHS} paths per rule")
    for j, pm in enumerate(rule.paths):
        _check_choice(pm.kind, AUTHZ_PATH_KINDS, "path match", f"{path}.paths[{j}]", source)
        if not pm.value.startswith("/") or len(pm.value.encode()) > MAX_AUTHZ_PATH_BYTES:
            _fail(source, f"{path}.paths[{j}].{pm.kind}",
                  f"expected a path starting with / of at most {MAX_AUTHZ_PATH_BYTES} bytes, got {pm.value!r}")


def _validate_tls(tls: ListenerTls | ClusterTls, path: str, source: str, protocol: str = "tcp") -> None:
    for key in ("cert", "key", "bundle"):
        if bool(getattr(tls, key)) == bool(tls.identity):
            _fail(source, f"{path}.{key}", "expected a file path" if not tls.identity else
                  f"not with an identity installed by name ({tls.identity!r})")
    if len(tls.identity.encode()) > MAX_NAME_BYTES:
        _fail(source, f"{path}.identity", f"must be at most {MAX_NAME_BYTES} bytes long")
    _check_choice(tls.min_version, TLS_VERSIONS, "min_version", f"{path}.min_version", source)
    if tls.peer is not None:
        _validate_peer_match(tls.peer, f"{path}.peer", source)
    if len(",".join(tls.alpn)) > 255 or any(not 0 < len(p.encode()) < 256 or "," in p for p in tls.alpn):
        _fail(source, f"{path}.alpn", "protocol names of 1-255 bytes without commas, 255 bytes in all")
    if isinstance(tls, ClusterTls):
        if len(tls.sni.encode()) > 255:
            _fail(source, f"{path}.sni", "at most 255 bytes")
        return
    _check_choice(tls.mode, TLS_MODES, "mode", f"{path}.mode", source)
    _check_duration(tls.handshake_timeout_ms, f"{path}.handshake_timeout", source)
    if protocol == "http" and tls.alpn not in ((), ("http/1.1",)):
        _fail(source, f"{path}.alpn", f"an http listener speaks HTTP/1.1 only: alpn may list http/1.1 (the default), "
                                      f"got {', '.join(tls.alpn)}")  # fmt: skip
    for key, rules in (("allow", tls.allow), ("deny", tls.deny)):
        if len(rules) > MAX_AUTHZ_RULES:
            _fail(source, f"{path}.{key}", f"at most {MAX_AUTHZ_RULES} rules")
        for i, rule in enumerate(rules):
            _validate_authz_rule(rule, protocol, f"{path}.{key}[{i}]", source)


def _validate_listener(listener: Listener, path: str, source: str, clusters: dict[str, None]) -> None:
    _check_label(listener.name, f"{path}.name", source, required=True)
    _check_address(listener.address, listener.port, f"{path}.address", source, listening=True)
    _check_tcp_congestion(listener.tcp_congestion, f"{path}.tcp_congestion", source)
    _check_choice(listener.protocol, PROTOCOLS, "protocol", f"{path}.protocol", source)
    if listener.protocol == "http":
        if listener.cluster:
            _fail(source, f"{path}.cluster", "an http listener takes no cluster; its routes name the clusters")
        _validate_http_options(listener.http, f"{path}.http", source)
        validate_virtual_hosts(listener.virtual_hosts, f"{path}.virtual_hosts", source, clusters,
                               match_host_port=listener.match_host_port)
        if listener.tls is None:
            # A client without TLS has no verified ID: such a route could never match.
            for v, vhost in enumerate(listener.virtual_hosts):
                for r, route in enumerate(vhost.routes):
                    if route.peer is not None:
                        _fail(source, f"{path}.virtual_hosts[{v}].routes[{r}].match.peer",
                              "matches the client's SPIFFE ID, which needs tls on the listener")
    else:
        if not listener.cluster:
            _fail(source, f"{path}.cluster", f"required key 'cluster' is missing (a {listener.protocol} listener "
                                             "sends every connection to one cluster)")  # fmt: skip
        _check_cluster_ref(listener.cluster, f"{path}.cluster", source, clusters)
        for key, is_set in (("virtual_hosts", bool(listener.virtual_hosts)), ("http", listener.http != HttpOptions()),
                            ("match_host_port", listener.match_host_port)):
            if is_set:
                _fail(source, f"{path}.{key}", "only http listeners take this key; set protocol: http")
    _check_range(listener.max_connections, 1, MAX_CONNECTIONS, f"{path}.max_connections", source)
    if listener.tls is not None:
        _validate_tls(listener.tls, f"{path}.tls", source, listener.protocol)
    # 0 = no idle timeout (the engine's convention, see zlb_listener_opts in csrc/engine.h).
    _check_duration(listener.idle_timeout_ms, f"{path}.idle_timeout", source, minimum_ms=0)


def validate(cfg: Config) -> None:
    """Raises ConfigError for the first rule `cfg` breaks; paths name the YAML keys."""
    source = cfg.source
    _check_range(cfg.workers, 0, MAX_WORKERS, "workers", source)
    _check_label(cfg.local_zone, "local_zone", source, required=False)
    # 0 is meaningful here: close remaining connections at once.
    _check_duration(cfg.drain_timeout_ms, "drain_timeout", source, minimum_ms=0)

    cluster_names = dict.fromkeys(cluster.name for cluster in cfg.clusters)  # ordered for messages, O(1) lookups
    names: dict[str, str] = {}
    bound: dict[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], str] = {}
    for i, listener in enumerate(cfg.listeners):
        path = f"listeners[{i}]"
        _validate_listener(listener, path, source, cluster_names)
        first = names.setdefault(listener.name, path)
        if first != path:
            _fail(
                source, f"{path}.name", f"duplicate listener name {listener.name!r} (first used by {first})"
            )
        # Every worker binds with SO_REUSEPORT, so a second listener on the same address would not fail to
        # bind: the kernel would silently split connections between two clusters.
        if listener.port != 0:
            first = bound.setdefault((ipaddress.ip_address(listener.address), listener.port), path)
            if first != path:
                shown = _format_hostport(listener.address, listener.port)
                _fail(source, f"{path}.address", f"{shown} is already used by {first}")

    seen_clusters: dict[str, str] = {}
    for i, cluster in enumerate(cfg.clusters):
        path = f"clusters[{i}]"
        _validate_cluster_once(cluster, path, source)
        first = seen_clusters.setdefault(cluster.name, path)
        if first != path:
            _fail(source, f"{path}.name", f"duplicate cluster name {cluster.name!r} (first used by {first})")


# ---------------------------------------------------------------------------------------------------------
# `zlbfast proxy --from A --to B --to C`

# Where a problem in the generated config comes from on the command line (longest prefixes first).
_CLI_OPTIONS = (
    ("listeners[0].tcp_congestion", "--tcp-congestion"),
    ("clusters[0].tcp_congestion", "--tcp-congestion"),
    ("listeners[0].protocol", "--mode"),
    ("listeners[0]", "--from"),
    ("clusters[0].endpoints", "--to"),
    ("clusters[0].policy", "--policy"),
    ("workers", "--workers"),
)


def proxy_config(
    listen: str,
    targets: list[str],
    policy: str = "round_robin",
    workers: int = 0,
    mode: str = "tcp",
    tcp_congestion: str = "",
) -> Config:
    """A one-listener, one-cluster config ("proxy"/"proxy") from command-line options. `mode` is the listener's
    protocol; an "http" listener has one virtual host for every domain ("*") with one route ("/") to the cluster.
    `tcp_congestion` applies to both sides: the listener's accepted sockets and the cluster's upstream ones.

    It goes through parse_config like a file would, so the command line obeys the same rules; only the
    error paths are translated to the option that caused them.
    """
    listener: dict[str, Any] = {"name": "proxy", "address": listen, "protocol": mode}
    cluster: dict[str, Any] = {"name": "proxy", "policy": policy, "endpoints": list(targets)}
    if tcp_congestion:
        listener["tcp_congestion"] = cluster["tcp_congestion"] = tcp_congestion
    if mode == "http":
        listener["virtual_hosts"] = [{"name": "proxy", "routes": [{"match": {"prefix": "/"}, "cluster": "proxy"}]}]
    else:
        listener["cluster"] = "proxy"
    data = {
        "workers": workers,
        "listeners": [listener],
        "clusters": [cluster],
    }
    try:
        return parse_config(data, "command line")
    except ConfigError as e:
        option = next((opt for prefix, opt in _CLI_OPTIONS if e.path.startswith(prefix)), e.path)
        raise ConfigError(e.file, option, e.problem) from None


# Top-level keys that mark an Envoy v3 bootstrap rather than a zlbfast file.
ENVOY_BOOTSTRAP_KEYS = frozenset({"node", "static_resources", "dynamic_resources", "admin"})


def is_envoy_bootstrap(data: object) -> bool:
    """True for a parsed document that is an Envoy v3 bootstrap (handled by zlbfast.xds)."""
    return isinstance(data, dict) and bool(ENVOY_BOOTSTRAP_KEYS & set(data))
