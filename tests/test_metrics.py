"""/stats/prometheus: exact counts after known traffic, scraped from a real `zlbfast run` and parsed with
prometheus_client's own parser; config update counters across SIGHUP reloads."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.netutil import Backend, connect, free_port, label_handler, read_label, wait_for
from tests.test_admin import ZlbProcess, l4_yaml, running
from zlbfast import _native
from zlbfast.prometheus import _CLUSTER_COUNTERS, _COUNTERS, _GAUGES

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(p: ZlbProcess) -> Samples:
    status, body = p.get("/stats/prometheus")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_every_native_counter_is_exported() -> None:
    assert set(_native.STAT_FIELDS) <= set(_COUNTERS) | set(_GAUGES)
    by_class = {f"rq_{c}xx" for c in range(1, 6)}  # exported as zlbfast_upstream_requests_total{code_class}
    assert set(_native.CLUSTER_STAT_FIELDS) - by_class <= set(_CLUSTER_COUNTERS)


def test_exact_counts_after_known_connections_failures_and_retries(tmp_path: Path) -> None:
    live = Backend(_greet_after_hello)
    dead = [free_port() for _ in range(3)]  # nothing listens: every connect is refused
    n_ok, n_exhausted = 20, 5
    # "mixed": the dead endpoint is the only one of priority 0, so every connection tries it first (ejection
    # off), fails, and is retried exactly once on the live endpoint of priority 1. "dead": two dead endpoints
    # and two retries, so every connection makes exactly 3 attempts and is closed.
    text = l4_yaml({"mixed": "mixed", "dead": "dead"}, {
        "mixed": [f"{{address: 127.0.0.1:{dead[0]}, priority: 0}}", f"{{address: {live.address}, priority: 1}}"],
        "dead": [f"127.0.0.1:{dead[1]}", f"127.0.0.1:{dead[2]}"],
    }, cluster_extra="connect_retries: 2\noutlier_detection: {consecutive_failures: 0}")
    try:
        with running(tmp_path, text) as p:
            assert value(scrape(p), "zlbfast_downstream_connections_total") == 0
            for _ in range(n_ok):
                with connect(p.ports["mixed"]) as s:
                    s.sendall(b"hello")
                    assert s.recv(64) == b"live\n"
            for _ in range(n_exhausted):
                assert closed_without_data(p.ports["dead"])
            wait_for(lambda: value(scrape(p), "zlbfast_downstream_connections_active") == 0,
                     what="connections closed")
            m = scrape(p)
    finally:
        live.stop()

    assert value(m, "zlbfast_downstream_connections_total") == n_ok + n_exhausted
    assert value(m, "zlbfast_upstream_connect_attempts_total") == 2 * n_ok + 3 * n_exhausted
    assert value(m, "zlbfast_upstream_connect_failures_total") == n_ok + 3 * n_exhausted
    assert value(m, "zlbfast_upstream_retries_total") == n_ok + 2 * n_exhausted
    assert value(m, "zlbfast_upstream_exhausted_total") == n_exhausted
    assert value(m, "zlbfast_upstream_connect_timeouts_total") == 0
    assert value(m, "zlbfast_overflow_total") == 0
    assert value(m, "zlbfast_bytes_total", direction="to_upstream") == len(b"hello") * n_ok
    assert value(m, "zlbfast_bytes_total", direction="to_downstream") == len(b"live\n") * n_ok

    def ep(name: str, cluster: str, port: int) -> float:
        return value(m, name, cluster=cluster, endpoint=f"127.0.0.1:{port}")

    assert ep("zlbfast_endpoint_connect_attempts_total", "mixed", dead[0]) == n_ok
    assert ep("zlbfast_endpoint_connect_failures_total", "mixed", dead[0]) == n_ok
    assert ep("zlbfast_endpoint_connect_attempts_total", "mixed", live.port) == n_ok
    assert ep("zlbfast_endpoint_connect_failures_total", "mixed", live.port) == 0
    dead_attempts = [ep("zlbfast_endpoint_connect_attempts_total", "dead", port) for port in dead[1:]]
    assert sum(dead_attempts) == 3 * n_exhausted and min(dead_attempts) > 0  # retries go to the other one
    assert value(m, "zlbfast_endpoint_ejected", cluster="mixed", endpoint=f"127.0.0.1:{dead[0]}") == 0
    assert value(m, "zlbfast_endpoint_health", cluster="mixed", endpoint=f"127.0.0.1:{dead[0]}",
                 state="healthy") == 1
    assert value(m, "zlbfast_ejections_total") == 0
    assert value(m, "zlbfast_config_updates_total") == 1
    assert value(m, "zlbfast_workers") == 1


def test_outlier_ejection_is_counted_shown_and_logged(tmp_path: Path) -> None:
    live = Backend(label_handler("live"))
    dead = free_port()
    text = l4_yaml({"l": "c"}, {"c": [f"127.0.0.1:{dead}", live.address]}, cluster_extra=(
        "policy: round_robin\nconnect_retries: 1\n"
        "outlier_detection: {consecutive_failures: 2, base_ejection_time: 1h, max_ejection_time: 1h, "
        "max_ejection_percent: 50}"))
    try:
        with running(tmp_path, text) as p:
            # Every connection still succeeds (the retry lands on the live endpoint); the dead one is ejected
            # after its second failure, then gets no more picks.
            for _ in range(10):
                assert read_label(p.ports["l"]) == "live"
            m = scrape(p)
            dead_ep = {"cluster": "c", "endpoint": f"127.0.0.1:{dead}"}
            assert value(m, "zlbfast_endpoint_ejected", **dead_ep) == 1
            assert value(m, "zlbfast_endpoint_ejections_total", **dead_ep) == 1
            assert value(m, "zlbfast_endpoint_connect_failures_total", **dead_ep) == 2
            assert value(m, "zlbfast_ejections_total") >= 1  # process-wide, all engines
            rows = p.json("/clusters")["clusters"][0]["endpoints"]
            (row,) = [e for e in rows if e["address"] == dead_ep["endpoint"]]
            assert row["ejected"] is True and row["ejections"] == 1 and row["ejected_for_s"] > 0
            wait_for(lambda: p.find("ejected", event="ejection", endpoint=dead_ep["endpoint"]) is not None,
                     what="ejection log line")
    finally:
        live.stop()


def test_config_update_counters_follow_reloads(tmp_path: Path) -> None:
    b = Backend(label_handler("b"))
    cfg = tmp_path / "zlb.yaml"
    try:
        with running(tmp_path, l4_yaml({"l": "c"}, {"c": [b.address]})) as p:
            cfg.write_text(cfg.read_text().replace("endpoints:", "policy: random\n    endpoints:"))
            p.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: value(scrape(p), "zlbfast_config_updates_total") == 2, what="reload applied")
            # Valid as a file, so it reaches Engine.apply, where the listener cannot bind (192.0.2.1 is a
            # documentation address that no interface here has).
            cfg.write_text(cfg.read_text().replace("127.0.0.1:0", "192.0.2.1:0"))
            p.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: value(scrape(p), "zlbfast_config_update_failures_total") == 1, what="reload rejected")
            assert value(scrape(p), "zlbfast_config_updates_total") == 2
            assert p.find("applied", event="config", accepted=True, changed_clusters=["c"]) is not None
            assert p.find("rejected", event="config", accepted=False) is not None
            assert p.json("/config_dump")["config"]["clusters"][0]["policy"] == "random"
            assert read_label(p.ports["l"]) == "b"
    finally:
        b.stop()


def closed_without_data(port: int) -> bool:
    """True when the proxy closes the client connection (FIN or RST) without sending a byte. The reset can
    reach the client while connect() still runs, since the proxy accepts and gives up within microseconds."""
    try:
        with connect(port) as s:
            return s.recv(64) == b""
    except ConnectionResetError:
        return True


def _greet_after_hello(conn: socket.socket) -> None:
    """Reads the client's 5 bytes, answers "live\\n", then closes: both byte counts are known."""
    conn.settimeout(10)
    got = b""
    while len(got) < 5:
        chunk = conn.recv(5 - len(got))
        if not chunk:
            return
        got += chunk
    conn.sendall(b"live\n")


def test_http_request_counts_retries_and_histogram_per_cluster(tmp_path: Path) -> None:
    from tests.httputil import Client

    good = _native.BuiltinBackend(label="good")
    bad = _native.BuiltinBackend(label="bad", status=503)
    n_ok, n_fail = 10, 4
    text = f"""
listeners:
  - name: web
    address: 127.0.0.1:0
    protocol: http
    virtual_hosts:
      - name: all
        routes:
          - match: {{prefix: /fail}}
            cluster: bad
            retry_policy: {{retry_on: 5xx, num_retries: 1, backoff_base_interval: 1ms}}
          - match: {{prefix: /}}
            cluster: ok
clusters:
  - {{name: ok, endpoints: ["{good.host}:{good.port}"]}}
  - name: bad
    outlier_detection: {{consecutive_failures: 0}}
    endpoints: ["{bad.host}:{bad.port}"]
"""
    try:
        with running(tmp_path, text) as p:
            with Client(p.ports["web"]) as cl:
                for _ in range(n_ok):
                    assert cl.request("GET", "/").status == 200
                for _ in range(n_fail):
                    assert cl.request("GET", "/fail").status == 503
            m = scrape(p)
        assert value(m, "zlbfast_upstream_requests_total", cluster="ok", code_class="2xx") == n_ok
        assert value(m, "zlbfast_upstream_requests_total", cluster="bad", code_class="5xx") == n_fail
        assert value(m, "zlbfast_upstream_retries_total", cluster="bad") == n_fail  # one retry each
        assert value(m, "zlbfast_upstream_retries_total", cluster="ok") == 0
        assert bad.requests == 2 * n_fail
        for cluster, n in (("ok", n_ok), ("bad", n_fail)):
            assert value(m, "zlbfast_upstream_request_duration_seconds_count", cluster=cluster) == n
            assert value(m, "zlbfast_upstream_request_duration_seconds_bucket", cluster=cluster, le="+Inf") == n
        assert value(m, "zlbfast_http_requests_total") == n_ok + n_fail
    finally:
        good.stop()
        bad.stop()
