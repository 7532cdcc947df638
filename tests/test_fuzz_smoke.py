"""Bounded run of the HTTP/1.1 parser fuzz harness (tests/fuzz/fuzz_http1.py).

A smoke, not a campaign: a fixed seed, at most 20,000 inputs or 20 s, so CI
notices a harness that broke or an invariant that a simple mutation breaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "fuzz" / "fuzz_http1.py"


def test_fuzz_http1_smoke(tmp_path):
    pytest.importorskip(
        "atheris", reason="atheris is not installed (pip install atheris; needs a wheel for this Python)"
    )
    sys.path.insert(0, str(HARNESS.parent))
    try:
        import fuzz_http1
    finally:
        sys.path.pop(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(fuzz_http1.SEEDS):
        # the harness reads two leading ints (mode, split) before the payload
        for mode in range(3):
            (corpus / f"seed{i}_{mode}").write_bytes(bytes([mode, 0, 0, 0, 0, 0, 0, 0]) + seed)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "-runs=20000",
            "-max_total_time=20",
            "-seed=1",
            "-rss_limit_mb=2048",
            str(corpus),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Done" in proc.stderr, proc.stderr[-4000:]
