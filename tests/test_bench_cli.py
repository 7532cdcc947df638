"""`zlbfast bench` end to end: a real bench process, a real zlbfast proxy
subprocess, built-in backends; checks the JSON against docs/bench-schema.json,
the PNG, the label distribution and the exit statuses. Nothing here asserts
speed."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_http_scenario_is_not_available_yet() -> None:
    done = bench("--scenario", "http")
    assert done.returncode == 2
    assert "not available yet" in done.stderr


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
