"""Bounded client load through a proxy listener."""

from __future__ import annotations

import threading
import time

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
