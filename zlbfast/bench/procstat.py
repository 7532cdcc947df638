"""CPU time and peak memory of a process tree, read from /proc (Linux only).

A proxy may fork workers (nginx), so every figure covers the process and all
its live descendants.
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass  # the process is gone: it has no children either
    return kids


def tree(pid: int) -> list[int]:
    """pid and its live descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of the tree so far, in seconds (0 for vanished processes): user space and kernel apart,
    because a proxy's cost per request is mostly the kernel's TCP work, which no user-space change removes."""
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                # Fields after the parenthesised command name; utime, stime are
                # fields 14 and 15 of the whole line.
                rest = f.read().rsplit(")", 1)[1].split()
            user += int(rest[11])
            system += int(rest[12])
        except (OSError, IndexError, ValueError):
            continue
    return user / _TICK, system / _TICK


def cpu_seconds(pid: int) -> float:
    """utime + stime of the tree so far, in seconds."""
    return sum(cpu_times(pid))


def peak_rss_kib(pid: int) -> int:
    """Sum of VmHWM (peak resident set) over the tree, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total
