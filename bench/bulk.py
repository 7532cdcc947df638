"""Bulk-transfer source and sink for bench/l4_compare.py.

The source sends every connection exactly SIZE bytes with sendfile(2)
from a sparse temp file, then closes. sendfile hands page-cache pages to TCP without a
userspace copy, so the source is not what limits the measured rate. The file is smaller than
SIZE (and sent repeatedly) to keep its page cache footprint small.

    python bench/bulk.py serve --port 9100 --size 1073741824

The sink, `receive()`, reads and discards into one reused buffer and checks the byte count.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time

from _procs import HOST

FILE_SIZE = 64 * 1024 * 1024
RECV_BUFFER = 1024 * 1024


def serve(port: int, size: int) -> None:
    with tempfile.TemporaryFile() as src, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
        file_size = min(size, FILE_SIZE)
        src.truncate(file_size)  # a hole: reads as zeros, no disk space used
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((HOST, port))
        lsock.listen(16)
        while True:
            conn, _ = lsock.accept()
            # One thread per connection: a readiness probe that a proxy holds open upstream
            # must not delay the measured transfer behind it.
            threading.Thread(target=_send, args=(conn, src.fileno(), size, file_size), daemon=True).start()


def _send(conn: socket.socket, in_fd: int, size: int, file_size: int) -> None:
    with conn:
        try:
            _sendfile(conn.fileno(), in_fd, size, file_size)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader went away early, as a readiness probe does


def _sendfile(out_fd: int, in_fd: int, size: int, file_size: int) -> None:
    sent = 0
    while sent < size:
        offset = sent % file_size
        n = os.sendfile(out_fd, in_fd, offset, min(size - sent, file_size - offset))
        if n == 0:
            raise OSError("sendfile sent nothing")
        sent += n


def receive(port: int, size: int, timeout_s: float) -> float:
    """Connect, read until EOF, check exactly `size` bytes arrived; return seconds from connect to EOF."""
    buf = bytearray(RECV_BUFFER)
    view = memoryview(buf)
    got = 0
    start = time.perf_counter()
    deadline = start + timeout_s
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        while n := sock.recv_into(view):
            got += n
            if got > size:
                raise RuntimeError(f"bulk: received more than the {size} bytes sent")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"bulk: {got} of {size} bytes after {timeout_s:.0f}s")
    elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"bulk: connection closed after {got} of {size} bytes")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="send SIZE bytes to every connection on 127.0.0.1:PORT")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--size", type=int, default=1 << 30)
    args = parser.parse_args()
    serve(args.port, args.size)


if __name__ == "__main__":
    main()
