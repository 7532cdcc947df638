"""`zlbfast bench` end to end: a real bench process, a real zlbfast proxy
subprocess, built-in backends; checks the JSON against docs/bench-schema.json,
the PNG, the label distribution and the exit statuses. Nothing here asserts
speed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from zlbfast.bench.targets import Target, TargetFailed

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "docs" / "bench-schema.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zlbfast.bench", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    args = ["--duration", "0.3", "--repetitions", "2", "--warmup", "0.1", "--connections", "8",
            "--json", str(out / "r.json")]
    plotting = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plotting = False
    if plotting:
        args += ["--plot", str(out / "r.png")]
    done = bench(*args)
    return {"proc": done, "json": out / "r.json", "png": out / "r.png" if plotting else None}


def validate(doc: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    try:
        import jsonschema
    except ImportError:  # structural check of the essentials instead
        for key in schema["required"]:
            assert key in doc, key
        for t in doc["targets"]:
            for key in schema["$defs"]["target"]["required"]:
                assert key in t, key
        return
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_json_matches_schema_and_table_printed(short_run: dict[str, Any]) -> None:
    proc = short_run["proc"]
    doc = json.loads(short_run["json"].read_text())
    validate(doc)
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name["direct"]["status"] == "ok"
    assert by_name["direct"]["ratio_to_direct"] == 1.0
    failed = [t["name"] for t in doc["targets"] if t["status"] == "failed"]
    assert proc.returncode == (1 if failed else 0), proc.stderr
    assert "req/s" in proc.stdout and "direct" in proc.stdout
    assert "bench: direct 2/2" in proc.stderr  # plain progress lines when not a tty


def test_zlbfast_spreads_connections_over_both_backends(short_run: dict[str, Any]) -> None:
    doc = json.loads(short_run["json"].read_text())
    z = next(t for t in doc["targets"] if t["name"] == "zlbfast")
    assert z["status"] == "ok", z["reason"]
    assert sum(z["errors"].values()) == 0
    # Every response carries its backend's label; both backends answered.
    assert sum(z["labels"].values()) == z["requests"]
    assert set(z["labels"]) == {"b1", "b2"}
    assert z["cpu_s_per_1k_requests"] is not None and z["peak_rss_kib"] > 0
    direct = next(t for t in doc["targets"] if t["name"] == "direct")
    assert set(direct["labels"]) == {"b1"}


def test_plot_is_a_png(short_run: dict[str, Any]) -> None:
    if short_run["png"] is None:
        pytest.skip("matplotlib not installed")
    assert short_run["png"].read_bytes()[:8] == PNG_SIGNATURE


def test_http_scenario_balances_each_request(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    done = bench("--scenario", "http", "--compare", "haproxy", "--duration", "0.3", "--repetitions", "1",
                 "--warmup", "0.1", "--connections", "8", "--json", str(out))
    doc = json.loads(out.read_text())
    validate(doc)
    assert doc["config"]["scenario"] == "http"
    by_name = {t["name"]: t for t in doc["targets"]}
    failed = [t["name"] for t in doc["targets"] if t["status"] == "failed"]
    assert done.returncode == (1 if failed else 0), done.stderr
    z = by_name["zlbfast"]
    assert z["status"] == "ok", z["reason"]
    assert sum(z["errors"].values()) == 0
    # An L7 proxy balances every request, so round robin over 2 backends alternates them: the counts
    # differ by at most the requests abandoned in flight when the warm-up and the run stopped (8 each).
    # (An L4 proxy would split the 8 connections instead, not the requests.)
    assert sum(z["labels"].values()) == z["requests"]
    assert set(z["labels"]) == {"b1", "b2"}
    assert abs(z["labels"]["b1"] - z["labels"]["b2"]) <= 17
    assert by_name["haproxy"]["status"] in ("ok", "skipped")


def test_http_peer_configs() -> None:
    from zlbfast.bench.targets import HTTP_PEERS, TargetSkipped

    backends = [("127.0.0.1", 9001), ("::1", 9002)]
    want = {"haproxy": ("mode http", "http-reuse always", "server s1 [::1]:9002", "nbthread 1"),
            "nginx": ("keepalive 64;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "server [::1]:9002;", "worker_processes 1;"),
            "envoy": ("http_connection_manager", "envoy.filters.http.router", 'port_value: 9002')}
    for name, build in HTTP_PEERS.items():
        with tempfile.TemporaryDirectory() as workdir:
            try:
                argv = build(("127.0.0.1", 8080), backends, workdir)
            except TargetSkipped:
                continue  # not installed here: the builder stops before writing its config
            cfg = Path(workdir, {"haproxy": "haproxy.cfg", "nginx": "nginx.conf", "envoy": "envoy.yaml"}[name])
            assert str(cfg) in argv
            text = cfg.read_text()
            for needle in want[name]:
                assert needle in text, (name, needle)


def test_unknown_peer_is_a_usage_error() -> None:
    done = bench("--compare", "squid")
    assert done.returncode == 2 and "unknown peer" in done.stderr


def test_target_that_exits_is_reported_with_its_output() -> None:
    t = Target("broken", "peer",
               lambda listen, backends, workdir: [sys.executable, "-c",
                                                  "import sys; print('cannot bind'); sys.exit(3)"])
    try:
        with pytest.raises(TargetFailed, match=r"broken exited with status 3: cannot bind"):
            t.start([("127.0.0.1", 9)])
    finally:
        t.stop()
