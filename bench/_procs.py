"""Child-process plumbing shared by the benchmarks: start, wait for a port, stop by pid.

Every child runs in its own session so that a Ctrl-C in the terminal reaches only the
benchmark driver, which then stops the children itself, in order, by pid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's zlbfast, not another one installed in the environment

from zlbfast.bench.targets import nginx_http_conf  # noqa: E402

HOST = "127.0.0.1"


class ChildError(RuntimeError):
    """A child could not be started, or died before it was ready."""


def require_tool(name: str, apt_package: str) -> str:
    """Return the path of `name`, or fail with the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        raise ChildError(f"{name} not found: install it with `apt-get install -y {apt_package}`")
    return path


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1; racy by nature, but only between our own children."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, limit: int = 600) -> str:
        """The end of the child's output on one line, to quote in an error message."""
        try:
            text = self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within grace_s; always reaps."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace_s)


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """Prefix argv with taskset when CPUs (a taskset list: "0", "2-15") are given; taskset execs, so the pid stays
    the child's."""
    return list(argv) if cpus is None else ["taskset", "-c", cpus, *argv]


def start_listening(
    name: str,
    argv: Sequence[str],
    port: int,
    log: Path,
    timeout_s: float = 15.0,
    cwd: Path | None = None,
) -> Child:
    """Start argv and return once 127.0.0.1:port accepts a connection.

    Fails (after stopping the child) if the child exits first or the deadline passes; the
    error carries the tail of the child's output so the cause is visible.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    child = Child(name, proc, log)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise ChildError(
                f"{name} exited with status {proc.returncode} before listening: {child.log_tail()}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return child
        except OSError:
            pass
        if time.monotonic() > deadline:
            child.stop()
            raise ChildError(
                f"{name} did not accept on {HOST}:{port} within {timeout_s:.0f}s: {child.log_tail()}"
            )
        # Poll period only: the loop ends on the condition or on the deadline above.
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    """VmRSS of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ChildError(f"no VmRSS for pid {pid}")


def settled_rss_kib(child: Child, timeout_s: float = 5.0, period_s: float = 0.2) -> int:
    """VmRSS once two readings period_s apart agree (the process has gone idle), else the last one."""
    deadline = time.monotonic() + timeout_s
    previous = rss_kib(child.pid)
    while time.monotonic() < deadline:
        time.sleep(period_s)
        if child.proc.poll() is not None:
            raise ChildError(f"{child.name} exited with status {child.proc.returncode}: {child.log_tail()}")
        current = rss_kib(child.pid)
        if current == previous:
            return current
        previous = current
    return previous


def nginx_backend_argv(root: Path, servers: str) -> list[str]:
    """nginx as a benchmark backend: one process (no daemon, no master: the pid we start is the server and
    SIGTERM stops it), access log off, every path under `root`, and `servers` (server blocks) in its http block.
    keepalive_requests is raised so that load generators' connections really stay open for a whole run."""
    cfg = root / "nginx.conf"
    cfg.write_text(nginx_http_conf(str(root), servers, worker_connections=4096, keepalive_timeout_s=120))
    return ["nginx", "-p", str(root), "-e", str(root / "error.log"), "-c", str(cfg)]


def add_layout_arguments(parser: argparse.ArgumentParser, load_side: str) -> None:
    """--pin, --load-cpus, --proxy-cpu and --wrk-threads: where the load side and the proxy under test run."""
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"pin {load_side} to the load CPUs and the proxy under test alone to another "
        "(default: on when at least 2 CPUs are available)",
    )
    parser.add_argument("--load-cpus", metavar="LIST", default=None,
                        help="the load side's CPUs when pinned, as taskset takes them, e.g. 2-15 (default: the first "
                        "CPU). On a machine with CPUs to spare, give the load several so that the proxy's CPU is "
                        "what limits the req/s")
    parser.add_argument("--proxy-cpu", metavar="N", type=int, default=None,
                        help="the proxy's CPU when pinned (default: the second CPU)")
    parser.add_argument("--wrk-threads", metavar="N", type=int, default=1,
                        help="wrk threads (default 1); more need more --load-cpus")


def parse_cpu_list(text: str) -> set[int]:
    """The CPUs of a taskset-style list ("0", "2-5,8"); SystemExit on anything else."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise SystemExit(f"--load-cpus: not a CPU list: {text!r}") from None
    return cpus


def choose_cpus(pin: bool | None, on_load_cpu: str, load_cpus: str | None = None,
                proxy_cpu: int | None = None) -> tuple[str | None, str | None, str]:
    """(load CPUs, proxy CPU, description), each CPU part a taskset list or None when unpinned, for pinning the
    proxy under test alone on one CPU and `on_load_cpu` (what the description calls the load side) on others
    (default: the first and the second CPU); the driver moves to the load CPUs too."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin is False or (pin is None and len(cpus) < 2):
        return None, None, "off (all processes float over all CPUs)"
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    require_tool("taskset", "util-linux")
    load = parse_cpu_list(load_cpus) if load_cpus else {cpus[0]}
    proxy = cpus[1] if proxy_cpu is None else proxy_cpu
    if not load <= set(cpus) or proxy not in cpus:
        raise SystemExit(f"--load-cpus/--proxy-cpu: this process may only use CPUs {cpus}")
    if proxy in load:
        raise SystemExit(f"--proxy-cpu {proxy} is among the load CPUs: the proxy must have its CPU alone")
    os.sched_setaffinity(0, load)
    shown = load_cpus or str(cpus[0])
    return shown, str(proxy), f"{on_load_cpu} on CPU {shown}; the proxy under test alone on CPU {proxy}"
