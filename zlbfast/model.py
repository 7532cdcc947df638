"""The one typed configuration model.

Every configuration source (zlbfast YAML, Envoy static resources, xDS, the
``zlbfast proxy`` command line) is turned into these frozen dataclasses, which
``zlbfast.config.validate`` checks and the runtime compiles into a native
snapshot. They are immutable so that a published configuration can be shared
with the compiler and the admin endpoints without copies or locks.

Units are in the field names (``_ms``) because the C side takes plain integers.
Defaults are the documented defaults of docs/config.md and mirror
``zlb_cluster_opts_defaults`` in csrc/snapshot.h.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICIES: tuple[str, ...] = (
    "round_robin",
    "weighted",
    "random",
    "least_request",
    "ring_hash",
    "maglev",
    "peak_ewma",
)

# Configured health of an endpoint. "degraded" endpoints take traffic only when
# no healthy one is left; "unhealthy" ones only in panic mode.
HEALTH_STATES: tuple[str, ...] = ("healthy", "degraded", "unhealthy")

# Listener protocols the data plane implements. New protocols are added here
# when their worker code lands, so a config never promises what cannot run.
PROTOCOLS: tuple[str, ...] = ("tcp",)

# Active health check probes: "tcp" succeeds when the connect does, "http" when a GET answers with an
# expected status.
HEALTH_CHECK_TYPES: tuple[str, ...] = ("tcp", "http")


@dataclass(frozen=True)
class Endpoint:
    address: str  # numeric IPv4/IPv6 literal in canonical form (no brackets)
    port: int
    weight: int = 1
    priority: int = 0  # 0 = most preferred
    zone: str = ""
    health: str = "healthy"  # one of HEALTH_STATES


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_failures: int = 5  # 0 disables passive ejection
    base_ejection_time_ms: int = 30000
    max_ejection_time_ms: int = 300000
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class HealthCheck:
    """Active health checking of every endpoint of a cluster (zlbfast.health runs it)."""

    type: str = "tcp"  # one of HEALTH_CHECK_TYPES
    path: str = "/"  # http only: the GET target
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 399),)  # http only: inclusive status ranges
    interval_ms: int = 5000
    # Each wait adds up to this much at random, so that the many proxies of a ZeroLB mesh, all checking the same
    # endpoints, do not probe in lockstep.
    jitter_ms: int = 1000
    timeout_ms: int = 1000
    healthy_threshold: int = 2  # successes in a row that make an unhealthy endpoint healthy
    unhealthy_threshold: int = 3  # failures in a row that make a healthy endpoint unhealthy


@dataclass(frozen=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...]
    policy: str = "round_robin"  # one of POLICIES
    connect_timeout_ms: int = 5000
    connect_retries: int = 2  # extra endpoints tried after a failed connect
    panic_threshold: int = 50  # percent, 0 disables
    ring_size: int = 1024  # ring_hash only
    maglev_table_size: int = 65537  # maglev only, prime
    overprovisioning: int = 140  # percent
    ewma_decay_ms: int = 10000  # peak_ewma only
    outlier: OutlierDetection = OutlierDetection()
    health_check: HealthCheck | None = None  # None: no active checks


@dataclass(frozen=True)
class Listener:
    name: str
    address: str  # numeric IPv4/IPv6 literal in canonical form (no brackets)
    port: int  # 0 = ephemeral
    cluster: str
    max_connections: int = 10000
    idle_timeout_ms: int = 3600000
    protocol: str = "tcp"  # one of PROTOCOLS


@dataclass(frozen=True)
class Config:
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    workers: int = 0  # 0 = number of online CPUs
    local_zone: str = ""
    drain_timeout_ms: int = 30000
    source: str = "<memory>"  # where the config came from, for messages
