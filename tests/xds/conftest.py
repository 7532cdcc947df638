"""Fixtures: a test ADS server and an in-process zlbfast agent fed by it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.xds.adsserver import AdsServer
from tests.xds.agentrun import AgentThread
from tests.xds.envoy_res import ads_bootstrap


@pytest.fixture
def ads_server() -> Iterator[AdsServer]:
    server = AdsServer().start()
    yield server
    server.stop()


@pytest.fixture
def agent_factory(tmp_path: Any) -> Iterator[Any]:
    started: list[AgentThread] = []

    def make(server: AdsServer, *, delta: bool = False, **kw: Any) -> AgentThread:
        boot = ads_bootstrap(server.port, delta=delta, **kw)
        agent = AgentThread(boot, str(tmp_path / f"cache{len(started)}")).start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()
