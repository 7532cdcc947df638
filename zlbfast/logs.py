"""Structured logging and the access-log writer.

Process logs go to stderr as text (``time LEVEL logger: message``, the format people read) or as one JSON
object per line (for log shippers). Code that logs an event worth querying passes its fields in
``extra={"event": ..., ...}``; the text format shows only the message, the JSON format adds the fields.

The access log is different: one JSON line per proxied connection or HTTP request, produced, formatted and
written by the data plane (see ``AccessLog``); Python only opens the destination and reads counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zlbfast._native import NativeEngine

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


def open_destination(path: str) -> int:
    """A descriptor to append access-log lines to: the file `path` (created if need be), or a duplicate of stdout
    for "-", so that closing the access log never closes the process's stdout. Opening a FIFO blocks until
    someone reads it."""
    if path == "-":
        return os.dup(sys.stdout.fileno())
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)


class AccessLog:
    """The access log of one engine: one JSON line per proxied connection or HTTP request, written by the data
    plane itself (csrc/accesslog_writer.h).

    Workers put a record per connection or request into rings of their own; a C thread of the engine samples,
    formats and writes them in large batches, and sleeps between batches. Records never become Python objects
    and never wait for the GIL or the event loop. Python opens the destination, hands the descriptor over and
    reads counters. A destination that blocks (a full disk, a pipe nobody reads) stops only that thread: the
    rings fill, and the workers drop records and count them, they never wait.

    `path` is a file (appended to) or "-" for stdout. It is opened in a daemon thread, because opening a FIFO
    blocks until someone reads it; records made meanwhile wait in the rings. Call start() and close() on the
    thread that drives the engine.
    """

    def __init__(self, engine: NativeEngine, path: str, *, sample: float = 1.0, flush_interval_ms: int = 100,
                 buffer_bytes: int = 256 * 1024, ring_records: int) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample rate must be between 0 and 1, got {sample}")
        self.engine = engine
        self.path = path
        self.sample = sample
        self.flush_interval_ms = flush_interval_ms
        self.buffer_bytes = buffer_bytes
        self.ring_records = ring_records  # records in each worker's ring, sized when records are first turned on
        self.writing = False  # the engine's thread has the descriptor
        self._closed = False
        self._reported_errors = 0

    def start(self) -> None:
        """Turns records on and opens the destination; the engine starts writing once it is open."""
        loop = asyncio.get_running_loop()
        self.engine.set_access_log(True, self.ring_records)
        threading.Thread(target=self._open, args=(loop,), name="zlbfast-access-log-open", daemon=True).start()

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            result: int | OSError = open_destination(self.path)
        except OSError as exc:
            result = exc
        try:
            loop.call_soon_threadsafe(self._opened, result)
        except RuntimeError:  # the loop is closed: the proxy stopped while the open waited
            if isinstance(result, int):
                os.close(result)

    def _opened(self, result: int | OSError) -> None:
        if isinstance(result, OSError):
            log.error("access log %s cannot be opened, no access records will be written: %s", self.path, result)
            self.engine.set_access_log(False)
            return
        if self._closed:
            os.close(result)
            return
        try:
            self.engine.start_access_log(result, sample=self.sample, flush_interval_ms=self.flush_interval_ms,
                                         buffer_bytes=self.buffer_bytes)
        except Exception:
            os.close(result)
            self.engine.set_access_log(False)
            raise
        self.writing = True

    def report_errors(self) -> None:
        """Logs the records lost to failed writes since the last call."""
        st = self.engine.access_log_stats()
        lost = st["write_errors"] - self._reported_errors
        if lost > 0:
            self._reported_errors = st["write_errors"]
            log.error("access log %s: write failed, %d records lost: %s", self.path, lost,
                      os.strerror(st["last_errno"]) if st["last_errno"] else "destination blocked at exit")

    async def run(self, stop: asyncio.Event, check_interval_s: float = 1.0) -> None:
        """Reports lost writes every check_interval_s until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), check_interval_s)
            self.report_errors()

    async def close(self, timeout_s: float = 5.0) -> bool:
        """Turns records off and has the engine's thread write what is left, waiting up to timeout_s for it (in
        a thread: the loop keeps running). False when the destination stayed blocked: the thread is left to
        finish on its own and its records count as write errors. Nothing else may call the engine meanwhile."""
        self._closed = True
        self.engine.set_access_log(False)
        if not self.writing:
            return True
        self.writing = False
        done = await asyncio.to_thread(self.engine.stop_access_log, timeout_s)
        self.report_errors()
        return done

    def stats(self) -> dict[str, int]:
        """written, sampled_out, dropped (a full ring: the writer fell behind), write_errors, queued (in the rings
        and the writer's buffer)."""
        st = self.engine.access_log_stats()
        return {"written": st["written"], "sampled_out": st["sampled_out"],
                "dropped": self.engine.stats()["access_log_dropped"], "write_errors": st["write_errors"],
                "queued": st["queued"]}
