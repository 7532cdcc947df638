"""Prometheus exposition: a custom Collector that reads the engine's counters at scrape time.

Nothing is counted twice: the data plane keeps its counters per worker and sums them when asked
(``NativeEngine.stats()``, ``NativeEngine.endpoints()``); this module only names them, following the
Prometheus conventions (``zlbfast_`` prefix, base units, ``_total`` for counters, labels for dimensions).

Per-endpoint series are keyed by (cluster, endpoint) exactly like the data plane's endpoint state, which
survives configuration updates, so they never reset on a reload. Global counters have no cluster or listener
label yet because the data plane does not split them.

prometheus_client costs about 10 MB of memory, so the admin server imports this module on the first scrape,
not at start-up (the idle footprint is a stated target).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from zlbfast import _native
from zlbfast.health import HealthChecker
from zlbfast.logs import AccessLog
from zlbfast.metrics import ObservedEngine, effective_health
from zlbfast.model import HEALTH_STATES

CONTENT_TYPE = CONTENT_TYPE_LATEST


# NativeEngine.stats() field -> (metric name, help, labels). Fields that share a metric differ by label.
_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "conns_accepted": ("zlbfast_downstream_connections_total", "Client connections accepted.", {}),
    "conns_overflow": ("zlbfast_overflow_total",
                       "Client connections closed at once because their listener was at max_connections.", {}),
    "connect_attempts": ("zlbfast_upstream_connect_attempts_total", "Connects to endpoints started.", {}),
    "connect_failures": ("zlbfast_upstream_connect_failures_total",
                         "Connects to endpoints that failed (refused, unreachable, reset), timeouts excluded.", {}),
    "connect_timeouts": ("zlbfast_upstream_connect_timeouts_total",
                         "Connects to endpoints that took longer than connect_timeout.", {}),
    "retries": ("zlbfast_upstream_retries_total", "Connects retried on another endpoint after a failure.", {}),
    "upstream_exhausted": ("zlbfast_upstream_exhausted_total",
                           "Client connections closed because every connect attempt failed.", {}),
    "no_cluster": ("zlbfast_no_cluster_total",
                   "Client connections closed because their listener's cluster was not configured.", {}),
    "idle_timeouts": ("zlbfast_idle_timeouts_total", "Connections closed by the listener's idle_timeout.", {}),
    "resets": ("zlbfast_resets_total", "Connections ended by an I/O error on either side.", {}),
    "bytes_down_up": ("zlbfast_bytes_total", "Bytes proxied, by direction.", {"direction": "to_upstream"}),
    "bytes_up_down": ("zlbfast_bytes_total", "Bytes proxied, by direction.", {"direction": "to_downstream"}),
    "splice_fallbacks": ("zlbfast_splice_fallbacks_total",
                         "Connections that fell back from splice(2) to copying through user space.", {}),
    "access_log_dropped": ("zlbfast_access_log_ring_dropped_total",
                           "Access records the data plane dropped because a worker's ring was full.", {}),
    # HTTP/1.1 listeners (csrc/engine.h, zlb_stats).
    "http_requests": ("zlbfast_http_requests_total", "HTTP requests completed, whatever the status.", {}),
    **{f"http_{c}xx": ("zlbfast_http_responses_total", "HTTP responses sent to clients, by status class.",
                       {"class": f"{c}xx"}) for c in range(1, 6)},
    "http_retries": ("zlbfast_http_retries_total", "HTTP upstream attempts beyond the first.", {}),
    "http_bad_requests": ("zlbfast_http_bad_requests_total",
                          "HTTP requests the parser rejected (400, 414, 431, 501).", {}),
    "http_header_timeouts": ("zlbfast_http_header_timeouts_total",
                             "HTTP connections closed waiting for request headers.", {}),
    "http_request_timeouts": ("zlbfast_http_request_timeouts_total", "HTTP requests that hit their timeout.", {}),
    "http_overflow": ("zlbfast_http_overflow_total", "HTTP requests answered 503 by the circuit breaker.", {}),
    "http_upstream_reused": ("zlbfast_http_upstream_reused_total",
                             "HTTP requests sent on a pooled (kept-alive) upstream connection.", {}),
    "http_upgrades": ("zlbfast_http_upgrades_total", "HTTP connections turned into tunnels (101).", {}),
    # TLS and authorization (csrc/engine.h).
    "tls_handshakes_down": ("zlbfast_tls_handshakes_total", "TLS handshakes completed with the peer verified.",
                            {"side": "downstream"}),
    "tls_handshakes_up": ("zlbfast_tls_handshakes_total", "TLS handshakes completed with the peer verified.",
                          {"side": "upstream"}),
    "tls_resumed_up": ("zlbfast_tls_sessions_resumed_total", "Upstream TLS handshakes that resumed a session.", {}),
    "tls_handshake_failures_down": ("zlbfast_tls_handshake_failures_total", "TLS handshakes that failed.",
                                    {"side": "downstream"}),
    "tls_handshake_failures_up": ("zlbfast_tls_handshake_failures_total", "TLS handshakes that failed.",
                                  {"side": "upstream"}),
    "tls_handshake_timeouts": ("zlbfast_tls_handshake_timeouts_total",
                               "Clients that did not finish the TLS handshake in time.", {}),
    **{f"tls_{key}": ("zlbfast_tls_peer_rejected_total", "Peers whose certificate or identity was refused.",
                      {"reason": reason})
       for key, reason in (("verify_untrusted", "untrusted"), ("verify_expired", "expired"),
                           ("verify_spiffe_id", "spiffe_id"), ("no_peer_cert", "no_certificate"))},
    "tls_plaintext_rejected": ("zlbfast_tls_plaintext_rejected_total",
                               "Plaintext connections closed by strict mTLS listeners.", {}),
    "tls_permissive_plaintext": ("zlbfast_tls_permissive_plaintext_total",
                                 "Plaintext connections accepted by permissive listeners.", {}),
    "tls_bytes_down_up": ("zlbfast_tls_bytes_total", "Bytes proxied on connections with TLS on a side.",
                          {"direction": "to_upstream"}),
    "tls_bytes_up_down": ("zlbfast_tls_bytes_total", "Bytes proxied on connections with TLS on a side.",
                          {"direction": "to_downstream"}),
    "authz_denied": ("zlbfast_authz_denied_total", "Connections closed by a listener's allow/deny rules.", {}),
    "tls_events_dropped": ("zlbfast_tls_events_dropped_total", "TLS log events lost to a full event ring.", {}),
}
_GAUGES: dict[str, tuple[str, str]] = {
    "conns_active": ("zlbfast_downstream_connections_active", "Client connections open now."),
}


# NativeEngine.cluster_stats() field -> (metric name, help); every series is labelled by cluster.
_CLUSTER_COUNTERS: dict[str, tuple[str, str]] = {
    "connections": ("zlbfast_upstream_connections_total", "L4 connections established to the cluster."),
    "connect_attempts": ("zlbfast_upstream_connect_attempts_total", "Connects to the cluster's endpoints started."),
    "connect_failures": ("zlbfast_upstream_connect_failures_total", "Connects to the cluster that failed."),
    "connect_timeouts": ("zlbfast_upstream_connect_timeouts_total", "Connects to the cluster that timed out."),
    "retries": ("zlbfast_upstream_retries_total", "Attempts beyond the first (connects and HTTP requests)."),
    "exhausted": ("zlbfast_upstream_exhausted_total", "Requests/connections given up after every attempt failed."),
    "timeouts": ("zlbfast_upstream_request_timeouts_total", "HTTP requests to the cluster that timed out."),
    "overflow": ("zlbfast_upstream_overflow_total", "HTTP requests rejected by the cluster's circuit breaker."),
    "bytes_sent": ("zlbfast_upstream_bytes_sent_total", "Bytes sent to the cluster's endpoints."),
    "bytes_received": ("zlbfast_upstream_bytes_received_total", "Bytes received from the cluster's endpoints."),
    "retry_overflow": ("zlbfast_upstream_retry_overflow_total",
                       "Retries not attempted because the cluster's retry budget was spent."),
}


class EngineCollector(Collector):
    """Reads the engine (and the optional health checker, access log and xDS agent) at each scrape."""

    def __init__(self, engine: ObservedEngine, *, health: HealthChecker | None = None,
                 access_log: AccessLog | None = None,
                 xds_state: Callable[[], dict[str, Any]] | None = None) -> None:
        self.engine = engine
        self.health = health
        self.access_log = access_log
        self.xds_state = xds_state

    def collect(self) -> Iterator[Metric]:
        yield from self._global()
        yield from self._clusters()
        yield from self._endpoints()
        yield from self._operations()
        if self.xds_state is not None:
            yield from _xds(self.xds_state())

    def _global(self) -> Iterator[Metric]:
        stats = self.engine.native.stats()
        families: dict[str, CounterMetricFamily] = {}
        for field, (name, doc, labels) in _COUNTERS.items():
            if field not in stats:
                continue  # a field this build of the data plane does not have yet
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(name, doc, labels=list(labels))
            family.add_metric(list(labels.values()), stats[field])
        yield from families.values()
        for field, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=stats[field])
        yield CounterMetricFamily("zlbfast_ejections_total", "Outlier-detection ejections, all endpoints.",
                                  value=_native.total_ejections())
        yield GaugeMetricFamily("zlbfast_workers", "Data-plane worker threads.", value=self.engine.native.workers)

    def _clusters(self) -> Iterator[Metric]:
        stats = self.engine.native.cluster_stats()
        requests = CounterMetricFamily("zlbfast_upstream_requests_total",
                                       "HTTP responses from the cluster, by status class.",
                                       labels=["cluster", "code_class"])
        duration = HistogramMetricFamily("zlbfast_upstream_request_duration_seconds",
                                         "HTTP request duration, from the complete request head to the end of the "
                                         "response.", labels=["cluster"])
        counters = {field: CounterMetricFamily(name, doc, labels=["cluster"])
                    for field, (name, doc) in _CLUSTER_COUNTERS.items()}
        for cluster, st in stats.items():
            for c in range(1, 6):
                requests.add_metric([cluster, f"{c}xx"], st[f"rq_{c}xx"])
            buckets = [("+Inf" if bound == float("inf") else repr(bound), count)
                       for bound, count in st["latency_buckets"]]
            duration.add_metric([cluster], buckets, st["latency_sum_s"])
            for field, family in counters.items():
                family.add_metric([cluster], st[field])
        yield requests
        yield duration
        yield from counters.values()

    def _endpoints(self) -> Iterator[Metric]:
        labels = ["cluster", "endpoint"]
        active = GaugeMetricFamily("zlbfast_endpoint_active", "Connections open to the endpoint.", labels=labels)
        attempts = CounterMetricFamily("zlbfast_endpoint_connect_attempts_total",
                                       "Connects to the endpoint started (every pick, retries included).",
                                       labels=labels)
        failures = CounterMetricFamily("zlbfast_endpoint_connect_failures_total",
                                       "Connects to the endpoint that failed or timed out.", labels=labels)
        ejected = GaugeMetricFamily("zlbfast_endpoint_ejected",
                                    "1 while outlier detection keeps the endpoint out of balancing.", labels=labels)
        ejections = CounterMetricFamily("zlbfast_endpoint_ejections_total",
                                        "Outlier-detection ejections of the endpoint.", labels=labels)
        ewma = GaugeMetricFamily("zlbfast_endpoint_connect_latency_ewma_seconds",
                                 "Peak-sensitive moving average of the connect latency (peak_ewma's input).",
                                 labels=labels)
        health = GaugeMetricFamily("zlbfast_endpoint_health",
                                   "1 for the endpoint's health state: the worse of configured health and the "
                                   "active check's verdict.", labels=[*labels, "state"])
        checks = CounterMetricFamily("zlbfast_health_checks_total", "Active health check probes, by result.",
                                     labels=[*labels, "result"])
        now_ns = time.monotonic_ns()
        for cluster, endpoints in self.engine.native.endpoints().items():
            for ep in endpoints:
                values = [cluster, str(ep["address"])]
                active.add_metric(values, ep["active"])
                attempts.add_metric(values, ep["picks"])
                failures.add_metric(values, ep["failures"])
                ejected.add_metric(values, 1 if ep["ejected_until_ns"] > now_ns else 0)
                ejections.add_metric(values, ep["ejections"])
                ewma.add_metric(values, ep["ewma_ns"] / 1e9)
                verdict = self.health.verdict(cluster, values[1]) if self.health is not None else None
                state = effective_health(str(ep["health"]), verdict)
                for s in HEALTH_STATES:
                    health.add_metric([*values, s], 1 if s == state else 0)
                target = self.health.targets.get((cluster, values[1])) if self.health is not None else None
                if target is not None:
                    checks.add_metric([*values, "success"], target.checks_ok)
                    checks.add_metric([*values, "failure"], target.checks_failed)
        yield from (active, attempts, failures, ejected, ejections, ewma, health, checks)

    def _operations(self) -> Iterator[Metric]:
        engine = self.engine
        yield CounterMetricFamily("zlbfast_config_updates_total", "Configurations applied.",
                                  value=engine.config_updates)
        yield CounterMetricFamily("zlbfast_config_update_failures_total",
                                  "Configurations rejected (the previous one stayed active).",
                                  value=engine.config_update_failures)
        yield GaugeMetricFamily("zlbfast_config_last_update_timestamp_seconds",
                                "Unix time of the last applied configuration (0: none yet).",
                                value=engine.last_update_time)
        if self.access_log is not None:
            records = CounterMetricFamily("zlbfast_access_log_records_total",
                                          "Access records the data plane made, by what became of them.",
                                          labels=["outcome"])
            st = self.access_log.stats()
            for outcome in ("written", "sampled_out", "dropped", "write_errors"):
                records.add_metric([outcome], st[outcome])
            yield records
            yield GaugeMetricFamily("zlbfast_access_log_queued",
                                    "Access records waiting in the rings and the writer's buffer.",
                                    value=st["queued"])


def _xds(state: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("zlbfast_xds_connected", "1 while the xDS stream to the control plane is up.",
                            value=int(state["connected"]))
    yield GaugeMetricFamily("zlbfast_xds_serving_from_cache",
                            "1 while the configuration comes from the on-disk cache, not the control plane.",
                            value=int(state["serving_from_cache"]))
    yield CounterMetricFamily("zlbfast_xds_updates_total", "xDS updates accepted.", value=state["updates"])
    yield CounterMetricFamily("zlbfast_xds_nacks_total", "xDS updates rejected (NACKed).", value=state["nacks"])
    yield GaugeMetricFamily("zlbfast_xds_warming_clusters", "Clusters waiting for their endpoints.",
                            value=len(state["warming_clusters"]))
    resources = GaugeMetricFamily("zlbfast_xds_resources", "Resources known, by kind.", labels=["kind"])
    for kind in ("clusters", "listeners", "endpoints"):
        resources.add_metric([kind], state[kind])
    yield resources


def registry(collector: EngineCollector) -> CollectorRegistry:
    """zlbfast's metrics plus the standard process_* ones (CPU, memory, open fds), in a registry of their own
    so that nothing imported elsewhere adds series to the exposition."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text exposition of everything in `reg`."""
    return bytes(generate_latest(reg))
