"""REST-JSON xDS polling (Envoy's ``api_type: REST``): POST a DiscoveryRequest as JSON to
``/v3/discovery:<type>`` every refresh_delay and feed the DiscoveryResponse to the same pipeline as ADS.

HTTP 200 carries a new state, 304 means unchanged; REST has no stream to NACK on, so a rejected response is
reported in the next request's error_detail with the previous version, as Envoy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from zlbfast.runtime import ApplyError
from zlbfast.xds import resources as r
from zlbfast.xds.ads import Backoff, _error_detail
from zlbfast.xds.state import FULL_STATE_TYPES, Pipeline

log = logging.getLogger("zlbfast.xds")

PATHS = {r.CLUSTER: "clusters", r.ENDPOINT: "endpoints", r.LISTENER: "listeners", r.ROUTE: "routes",
         r.SECRET: "secrets"}


class RestPoller:
    def __init__(self, pipeline: Pipeline, node: base_pb2.Node, targets: Sequence[tuple[str, int]], *,
                 refresh_s: float = 1.0, timeout_s: float = 1.0, backoff: Backoff | None = None) -> None:
        self.pipeline = pipeline
        self.node = node
        self.targets = list(targets)
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self._errors: dict[str, status_pb2.Status] = {}

    def _post(self, host: str, port: int, type_url: str, body: bytes) -> discovery_pb2.DiscoveryResponse | None:
        url = f"http://{host}:{port}/v3/discovery:{PATHS[type_url]}"
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (304, 404):  # unchanged / no resources of this type for this node
                return None
            raise
        out = discovery_pb2.DiscoveryResponse()
        json_format.Parse(payload, out, ignore_unknown_fields=False)
        return out

    async def poll_once(self, host: str, port: int) -> None:
        """One round over every subscribed type; raises OSError when the server is unreachable."""
        # RDS after LDS: the listeners of this round name the RouteConfigurations to ask for.
        for type_url in (r.CLUSTER, r.ENDPOINT, r.LISTENER, r.ROUTE):
            named = {r.ENDPOINT: self.pipeline.eds_names, r.ROUTE: self.pipeline.route_names}.get(type_url)
            names = sorted(named()) if named is not None else []
            if named is not None and not names:
                continue
            req = discovery_pb2.DiscoveryRequest(version_info=self.pipeline.version(type_url), node=self.node,
                                                 type_url=type_url, resource_names=names)
            if type_url in self._errors:
                req.error_detail.CopyFrom(self._errors[type_url])
            # Proto field names (version_info, resource_names), as Envoy sends them: sovereign's request model
            # only knows those and would take camelCase keys for absent fields.
            body = json.dumps(json_format.MessageToDict(req, preserving_proto_field_name=True)).encode()
            resp = await asyncio.to_thread(self._post, host, port, type_url, body)
            self.pipeline.mark_connected(True)
            if resp is None:
                continue
            try:
                self.pipeline.update(type_url, resp.version_info, resp.resources,
                                     full_state=type_url in FULL_STATE_TYPES)
            except (r.ResourceError, ApplyError) as exc:
                self._errors[type_url] = _error_detail(exc)
            else:
                self._errors.pop(type_url, None)
                self.pipeline.mark_fresh()

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            host, port = self.targets[attempt % len(self.targets)]
            try:
                await self.poll_once(host, port)
                self.backoff.reset()
                delay = self.refresh_s
            except (OSError, json_format.ParseError, ValueError) as exc:
                attempt += 1
                self.pipeline.mark_connected(False)
                delay = self.backoff.next_delay()
                log.warning("REST xDS poll of %s:%d failed (%s); retrying in %.2fs", host, port, exc, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
