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
from zlbfast.model import Cluster, Config, Endpoint, HealthCheck, Listener, OutlierDetection

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
    assert ROOT / "examples" / "l4.yaml" in examples
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


def edit(*steps: tuple[str, object]) -> dict[str, Any]:
    """BASE with values replaced, appended (index == length) or deleted at dotted paths such as
    "clusters.0.endpoints.1.weight"."""
    data = copy.deepcopy(BASE)
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
     "required key 'cluster' is missing"),
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
