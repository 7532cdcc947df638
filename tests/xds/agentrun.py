"""Runs a zlbfast xDS agent with a real Engine in a thread of the test process (its own event loop), so
that synchronous tests can send traffic and read the agent's state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from zlbfast.runtime import Engine
from zlbfast.xds import bootstrap
from zlbfast.xds.ads import Backoff
from zlbfast.xds.agent import Agent

T = TypeVar("T")


class AgentThread:
    def __init__(self, boot: dict[str, Any], cache_dir: str, workers: int = 1) -> None:
        self.plan = bootstrap.from_dict(boot, "test-bootstrap")
        self.cache_dir = cache_dir
        self.workers = workers
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready: Future[None] = Future()
        self.engine: Engine | None = None
        self.agent: Agent | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> AgentThread:
        self._thread.start()
        self.ready.result(timeout=10)
        return self

    def _main(self) -> None:
        asyncio.run(self._run())  # cancels what the agent left behind before closing the loop

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine = Engine(self.workers)
        try:
            self.agent = Agent(self.plan, self.engine, cache_dir=self.cache_dir, backoff=Backoff(0.05, 0.5))
            self._stop = asyncio.Event()
            self.agent.start()
            self.ready.set_result(None)
            await self.agent.run(self._stop)
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            raise
        finally:
            self.engine.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Runs fn on the agent's loop (the thread that owns the engine) and returns its result."""
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        assert self.loop is not None
        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    def state(self) -> dict[str, Any]:
        assert self.agent is not None
        agent = self.agent
        return self.call(agent.state)

    def port(self, listener: str) -> int:
        engine = self.engine
        assert engine is not None
        return self.call(lambda: engine.listener_port(listener))

    def has_listener(self, listener: str) -> bool:
        engine = self.engine
        assert engine is not None
        return self.call(lambda: listener in engine.listener_addresses())

    def stop(self) -> None:
        if self._stop is not None and self.loop is not None:
            stop = self._stop
            self.loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=10)
