"""Real-socket helpers for the integration tests: small TCP backends that run
in threads of the test process, and clients with deadlines.

Every wait here is on a condition with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEADLINE_S = 10.0


def wait_for(cond: Callable[[], bool], timeout: float = DEADLINE_S, what: str = "condition") -> None:
    """Polls cond until true; fails the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """A TCP server in a thread. `handler(conn)` runs for each connection in
    its own thread; the server counts connections it accepted."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1", port: int = 0):
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        """Closes the listening socket (new connects are refused) and every open connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


def label_handler(label: str, hold: threading.Event | None = None) -> Callable[[socket.socket], None]:
    """Sends `label`, then (unless `hold` is given: wait for it) closes its side
    and drains the client's bytes until EOF."""

    def handle(conn: socket.socket) -> None:
        conn.sendall(label.encode() + b"\n")
        if hold is not None:
            hold.wait(DEADLINE_S * 3)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(DEADLINE_S)
        while conn.recv(65536):
            pass

    return handle


def connect(port: int, source_ip: str | None = None, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(DEADLINE_S)
    if source_ip:
        s.bind((source_ip, 0))
    s.connect((host, port))
    return s


def read_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the first newline (b"" when the peer closed first)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data


def echo_handler(conn: socket.socket) -> None:
    """A Backend handler that sends back whatever it receives until the client closes."""
    conn.settimeout(DEADLINE_S)
    while data := conn.recv(65536):
        conn.sendall(data)


def read_label(port: int, source_ip: str | None = None) -> str:
    """Connects through the proxy, returns the backend's label line ('' if
    the proxy closed the connection without one)."""
    with connect(port, source_ip) as s:
        return read_line(s).decode().strip()


def sha256_stream(chunks: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def access_log_records(native: Any, path: Path, n: int) -> list[dict[str, Any]]:
    """Starts the engine's access log into the file `path` and returns the first n records it writes there
    (waited for; records made before the start wait in the workers' rings). Only complete lines are parsed: the
    writer may be in the middle of one."""
    native.start_access_log(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), flush_interval_ms=10)
    records: list[dict[str, Any]] = []

    def enough() -> bool:
        text = path.read_text()
        records[:] = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
        return len(records) >= n

    wait_for(enough, what=f"{n} access-log records in {path}")
    return records
