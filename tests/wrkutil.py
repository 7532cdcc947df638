"""Debian's wrk as a load source in tests: started in the background for a fixed duration while the test changes
something (rotates a certificate, pushes a Secret), then its summary parsed into counts the test asserts on.

Only counts are asserted, never rates: speed is measured in bench/, not in tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# Every `close_every`-th request asks the server to close, so wrk opens new connections all through the run (a new
# handshake per reconnect when a TLS hop sits behind the listener), while the rest reuse their connection.
_SCRIPT = """\
local n = 0
local keep = wrk.format(nil, "/")
local close = wrk.format(nil, "/", {["Connection"] = "close"})
request = function()
  n = n + 1
  if n % EVERY == 0 then return close end
  return keep
end
"""
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    socket_errors: dict[str, int]
    non_2xx: int
    output: str

    @property
    def failed(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


class Wrk:
    """One wrk run against http://127.0.0.1:`port`/ for `duration_s` seconds, started at construction."""

    def __init__(self, port: int, duration_s: int, tmp: Path, *, connections: int = 8, close_every: int = 20):
        wrk = shutil.which("wrk")
        if wrk is None:
            pytest.fail("wrk is not installed (scripts/test.sh installs Debian's wrk)")
        script = tmp / "wrk-close-every.lua"
        script.write_text(_SCRIPT.replace("EVERY", str(close_every)))
        self.duration_s = duration_s
        self._proc = subprocess.Popen(
            [wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "-s", str(script), f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def running(self) -> bool:
        return self._proc.poll() is None

    def finish(self) -> WrkResult:
        """Waits for the run to end (bounded: its duration plus a margin) and parses wrk's summary."""
        try:
            out, _ = self._proc.communicate(timeout=self.duration_s + 30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
            pytest.fail(f"wrk did not finish within {self.duration_s + 30} s:\n{out}")
        requests = _REQUESTS.search(out)
        assert self._proc.returncode == 0 and requests is not None, out
        errors = _SOCKET_ERRORS.search(out)  # wrk prints these lines only when a count is not zero
        non_2xx = _NON_2XX.search(out)
        return WrkResult(
            int(requests.group(1)),
            dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)) if errors
            else {},
            int(non_2xx.group(1)) if non_2xx else 0,
            out,
        )


def rotate_under_wrk(port: int, tmp: Path, rotate: Callable[[], None], *, seconds: int = 30,
                     every_s: float = 1.0) -> int:
    """Runs wrk against `port` for `seconds` and calls rotate() once per `every_s` while it runs (pacing, not
    synchronisation: rotate() itself checks what it changed). Asserts that wrk saw no failed request and that it ran
    across (nearly) all the rotations; returns how many there were."""
    wrk = Wrk(port, seconds, tmp)
    rotations = 0
    next_at = time.monotonic()
    while rotations < seconds / every_s - 1 and wrk.running():
        next_at += every_s
        time.sleep(max(0.0, next_at - time.monotonic()))
        rotate()
        rotations += 1
    result = wrk.finish()
    assert result.failed == 0 and result.requests > 0, result.output
    assert rotations >= seconds / every_s - 5, rotations
    return rotations
