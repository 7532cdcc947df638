"""Filesystem-watched resources (Envoy's ``path_config_source``): a file holding a DiscoveryResponse in
YAML or JSON, re-read whenever its inode, size or modification time changes (an atomic rename, as Envoy
expects deployments to do, changes the inode). A file that does not parse or translate is logged and counted
as a NACK; the previous state keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from zlbfast.runtime import ApplyError
from zlbfast.xds import resources as r
from zlbfast.xds.state import FULL_STATE_TYPES, Pipeline

log = logging.getLogger("zlbfast.xds")


def read_discovery_file(path: str) -> discovery_pb2.DiscoveryResponse:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    resp = discovery_pb2.DiscoveryResponse()
    json_format.ParseDict(data, resp, ignore_unknown_fields=False)
    return resp


class FileWatcher:
    def __init__(self, pipeline: Pipeline, type_url: str, path: str, *, interval_s: float = 0.2) -> None:
        self.pipeline = pipeline
        self.type_url = type_url
        self.path = path
        self.interval_s = interval_s
        self._seen: tuple[int, int, int] | None = None

    def check(self) -> bool:
        """Loads the file if it changed since the last check; True when a new state was applied."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            resp = read_discovery_file(self.path)
            for res in resp.resources:
                if res.type_url != self.type_url:
                    raise r.ResourceError(r.KIND[self.type_url], "?", "resources",
                                          f"{self.path} holds a {res.type_url}, expected {self.type_url}")
            self.pipeline.update(self.type_url, resp.version_info or str(st.st_mtime_ns), resp.resources,
                                 full_state=self.type_url in FULL_STATE_TYPES)
        except (OSError, yaml.YAMLError, json_format.ParseError) as exc:
            self.pipeline.nacks += 1
            self.pipeline.last_error = f"{self.path}: {exc}"
            log.error("cannot load %s, keeping the previous state: %s", self.path, exc)
            return False
        except (r.ResourceError, ApplyError):
            return False  # logged and counted by the pipeline
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.check()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
