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
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NoReturn, TypeVar

import yaml

from .model import (
    HEALTH_CHECK_TYPES,
    HEALTH_STATES,
    POLICIES,
    PROTOCOLS,
    Cluster,
    Config,
    Endpoint,
    HealthCheck,
    Listener,
    OutlierDetection,
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
MAX_HEALTH_PATH_BYTES = 1024


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
)


def _cluster(value: object, path: str, source: str) -> Cluster:
    return _build(Cluster, _CLUSTER_KEYS, value, path, source, "a mapping")


_LISTENER_KEYS = (
    _Key("name", ("name",), _string, required=True),
    _Key("address", ("address", "port"), _address, required=True),
    _Key("cluster", ("cluster",), _string, required=True),
    _Key("max_connections", ("max_connections",), _integer),
    _Key("idle_timeout", ("idle_timeout_ms",), parse_duration_ms),
    _Key("protocol", ("protocol",), _string),
)


def _listener(value: object, path: str, source: str) -> Listener:
    return _build(Listener, _LISTENER_KEYS, value, path, source, "a mapping")


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
    because a control plane (zlbfast.xds) delivers clusters before listeners and may empty a cluster."""
    if not cfg.listeners:
        _fail(cfg.source, "listeners", "at least one listener is required")
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


def _check_choice(value: str, choices: tuple[str, ...], what: str, path: str, source: str) -> None:
    if value not in choices:
        _fail(
            source,
            path,
            f"unknown {what} {value!r}{_suggest(value, choices)}; expected one of: {', '.join(choices)}",
        )


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


def _validate_health_check(check: HealthCheck, path: str, source: str) -> None:
    _check_choice(check.type, HEALTH_CHECK_TYPES, "health check type", f"{path}.type", source)
    # The path goes verbatim into a request line: it must be an origin-form target that cannot split it.
    if not check.path.startswith("/") or not check.path.isprintable() or any(ch.isspace() for ch in check.path):
        _fail(source, f"{path}.path", f"must start with '/' and contain no spaces or control characters, "
                                      f"got {check.path!r}")
    if len(check.path.encode("utf-8")) > MAX_HEALTH_PATH_BYTES:
        _fail(source, f"{path}.path", f"must be at most {MAX_HEALTH_PATH_BYTES} bytes long")
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
# one cluster, or some endpoints of one, among thousands, and Engine.apply validates the whole config; the unchanged
# parts are the very same frozen objects, and judging them again would cost microseconds per endpoint on every
# update.
_VALIDATED: dict[int, weakref.ref[Any]] = {}
# The latest cluster of each name that passed validation. Its endpoints are valid, and keep their ids while it is
# alive, so the next version of the cluster (an EDS update) judges only the endpoints it does not share with it.
# One weak reference per cluster, not one per endpoint: registering 10,000 new endpoints one by one cost more than
# judging them.
_LAST_VALID: dict[str, weakref.ref[Cluster]] = {}


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


@functools.lru_cache(maxsize=1 << 16)
def _ip_key(address: str) -> bytes:
    """The address as bytes for the duplicate check, which runs on every validation of a cluster: cached because
    xDS updates repeat the same addresses, bytes because they hash in C (IPv4 and IPv6 differ in length)."""
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


def _remember_valid(cluster: Cluster) -> None:
    name = cluster.name

    def forget(ref: weakref.ref[Cluster]) -> None:
        if _LAST_VALID.get(name) is ref:
            del _LAST_VALID[name]

    _LAST_VALID[name] = weakref.ref(cluster, forget)


def _validate_cluster(cluster: Cluster, path: str, source: str) -> None:
    _check_label(cluster.name, f"{path}.name", source, required=True)
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
    if cluster.health_check is not None:
        _validate_health_check(cluster.health_check, f"{path}.health_check", source)

    endpoints = cluster.endpoints
    last_ref = _LAST_VALID.get(cluster.name)
    last = last_ref() if last_ref is not None else None
    shared = set(map(id, last.endpoints)) if last is not None else set()
    for i, endpoint in enumerate(endpoints):
        if id(endpoint) not in shared and not _plain_endpoint(endpoint):
            _validate_endpoint(endpoint, f"{path}.endpoints[{i}]", source)
    # Compared as packed IPs so that "::1" and "0::1" built in code are still caught. The set is built without a
    # Python-level loop (10,000 endpoints: 2 ms instead of 9), and only a cluster with a duplicate is walked to name it.
    keys = list(zip(map(_ip_key, map(_ADDRESS, endpoints)), map(_PORT, endpoints), strict=True))
    if len(set(keys)) != len(keys):
        seen: set[tuple[bytes, int]] = set()
        for i, key in enumerate(keys):
            if key in seen:
                shown = _format_hostport(endpoints[i].address, endpoints[i].port)
                _fail(source, f"{path}.endpoints[{i}].address",
                      f"duplicate endpoint {shown} in cluster {cluster.name!r}")
            seen.add(key)

    if cluster.policy == "maglev" and cluster.endpoints:
        # The table is built per priority level; with fewer slots than endpoints some get no traffic at all.
        priority, count = collections.Counter(e.priority for e in cluster.endpoints).most_common(1)[0]
        if count > cluster.maglev_table_size:
            _fail(
                source,
                size_path,
                f"{cluster.maglev_table_size} slots cannot hold the {count} endpoints of priority {priority}",
            )


def _validate_and_remember(cluster: Cluster, path: str, source: str) -> None:
    _validate_cluster(cluster, path, source)
    _remember_valid(cluster)


_validate_cluster_once = _validated_once(_validate_and_remember)


def _validate_listener(listener: Listener, path: str, source: str, clusters: list[str]) -> None:
    _check_label(listener.name, f"{path}.name", source, required=True)
    _check_address(listener.address, listener.port, f"{path}.address", source, listening=True)
    if listener.cluster not in clusters:
        known = f"known clusters: {', '.join(clusters)}" if clusters else "no clusters are defined"
        _fail(
            source,
            f"{path}.cluster",
            f"unknown cluster {listener.cluster!r}{_suggest(listener.cluster, clusters)}; {known}",
        )
    _check_range(listener.max_connections, 1, MAX_CONNECTIONS, f"{path}.max_connections", source)
    # 0 = no idle timeout (the engine's convention, see zlb_listener_opts in csrc/engine.h).
    _check_duration(listener.idle_timeout_ms, f"{path}.idle_timeout", source, minimum_ms=0)
    _check_choice(listener.protocol, PROTOCOLS, "protocol", f"{path}.protocol", source)


def validate(cfg: Config) -> None:
    """Raises ConfigError for the first rule `cfg` breaks; paths name the YAML keys."""
    source = cfg.source
    _check_range(cfg.workers, 0, MAX_WORKERS, "workers", source)
    _check_label(cfg.local_zone, "local_zone", source, required=False)
    # 0 is meaningful here: close remaining connections at once.
    _check_duration(cfg.drain_timeout_ms, "drain_timeout", source, minimum_ms=0)

    cluster_names = [cluster.name for cluster in cfg.clusters]
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
    ("listeners[0]", "--from"),
    ("clusters[0].endpoints", "--to"),
    ("clusters[0].policy", "--policy"),
    ("workers", "--workers"),
)


def proxy_config(listen: str, targets: list[str], policy: str = "round_robin", workers: int = 0) -> Config:
    """A one-listener, one-cluster config ("proxy"/"proxy") from command-line options.

    It goes through parse_config like a file would, so the command line obeys the same rules; only the
    error paths are translated to the option that caused them.
    """
    data = {
        "workers": workers,
        "listeners": [{"name": "proxy", "address": listen, "cluster": "proxy"}],
        "clusters": [{"name": "proxy", "policy": policy, "endpoints": list(targets)}],
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
