"""Micro benchmarks of the data plane's building blocks (pytest-benchmark):

    pytest bench/micro_dataplane.py --benchmark-only

* the HTTP/1.1 parser on a typical request head (a C loop of 10,000 parses per round: per request = mean / 1e4);
* one endpoint pick per policy from a cluster of 10 and of 10,000 endpoints (a C loop of 10,000 picks per round,
  with a different hash key each time, like 10,000 connections);
* publishing a snapshot of a cluster of 10,000 endpoints (build from the model, publish, previous one retired).
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from zlbfast import _native
from zlbfast.model import POLICIES, Cluster, Config, Endpoint, Listener
from zlbfast.runtime import Engine

LOOP = 10_000
REQUEST = (b"GET /api/items?id=42 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n"
           b"Accept-Encoding: gzip\r\nx-request-id: 0f3a9c5e2b7d4a18\r\n\r\n")


def endpoints(n: int, offset: int = 0) -> tuple[Endpoint, ...]:
    """n distinct loopback endpoints (no traffic is sent to them)."""
    return tuple(Endpoint(f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 10000 + offset)
                 for i in range(1, n + 1))


def config(n: int, policy: str = "round_robin", offset: int = 0) -> Config:
    return Config(listeners=(Listener("l", "127.0.0.1", 0, "c"),),
                  clusters=(Cluster("c", endpoints(n, offset), policy=policy),), workers=1)


def test_parse_request_head(benchmark: BenchmarkFixture) -> None:
    ok = benchmark(_native.h1_parse_repeat, REQUEST, LOOP)
    assert ok == LOOP
    benchmark.extra_info["ns_per_parse"] = benchmark.stats.stats.mean / LOOP * 1e9


@pytest.mark.parametrize("n_endpoints", [10, 10_000])
@pytest.mark.parametrize("policy", POLICIES)
def test_pick(benchmark: BenchmarkFixture, policy: str, n_endpoints: int) -> None:
    with Engine(1) as engine:
        engine.apply(config(n_endpoints, policy))
        found = benchmark(engine.native.pick_many, "c", LOOP)
    assert found == LOOP
    benchmark.extra_info["ns_per_pick"] = benchmark.stats.stats.mean / LOOP * 1e9


def test_publish_10k_endpoints(benchmark: BenchmarkFixture) -> None:
    # Two configurations that differ in every endpoint, alternated: each round builds and publishes a new
    # 10,000-endpoint snapshot and retires the previous one.
    configs = [config(10_000, offset=0), config(10_000, offset=1)]
    with Engine(1) as engine:
        rounds = iter(range(1 << 30))
        benchmark(lambda: engine.apply(configs[next(rounds) % 2]))
