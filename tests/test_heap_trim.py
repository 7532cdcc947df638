"""Free heap memory goes back to the OS: _native.trim_heap, and Engine.apply calling it (rate-limited)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from zlbfast import _native, runtime
from zlbfast.model import Cluster, Config, Endpoint, Listener


def test_trim_heap_returns_freed_memory_to_the_os():
    # A fresh interpreter, so the heap holds only what the script allocates: 40k blocks of 1 KiB (malloc'd,
    # far below the mmap threshold), then one block after them that pins the heap's top, so that freeing the
    # 40k leaves ~40 MiB free inside the heap, which glibc keeps until trimmed.
    script = textwrap.dedent(
        """
        from zlbfast import _native

        def rss_kib():
            with open("/proc/self/status") as f:
                return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

        blocks = [bytes(1024) + bytes([i & 0xFF]) for i in range(40_000)]
        pin = bytes(1024) + b"pin"
        del blocks
        before = rss_kib()
        released = _native.trim_heap()
        print(before, rss_kib(), released, len(pin))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, after, released, _ = out.stdout.split()
    assert released == "True"
    assert int(before) - int(after) > 20 * 1024, out.stdout


def test_apply_trims_the_heap_at_most_once_per_interval(engine_factory, monkeypatch):
    calls: list[None] = []
    monkeypatch.setattr(_native, "trim_heap", lambda: calls.append(None) or True)
    cfg = Config(
        listeners=(Listener("l", "127.0.0.1", 0, "c"),),
        clusters=(Cluster("c", (Endpoint("127.0.0.1", 9),)),),
        workers=1,
    )
    engine = engine_factory()
    engine.apply(cfg)
    assert len(calls) == 1  # the first apply returns startup's garbage at once
    engine.apply(cfg)
    assert len(calls) == 1  # within HEAP_TRIM_INTERVAL_S of the last trim
    monkeypatch.setattr(runtime, "HEAP_TRIM_INTERVAL_S", 0.0)
    engine.apply(cfg)
    assert len(calls) == 2
