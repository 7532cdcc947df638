"""Shared fixtures: label backends and an in-process engine, with the native
debug counters checked after every test that used the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.netutil import Backend, label_handler


@pytest.fixture
def backends() -> Iterator[Callable[[int], list[Backend]]]:
    """Factory: backends(n) starts n label servers named b0..b{n-1}."""
    started: list[Backend] = []

    def make(n: int, prefix: str = "b") -> list[Backend]:
        new = [Backend(label_handler(f"{prefix}{len(started) + i}")) for i in range(n)]
        started.extend(new)
        return new

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def engine_factory() -> Iterator[Callable[..., object]]:
    """Creates runtime.Engine objects, closes them after the test and then
    asserts the C side freed every connection, pipe and snapshot."""
    from zlbfast import _native
    from zlbfast.runtime import Engine

    engines: list[Engine] = []

    def make(workers: int = 1) -> Engine:
        eng = Engine(workers=workers)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.close()
    if engines:
        assert _native.debug_counters() == {"conns": 0, "pipes": 0, "snapshots": 0}
