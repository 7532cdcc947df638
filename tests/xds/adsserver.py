"""A test control plane: ADS (state-of-the-world and delta) over grpclib on 127.0.0.1, built on the same
xds-protos messages as the client, running its own event loop in a thread so that synchronous tests can
drive it. Every request is recorded so tests can check ACKs, NACKs and subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream
from h2.exceptions import StreamClosedError

from tests.netutil import wait_for
from zlbfast.xds import resources as r
from zlbfast.xds.ads import DELTA_METHOD, SOTW_METHOD

WILDCARD = (r.CLUSTER, r.LISTENER)


def pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


@dataclass
class Recorded:
    delta: bool
    request: Any  # DiscoveryRequest or DeltaDiscoveryRequest
    node_id: str = ""
    at: float = 0.0  # time.monotonic() on arrival

    @property
    def nack(self) -> str:
        return str(self.request.error_detail.message) if self.request.HasField("error_detail") else ""


class _Conn:
    """One client stream and what it subscribed to."""

    def __init__(self, stream: Stream[Any, Any], delta: bool) -> None:
        self.stream = stream
        self.delta = delta
        self.node_id = ""  # from the first request
        self.names: dict[str, set[str] | None] = {}  # type -> names, None = wildcard
        self.sent_versions: dict[str, dict[str, str]] = {}  # delta: what the client holds
        self.lock = asyncio.Lock()


class AdsServer:
    def __init__(self, port: int = 0,
                 per_node: Callable[[str, str, dict[str, Message]], dict[str, Message]] | None = None) -> None:
        """per_node(node_id, type_url, resources) may tailor what one client gets (e.g. listener ports, so
        that two proxies fed by one server do not bind the same address)."""
        self.port = port
        self.per_node = per_node
        self.resources: dict[str, dict[str, Message]] = {t: {} for t in r.MESSAGE_TYPES}
        self.versions: dict[str, int] = {t: 0 for t in r.MESSAGE_TYPES}
        self.requests: list[Recorded] = []
        self._nonce = itertools.count(1)
        self.last_nonce: dict[str, str] = {}  # type -> nonce of the latest response sent
        self.sent: dict[str, tuple[str, float]] = {}  # nonce -> (node id, time.monotonic() when sent)
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: Future[None] = Future()
        self._closing: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._server: Server | None = None
        self._lock = threading.Lock()

    # -- lifecycle (called from the test thread) ---------------------------------

    def start(self) -> AdsServer:
        self._thread.start()
        self._started.result(timeout=10)
        return self

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        self._server = Server([self])
        try:
            await self._server.start("127.0.0.1", self.port)
        except OSError as exc:
            self._started.set_exception(exc)
            return
        self.port = self._server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set_result(None)
        await self._closing.wait()
        self._server.close()
        for conn in list(self._conns):
            # Abrupt, like a crashed control plane; a stream its client closed just now needs no reset.
            with contextlib.suppress(StreamClosedError):
                conn.stream._stream.reset_nowait()
        await self._server.wait_closed()

    def stop(self) -> None:
        """Kills the control plane: the listening socket and every open stream go away."""
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        self._thread.join(timeout=10)

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=10)

    # -- configuration ------------------------------------------------------------

    def set(self, type_url: str, resources: Mapping[str, Message]) -> None:
        """Replaces every resource of a type (a new version) and pushes it to the open streams; before
        start() it only prepares the state the first clients get."""
        if self._loop is None:
            self.resources[type_url] = dict(resources)
            self.versions[type_url] += 1
            return
        self._call(self._set(type_url, dict(resources)))

    async def _set(self, type_url: str, resources: dict[str, Message]) -> None:
        self.resources[type_url] = resources
        self.versions[type_url] += 1
        for conn in list(self._conns):
            await self._push(conn, type_url)

    def recorded(self, *, type_url: str | None = None) -> list[Recorded]:
        with self._lock:
            return [x for x in self.requests if type_url is None or x.request.type_url == type_url]

    def nacks(self, type_url: str | None = None) -> list[str]:
        return [x.nack for x in self.recorded(type_url=type_url) if x.nack]

    def wait_ack(self, type_url: str, timeout: float = 10.0) -> None:
        """Waits until the client ACKed the latest response of type_url."""
        nonce = self.last_nonce.get(type_url)

        def acked() -> bool:
            return any(x.request.response_nonce == nonce and not x.nack for x in self.recorded(type_url=type_url))

        wait_for(acked, timeout, f"ACK of {r.KIND[type_url]} nonce {nonce}")

    def _next_nonce(self, type_url: str, node_id: str) -> str:
        nonce = str(next(self._nonce))
        self.last_nonce[type_url] = nonce
        self.sent[nonce] = (node_id, time.monotonic())
        return nonce

    # -- gRPC -----------------------------------------------------------------------

    def __mapping__(self) -> dict[str, Handler]:
        return {
            SOTW_METHOD: Handler(self._sotw, Cardinality.STREAM_STREAM, discovery_pb2.DiscoveryRequest,
                                 discovery_pb2.DiscoveryResponse),
            DELTA_METHOD: Handler(self._delta, Cardinality.STREAM_STREAM, discovery_pb2.DeltaDiscoveryRequest,
                                  discovery_pb2.DeltaDiscoveryResponse),
        }

    async def _serve(self, stream: Stream[Any, Any], delta: bool, on_request: Callable[[_Conn, Any], Any]) -> None:
        conn = _Conn(stream, delta)
        self._conns.add(conn)
        try:
            async for req in stream:
                if req.HasField("node"):
                    conn.node_id = req.node.id
                with self._lock:
                    self.requests.append(Recorded(delta, req, conn.node_id, time.monotonic()))
                await on_request(conn, req)
        finally:
            self._conns.discard(conn)

    async def _sotw(self, stream: Stream[Any, Any]) -> None:
        await self._serve(stream, False, self._on_sotw_request)

    async def _delta(self, stream: Stream[Any, Any]) -> None:
        await self._serve(stream, True, self._on_delta_request)

    async def _on_sotw_request(self, conn: _Conn, req: discovery_pb2.DiscoveryRequest) -> None:
        t = req.type_url
        names = None if t in WILDCARD else set(req.resource_names)
        first = t not in conn.names
        if first or conn.names[t] != names:
            conn.names[t] = names
            await self._push(conn, t)

    async def _on_delta_request(self, conn: _Conn, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        t = req.type_url
        if req.response_nonce:
            return  # an ACK or NACK
        if t not in conn.names:
            conn.names[t] = None if t in WILDCARD and not req.resource_names_subscribe else set()
            conn.sent_versions[t] = dict(req.initial_resource_versions)
        names = conn.names[t]
        if names is not None:
            names.update(req.resource_names_subscribe)
            names.difference_update(req.resource_names_unsubscribe)
            for n in req.resource_names_unsubscribe:
                conn.sent_versions[t].pop(n, None)
        await self._push(conn, t)

    async def _push(self, conn: _Conn, type_url: str) -> None:
        if type_url not in conn.names:
            return
        names = conn.names[type_url]
        resources = self.resources[type_url]
        if self.per_node is not None:
            resources = self.per_node(conn.node_id, type_url, resources)
        current = {n: m for n, m in resources.items() if names is None or n in names}
        async with conn.lock:
            if conn.delta:
                await self._push_delta(conn, type_url, current)
            else:
                await conn.stream.send_message(discovery_pb2.DiscoveryResponse(
                    version_info=str(self.versions[type_url]), type_url=type_url,
                    nonce=self._next_nonce(type_url, conn.node_id), resources=[pack(m) for m in current.values()]))

    async def _push_delta(self, conn: _Conn, type_url: str, current: dict[str, Message]) -> None:
        held = conn.sent_versions[type_url]
        resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url,
                                                    system_version_info=str(self.versions[type_url]))
        for name, msg in current.items():
            version = hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()[:16]
            if held.get(name) != version:
                resp.resources.add(name=name, version=version, resource=pack(msg))
                held[name] = version
        names = conn.names[type_url]
        for name in sorted(held):
            if name not in current and (names is None or name in names):
                resp.removed_resources.append(name)
                del held[name]
        if resp.resources or resp.removed_resources:
            resp.nonce = self._next_nonce(type_url, conn.node_id)
            await conn.stream.send_message(resp)
