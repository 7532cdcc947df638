"""TCP congestion control for a listener's or a cluster's sockets (the TCP_CONGESTION socket option).

A name is checked when a config is validated, by setting it on a scratch socket: a name this kernel lacks, or one
this process may not set, is then a config error naming the key, not a silent fallback on every connection.
"""

from __future__ import annotations

import errno
import re
import socket
from pathlib import Path

# The kernel's TCP_CA_NAME_MAX is 16 bytes with the NUL; names are module suffixes (tcp_<name>.ko).
_NAME_RE = re.compile(r"[a-z0-9_]{1,15}")
_SYSCTL = Path("/proc/sys/net/ipv4")


def _sysctl(name: str) -> str:
    try:
        return (_SYSCTL / name).read_text().strip() or "none"
    except OSError:
        return "unreadable"


def malformed(name: str) -> str | None:
    """Why `name` cannot be a congestion control's name at all; None when it can be one. No system call."""
    if not _NAME_RE.fullmatch(name):
        return f"{name!r} is not a congestion control name (1 to 15 of a-z, 0-9, _)"
    return None


def problem(name: str) -> str | None:
    """Why this process cannot give its TCP sockets the congestion control `name`; None when it can."""
    if why := malformed(name):
        return why
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                available = _sysctl("tcp_available_congestion_control")
                return f"this kernel has no congestion control {name!r} (available: {available})"
            if exc.errno == errno.EPERM:
                allowed = _sysctl("tcp_allowed_congestion_control")
                return (f"this process may not set congestion control {name!r}: without CAP_NET_ADMIN only those "
                        f"of net.ipv4.tcp_allowed_congestion_control ({allowed}) can be set")  # fmt: skip
            return f"congestion control {name!r} cannot be set: {exc.strerror}"
    return None


def system_default() -> str:
    """The algorithm sockets get when no name is given (net.ipv4.tcp_congestion_control)."""
    return _sysctl("tcp_congestion_control")
