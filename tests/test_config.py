"""Tests of the YAML configuration loader and the model rules (zlbfast/config.py, docs/config.md)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from zlbfast.config import (
    ConfigError,
    load_config,
    parse_config,
    parse_duration_ms,
    parse_hostport,
    proxy_config,
    validate,
)
from zlbfast.model import (
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
    Redirect,
    RetryPolicy,
    Route,
    ValueMatch,
    VirtualHost,
    WeightedCluster,
)

ROOT = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "listeners": [{"name": "web", "address": "127.0.0.1:9000", "cluster": "backend"}],
    "clusters": [{"name": "backend", "endpoints": ["127.0.0.1:9001", {"address": "127.0.0.1:9002"}]}],
}


def write(tmp_path: Path, text: str, name: str = "zlb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def load_error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == str(path)
    assert str(err) == (f"{path}: {err.path}: {err.problem}" if err.path else f"{path}: {err.problem}")
    return err, path


# ---------------------------------------------------------------------------------------------------------
# Accepted configurations


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, yaml.safe_dump(BASE))
    assert cfg.workers == 0
    assert cfg.local_zone == ""
    assert cfg.drain_timeout_ms == 30000
    assert cfg.source == str(tmp_path / "zlb.yaml")
    (listener,) = cfg.listeners
    assert listener == Listener(
        name="web",
        address="127.0.0.1",
        port=9000,
        cluster="backend",
        max_connections=10000,
        idle_timeout_ms=3600000,
        protocol="tcp",
    )
    (cluster,) = cfg.clusters
    assert (cluster.policy, cluster.connect_timeout_ms, cluster.connect_retries) == ("round_robin", 5000, 2)
    assert (cluster.panic_threshold, cluster.overprovisioning) == (50, 140)
    assert (cluster.ring_size, cluster.maglev_table_size, cluster.ewma_decay_ms) == (1024, 65537, 10000)
    assert cluster.outlier == OutlierDetection(
        consecutive_failures=5,
        base_ejection_time_ms=30000,
        max_ejection_time_ms=300000,
        max_ejection_percent=10,
    )
    # The shorthand string and the mapping with only an address give the same kind of endpoint.
    assert cluster.endpoints == (
        Endpoint("127.0.0.1", 9001, weight=1, priority=0, zone="", health="healthy"),
        Endpoint("127.0.0.1", 9002, weight=1, priority=0, zone="", health="healthy"),
    )


FULL = """
workers: 3
local_zone: zone-a
drain_timeout: 2.5s
listeners:
  - name: web
    address: 0.0.0.0:9000
    cluster: backend
    max_connections: 500
    idle_timeout: 90s
    protocol: tcp
  - name: admin-side
    address: "[::]:0"
    cluster: backend
clusters:
  - name: backend
    policy: maglev
    connect_timeout: 250ms
    connect_retries: 0
    panic_threshold: 0
    overprovisioning: 200
    ring_size: 64
    maglev_table_size: 7
    ewma_decay: 1m
    outlier_detection: {consecutive_failures: 0, base_ejection_time: 1s, max_ejection_time: 1h,
                        max_ejection_percent: 100}
    endpoints:
      - address: 10.0.0.1:80
        weight: 1000000
        priority: 127
        zone: zone-b
        health: degraded
      - address: "[2001:DB8:0:0::5]:443"
        health: unhealthy
      - 10.0.0.2:65535
"""


def test_every_key_is_read_into_the_model(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, FULL)
    assert cfg == Config(
        workers=3,
        local_zone="zone-a",
        drain_timeout_ms=2500,
        source=str(tmp_path / "zlb.yaml"),
        listeners=(
            Listener("web", "0.0.0.0", 9000, "backend", max_connections=500, idle_timeout_ms=90000),
            Listener("admin-side", "::", 0, "backend"),
        ),
        clusters=(
            Cluster(
                name="backend",
                policy="maglev",
                connect_timeout_ms=250,
                connect_retries=0,
                panic_threshold=0,
                overprovisioning=200,
                ring_size=64,
                maglev_table_size=7,
                ewma_decay_ms=60000,
                outlier=OutlierDetection(0, 1000, 3600000, 100),
                endpoints=(
                    Endpoint("10.0.0.1", 80, weight=1000000, priority=127, zone="zone-b", health="degraded"),
                    # IPv6 comes back canonical: lower case, zeros compressed, no brackets.
                    Endpoint("2001:db8::5", 443, health="unhealthy"),
                    Endpoint("10.0.0.2", 65535),
                ),
            ),
        ),
    )


def test_listeners_on_port_zero_may_share_an_address(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["listeners"] = [
        {"name": "a", "address": "127.0.0.1:0", "cluster": "backend"},
        {"name": "b", "address": "127.0.0.1:0", "cluster": "backend"},
    ]
    cfg = load_text(tmp_path, yaml.safe_dump(data))
    assert [(lst.name, lst.port) for lst in cfg.listeners] == [("a", 0), ("b", 0)]


def test_yaml_merge_keys_share_settings_and_may_be_overridden(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """
listeners: [{name: web, address: "127.0.0.1:9000", cluster: a}]
clusters:
  - &a {name: a, policy: random, connect_timeout: 2s, endpoints: ["127.0.0.1:1"]}
  - <<: *a
    name: b
    policy: weighted
""",
    )
    a, b = cfg.clusters
    assert (a.name, a.policy, a.connect_timeout_ms) == ("a", "random", 2000)
    assert (b.name, b.policy, b.connect_timeout_ms, b.endpoints) == ("b", "weighted", 2000, a.endpoints)


def test_example_files_load() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert {ROOT / "examples" / "l4.yaml", ROOT / "examples" / "http.yaml"} <= set(examples)
    for example in examples:
        cfg = load_config(example)
        assert cfg.listeners and cfg.clusters


def test_docs_complete_example_loads_and_states_the_real_defaults(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    match = re.search(r"## Complete example.*?```yaml\n(.*?)```", doc, re.S)
    assert match, "docs/config.md lost its complete example"
    cfg = load_text(tmp_path, match.group(1))
    # The docs say every key shows its default unless a comment says otherwise: hold them to it.
    assert cfg.workers == 0 and cfg.drain_timeout_ms == Config((), ()).drain_timeout_ms
    (listener,) = cfg.listeners
    assert listener == Listener(listener.name, listener.address, listener.port, listener.cluster)
    (cluster,) = cfg.clusters
    assert cluster == Cluster(cluster.name, cluster.endpoints)
    first, ipv6, shorthand = cluster.endpoints
    assert first == Endpoint(first.address, first.port, zone=first.zone)
    assert ipv6.address == "fd00::12"
    assert shorthand == Endpoint("10.0.0.13", 8080)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("250ms", 250), ("1s", 1000), ("1.5s", 1500), ("0.001s", 1), ("2m", 120000), ("1h", 3600000),
     ("0s", 0), (750, 750), (0, 0)],
)  # fmt: skip
def test_durations(text: object, ms: int) -> None:
    assert parse_duration_ms(text, "x", "f") == ms


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("1.5ms", "millisecond resolution"),
        ("0.0001s", "millisecond resolution"),
        (-1, "must not be negative"),
        ("-1s", "expected a duration"),
        ("10", "expected a duration"),
        ("1m30s", "expected a duration"),
        ("5 s", "expected a duration"),
        ("1d", "expected a duration"),
        (1.5, "got 1.5"),
        (True, "got true (a boolean)"),
        (None, "got null"),
    ],
)
def test_bad_durations(value: object, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration_ms(value, "clusters[0].connect_timeout", "f.yaml")
    assert info.value.path == "clusters[0].connect_timeout"
    assert phrase in info.value.problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:65535", ("::1", 65535)),
        ("[0:0::FFFF:10.1.2.3]:8080", ("::ffff:a01:203", 8080)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "x", "f") == expected


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("foo", "the :PORT part is missing"),
        ("127.0.0.1", "the :PORT part is missing"),
        ("localhost:80", "host names are not resolved"),
        ("::1:80", "write IPv6 addresses in brackets"),
        ("[::1]80", "the :PORT part is missing"),
        ("[127.0.0.1]:80", "brackets are only for IPv6"),
        ("127.0.0.1:65536", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:", "the port must be a number from 0 to 65535"),
        ("010.0.0.1:80", "host names are not resolved"),
    ],
)
def test_bad_hostport(text: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hostport(text, "--to", "command line")
    assert info.value.path == "--to"
    assert info.value.problem.startswith(f"expected HOST:PORT with a numeric IP address, got {text!r}")
    assert phrase in info.value.problem


# ---------------------------------------------------------------------------------------------------------
# Rejected configurations: one case per kind of mistake, each naming the exact field path.

_DELETE = object()


def edit(*steps: tuple[str, object], base: dict[str, Any] = BASE) -> dict[str, Any]:
    """`base` with values replaced, appended (index == length) or deleted at dotted paths such as
    "clusters.0.endpoints.1.weight"."""
    data = copy.deepcopy(base)
    for dotted, value in steps:
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if isinstance(node, list) and key == len(node):
            node.append(value)
        elif value is _DELETE:
            del node[key]
        else:
            node[key] = value
    return data


EP = "clusters[0].endpoints[1]"
ERROR_CASES = [
    # keys
    ("unknown top-level key", edit(("wokers", 2)), "wokers",
     "unknown key 'wokers' (did you mean 'workers'?)"),
    ("unknown nested key", edit(("clusters.0.endpoints.1.wieght", 2)), f"{EP}.wieght",
     "allowed keys here: address, health, priority, weight, zone"),
    ("missing required key", edit(("listeners.0.cluster", _DELETE)), "listeners[0].cluster",
     "required key 'cluster' is missing (a tcp listener sends every connection to one cluster)"),
    ("missing clusters", edit(("clusters", _DELETE)), "clusters", "required key 'clusters' is missing"),
    ("endpoint without address", edit(("clusters.0.endpoints.1", {"weight": 2})), f"{EP}.address",
     "required key 'address' is missing"),
    # types
    ("bool is not an int", edit(("clusters.0.endpoints.1.weight", True)), f"{EP}.weight",
     "expected an integer, got true (a boolean)"),
    ("float is not an int", edit(("workers", 1.5)), "workers", "expected an integer, got 1.5"),
    ("numeric string is not an int", edit(("clusters.0.ring_size", "64")), "clusters[0].ring_size",
     "expected an integer, got '64'"),
    ("number is not a name", edit(("clusters.0.name", 7)), "clusters[0].name",
     "expected a string, got 7; put it in quotes"),
    ("list where a mapping belongs", edit(("clusters.0.outlier_detection", [1])),
     "clusters[0].outlier_detection", "expected a mapping, got a list"),
    ("mapping where a list belongs", edit(("listeners", {"name": "web"})), "listeners",
     "expected a list, got a mapping"),
    ("endpoint of the wrong type", edit(("clusters.0.endpoints.1", 80)), EP,
     "expected HOST:PORT or a mapping with an address, got 80"),
    ("address of the wrong type", edit(("listeners.0.address", 9000)), "listeners[0].address",
     "expected HOST:PORT with a numeric IP address, got 9000"),
    # addresses
    ("address not HOST:PORT", edit(("clusters.0.endpoints.2", "foo")), "clusters[0].endpoints[2].address",
     "expected HOST:PORT with a numeric IP address, got 'foo'"),
    ("mapping address not HOST:PORT", edit(("clusters.0.endpoints.1.address", "foo")), f"{EP}.address",
     "expected HOST:PORT with a numeric IP address, got 'foo'"),
    ("endpoint port 0", edit(("clusters.0.endpoints.1.address", "127.0.0.1:0")), f"{EP}.address",
     "the port must be between 1 and 65535, got 0"),
    ("unspecified endpoint", edit(("clusters.0.endpoints.1.address", "0.0.0.0:80")), f"{EP}.address",
     "cannot connect to the unspecified address 0.0.0.0:80"),
    ("multicast listener", edit(("listeners.0.address", "[ff02::1]:80")), "listeners[0].address",
     "[ff02::1]:80 is a multicast address"),
    ("scope id", edit(("listeners.0.address", "[fe80::1%eth0]:80")), "listeners[0].address",
     "IPv6 scope ids ('%eth0') are not supported"),
    # value ranges
    ("workers", edit(("workers", 1025)), "workers", "must be between 0 and 1024, got 1025"),
    ("weight 0", edit(("clusters.0.endpoints.1.weight", 0)), f"{EP}.weight",
     "must be between 1 and 1000000, got 0"),
    ("weight too big", edit(("clusters.0.endpoints.1.weight", 1000001)), f"{EP}.weight",
     "between 1 and 1000000, got 1000001"),
    ("priority", edit(("clusters.0.endpoints.1.priority", 128)), f"{EP}.priority",
     "between 0 and 127, got 128"),
    ("panic threshold", edit(("clusters.0.panic_threshold", 101)), "clusters[0].panic_threshold",
     "between 0 and 100, got 101"),
    ("overprovisioning", edit(("clusters.0.overprovisioning", 99)), "clusters[0].overprovisioning",
     "between 100 and 1000, got 99"),
    ("connect retries", edit(("clusters.0.connect_retries", -1)), "clusters[0].connect_retries",
     "between 0 and 100, got -1"),
    ("ring size", edit(("clusters.0.ring_size", 0)), "clusters[0].ring_size", "between 1 and 1000000, got 0"),
    ("max ejection percent", edit(("clusters.0.outlier_detection", {"max_ejection_percent": 101})),
     "clusters[0].outlier_detection.max_ejection_percent", "between 0 and 100, got 101"),
    ("max connections", edit(("listeners.0.max_connections", 0)), "listeners[0].max_connections",
     "between 1 and 10000000, got 0"),
    ("maglev not prime", edit(("clusters.0.maglev_table_size", 65536)), "clusters[0].maglev_table_size",
     "must be a prime number (e.g. 65537), got 65536"),
    ("maglev too small", edit(("clusters.0.maglev_table_size", 5)), "clusters[0].maglev_table_size",
     "between 7 and 1000003, got 5"),
    ("maglev table smaller than the endpoints",
     edit(("clusters.0.policy", "maglev"), ("clusters.0.maglev_table_size", 7),
          ("clusters.0.endpoints", [f"127.0.0.1:{p}" for p in range(1, 9)])),
     "clusters[0].maglev_table_size", "7 slots cannot hold the 8 endpoints of priority 0"),
    # durations
    ("zero timeout", edit(("clusters.0.connect_timeout", "0s")), "clusters[0].connect_timeout",
     "must be between 1ms and 720h, got 0ms"),
    ("too long", edit(("drain_timeout", "721h")), "drain_timeout",
     "must be between 0ms and 720h, got 2595600000ms"),
    ("bad duration text", edit(("listeners.0.idle_timeout", "forever")), "listeners[0].idle_timeout",
     "expected a duration such as 250ms, 1.5s, 2m or 1h"),
    ("max ejection shorter than base",
     edit(("clusters.0.outlier_detection", {"base_ejection_time": "1m", "max_ejection_time": "30s"})),
     "clusters[0].outlier_detection.max_ejection_time",
     "must not be shorter than base_ejection_time (60000ms), got 30000ms"),
    # names and choices
    ("empty name", edit(("listeners.0.name", "")), "listeners[0].name", "must not be empty"),
    ("name with a space", edit(("clusters.0.name", "my backend"), ("listeners.0.cluster", "my backend")),
     "clusters[0].name", "must contain only printable characters and no spaces, got 'my backend'"),
    ("name too long", edit(("listeners.0.name", "é" * 64)), "listeners[0].name",
     "at most 127 bytes long, got 128"),
    ("unknown policy", edit(("clusters.0.policy", "leastrequest")), "clusters[0].policy",
     "unknown policy 'leastrequest' (did you mean 'least_request'?); expected one of: round_robin,"),
    ("unknown health", edit(("clusters.0.endpoints.1.health", "down")), f"{EP}.health",
     "unknown health state 'down'; expected one of: healthy, degraded, unhealthy"),
    ("unknown protocol", edit(("listeners.0.protocol", "udp")), "listeners[0].protocol",
     "unknown protocol 'udp'"),
    # cross-references and uniqueness
    ("listener to unknown cluster", edit(("listeners.0.cluster", "backnd")), "listeners[0].cluster",
     "unknown cluster 'backnd' (did you mean 'backend'?); known clusters: backend"),
    ("no clusters at all", edit(("clusters", [])), "listeners[0].cluster", "no clusters are defined"),
    ("no listeners", edit(("listeners", [])), "listeners", "at least one listener is required"),
    ("no endpoints", edit(("clusters.0.endpoints", [])), "clusters[0].endpoints",
     "at least one endpoint is required"),
    ("duplicate endpoint", edit(("clusters.0.endpoints.1", {"address": "127.0.0.1:9001", "weight": 3})),
     f"{EP}.address", "duplicate endpoint 127.0.0.1:9001 in cluster 'backend'"),
    ("duplicate IPv6 endpoint written differently",
     edit(("clusters.0.endpoints", ["[::1]:80", "[0:0::1]:80"])), "clusters[0].endpoints[1].address",
     "duplicate endpoint [::1]:80"),
    ("duplicate listener name",
     edit(("listeners.1", {"name": "web", "address": "127.0.0.1:9100", "cluster": "backend"})),
     "listeners[1].name", "duplicate listener name 'web' (first used by listeners[0])"),
    ("duplicate listener address",
     edit(("listeners.1", {"name": "web2", "address": "127.0.0.1:9000", "cluster": "backend"})),
     "listeners[1].address", "127.0.0.1:9000 is already used by listeners[0]"),
    ("duplicate cluster name", edit(("clusters.1", {"name": "backend", "endpoints": ["127.0.0.1:1"]})),
     "clusters[1].name", "duplicate cluster name 'backend' (first used by clusters[0])"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "path", "phrase"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_config_errors_name_the_field(tmp_path: Path, data: dict[str, Any], path: str, phrase: str) -> None:
    err, _ = load_error(tmp_path, yaml.safe_dump(data))
    assert err.path == path
    assert phrase in err.problem


def test_empty_file(tmp_path: Path) -> None:
    err, _ = load_error(tmp_path, "# nothing yet\n")
    assert err.path == ""
    assert "the configuration is empty" in err.problem


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    err, _ = load_error(tmp_path, "- listeners\n")
    assert err.path == ""
    assert (
        "expected a mapping with the keys 'listeners' and 'clusters' at the top level, got a list"
        in err.problem
    )


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    err, _ = load_error(tmp_path, "listeners:\n  - name: web\n   address: x\n")
    assert err.path == ""
    assert err.problem.startswith("invalid YAML at line 3, column")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE) + "clusters: []\n"
    err, _ = load_error(tmp_path, text)
    line = text.splitlines().index("clusters: []") + 1
    assert err.problem.startswith(f"invalid YAML at line {line}, column 1: found duplicate key 'clusters'")


@pytest.mark.parametrize("endpoint", ["- address: [::1]:80", "- [2001:db8::5]:443"])
def test_unquoted_ipv6_address_gets_a_quoting_hint(tmp_path: Path, endpoint: str) -> None:
    text = yaml.safe_dump(BASE).replace("- 127.0.0.1:9001", endpoint)
    line = text.splitlines().index(f"  {endpoint}") + 1
    err, _ = load_error(tmp_path, text)
    assert err.path == ""
    assert err.problem.startswith(f"invalid YAML at line {line}, ")
    assert err.problem.endswith('; IPv6 addresses must be quoted, e.g. "[::1]:80"')


def test_unquoted_ipv6_address_without_port_gets_a_quoting_hint(tmp_path: Path) -> None:
    # Without a port YAML parses the value as a one-element list instead of failing.
    text = yaml.safe_dump(BASE).replace("- 127.0.0.1:9001", "- address: [fd00::1]")
    err, _ = load_error(tmp_path, text)
    assert err.path == "clusters[0].endpoints[0].address"
    assert 'got a list; quote IPv6 addresses, e.g. "[::1]:80"' in err.problem


def test_yes_as_a_zone_is_reported_as_a_boolean(tmp_path: Path) -> None:
    err, _ = load_error(tmp_path, yaml.safe_dump(BASE) + "local_zone: yes\n")
    assert err.path == "local_zone"
    assert "expected a string, got true (a boolean); put it in quotes" in err.problem


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read the file: No such file or directory"

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"workers: 1\n\xff\xfe")
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert info.value.problem == "the file is not UTF-8 text (bad byte at offset 11)"


# ---------------------------------------------------------------------------------------------------------
# Configs built in code, and the command line


def test_validate_checks_configs_built_in_code() -> None:
    cluster = Cluster("c", (Endpoint("::1", 80), Endpoint("0:0::1", 80)))
    cfg = Config(listeners=(Listener("l", "127.0.0.1", 0, "c"),), clusters=(cluster,))
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert (
        str(info.value)
        == "<memory>: clusters[0].endpoints[1].address: duplicate endpoint [0:0::1]:80 in cluster 'c'"
    )

    bad_ip = dataclasses.replace(cfg, clusters=(Cluster("c", (Endpoint("backend", 80),)),), source="xds")
    with pytest.raises(ConfigError) as info:
        validate(bad_ip)
    assert (
        str(info.value)
        == "xds: clusters[0].endpoints[0].address: expected a numeric IP address, got 'backend'"
    )

    validate(dataclasses.replace(cfg, clusters=(Cluster("c", (Endpoint("::1", 80),)),)))


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "workers": -1}, "inline")
    assert str(info.value) == "inline: workers: must be between 0 and 1024, got -1"


def test_config_error_without_path_and_pickling() -> None:
    err = ConfigError("a.yaml", "", "cannot read the file: Permission denied")
    assert str(err) == "a.yaml: cannot read the file: Permission denied"
    again = pickle.loads(pickle.dumps(ConfigError("a.yaml", "workers", "bad")))
    assert (again.file, again.path, again.problem, str(again)) == (
        "a.yaml",
        "workers",
        "bad",
        "a.yaml: workers: bad",
    )


def test_proxy_config() -> None:
    cfg = proxy_config("0.0.0.0:8080", ["10.0.0.1:80", "[fd00::2]:80"], policy="ring_hash", workers=4)
    assert cfg.source == "command line"
    assert cfg.workers == 4
    assert cfg.listeners == (Listener("proxy", "0.0.0.0", 8080, "proxy"),)
    assert cfg.clusters == (
        Cluster("proxy", (Endpoint("10.0.0.1", 80), Endpoint("fd00::2", 80)), policy="ring_hash"),
    )


@pytest.mark.parametrize(
    ("kwargs", "option", "phrase"),
    [
        ({"listen": "localhost:80"}, "--from", "host names are not resolved"),
        ({"listen": "127.0.0.1:70000"}, "--from", "the port must be a number from 0 to 65535"),
        ({"targets": ["127.0.0.1:80", "backend:80"]}, "--to", "got 'backend:80'"),
        ({"targets": ["127.0.0.1:0"]}, "--to", "the port must be between 1 and 65535, got 0"),
        ({"targets": ["127.0.0.1:80", "127.0.0.1:80"]}, "--to", "duplicate endpoint 127.0.0.1:80"),
        ({"targets": []}, "--to", "at least one endpoint is required"),
        ({"policy": "fastest"}, "--policy", "unknown policy 'fastest'"),
        ({"workers": -2}, "--workers", "must be between 0 and 1024, got -2"),
    ],
)
def test_proxy_config_errors_name_the_option(kwargs: dict[str, Any], option: str, phrase: str) -> None:
    args: dict[str, Any] = {"listen": "127.0.0.1:8080", "targets": ["127.0.0.1:80"], **kwargs}
    with pytest.raises(ConfigError) as info:
        proxy_config(**args)
    assert (info.value.file, info.value.path) == ("command line", option)
    assert phrase in info.value.problem


# ---------------------------------------------------------------------------------------------------------
# health_check (docs/config.md, "Health checks")


def test_docs_health_check_example_states_the_real_defaults(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    match = re.search(r"### Health checks.*?```yaml\n(.*?)```", doc, re.S)
    assert match, "docs/config.md lost its health check example"
    data = yaml.safe_load(match.group(1))
    data["listeners"] = BASE["listeners"]
    cfg = load_text(tmp_path, yaml.safe_dump(data))
    check = cfg.clusters[0].health_check
    assert check == HealthCheck(type="http", path="/healthz")


def test_health_check_keys_are_read_into_the_model(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, yaml.safe_dump(edit(("clusters.0.health_check", {
        "type": "http", "path": "/ready?x=1", "expected_statuses": [204, "300-308"], "interval": "250ms",
        "jitter": 0, "timeout": "100ms", "healthy_threshold": 1, "unhealthy_threshold": 7}))))
    assert cfg.clusters[0].health_check == HealthCheck(
        type="http", path="/ready?x=1", expected_statuses=((204, 204), (300, 308)), interval_ms=250, jitter_ms=0,
        timeout_ms=100, healthy_threshold=1, unhealthy_threshold=7)
    assert load_text(tmp_path, yaml.safe_dump(BASE)).clusters[0].health_check is None


HC = "clusters[0].health_check"
HEALTH_CHECK_ERRORS = [
    ("unknown key", {"intervall": "1s"}, f"{HC}.intervall", "did you mean 'interval'?"),
    ("unknown type", {"type": "grpc"}, f"{HC}.type", "unknown health check type 'grpc'; expected one of: tcp, http"),
    ("relative path", {"path": "healthz"}, f"{HC}.path", "must start with '/'"),
    ("path with a space", {"path": "/a b"}, f"{HC}.path", "no spaces or control characters"),
    ("status text", {"expected_statuses": ["2xx"]}, f"{HC}.expected_statuses[0]",
     "expected an HTTP status (204) or an inclusive range (200-399), got '2xx'"),
    ("reversed range", {"expected_statuses": ["399-200"]}, f"{HC}.expected_statuses[0]",
     "lower one first, got 399-200"),
    ("status out of range", {"expected_statuses": [600]}, f"{HC}.expected_statuses[0]", "from 100 to 599"),
    ("no statuses", {"expected_statuses": []}, f"{HC}.expected_statuses", "at least one status"),
    ("zero interval", {"interval": 0}, f"{HC}.interval", "between 1ms and 720h, got 0ms"),
    ("zero timeout", {"timeout": "0s"}, f"{HC}.timeout", "between 1ms and 720h, got 0ms"),
    ("threshold 0", {"unhealthy_threshold": 0}, f"{HC}.unhealthy_threshold", "between 1 and 1000, got 0"),
    ("threshold bool", {"healthy_threshold": True}, f"{HC}.healthy_threshold", "expected an integer, got true"),
]  # fmt: skip


@pytest.mark.parametrize(("check", "path", "phrase"), [c[1:] for c in HEALTH_CHECK_ERRORS],
                         ids=[c[0] for c in HEALTH_CHECK_ERRORS])
def test_health_check_errors_name_the_field(tmp_path: Path, check: dict[str, Any], path: str, phrase: str) -> None:
    err, _ = load_error(tmp_path, yaml.safe_dump(edit(("clusters.0.health_check", check))))
    assert err.path == path
    assert phrase in err.problem


# ---------------------------------------------------------------------------------------------------------
# HTTP listeners (docs/config.md, "HTTP listeners")

HTTP_FULL = r"""
listeners:
  - name: web
    address: 127.0.0.1:8080
    protocol: http
    max_connections: 500
    idle_timeout: 90s
    http:
      max_request_line: 4096
      max_head: 32768
      max_headers: 50
      header_timeout: 5s
      request_timeout: 20s
      upstream_idle: 0
      max_requests_per_conn: 1000
      max_idle_per_endpoint: 8
      retry_buffer: 0
    virtual_hosts:
      - name: api
        domains: ["api.example.com", "*.example.com", "[::1]"]
        routes:
          - name: canary
            match:
              prefix: /api
              headers:
                - {name: x-canary, exact: "1"}
                - {name: X-Debug, present: true, invert: true}
                - {name: user-agent, regex: "curl/[[:digit:]]+.*"}
              query: [{name: v, prefix: "2"}]
            weighted_clusters: [{name: backend, weight: 90}, {name: canary}]
            prefix_rewrite: /v2
            host_rewrite: "backend.internal:8080"
            request_headers_to_add:
              - {name: x-a, value: "1"}
              - {name: x-b, value: two words, append: false}
              - {name: x-c, value: "3", append: true}
            request_headers_to_remove: [x-internal]
            response_headers_to_add: [{name: x-served-by, value: zlb, append: false}]
            response_headers_to_remove: [server, x-powered-by]
            hash_policy: {header: x-user}
            timeout: 15s
            retry_policy:
              retry_on: "connect-failure,reset,gateway-error,5xx,retriable-status-codes"
              num_retries: 3
              per_try_timeout: 2s
              retriable_status_codes: [503, 429]
              retry_non_idempotent: true
          - match: {path: /healthz}
            direct_response: {status: 200, body: "ok\n"}
          - match: {regex: "/old/[a-z]+"}
            redirect: {status: 308, scheme: https, host: new.example.com, path: /new}
          - match: {prefix: /}
            cluster: backend
            hash_policy: {cookie: session}
            retry_policy: {retry_on: [reset, 5xx], num_retries: 0}
      - name: fallback
        domains: ["*"]
        routes:
          - match: {prefix: /, query: [{name: debug, present: true}]}
            cluster: backend
            hash_policy: {source_ip: true}
          - match: {prefix: /}
            cluster: canary
            hash_policy: {path: true}
clusters:
  - {name: backend, endpoints: ["127.0.0.1:9001"]}
  - {name: canary, endpoints: ["127.0.0.1:9002"]}
"""


def test_http_listener_every_key_is_read_into_the_model(tmp_path: Path) -> None:
    (listener,) = load_text(tmp_path, HTTP_FULL).listeners
    canary = Route(
        name="canary",
        path_kind="prefix",
        path="/api",
        headers=(
            ValueMatch("x-canary", "exact", "1"),
            ValueMatch("X-Debug", "present", "", invert=True),
            ValueMatch("user-agent", "regex", "curl/[[:digit:]]+.*"),
        ),
        query=(ValueMatch("v", "prefix", "2"),),
        clusters=(WeightedCluster("backend", 90), WeightedCluster("canary", 1)),
        prefix_rewrite="/v2",
        host_rewrite="backend.internal:8080",
        header_ops=HeaderOps(
            request_add=(("x-a", "1"), ("x-c", "3")),
            request_set=(("x-b", "two words"),),
            request_remove=("x-internal",),
            response_set=(("x-served-by", "zlb"),),
            response_remove=("server", "x-powered-by"),
        ),
        hash_on="header",
        hash_name="x-user",
        timeout_ms=15000,
        retry=RetryPolicy(
            retry_on=("connect-failure", "reset", "gateway-error", "5xx", "retriable-status-codes"),
            num_retries=3,
            per_try_timeout_ms=2000,
            retriable_status_codes=(503, 429),
            retry_non_idempotent=True,
        ),
    )
    assert listener == Listener(
        name="web",
        address="127.0.0.1",
        port=8080,
        cluster="",
        max_connections=500,
        idle_timeout_ms=90000,
        protocol="http",
        http=HttpOptions(
            max_request_line=4096,
            max_head=32768,
            max_headers=50,
            header_timeout_ms=5000,
            request_timeout_ms=20000,
            upstream_idle_ms=0,
            max_requests_per_conn=1000,
            max_idle_per_endpoint=8,
            retry_buffer=0,
        ),
        virtual_hosts=(
            VirtualHost(
                "api",
                ("api.example.com", "*.example.com", "[::1]"),
                (
                    canary,
                    Route(path_kind="exact", path="/healthz", direct_status=200, direct_body="ok\n"),
                    Route(path_kind="regex", path="/old/[a-z]+",
                          redirect=Redirect(status=308, scheme="https", host="new.example.com", path="/new")),
                    Route(clusters=(WeightedCluster("backend"),), hash_on="cookie", hash_name="session",
                          retry=RetryPolicy(retry_on=("reset", "5xx"), num_retries=0)),
                ),
            ),
            VirtualHost(
                "fallback",
                ("*",),
                (
                    Route(query=(ValueMatch("debug", "present"),), clusters=(WeightedCluster("backend"),),
                          hash_on="source_ip"),
                    Route(clusters=(WeightedCluster("canary"),), hash_on="path"),
                ),
            ),
        ),
    )  # fmt: skip


def test_http_listener_defaults(tmp_path: Path) -> None:
    (listener,) = load_text(tmp_path, yaml.safe_dump(HTTP_BASE)).listeners
    assert listener.http == HttpOptions()
    assert listener.virtual_hosts == (
        VirtualHost("api", ("*",), (Route(path_kind="prefix", path="/", clusters=(WeightedCluster("backend"),)),)),
    )
    (route,) = listener.virtual_hosts[0].routes
    assert route.retry == RetryPolicy(("connect-failure",), num_retries=1, per_try_timeout_ms=0)
    assert (route.timeout_ms, route.hash_on, route.header_ops) == (0, "", HeaderOps())


def test_docs_http_example_loads(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    match = re.search(r"## HTTP listeners.*?```yaml\n(.*?)```", doc, re.S)
    assert match, "docs/config.md lost its HTTP example"
    (listener,) = load_text(tmp_path, match.group(1)).listeners
    assert listener.protocol == "http"
    # The options block states the defaults.
    assert listener.http == HttpOptions()
    routes = [route for vhost in listener.virtual_hosts for route in vhost.routes]
    assert {bool(r.clusters) + bool(r.direct_status) + (r.redirect is not None) for r in routes} == {1}
    assert any(r.redirect for r in routes) and any(r.direct_status for r in routes)
    assert any(len(r.clusters) > 1 for r in routes)


HTTP_BASE: dict[str, Any] = {
    "listeners": [{
        "name": "web", "address": "127.0.0.1:8080", "protocol": "http",
        "virtual_hosts": [{"name": "api", "routes": [{"match": {"prefix": "/"}, "cluster": "backend"}]}],
    }],
    "clusters": [{"name": "backend", "endpoints": ["127.0.0.1:9001"]},
                 {"name": "canary", "endpoints": ["127.0.0.1:9002"]}],
}  # fmt: skip


def hedit(*steps: tuple[str, object]) -> dict[str, Any]:
    return edit(*steps, base=HTTP_BASE)


def route_with(**keys: object) -> dict[str, Any]:
    """HTTP_BASE with keys of its one route replaced (_DELETE removes one)."""
    return hedit(*((f"listeners.0.virtual_hosts.0.routes.0.{key}", value) for key, value in keys.items()))


L = "listeners[0]"
VH = f"{L}.virtual_hosts[0]"
R = f"{VH}.routes[0]"
CODES_9 = [500, 501, 502, 503, 504, 505, 506, 507, 508]
HTTP_ERRORS = [
    # listeners
    ("http listener with a cluster", hedit(("listeners.0.cluster", "backend")), f"{L}.cluster",
     "an http listener takes no cluster"),
    ("http listener without virtual hosts", hedit(("listeners.0.virtual_hosts", _DELETE)), f"{L}.virtual_hosts",
     "an http listener needs at least one virtual host"),
    ("tcp listener with virtual hosts", hedit(("listeners.0.protocol", "tcp"), ("listeners.0.cluster", "backend")),
     f"{L}.virtual_hosts", "only http listeners take this key; set protocol: http"),
    ("tcp listener with http options", edit(("listeners.0.http", {"header_timeout": "1s"})), f"{L}.http",
     "only http listeners take this key"),
    ("tcp listener matching the host's port", edit(("listeners.0.match_host_port", True)), f"{L}.match_host_port",
     "only http listeners take this key"),
    ("unknown http option", hedit(("listeners.0.http", {"header_timout": "1s"})), f"{L}.http.header_timout",
     "did you mean 'header_timeout'?"),
    ("too many headers", hedit(("listeners.0.http", {"max_headers": 129})), f"{L}.http.max_headers",
     "between 1 and 128, got 129"),
    ("head too small", hedit(("listeners.0.http", {"max_head": 512})), f"{L}.http.max_head",
     "between 1024 and 1048576, got 512"),
    ("request line over max_head", hedit(("listeners.0.http", {"max_head": 4096, "max_request_line": 8192})),
     f"{L}.http.max_request_line", "must not exceed max_head (4096), got 8192"),
    ("zero header timeout", hedit(("listeners.0.http", {"header_timeout": 0})), f"{L}.http.header_timeout",
     "between 1ms and 720h, got 0ms"),
    ("retry buffer", hedit(("listeners.0.http", {"retry_buffer": 1 << 30})), f"{L}.http.retry_buffer",
     "between 0 and 16777216"),
    # virtual hosts and domains
    ("virtual host without routes", hedit(("listeners.0.virtual_hosts.0.routes", [])), f"{VH}.routes",
     "at least one route is required"),
    ("virtual host without a routes key", hedit(("listeners.0.virtual_hosts.0.routes", _DELETE)), f"{VH}.routes",
     "required key 'routes' is missing"),
    ("no domains", hedit(("listeners.0.virtual_hosts.0.domains", [])), f"{VH}.domains",
     "at least one domain is required"),
    ("star inside a domain", hedit(("listeners.0.virtual_hosts.0.domains", ["api.*.com"])), f"{VH}.domains[0]",
     "expected a host name, '*.' and a host name, or '*' alone, got 'api.*.com'"),
    ("star suffix", hedit(("listeners.0.virtual_hosts.0.domains", ["api*"])), f"{VH}.domains[0]", "'*' alone"),
    ("domain with a port", hedit(("listeners.0.virtual_hosts.0.domains", ["a.example:80"])), f"{VH}.domains[0]",
     "'a.example:80' would never match; set match_host_port: true"),
    ("domain with port 0", hedit(("listeners.0.match_host_port", True),
                                 ("listeners.0.virtual_hosts.0.domains", ["a.example:0"])), f"{VH}.domains[0]",
     "between 1 and 65535"),
    ("duplicate domain across virtual hosts",
     hedit(("listeners.0.virtual_hosts.1", {"name": "other", "routes": [{"match": {"prefix": "/"},
                                                                         "cluster": "canary"}]})),
     f"{L}.virtual_hosts[1].domains[0]",
     "duplicate domain '*' (first used by listeners[0].virtual_hosts[0].domains[0])"),
    ("duplicate domain in another case",
     hedit(("listeners.0.virtual_hosts.0.domains", ["a.example", "*"]),
           ("listeners.0.virtual_hosts.1", {"name": "b", "domains": ["A.example"],
                                            "routes": [{"match": {"prefix": "/"}, "cluster": "canary"}]})),
     f"{L}.virtual_hosts[1].domains[0]", "duplicate domain 'A.example'"),
    ("duplicate virtual host name",
     hedit(("listeners.0.virtual_hosts.1", {"name": "api", "domains": ["b.example"],
                                            "routes": [{"match": {"prefix": "/"}, "cluster": "canary"}]})),
     f"{L}.virtual_hosts[1].name", "duplicate virtual host name 'api'"),
    # route keys, matches
    ("unknown route key", route_with(clustr="x"), f"{R}.clustr", "did you mean 'cluster'?"),
    ("no path match", route_with(match={}), f"{R}.match",
     "needs exactly one of prefix, path, regex; none is given"),
    ("two path matches", route_with(match={"prefix": "/", "path": "/x"}), f"{R}.match", "got prefix and path"),
    ("relative prefix", route_with(match={"prefix": "api"}), f"{R}.match.prefix", "must start with '/'"),
    ("query in the path", route_with(match={"path": "/a?b=1"}), f"{R}.match.path",
     "the query is not part of the matched path"),
    ("bad regex", route_with(match={"regex": "/a(b"}), f"{R}.match.regex", "invalid regex '/a(b'"),
    ("perl digit class", route_with(match={"regex": r"/v\d+"}), f"{R}.match.regex",
     r"'\d' (write [[:digit:]]) is not POSIX extended regex syntax"),
    ("non-capturing group", route_with(match={"regex": "/(?:a|b)"}), f"{R}.match.regex",
     "is not POSIX extended regex syntax"),
    ("lookahead", route_with(match={"regex": "/a(?=b)"}), f"{R}.match.regex", "lookarounds"),
    ("non-greedy quantifier", route_with(match={"regex": "/a.*?b"}), f"{R}.match.regex",
     "the non-greedy or possessive quantifier '*?' is not POSIX extended regex syntax"),
    ("backslash in brackets", route_with(match={"regex": r"/[\w-]+"}), f"{R}.match.regex",
     "POSIX reads it as a literal backslash"),
    ("header regex", route_with(match={"prefix": "/", "headers": [{"name": "x", "regex": r"\w+"}]}),
     f"{R}.match.headers[0].regex", "POSIX extended regex"),
    ("header name not a token", route_with(match={"prefix": "/", "headers": [{"name": "x y", "present": True}]}),
     f"{R}.match.headers[0].name", "expected an HTTP token"),
    ("header match without a kind", route_with(match={"prefix": "/", "headers": [{"name": "x"}]}),
     f"{R}.match.headers[0]", "needs exactly one of exact, prefix, regex, present; none is given"),
    ("present false", route_with(match={"prefix": "/", "headers": [{"name": "x", "present": False}]}),
     f"{R}.match.headers[0].present", "expected true, got false (a boolean)"),
    ("header match value with CRLF", route_with(match={"prefix": "/", "headers": [{"name": "x", "exact": "a\r\nb"}]}),
     f"{R}.match.headers[0].exact", "must not contain CR, LF or other control characters"),
    ("invert not a boolean",
     route_with(match={"prefix": "/", "headers": [{"name": "x", "present": True, "invert": "yes"}]}),
     f"{R}.match.headers[0].invert", "expected true or false, got 'yes'"),
    ("query name", route_with(match={"prefix": "/", "query": [{"name": "a=b", "exact": "1"}]}),
     f"{R}.match.query[0].name", "expected a query parameter name"),
    # actions
    ("no action", route_with(cluster=_DELETE), R,
     "needs exactly one of cluster, weighted_clusters, direct_response, redirect; none is given"),
    ("two actions", route_with(redirect={"host": "a.example"}), R, "got cluster and redirect"),
    ("unknown cluster", route_with(cluster="backnd"), f"{R}.cluster",
     "unknown cluster 'backnd' (did you mean 'backend'?); known clusters: backend, canary"),
    ("unknown weighted cluster", route_with(cluster=_DELETE, weighted_clusters=[{"name": "backend"}, {"name": "nope"}]),
     f"{R}.weighted_clusters[1].name", "unknown cluster 'nope'"),
    ("one weighted cluster", route_with(cluster=_DELETE, weighted_clusters=[{"name": "backend"}]),
     f"{R}.weighted_clusters", "needs at least two clusters; for one, write cluster: NAME"),
    ("weight 0", route_with(cluster=_DELETE, weighted_clusters=[{"name": "backend", "weight": 0}, {"name": "canary"}]),
     f"{R}.weighted_clusters[0].weight", "between 1 and 1000000, got 0"),
    ("weight too big",
     route_with(cluster=_DELETE, weighted_clusters=[{"name": "backend"}, {"name": "canary", "weight": 1000001}]),
     f"{R}.weighted_clusters[1].weight", "between 1 and 1000000, got 1000001"),
    ("cluster listed twice", route_with(cluster=_DELETE, weighted_clusters=[{"name": "backend"}, {"name": "backend"}]),
     f"{R}.weighted_clusters[1].name", "cluster 'backend' is listed twice"),
    ("direct status 600", route_with(cluster=_DELETE, direct_response={"status": 600}),
     f"{R}.direct_response.status", "between 200 and 599, got 600"),
    ("direct status 101", route_with(cluster=_DELETE, direct_response={"status": 101}),
     f"{R}.direct_response.status", "between 200 and 599, got 101"),
    ("direct response without status", route_with(cluster=_DELETE, direct_response={"body": "x"}),
     f"{R}.direct_response.status", "required key 'status' is missing"),
    ("redirect status", route_with(cluster=_DELETE, redirect={"status": 200, "host": "a.example"}),
     f"{R}.redirect.status", "must be one of 301, 302, 303, 307 or 308, got 200"),
    ("redirect without host", route_with(cluster=_DELETE, redirect={"path": "/x"}), f"{R}.redirect.host",
     "the host to redirect to is required"),
    ("redirect host", route_with(cluster=_DELETE, redirect={"host": "a b"}), f"{R}.redirect.host",
     "expected a host name, an IPv4 address or a bracketed IPv6 address"),
    ("redirect scheme", route_with(cluster=_DELETE, redirect={"host": "a.example", "scheme": "ht tp"}),
     f"{R}.redirect.scheme", "expected a URI scheme such as https"),
    ("redirect relative path", route_with(cluster=_DELETE, redirect={"host": "a.example", "path": "x"}),
     f"{R}.redirect.path", "must start with '/'"),
    ("redirect too long", route_with(cluster=_DELETE, redirect={"host": "a.example", "path": "/" + "a" * 400}),
     f"{R}.redirect", "scheme, host and path together must be at most 384 bytes, got 414"),
    ("rewrite on a direct response", route_with(cluster=_DELETE, direct_response={"status": 200}, prefix_rewrite="/x"),
     f"{R}.prefix_rewrite", "only applies to routes that forward to a cluster, not to a direct response"),
    ("retry policy on a redirect", route_with(cluster=_DELETE, redirect={"host": "a.example"},
                                              retry_policy={"num_retries": 2}),
     f"{R}.retry_policy", "not to a redirect"),
    ("header ops on a direct response",
     route_with(cluster=_DELETE, direct_response={"status": 204}, response_headers_to_remove=["server"]),
     f"{R}.response_headers_to_remove", "only applies to routes that forward to a cluster"),
    # rewrites and header operations
    ("prefix rewrite on an exact match", route_with(match={"path": "/x"}, prefix_rewrite="/y"),
     f"{R}.prefix_rewrite", "only applies to routes with a prefix match (match.prefix)"),
    ("relative prefix rewrite", route_with(prefix_rewrite="v2"), f"{R}.prefix_rewrite", "must start with '/'"),
    ("host rewrite", route_with(host_rewrite="bad host"), f"{R}.host_rewrite", "expected a host name"),
    ("host rewrite port", route_with(host_rewrite="a.example:99999"), f"{R}.host_rewrite", "optional :PORT"),
    ("header value with CRLF", route_with(request_headers_to_add=[{"name": "x-a", "value": "a\r\nb"}]),
     f"{R}.request_headers_to_add",
     "the value for 'x-a' must not contain CR, LF or other control characters, got 'a\\r\\nb'"),
    ("header name not a token", route_with(response_headers_to_add=[{"name": "x:y", "value": "v"}]),
     f"{R}.response_headers_to_add", "expected an HTTP token (letters, digits and !#$%&'*+-.^_`|~), got 'x:y'"),
    ("header without value", route_with(request_headers_to_add=[{"name": "x-a"}]),
     f"{R}.request_headers_to_add[0].value", "required key 'value' is missing"),
    ("append not a boolean", route_with(request_headers_to_add=[{"name": "x-a", "value": "1", "append": "no"}]),
     f"{R}.request_headers_to_add[0].append", "expected true or false, got 'no'"),
    ("framing header removed", route_with(request_headers_to_remove=["x-a", "Content-Length"]),
     f"{R}.request_headers_to_remove[1]", "the proxy manages the 'Content-Length' header"),
    ("host header set", route_with(request_headers_to_add=[{"name": "host", "value": "a", "append": False}]),
     f"{R}.request_headers_to_add", "routes cannot add, set or remove it; use host_rewrite"),
    ("header replaced twice", route_with(response_headers_to_add=[{"name": "x-a", "value": "1", "append": False},
                                                                 {"name": "X-A", "value": "2", "append": False}]),
     f"{R}.response_headers_to_add", "header 'X-A' is replaced (append: false) twice"),
    # hash, timeout, retries
    ("two hash keys", route_with(hash_policy={"header": "a", "cookie": "b"}), f"{R}.hash_policy",
     "needs exactly one of header, cookie, source_ip, path; got header and cookie"),
    ("source_ip false", route_with(hash_policy={"source_ip": False}), f"{R}.hash_policy.source_ip",
     "expected true, got false"),
    ("hash header name", route_with(hash_policy={"header": "x user"}), f"{R}.hash_policy.header",
     "expected an HTTP token"),
    ("route timeout", route_with(timeout="soon"), f"{R}.timeout", "expected a duration"),
    ("unknown retry condition", route_with(retry_policy={"retry_on": "connect-failure,5xxx"}),
     f"{R}.retry_policy.retry_on[1]", "unknown retry condition '5xxx' (did you mean '5xx'?)"),
    ("retry condition twice", route_with(retry_policy={"retry_on": ["reset", "reset"]}),
     f"{R}.retry_policy.retry_on[1]", "'reset' is listed twice"),
    ("no retry condition", route_with(retry_policy={"retry_on": ""}), f"{R}.retry_policy.retry_on",
     "at least one condition is required; num_retries: 0 disables retries"),
    ("too many retries", route_with(retry_policy={"num_retries": 11}), f"{R}.retry_policy.num_retries",
     "between 0 and 10, got 11"),
    ("per-try timeout", route_with(retry_policy={"per_try_timeout": "721h"}), f"{R}.retry_policy.per_try_timeout",
     "between 0ms and 720h"),
    ("codes without their condition", route_with(retry_policy={"retriable_status_codes": [503]}),
     f"{R}.retry_policy.retriable_status_codes", "only used with retry_on 'retriable-status-codes'"),
    ("condition without codes", route_with(retry_policy={"retry_on": "retriable-status-codes"}),
     f"{R}.retry_policy.retriable_status_codes", "at least one status code is required"),
    ("too many codes",
     route_with(retry_policy={"retry_on": "retriable-status-codes", "retriable_status_codes": CODES_9}),
     f"{R}.retry_policy.retriable_status_codes", "at most 8 status codes, got 9"),
    ("code out of range", route_with(retry_policy={"retry_on": "retriable-status-codes",
                                                   "retriable_status_codes": [600]}),
     f"{R}.retry_policy.retriable_status_codes[0]", "between 100 and 599, got 600"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "path", "phrase"), [c[1:] for c in HTTP_ERRORS], ids=[c[0] for c in HTTP_ERRORS])
def test_http_errors_name_the_field(tmp_path: Path, data: dict[str, Any], path: str, phrase: str) -> None:
    err, _ = load_error(tmp_path, yaml.safe_dump(data))
    assert err.path == path
    assert phrase in err.problem


def test_validate_checks_http_configs_built_in_code() -> None:
    to_c = (WeightedCluster("c"),)

    def config(route: Route, **listener: Any) -> Config:
        fields: dict[str, Any] = {"cluster": "", "protocol": "http",
                                  "virtual_hosts": (VirtualHost("v", routes=(route,)),), **listener}  # fmt: skip
        return Config(listeners=(Listener("web", "127.0.0.1", 0, **fields),),
                      clusters=(Cluster("c", (Endpoint("127.0.0.1", 80),)),), source="xds")  # fmt: skip

    validate(config(Route(clusters=to_c)))
    route = "listeners[0].virtual_hosts[0].routes[0]"
    cases = [
        (config(Route()), route, "needs exactly one action: cluster, weighted_clusters, direct_response (with a "
                                 "status) or redirect; got 0"),
        (config(Route(clusters=to_c, direct_status=200)), route, "got 2"),
        (config(Route(clusters=to_c, direct_body="x")), f"{route}.direct_response.status",
         "a direct response body needs a status"),
        (config(Route(path_kind="glob", clusters=to_c)), f"{route}.match", "unknown path match kind 'glob'"),
        (config(Route(path_kind="regex", path=r"/\d+", clusters=to_c)), f"{route}.match.regex",
         "POSIX extended regex"),
        (config(Route(clusters=(WeightedCluster("c"), WeightedCluster("d")))), f"{route}.weighted_clusters[1].name",
         "unknown cluster 'd'; known clusters: c"),
        (config(Route(clusters=(WeightedCluster("c", 0),))), f"{route}.cluster.weight", "between 1 and 1000000, got 0"),
        (config(Route(headers=(ValueMatch("x", "present", "v"),), clusters=to_c)), f"{route}.match.headers[0].present",
         "a present match takes no value"),
        (config(Route(headers=(ValueMatch("x", "glob", "v"),), clusters=to_c)), f"{route}.match.headers[0]",
         "unknown match kind 'glob'"),
        (config(Route(hash_on="source_ip", hash_name="x", clusters=to_c)), f"{route}.hash_policy",
         "hashing on source_ip takes no name, got 'x'"),
        (config(Route(hash_on="consistent", clusters=to_c)), f"{route}.hash_policy",
         "unknown hash policy 'consistent'"),
        (config(Route(header_ops=HeaderOps(request_set=(("x", "1"), ("X", "2"))), clusters=to_c)),
         f"{route}.request_headers_to_add", "header 'X' is replaced (append: false) twice"),
        (config(Route(direct_status=200, direct_body="a\0b")), f"{route}.direct_response.body",
         "must not contain NUL characters"),
        (config(Route(clusters=to_c, retry=RetryPolicy(retry_on=("5xx",), num_retries=-1))),
         f"{route}.retry_policy.num_retries", "between 0 and 10, got -1"),
        (config(Route(clusters=to_c), cluster="c"), "listeners[0].cluster", "an http listener takes no cluster"),
        (config(Route(clusters=to_c), protocol="tcp"), "listeners[0].cluster", "required key 'cluster' is missing"),
        (config(Route(clusters=to_c), virtual_hosts=(VirtualHost("v", routes=(Route(clusters=to_c),)),
                                                     VirtualHost("w", ("*.A.example", "*.a.example"),
                                                                 (Route(clusters=to_c),)))),
         "listeners[0].virtual_hosts[1].domains[1]", "duplicate domain '*.a.example'"),
    ]  # fmt: skip
    for cfg, path, phrase in cases:
        with pytest.raises(ConfigError) as info:
            validate(cfg)
        assert (info.value.file, info.value.path) == ("xds", path), phrase
        assert phrase in info.value.problem


def test_proxy_config_http_mode() -> None:
    cfg = proxy_config("0.0.0.0:8080", ["10.0.0.1:80"], mode="http")
    assert cfg.listeners == (
        Listener("proxy", "0.0.0.0", 8080, "", protocol="http", virtual_hosts=(
            VirtualHost("proxy", ("*",), (Route(path_kind="prefix", path="/", clusters=(WeightedCluster("proxy"),),
                                                retry=RetryPolicy()),)),
        )),
    )  # fmt: skip
    assert cfg.clusters == (Cluster("proxy", (Endpoint("10.0.0.1", 80),)),)
    assert proxy_config("0.0.0.0:8080", ["10.0.0.1:80"], mode="tcp") == proxy_config("0.0.0.0:8080", ["10.0.0.1:80"])
    with pytest.raises(ConfigError) as info:
        proxy_config("0.0.0.0:8080", ["10.0.0.1:80"], mode="htp")
    assert (info.value.path, info.value.problem) == (
        "--mode", "unknown protocol 'htp' (did you mean 'http'?); expected one of: tcp, http")


def test_tls_names_files_or_an_installed_identity_not_both() -> None:
    # xDS sets `identity` (an identity SDS installs); YAML sets the three files. One or the other.
    def cfg(tls: ListenerTls) -> Config:
        return Config(listeners=(Listener("l", "127.0.0.1", 0, "c", tls=tls),),
                      clusters=(Cluster("c", (Endpoint("127.0.0.1", 1),), tls=ClusterTls("", "", "", identity="x")),))

    validate(cfg(ListenerTls("", "", "", identity='sds:["default","ROOTCA"]')))
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.tls\.cert: not with an identity installed by name"):
        validate(cfg(ListenerTls("a.pem", "", "", identity="x")))
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.tls\.key: expected a file path"):
        validate(cfg(ListenerTls("a.pem", "", "b.pem")))


def _routing_config(vhosts: tuple[VirtualHost, ...], *clusters: str) -> Config:
    return Config(listeners=(Listener("l", "127.0.0.1", 0, "", protocol="http", virtual_hosts=vhosts),),
                  clusters=tuple(Cluster(name, (Endpoint("127.0.0.1", 9),)) for name in clusters))


def test_routing_that_passed_is_not_checked_again_unless_its_clusters_change(monkeypatch):
    import zlbfast.config as config_module

    checked: list[str] = []
    check_route = config_module._validate_route
    monkeypatch.setattr(config_module, "_validate_route",
                        lambda route, path, *rest: (checked.append(path), check_route(route, path, *rest))[1])
    vhosts = (VirtualHost("v", routes=tuple(Route(path=f"/{i}/", clusters=(WeightedCluster("a"),)) for i in range(3))),)
    validate(_routing_config(vhosts, "a", "b"))
    assert len(checked) == 3
    validate(_routing_config(vhosts, "a", "b"))  # the same tuple against the same clusters
    assert len(checked) == 3
    # An equal but distinct tuple is checked, and so is the same one once the cluster names differ: one the
    # routes name may be gone.
    validate(_routing_config((dataclasses.replace(vhosts[0]),), "a", "b"))
    assert len(checked) == 6
    with pytest.raises(ConfigError, match=r"routes\[0\]"):
        validate(_routing_config(vhosts, "b"))
