"""Structured logging and the access-log writer.

Process logs go to stderr as text (``time LEVEL logger: message``, the format people read) or as one JSON
object per line (for log shippers). Code that logs an event worth querying passes its fields in
``extra={"event": ..., ...}``; the text format shows only the message, the JSON format adds the fields.

The access log is different: one JSON line per proxied connection, produced by the C workers into
per-worker rings (a full ring drops and counts, so the data plane never waits for Python). The
``AccessLogWriter`` drains those rings from the asyncio loop and hands the records to a writer thread
through a bounded queue, so a slow or blocked destination (a full disk, a pipe nobody reads) never blocks
the loop either: when the queue is full, records are dropped and counted here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

log = logging.getLogger("zlbfast.logs")

LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
FORMATS: tuple[str, ...] = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=` and belongs in the JSON line.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (unix seconds), level, logger, msg, the `extra` fields, and the
    traceback as `exc` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def setup_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Configures the root logger (replacing earlier handlers, so it may be called again)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """Changes the level of every zlbfast log at run time (POST /logging?level=...)."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of: {', '.join(LEVELS)}")
    logging.getLogger().setLevel(getattr(logging, level.upper()))


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level).lower()


# ---------------------------------------------------------------------------------------------------------
# Access log

_STOP = object()  # queue sentinel: the writer thread flushes and exits


class AccessLogWriter:
    """Samples access records and writes them as JSON lines from a thread of its own.

    `offer` never blocks: a record that does not fit in the queue (the writer is slower than the traffic)
    is dropped and counted in `dropped`. `path` is a file (appended to) or "-" for stdout; the file is opened
    in the writer thread, because opening a FIFO blocks until someone reads it.
    """

    def __init__(self, path: str, *, sample: float = 1.0, queue_size: int = 65536, batch: int = 512,
                 rng: random.Random | None = None) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample rate must be between 0 and 1, got {sample}")
        self.path = path
        self.sample = sample
        self.batch = batch
        self.offered = 0  # records the data plane produced
        self.sampled_out = 0  # left out on purpose (sampling)
        self.dropped = 0  # lost because the queue was full
        self.written = 0  # lines the writer thread has written (and flushed)
        self.write_errors = 0
        self._rng = rng or random.Random()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="zlbfast-access-log", daemon=True)
        self._thread.start()

    def offer(self, records: Iterable[dict[str, Any]]) -> None:
        """Queues what the sampler keeps; drops and counts what does not fit. Never blocks."""
        for record in records:
            self.offered += 1
            # Random, not every n-th: a systematic sample would keep seeing the same endpoint under round robin.
            if self.sample < 1.0 and self._rng.random() >= self.sample:
                self.sampled_out += 1
                continue
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1

    def _open(self) -> IO[str]:
        if self.path == "-":
            # A duplicate, so that closing the access log never closes the process's stdout.
            return os.fdopen(os.dup(sys.stdout.fileno()), "a", encoding="utf-8", buffering=1 << 16)
        return open(self.path, "a", encoding="utf-8", buffering=1 << 16)

    def _run(self) -> None:
        try:
            out = self._open()
        except OSError as exc:
            log.error("access log %s cannot be opened, no access records will be written: %s", self.path, exc)
            self._discard_until_stop()
            return
        with out:
            while True:
                item = self._queue.get()
                lines: list[str] = []
                stop = item is _STOP
                if not stop:
                    lines.append(json.dumps(item, separators=(",", ":")))
                # Take what else is waiting, so that a busy log costs one write and one flush per batch.
                while not stop and len(lines) < self.batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                    else:
                        lines.append(json.dumps(item, separators=(",", ":")))
                if lines:
                    try:
                        out.write("\n".join(lines) + "\n")
                        out.flush()
                        self.written += len(lines)
                    except OSError as exc:
                        self.write_errors += len(lines)
                        log.error("access log %s: write failed, %d records lost: %s", self.path, len(lines), exc)
                if stop:
                    return

    def _discard_until_stop(self) -> None:
        while self._queue.get() is not _STOP:
            self.write_errors += 1

    def close(self, timeout_s: float = 5.0) -> bool:
        """Writes what is queued and stops the thread; False when the destination stayed blocked past
        timeout_s (the daemon thread is then abandoned with its records)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() >= deadline or not self._thread.is_alive():
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        return {
            "offered": self.offered,
            "sampled_out": self.sampled_out,
            "dropped": self.dropped,
            "written": self.written,
            "write_errors": self.write_errors,
            "queued": self._queue.qsize(),
        }


DrainFn = Callable[[int], list[dict[str, Any]]]


async def drain_access_log(drain: DrainFn, writer: AccessLogWriter, stop: asyncio.Event, *,
                           interval_s: float = 0.1, max_records: int = 4096) -> None:
    """Moves records from the data plane's rings to `writer` every interval_s until `stop` is set, then
    once more so that connections closed during the drain are logged too.

    A full batch means more is waiting: drain again at once, but yield to the loop between batches.
    """
    while True:
        stopping = stop.is_set()
        while True:
            records = drain(max_records)
            writer.offer(records)
            if len(records) < max_records:
                break
            await asyncio.sleep(0)
        if stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
