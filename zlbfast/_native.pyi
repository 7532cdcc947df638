"""Type stubs for the Cython boundary module (zlbfast/_native.pyx)."""

from collections.abc import Iterable
from typing import Any

STAT_FIELDS: tuple[str, ...]
HEALTH: dict[str, int]

class NativeError(Exception): ...

class SnapshotBuilder:
    def __init__(self, engine: NativeEngine, local_zone: str = "") -> None: ...
    def add_cluster(
        self,
        name: str,
        policy: str = "round_robin",
        *,
        connect_timeout_ms: int = 5000,
        connect_retries: int = 2,
        panic_threshold: int = 50,
        ring_size: int = 1024,
        maglev_table_size: int = 65537,
        overprovisioning: int = 140,
        ewma_decay_ms: int = 10000,
        consecutive_failures: int = 5,
        base_ejection_ms: int = 30000,
        max_ejection_ms: int = 300000,
        max_ejection_percent: int = 10,
    ) -> int: ...
    def add_endpoint(
        self,
        cluster: int,
        host: str,
        port: int,
        *,
        weight: int = 1,
        priority: int = 0,
        zone: str = "",
        health: str = "healthy",
    ) -> None: ...

class NativeEngine:
    def __init__(self, workers: int, seed: int = 0x5EED) -> None: ...
    def close(self) -> None: ...
    @property
    def workers(self) -> int: ...
    def publish(self, builder: SnapshotBuilder) -> int: ...
    def reclaim(self) -> int: ...
    def add_listener(
        self,
        name: str,
        cluster: str,
        host: str,
        port: int,
        *,
        max_connections: int = 10000,
        idle_timeout_ms: int = 3600000,
        backlog: int = 4096,
    ) -> int: ...
    def listener_port(self, lid: int) -> int: ...
    def listener_active(self, lid: int) -> int: ...
    def remove_listener(self, lid: int) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def endpoints(self) -> dict[str, list[dict[str, Any]]]: ...
    def set_active_health(self, cluster: str, address: str, health: str) -> None: ...
    def set_access_log(self, on: bool) -> None: ...
    def drain_access_log(self, max_records: int = 4096) -> list[dict[str, Any]]: ...

def hold_gil(seconds: float) -> None: ...
def debug_counters() -> dict[str, int]: ...
def policy_names() -> list[str]: ...
def total_ejections() -> int: ...

# Load generator and built-in test backends (_loadgen.pxi).

LOAD_ERROR_KINDS: tuple[str, ...]

class Histogram:
    def __init__(self) -> None: ...
    def record(self, ns: int) -> None: ...
    def record_many(self, values: Iterable[int]) -> None: ...
    def merge(self, other: Histogram) -> None: ...
    def percentile(self, q: float) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def min(self) -> int: ...
    @property
    def max(self) -> int: ...
    @property
    def mean(self) -> float: ...
    @staticmethod
    def bucket_bounds(ns: int) -> tuple[int, int]: ...
    def buckets(self) -> list[tuple[int, int, int]]: ...

class LoadResult:
    @property
    def requests(self) -> int: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def errors(self) -> dict[str, int]: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def connects(self) -> int: ...
    @property
    def latency(self) -> Histogram: ...
    @property
    def labels(self) -> dict[str, int]: ...
    @property
    def labels_other(self) -> int: ...
    @property
    def labels_missing(self) -> int: ...
    @property
    def rps(self) -> float: ...
    def summary(self) -> dict[str, Any]: ...

def run_load(
    host: str,
    port: int,
    *,
    mode: str = "http",
    threads: int = 1,
    connections: int = 64,
    rate: float = 0.0,
    duration: float = 10.0,
    max_requests: int = 0,
    timeout: float = 5.0,
    path: str = "/",
    host_header: str = "",
    label_header: str = "",
    tcp_size: int = 64,
) -> LoadResult: ...

class BuiltinBackend:
    kind: str
    host: str
    port: int
    label: str
    def __init__(
        self,
        kind: str = "http",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        threads: int = 1,
        status: int = 200,
        body_size: int = 64,
        delay: float = 0.0,
        label: str = "",
    ) -> None: ...
    def stop(self) -> None: ...
    def stall(self, seconds: float) -> None: ...
    @property
    def requests(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def connections(self) -> int: ...
    @property
    def address(self) -> str: ...
    def __enter__(self) -> BuiltinBackend: ...
    def __exit__(self, *exc: object) -> None: ...

# HTTP/1.1 parser test surface (_http1.pxi).

H1_F_CLOSE: int
H1_F_EXPECT_100: int
H1_F_UPGRADE: int
H1_F_HAS_HOST: int
H1_F_KEEP_ALIVE: int
H1_BODY_KINDS: tuple[str, ...]

# A parsed head: version_minor, headers (list of (name, value) bytes), body
# (one of H1_BODY_KINDS), content_length, head_len, flags; requests add
# method, target, host (bytes), responses add status (int) and reason (bytes).
# Errors come back as (error_status, message); None means "incomplete".
def h1_parse_request(
    data: bytes, *, max_request_line: int = 8192, max_head: int = 65536, max_headers: int = 100
) -> dict[str, Any] | tuple[int, str] | None: ...
def h1_feed_request(
    pieces: list[bytes], *, max_request_line: int = 8192, max_head: int = 65536, max_headers: int = 100
) -> dict[str, Any] | tuple[int, str] | None: ...
def h1_parse_response(
    data: bytes,
    *,
    request_was_head: bool = False,
    max_request_line: int = 8192,
    max_head: int = 65536,
    max_headers: int = 100,
) -> dict[str, Any] | tuple[int, str] | None: ...
def h1_feed_response(
    pieces: list[bytes],
    *,
    request_was_head: bool = False,
    max_request_line: int = 8192,
    max_head: int = 65536,
    max_headers: int = 100,
) -> dict[str, Any] | tuple[int, str] | None: ...
# (payload, bytes consumed) | error message | None (incomplete)
def h1_dechunk(data: bytes, *, max_line: int = 4096, max_trailers: int = 8192) -> tuple[bytes, int] | str | None: ...
def h1_dechunk_pieces(
    pieces: list[bytes], *, max_line: int = 4096, max_trailers: int = 8192
) -> tuple[bytes, int] | str | None: ...
