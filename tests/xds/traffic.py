"""Bounded client load through a proxy listener: TCP connections, and HTTP requests over one keep-alive connection."""

from __future__ import annotations

import threading
import time

from tests.httputil import Client
from tests.netutil import read_label


def label_or_empty(port: int) -> str:
    """The backend label through the proxy, or "" when the proxy closed or reset the connection first."""
    try:
        return read_label(port)
    except OSError:
        return ""


class Load:
    """Connections through the proxy in a thread until stopped (bounded: at most `max_conns` connections and
    `max_s` seconds), counting those that got no backend label."""

    def __init__(self, port: int, max_s: float = 60.0, max_conns: int = 20_000) -> None:
        self.port = port
        self.max_s = max_s
        self.max_conns = max_conns
        self.ok = 0
        self.failed: list[str] = []
        self.labels: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        for _ in range(self.max_conns):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                label = read_label(self.port)
            except OSError as exc:
                self.failed.append(repr(exc))
                continue
            if label:
                self.ok += 1
                self.labels.append(label)
            else:
                self.failed.append("closed without a label")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def routed(port: int, host: str, target: str = "/", headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, str]:
    """One request on a new connection: the status and the upstream's label (x-upstream, "" for none)."""
    with Client(port) as cl:
        r = cl.request("GET", target, list(headers), host=host)
    return r.status, r.header("x-upstream") or ""


class KeepAlive:
    """GET requests over one keep-alive connection in a thread until stopped (bounded by `max_s` seconds and
    `max_requests`), recording each response's status and upstream label. A failure of the connection ends the
    run and is kept in `error`."""

    def __init__(self, port: int, host: str, target: str = "/", max_s: float = 60.0,
                 max_requests: int = 50_000) -> None:
        self.port = port
        self.host = host
        self.target = target
        self.max_s = max_s
        self.max_requests = max_requests
        self.responses: list[tuple[int, str]] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        try:
            with Client(self.port) as cl:
                for _ in range(self.max_requests):
                    if self._stop.is_set() or time.monotonic() > deadline:
                        return
                    r = cl.request("GET", self.target, host=self.host)
                    self.responses.append((r.status, r.header("x-upstream") or ""))
        except (OSError, EOFError, ValueError) as exc:
            self.error = repr(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
