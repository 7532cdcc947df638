"""Micro benchmarks of the load generator's building blocks (pytest-benchmark):

    pytest bench/micro_loadgen.py --benchmark-only

They measure; they assert only correctness, never speed.
"""

from __future__ import annotations

import random

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from zlbfast._native import BuiltinBackend, Histogram, run_load

SAMPLES = [random.Random(1).randrange(1_000, 100_000_000) for _ in range(100_000)]


def test_histogram_record_100k(benchmark: BenchmarkFixture) -> None:
    def record() -> Histogram:
        h = Histogram()
        h.record_many(SAMPLES)
        return h

    h = benchmark(record)
    assert h.count == len(SAMPLES)


def test_histogram_percentiles(benchmark: BenchmarkFixture) -> None:
    h = Histogram()
    h.record_many(SAMPLES)
    qs = (0.5, 0.9, 0.99, 0.999)
    out = benchmark(lambda: [h.percentile(q) for q in qs])
    assert out == sorted(out)


@pytest.mark.parametrize("connections", [1, 64])
def test_closed_loop_10k_requests(benchmark: BenchmarkFixture, connections: int) -> None:
    """10,000 keep-alive requests against a built-in backend, per round."""
    with BuiltinBackend(label="b1") as b:
        r = benchmark.pedantic(run_load, args=("127.0.0.1", b.port),
                               kwargs={"connections": connections, "max_requests": 10_000, "duration": 0},
                               rounds=3, iterations=1)
    assert r.requests == 10_000
    benchmark.extra_info["req_per_s"] = r.rps
