"""Workload identities (X.509 SVIDs) from files, and their rotation.

The files are the layout spiffe-helper writes: ``svid.pem`` (leaf first, then
intermediates), ``svid_key.pem`` and ``svid_bundle.pem`` (the CA certificates
of the trust domain). A watcher polls them from asyncio (stat signature:
inode, size, mtime; then a content hash, so a touch without a change does
nothing) and installs a changed set through one call,
``set_identity(name, cert_pem, key_pem, bundles)``. That call is the whole
contract with the data plane: the SDS client (xDS) calls the same method on
``zlbfast.runtime.Engine`` with secrets from the control plane.

The C side builds the new SSL_CTX completely before swapping it in, so a half
written set (key and certificate from different generations) is refused, the
previous identity keeps serving, and the next poll tries again. Private key
text is never logged, and error messages never contain it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("zlbfast.identity")


class IdentitySink(Protocol):
    def set_identity(self, name: str, cert_pem: bytes, key_pem: bytes, bundles: dict[str, bytes]) -> None: ...


@dataclass(frozen=True)
class IdentityFiles:
    """Paths of one identity. The same three paths always name the same identity."""

    cert: str
    key: str
    bundle: str

    @property
    def name(self) -> str:
        digest = hashlib.sha256(f"{self.cert}\0{self.key}\0{self.bundle}".encode()).hexdigest()[:16]
        return f"files:{digest}"

    def read(self) -> tuple[bytes, bytes, bytes]:
        with open(self.cert, "rb") as c, open(self.key, "rb") as k, open(self.bundle, "rb") as b:
            return c.read(), k.read(), b.read()

    def signature(self) -> tuple[tuple[int, int, int, int], ...]:
        """Cheap change detector: (device, inode, size, mtime) of each file."""
        out = []
        for path in (self.cert, self.key, self.bundle):
            st = os.stat(path)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)


def _digest(parts: tuple[bytes, bytes, bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


class IdentityWatcher:
    """Keeps one identity of a sink in step with its files.

    poll() is synchronous and cheap when nothing changed (three stat calls); run() calls it every interval_s
    from asyncio until `stop` is set. Every `rehash_every` polls the contents are hashed even when the stat
    signature is unchanged (a rewrite within one mtime tick keeps size and inode).
    """

    def __init__(self, sink: IdentitySink, files: IdentityFiles, *, interval_s: float = 1.0, rehash_every: int = 10,
                 on_rotate: Callable[[str], None] | None = None) -> None:
        self.sink = sink
        self.files = files
        self.interval_s = interval_s
        self.rehash_every = max(1, rehash_every)
        self.on_rotate = on_rotate
        self.rotations = 0
        self.failures = 0
        self._sig: tuple[tuple[int, int, int, int], ...] | None = None
        self._digest: str | None = None
        self._polls = 0

    @property
    def name(self) -> str:
        return self.files.name

    def load(self) -> None:
        """Initial install; raises OSError or the sink's error (the caller reports it, e.g. as a config error)."""
        sig = self.files.signature()
        parts = self.files.read()
        self.sink.set_identity(self.name, parts[0], parts[1], {"": parts[2]})
        self._sig, self._digest = sig, _digest(parts)

    def poll(self) -> bool:
        """Installs the files if they changed; True when a new identity went in. Errors are logged (without key
        material) and retried at the next poll, the installed identity stays."""
        self._polls += 1
        try:
            sig = self.files.signature()
            if sig == self._sig and self._polls % self.rehash_every:
                return False
            parts = self.files.read()
            digest = _digest(parts)
            if digest == self._digest:
                self._sig = sig
                return False
            self.sink.set_identity(self.name, parts[0], parts[1], {"": parts[2]})
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old identity and is retried
            self.failures += 1
            log.warning("identity %s (%s): not rotated, keeping the current one: %s", self.name, self.files.cert, exc)
            return False
        self._sig, self._digest = sig, digest
        self.rotations += 1
        log.info("identity %s rotated from %s", self.name, self.files.cert)
        if self.on_rotate is not None:
            self.on_rotate(self.name)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.poll()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass
