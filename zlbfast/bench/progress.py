"""Progress on stderr: a redrawn bar on a terminal, plain lines otherwise
(CI logs, pipes), so that a long run is never silent."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, total_s: float, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.total = max(total_s, 1e-9)
        self.done = 0.0

    def set_total(self, total_s: float) -> None:
        """Re-plans once it is known which targets actually run."""
        self.total = max(total_s, 1e-9)

    def step(self, label: str, seconds: float, fn: Callable[[], T]) -> T:
        """Runs fn (expected to take about `seconds`) in a thread - the native
        load run releases the GIL - while this thread draws the progress."""
        if not self.tty:
            print(f"bench: {label} ({self.done / self.total:4.0%})", file=self.stream, flush=True)
            out = fn()
            self.done += seconds
            return out
        box: dict[str, T] = {}
        err: list[BaseException] = []

        def work() -> None:
            try:
                box["v"] = fn()
            except BaseException as exc:  # re-raised in the caller's thread
                err.append(exc)

        th = threading.Thread(target=work, daemon=True)
        start = time.monotonic()
        th.start()
        while th.is_alive():
            self._draw(label, self.done + min(time.monotonic() - start, seconds))
            th.join(0.1)
        self.done += seconds
        self._draw(label, self.done)
        if err:
            raise err[0]
        return box["v"]

    def _draw(self, label: str, done: float) -> None:
        frac = min(done / self.total, 1.0)
        width = 30
        filled = int(frac * width)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {frac:4.0%} {label[:40]:<40}")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()
