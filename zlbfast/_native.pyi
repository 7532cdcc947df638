"""Type stubs for the Cython boundary module (zlbfast/_native.pyx)."""

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

def hold_gil(seconds: float) -> None: ...
def debug_counters() -> dict[str, int]: ...
def policy_names() -> list[str]: ...
def total_ejections() -> int: ...
