"""ADS client over gRPC (grpclib): state-of-the-world and delta variants.

One bidirectional stream carries every resource type (Aggregated Discovery Service). The client subscribes to all
Clusters and Listeners (wildcard), to the ClusterLoadAssignments its EDS clusters name, to the RouteConfigurations
its HTTP listeners name, to the Secrets their TLS contexts name, and to any RouteConfiguration/Secret names given to
``subscribe``. Each response goes through
Pipeline.update and is answered with an ACK (the new version and the response's nonce) or a NACK (the previous
version, the nonce and an error_detail naming resource and field).

When the stream fails the client reconnects with exponential backoff and full jitter (like Envoy's
JitteredExponentialBackOffStrategy, but never below half the base delay so that a flapping server is not
hammered); the engine keeps running the last accepted state meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import code_pb2, status_pb2
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality

from zlbfast.runtime import ApplyError
from zlbfast.xds import resources as r
from zlbfast.xds.state import FULL_STATE_TYPES, Pipeline

log = logging.getLogger("zlbfast.xds")

SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
WILDCARD_TYPES = (r.CLUSTER, r.LISTENER)


@dataclass
class Backoff:
    base_s: float = 0.5
    max_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(self.base_s / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def _error_detail(exc: Exception) -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc))


class AdsClient:
    def __init__(self, pipeline: Pipeline, node: base_pb2.Node, targets: Sequence[tuple[str, int]], *,
                 delta: bool = False, backoff: Backoff | None = None) -> None:
        if not targets:
            raise ValueError("ADS needs at least one control-plane address")
        self.pipeline = pipeline
        self.node = node
        self.targets = list(targets)
        self.delta = delta
        self.backoff = backoff or Backoff()
        # Explicit subscriptions (RouteConfiguration, Secret); EDS and RDS names, and the Secrets that listeners'
        # and clusters' TLS contexts name, come from the pipeline.
        self._names: dict[str, set[str]] = {r.ROUTE: set(), r.SECRET: set()}
        self._session: _Session | None = None

    def subscribe(self, type_url: str, names: set[str]) -> None:
        """Replaces the subscription for a named type; takes effect on the open stream at once."""
        self._names[type_url] = set(names)
        if self._session is not None:
            self._session.resubscribe()

    def wanted(self, type_url: str) -> set[str] | None:
        """Names to subscribe to; None = wildcard."""
        if type_url in WILDCARD_TYPES:
            return None
        if type_url == r.ENDPOINT:
            return self.pipeline.eds_names()
        if type_url == r.SECRET:
            return self._names[r.SECRET] | self.pipeline.secret_names()
        if type_url == r.ROUTE:
            return self._names[r.ROUTE] | self.pipeline.route_names()
        return self._names.get(type_url, set())

    async def run(self, stop: asyncio.Event) -> None:
        """Keeps a stream open until `stop` is set."""
        attempt = 0
        while not stop.is_set():
            host, port = self.targets[attempt % len(self.targets)]
            attempt += 1
            channel = Channel(host, port)
            session = _Session(self, channel)
            self._session = session
            stream_task = asyncio.create_task(session.run())
            stop_task = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({stream_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._session = None
                for task in (stream_task, stop_task):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                channel.close()
            if stream_task.done() and not stream_task.cancelled() and stream_task.exception() is not None:
                exc = stream_task.exception()
                log.warning("ADS stream to %s:%d failed: %s", host, port, exc or "closed")
            self.pipeline.mark_connected(False)
            if stop.is_set():
                return
            delay = self.backoff.next_delay()
            log.info("reconnecting to the control plane in %.2fs", delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


class _Session:
    """One ADS stream: the per-type nonces and the names subscribed on it."""

    def __init__(self, client: AdsClient, channel: Channel) -> None:
        self.client = client
        self.pipeline = client.pipeline
        self.channel = channel
        self.nonce: dict[str, str] = {}
        self.subscribed: dict[str, set[str] | None] = {}
        self.outbox: asyncio.Queue[object] = asyncio.Queue()
        self.node_sent = False

    def _node(self) -> base_pb2.Node | None:
        if self.node_sent:
            return None
        self.node_sent = True
        return self.client.node

    async def run(self) -> None:
        method = DELTA_METHOD if self.client.delta else SOTW_METHOD
        req_t: type = discovery_pb2.DeltaDiscoveryRequest if self.client.delta else discovery_pb2.DiscoveryRequest
        resp_t: type = discovery_pb2.DeltaDiscoveryResponse if self.client.delta else discovery_pb2.DiscoveryResponse
        stream: Stream[Any, Any]
        async with self.channel.request(method, Cardinality.STREAM_STREAM, req_t, resp_t) as stream:
            await stream.send_request()
            self.resubscribe()
            sender = asyncio.create_task(self._send_loop(stream))
            try:
                while True:
                    waiter = asyncio.ensure_future(stream.recv_message())
                    await asyncio.wait({waiter, sender}, return_when=asyncio.FIRST_COMPLETED)
                    if sender.done():
                        waiter.cancel()
                        sender.result()  # re-raises the send failure
                    response = waiter.result()
                    if response is None:
                        raise ConnectionError("the control plane closed the stream")
                    if self.client.delta:
                        self._on_delta(response)
                    else:
                        self._on_sotw(response)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    async def _send_loop(self, stream: Stream[Any, Any]) -> None:
        while True:
            await stream.send_message(await self.outbox.get())

    def resubscribe(self) -> None:
        """Sends a request for every type whose wanted names differ from what this stream subscribed."""
        for type_url in (r.CLUSTER, r.ENDPOINT, r.LISTENER, r.ROUTE, r.SECRET):
            wanted = self.client.wanted(type_url)
            known = type_url in self.subscribed
            if known and self.subscribed[type_url] == wanted:
                continue
            if wanted is not None and not wanted and not known:
                continue  # nothing to ask for yet
            previous = self.subscribed.get(type_url)
            self.subscribed[type_url] = wanted
            if self.client.delta:
                self._delta_subscribe(type_url, previous if known else set(), wanted, first=not known)
            else:
                self.outbox.put_nowait(discovery_pb2.DiscoveryRequest(
                    version_info=self.pipeline.version(type_url), node=self._node(), type_url=type_url,
                    resource_names=sorted(wanted or ()), response_nonce=self.nonce.get(type_url, "")))

    # -- state of the world ------------------------------------------------------

    def _on_sotw(self, resp: discovery_pb2.DiscoveryResponse) -> None:
        type_url = resp.type_url
        if type_url not in r.MESSAGE_TYPES:
            log.warning("ignoring a response of unknown type %s", type_url)
            return
        self.nonce[type_url] = resp.nonce
        ack = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=resp.nonce,
                                             resource_names=sorted(self.subscribed.get(type_url) or ()))
        try:
            self.pipeline.update(type_url, resp.version_info, resp.resources, full_state=type_url in FULL_STATE_TYPES)
        except (r.ResourceError, ApplyError) as exc:
            ack.version_info = self.pipeline.version(type_url)
            ack.error_detail.CopyFrom(_error_detail(exc))
        else:
            ack.version_info = resp.version_info
            self.pipeline.mark_fresh()
        self._responded()
        self.outbox.put_nowait(ack)
        if type_url in (r.CLUSTER, r.LISTENER):
            self.resubscribe()  # the EDS or RDS names, or the Secrets TLS contexts name, may have changed

    # -- delta ---------------------------------------------------------------------

    def _delta_subscribe(self, type_url: str, previous: set[str] | None, wanted: set[str] | None, *,
                         first: bool) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, node=self._node())
        if first:
            # Resources this proxy already holds (from before a reconnect or from the cache), so the server
            # can skip resending them.
            for name, version in self.pipeline.resource_versions(type_url).items():
                req.initial_resource_versions[name] = version
        if wanted is None:
            if not first:
                return  # wildcard stays wildcard
        else:
            req.resource_names_subscribe.extend(sorted(wanted - (previous or set())))
            req.resource_names_unsubscribe.extend(sorted((previous or set()) - wanted))
        self.outbox.put_nowait(req)

    def _on_delta(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> None:
        type_url = resp.type_url
        if type_url not in r.MESSAGE_TYPES:
            log.warning("ignoring a delta response of unknown type %s", type_url)
            return
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=resp.nonce)
        try:
            self.pipeline.update(type_url, resp.system_version_info, [res.resource for res in resp.resources],
                                 resp.removed_resources, full_state=False,
                                 resource_versions={res.name: res.version for res in resp.resources})
        except (r.ResourceError, ApplyError) as exc:
            ack.error_detail.CopyFrom(_error_detail(exc))
        else:
            self.pipeline.mark_fresh()
        self._responded()
        self.outbox.put_nowait(ack)
        if type_url in (r.CLUSTER, r.LISTENER):
            self.resubscribe()

    def _responded(self) -> None:
        self.pipeline.mark_connected(True)
        self.client.backoff.reset()
