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
from collections.abc import Callable, Iterable
from typing import IO, Any, cast

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
    """Writes access records as JSON lines from a thread of its own.

    The data plane's records arrive already formatted and sampled (NativeEngine.drain_access_log formats
    them in C), one chunk per drain; `offer_lines` queues a chunk and never blocks: a chunk that would
    take the queue past `queue_size` lines (the writer is slower than the traffic) is dropped and its
    lines counted in `dropped`. `path` is a file (appended to) or "-" for stdout; the file is opened in the
    writer thread, because opening a FIFO blocks until someone reads it.
    """

    def __init__(self, path: str, *, sample: float = 1.0, queue_size: int = 65536,
                 rng: random.Random | None = None) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample rate must be between 0 and 1, got {sample}")
        self.path = path
        self.sample = sample
        self.queue_size = queue_size
        self.offered = 0  # records the data plane produced
        self.sampled_out = 0  # left out on purpose (sampling)
        self.dropped = 0  # lost because the queue was full
        self.written = 0  # lines the writer thread has written (and flushed)
        self.write_errors = 0
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # guards _queued (offer on the loop thread, writes on the writer)
        self._queued = 0  # lines waiting
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="zlbfast-access-log", daemon=True)
        self._thread.start()

    def offer_lines(self, data: bytes, kept: int, sampled_out: int = 0) -> None:
        """Queues `kept` formatted lines (one chunk), or drops and counts them. Never blocks."""
        self.offered += kept + sampled_out
        self.sampled_out += sampled_out
        if not kept:
            return
        with self._lock:
            if self._queued + kept > self.queue_size:
                self.dropped += kept
                return
            self._queued += kept
        self._queue.put((data, kept))

    def offer(self, records: Iterable[dict[str, Any]]) -> None:
        """Samples and queues records given as dicts (records that do not come from the data plane's rings),
        one line per chunk so that a full queue drops exactly the records that do not fit."""
        for record in records:
            # Random, not every n-th: a systematic sample would keep seeing the same endpoint under round robin.
            if self.sample < 1.0 and self._rng.random() >= self.sample:
                self.offer_lines(b"", 0, 1)
            else:
                self.offer_lines((json.dumps(record, separators=(",", ":")) + "\n").encode(), 1)

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            # A duplicate, so that closing the access log never closes the process's stdout.
            return os.fdopen(os.dup(sys.stdout.fileno()), "ab", buffering=1 << 16)
        return open(self.path, "ab", buffering=1 << 16)

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
                if item is _STOP:
                    return
                data, n = cast(tuple[bytes, int], item)
                try:
                    out.write(data)
                    out.flush()
                    self.written += n
                except OSError as exc:
                    self.write_errors += n
                    log.error("access log %s: write failed, %d records lost: %s", self.path, n, exc)
                with self._lock:
                    self._queued -= n

    def _discard_until_stop(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            n = cast(tuple[bytes, int], item)[1]
            self.write_errors += n
            with self._lock:
                self._queued -= n

    def close(self, timeout_s: float = 5.0) -> bool:
        """Writes what is queued and stops the thread; False when the destination stayed blocked past
        timeout_s (the daemon thread is then abandoned with its records)."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        return {
            "offered": self.offered,
            "sampled_out": self.sampled_out,
            "dropped": self.dropped,
            "written": self.written,
            "write_errors": self.write_errors,
            "queued": self._queued,
        }


DrainFn = Callable[[int, float], tuple[bytes, int, int]]


async def drain_access_log(drain: DrainFn, writer: AccessLogWriter, stop: asyncio.Event, *,
                           interval_s: float = 0.1, max_records: int = 4096) -> None:
    """Moves records from the data plane's rings to `writer` every interval_s until `stop` is set, then
    once more so that connections closed during the drain are logged too.

    A full batch means more is waiting: drain again at once, but yield to the loop between batches.
    """
    while True:
        stopping = stop.is_set()
        while True:
            data, kept, skipped = drain(max_records, writer.sample)
            writer.offer_lines(data, kept, skipped)
            if kept + skipped < max_records:
                break
            await asyncio.sleep(0)
        if stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
