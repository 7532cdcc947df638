"""Bounded runs of the fuzz harnesses: the HTTP/1.1 parser (tests/fuzz/fuzz_http1.py) and the EDS decoder
against the exact path (tests/fuzz/fuzz_eds.py).

A smoke, not a campaign: a fixed seed, at most 20,000 inputs or 20 s, so CI
notices a harness that broke or an invariant that a simple mutation breaks.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"


def _harness(name: str) -> Any:
    pytest.importorskip(
        "atheris", reason="atheris is not installed (pip install atheris; needs a wheel for this Python)"
    )
    sys.path.insert(0, str(FUZZ))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _fuzz(tmp_path: Path, name: str, corpus: dict[str, bytes]) -> None:
    """Runs harness `name` from a corpus with a fixed seed, at most 20,000 inputs or 20 s; it must finish."""
    directory = tmp_path / "corpus"
    directory.mkdir()
    for file, data in corpus.items():
        (directory / file).write_bytes(data)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ / f"{name}.py"),
            "-runs=20000",
            "-max_total_time=20",
            "-seed=1",
            "-rss_limit_mb=2048",
            str(directory),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Done" in proc.stderr, proc.stderr[-4000:]


def test_fuzz_http1_smoke(tmp_path):
    harness = _harness("fuzz_http1")
    # the harness reads two leading ints (mode, split) before the payload
    _fuzz(tmp_path, "fuzz_http1", {f"seed{i}_{mode}": bytes([mode, 0, 0, 0, 0, 0, 0, 0]) + seed
                                   for i, seed in enumerate(harness.SEEDS) for mode in range(3)})


def test_fuzz_eds_smoke(tmp_path):
    harness = _harness("fuzz_eds")
    _fuzz(tmp_path, "fuzz_eds", {f"seed{i}": seed for i, seed in enumerate(harness.SEEDS)})
