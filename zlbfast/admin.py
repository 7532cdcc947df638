"""The admin server, and the operations layer that ``zlbfast run``/``proxy`` start around the engine.

The admin server is a small HTTP/1.1 server on asyncio streams (one request per connection, then close):
its few endpoints are read by scrapers, probes and people with curl, none of which needs keep-alive, and a
plain server adds no dependency to the proxy. It listens on 127.0.0.1 by default. It may listen on
another address, but unless ``--admin-allow-remote`` is given it answers a peer that is not on the
loopback with 403 and closes: the admin port can drain the proxy, so exposing it must be a decision.

Endpoints (docs/operations.md describes them):

====================  ======================================================================
GET  /stats/prometheus  Prometheus text exposition (zlbfast.metrics)
GET  /clusters          every endpoint with weight, zone, priority, health, ejection, load
GET  /config_dump       the active configuration as JSON, secrets redacted
GET  /ready             200 once a configuration is active and until draining starts, else 503
GET  /healthz           200 while the process (its event loop) answers
POST /drain             the same as SIGTERM: stop accepting, drain, exit
POST /logging?level=L   change the log level (GET /logging shows it)
====================  ======================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zlbfast import _native, logs
from zlbfast.config import ConfigError, parse_hostport
from zlbfast.health import EjectionWatcher, HealthChecker
from zlbfast.metrics import ObservedEngine, effective_health

log = logging.getLogger("zlbfast.admin")

DEFAULT_ADMIN = "127.0.0.1:9901"
MAX_HEAD = 16384
MAX_BODY = 65536
REQUEST_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------------------------
# Command line


def _admin_address(value: str) -> str:
    """Checks --admin at parse time (so a typo fails before anything starts); "off" is kept as it is."""
    if value != "off":
        try:
            parse_hostport(value, "--admin", "command line")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None
    return value


def _sample_rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1 (0.1: one connection in ten), got {value!r}")
    return rate


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {value!r}")
        return number

    return parse


def _ring_records(value: str) -> int:
    number = _bounded_int(_native.ACCESS_LOG_RING_MIN, _native.ACCESS_LOG_RING_MAX)(value)
    if number & (number - 1):
        raise argparse.ArgumentTypeError(f"expected a power of two (1024, 4096, ...), got {value!r}")
    return number


# Bounds of the access-log writer's settings (csrc/accesslog_writer.h): a buffer smaller than two of the
# longest lines, or a flush interval poll(2) cannot wait for, are refused there too.
ACCESS_LOG_FLUSH_MS = (1, 3_600_000)
ACCESS_LOG_BUFFER = (64 * 1024, 64 * 1024 * 1024)


def add_arguments(parser: argparse.ArgumentParser, *, admin_default: str | None) -> None:
    """The operations options of a serving command; `admin_default` None leaves the admin server off."""
    group = parser.add_argument_group("operations (docs/operations.md)")
    shown = admin_default or "off"
    group.add_argument("--admin", type=_admin_address, default=None, metavar="HOST:PORT|off",
                       help=f"admin server address (default: {shown}); port 0 picks a free one")
    group.add_argument("--admin-allow-remote", action="store_true",
                       help="serve admin requests from non-loopback peers (otherwise: 403)")
    group.add_argument("--access-log", default=None, metavar="PATH|-",
                       help="write one JSON line per proxied connection to PATH, or stdout for '-'")
    group.add_argument("--access-log-sample", type=_sample_rate, default=1.0, metavar="FRACTION",
                       help="log this share of connections, chosen at random (default: 1 = all)")
    group.add_argument("--access-log-flush-ms", type=_bounded_int(*ACCESS_LOG_FLUSH_MS), default=100, metavar="MS",
                       help="longest an access record waits before it is written (default: 100)")
    group.add_argument("--access-log-buffer", type=_bounded_int(*ACCESS_LOG_BUFFER), default=256 * 1024,
                       metavar="BYTES", help="access-log bytes written per write(2) at most (default: 262144)")
    group.add_argument("--access-log-ring", type=_ring_records, default=_native.ACCESS_LOG_RING_DEFAULT,
                       metavar="RECORDS", help="records each worker holds for the access-log writer, 664 bytes "
                       "each; a worker whose ring is full drops records and counts them (power of two from "
                       f"{_native.ACCESS_LOG_RING_MIN} to {_native.ACCESS_LOG_RING_MAX}, "
                       f"default: {_native.ACCESS_LOG_RING_DEFAULT})")
    parser.set_defaults(admin_default=admin_default)


@dataclass(frozen=True)
class OpsOptions:
    admin: tuple[str, int] | None = None
    # A default address that is taken (another zlbfast on this host) only costs the admin server, with a
    # warning; an address asked for on the command line must work or the proxy does not start.
    admin_required: bool = True
    allow_remote: bool = False
    access_log: str | None = None
    access_log_sample: float = 1.0
    access_log_flush_ms: int = 100
    access_log_buffer: int = 256 * 1024
    access_log_ring: int = _native.ACCESS_LOG_RING_DEFAULT

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OpsOptions:
        explicit = args.admin is not None
        address = args.admin if explicit else args.admin_default
        admin = None if address in (None, "off") else parse_hostport(address, "--admin", "command line")
        return cls(admin=admin, admin_required=explicit, allow_remote=args.admin_allow_remote,
                   access_log=args.access_log, access_log_sample=args.access_log_sample,
                   access_log_flush_ms=args.access_log_flush_ms, access_log_buffer=args.access_log_buffer,
                   access_log_ring=args.access_log_ring)


# ---------------------------------------------------------------------------------------------------------
# /config_dump redaction

# Field names that hold secrets (private keys, passwords, tokens), and PEM private keys wherever they appear:
# a dump is made to be pasted into tickets.
_SECRET_NAME = re.compile(r"key|secret|password|passwd|private|token|credential", re.I)
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
REDACTED = "[redacted]"


def redact(value: Any, name: str = "") -> Any:
    """A JSON-ready copy of `value` (dataclasses, mappings, sequences, scalars) with secrets replaced."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    # Sequence, not just list and tuple: endpoints from EDS are an EndpointTable (zlbfast._native).
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [redact(v, name) for v in value]
    if isinstance(value, (bytes, str)) and value and (_SECRET_NAME.search(name) or _PEM_PRIVATE.search(
            value.decode("latin-1") if isinstance(value, bytes) else value)):
        return REDACTED
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value


# ---------------------------------------------------------------------------------------------------------
# The server


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, text: str) -> _Response:
    return _Response(status, (text + "\n").encode())


def _json(value: Any, status: int = 200) -> _Response:
    return _Response(status, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), "application/json")


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 503: "Service Unavailable"}


def _is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class AdminServer:
    """Serves the admin endpoints for one engine; `port` is known after start()."""

    def __init__(self, engine: ObservedEngine, *, host: str = "127.0.0.1", port: int = 9901,
                 allow_remote: bool = False, health: HealthChecker | None = None,
                 access_log: logs.AccessLog | None = None,
                 on_drain: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.allow_remote = allow_remote
        self.health = health
        self.access_log = access_log
        self.registry: Any = None  # built on the first scrape (see zlbfast.prometheus)
        self.on_drain = on_drain
        self.draining = False
        self.refused = 0  # non-loopback peers turned away
        self._server: asyncio.Server | None = None
        self._routes: dict[str, dict[str, Callable[[dict[str, list[str]]], _Response]]] = {
            "/": {"GET": self._index},
            "/stats/prometheus": {"GET": self._prometheus},
            "/clusters": {"GET": self._clusters},
            "/config_dump": {"GET": self._config_dump},
            "/ready": {"GET": self._ready},
            "/healthz": {"GET": lambda q: _text(200, "OK")},
            "/drain": {"POST": self._drain},
            "/logging": {"GET": self._logging, "POST": self._logging},
        }

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])
        remote = "" if _is_loopback(self.host) else (
            ", remote peers allowed" if self.allow_remote else ", non-loopback peers refused")
        log.info("admin listening on %s:%d%s", self.host, self.port, remote,
                 extra={"event": "admin", "address": f"{self.host}:{self.port}"})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = writer.get_extra_info("peername")
            if not self.allow_remote and not _is_loopback(peer[0]):
                self.refused += 1
                log.warning("admin: refused %s (not loopback; see --admin-allow-remote)", peer[0])
                response = _text(403, "admin is only served to loopback peers")
            else:
                try:
                    response = await asyncio.wait_for(self._request(reader), REQUEST_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except (asyncio.LimitOverrunError, ValueError):
                    response = _text(400, "malformed or oversized request")
            writer.write(self._encode(response))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _request(self, reader: asyncio.StreamReader) -> _Response:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, target, version = request_line.split(" ")  # ValueError -> 400
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if not 0 <= length <= MAX_BODY:
            return _text(413, f"request bodies are at most {MAX_BODY} bytes")
        await reader.readexactly(length)  # no endpoint takes a body; read it so the close is clean
        url = urllib.parse.urlsplit(target)
        methods = self._routes.get(url.path)
        if methods is None:
            return _text(404, f"no such admin endpoint {url.path!r}; GET / lists them")
        handler = methods.get(method)
        if handler is None:
            allowed = ", ".join(methods)
            return _Response(405, f"use {allowed}\n".encode(), headers=(("Allow", allowed),))
        return handler(urllib.parse.parse_qs(url.query))

    @staticmethod
    def _encode(r: _Response) -> bytes:
        head = [f"HTTP/1.1 {r.status} {_REASONS.get(r.status, '')}", f"Content-Type: {r.content_type}",
                f"Content-Length: {len(r.body)}", "Connection: close", "Cache-Control: no-store"]
        head += [f"{k}: {v}" for k, v in r.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + r.body

    # -- endpoints ---------------------------------------------------------------------------------------

    def _index(self, query: dict[str, list[str]]) -> _Response:
        lines = [f"{' '.join(methods)} {path}" for path, methods in self._routes.items() if path != "/"]
        return _text(200, "\n".join(lines))

    def _prometheus(self, query: dict[str, list[str]]) -> _Response:
        from zlbfast import prometheus

        if self.registry is None:
            self.registry = prometheus.registry(
                prometheus.EngineCollector(self.engine, health=self.health, access_log=self.access_log))
        return _Response(200, prometheus.exposition(self.registry), prometheus.CONTENT_TYPE)

    def _ready(self, query: dict[str, list[str]]) -> _Response:
        if self.draining:
            return _text(503, "draining")
        if self.engine.config is None:
            return _text(503, "no configuration active yet")
        return _text(200, "ready")

    def _clusters(self, query: dict[str, list[str]]) -> _Response:
        cfg = self.engine.config
        specs = {c.name: c for c in cfg.clusters} if cfg is not None else {}
        now_ns = time.monotonic_ns()
        out = []
        for name, endpoints in self.engine.native.endpoints().items():
            spec = specs.get(name)
            eps = []
            for ep in endpoints:
                address = str(ep["address"])
                active_health = self.health.verdict(name, address) if self.health is not None else None
                ejected_ns = max(0, int(ep["ejected_until_ns"]) - now_ns)
                eps.append({
                    "address": address,
                    "weight": ep["weight"],
                    "priority": ep["priority"],
                    "zone": ep["zone"],
                    "health": effective_health(str(ep["health"]), active_health),
                    "configured_health": ep["health"],
                    "active_health": active_health,  # null: not checked, or no verdict yet
                    "ejected": ejected_ns > 0,
                    "ejected_for_s": round(ejected_ns / 1e9, 3),
                    "ejections": ep["ejections"],
                    "active": ep["active"],
                    "picks": ep["picks"],
                    "failures": ep["failures"],
                    "ewma_ms": round(int(ep["ewma_ns"]) / 1e6, 3),
                })
            out.append({
                "name": name,
                "policy": spec.policy if spec is not None else None,
                "health_check": redact(spec.health_check) if spec is not None else None,
                "endpoints": eps,
            })
        return _json({"clusters": out})

    def _config_dump(self, query: dict[str, list[str]]) -> _Response:
        cfg = self.engine.config
        if cfg is None:
            return _json({"config": None, "applied_at": None})
        return _json({"config": redact(cfg), "applied_at": self.engine.last_update_time,
                      "updates": self.engine.config_updates})

    def _drain(self, query: dict[str, list[str]]) -> _Response:
        if self.on_drain is None:
            return _text(503, "this server cannot drain the proxy")
        if not self.draining:
            log.warning("admin: drain requested; stopping as on SIGTERM", extra={"event": "drain"})
        self.draining = True
        self.on_drain()
        return _text(202, "draining")

    def _logging(self, query: dict[str, list[str]]) -> _Response:
        levels = query.get("level")
        if levels:
            try:
                logs.set_level(levels[-1])
            except ValueError as exc:
                return _text(400, str(exc))
            log.warning("admin: log level set to %s", levels[-1], extra={"event": "log_level", "level": levels[-1]})
        return _text(200, f"level={logs.current_level()}")


# ---------------------------------------------------------------------------------------------------------
# Everything around the engine while it serves


class StartError(Exception):
    """The admin server could not listen where it was told to."""


class Operations:
    """Starts the admin server, health checks, ejection log and access log for a serving engine, and stops
    them after the drain. Use as ``async with Operations(engine, opts, stop.set) as ops:``."""

    def __init__(self, engine: ObservedEngine, opts: OpsOptions, on_drain: Callable[[], None]) -> None:
        self.engine = engine
        self.opts = opts
        self.health = HealthChecker(engine)
        self.ejections = EjectionWatcher(engine)
        self.access_log: logs.AccessLog | None = None
        self.admin: AdminServer | None = None
        self._on_drain = on_drain
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Operations:
        loop = asyncio.get_running_loop()
        self.engine.on_apply.append(self.health.reconcile)
        self._tasks.append(loop.create_task(self.ejections.run(self._closing), name="ejection log"))
        if self.opts.access_log is not None:
            self._start_access_log()
        if self.opts.admin is not None:
            host, port = self.opts.admin
            admin = AdminServer(self.engine, host=host, port=port, allow_remote=self.opts.allow_remote,
                                health=self.health, access_log=self.access_log, on_drain=self._on_drain)
            try:
                await admin.start()
                self.admin = admin
            except OSError as exc:
                if self.opts.admin_required:
                    await self._stop()
                    raise StartError(f"admin server cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
                log.warning("admin server not started: %s:%d: %s (pass --admin HOST:PORT to choose another)",
                            host, port, exc.strerror or exc)
        return self

    def _start_access_log(self) -> None:
        assert self.opts.access_log is not None
        self.access_log = logs.AccessLog(self.engine.native, self.opts.access_log,
                                         sample=self.opts.access_log_sample,
                                         flush_interval_ms=self.opts.access_log_flush_ms,
                                         buffer_bytes=self.opts.access_log_buffer,
                                         ring_records=self.opts.access_log_ring)
        self.access_log.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self.access_log.run(self._closing),
                                                                  name="access log"))

    def draining(self) -> None:
        """Marks the proxy as draining (/ready answers 503 from now on)."""
        if self.admin is not None:
            self.admin.draining = True

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        self._closing.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.health.close()
        if self.engine.on_apply and self.health.reconcile in self.engine.on_apply:
            self.engine.on_apply.remove(self.health.reconcile)
        if self.admin is not None:
            await self.admin.close()
        # Last, once nothing else calls the engine: the writer drains the rings once more on its way out, so
        # connections closed by the drain are logged too.
        if self.access_log is not None and not await self.access_log.close():
            log.warning("access log %s: writer still blocked at exit; its records are lost", self.opts.access_log)
