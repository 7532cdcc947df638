"""Reading back the congestion control of the proxy's sockets, as an operator would: `ss -ti` prints it first on
each socket's info line."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.netutil import wait_for
from zlbfast import congestion

SYSTEM = congestion.system_default()


def alternative() -> str:
    """An algorithm this process may set that differs from the system default, so that setting it shows."""
    for name in ("cubic", "reno", "bbr"):
        if name != SYSTEM and congestion.problem(name) is None:
            return name
    pytest.skip(f"no congestion control other than the default {SYSTEM!r} can be set here")


def algorithms(filter_expr: str) -> list[str]:
    """The congestion control of every established TCP socket that `ss` finds for the filter."""
    out = subprocess.run(["ss", "-tin", "state", "established", filter_expr], capture_output=True, text=True,
                         check=True).stdout
    return [m.group(1) for line in out.splitlines()
            if line.startswith((" ", "\t")) and (m := re.match(r"\s+([a-z0-9_]+)\s", line))]


def wait_algorithms(filter_expr: str, n: int) -> list[str]:
    """algorithms(filter_expr) once it lists at least n sockets."""
    found: list[str] = []

    def enough() -> bool:
        found[:] = algorithms(filter_expr)
        return len(found) >= n

    wait_for(enough, what=f"{n} established sockets matching {filter_expr}")
    return found
