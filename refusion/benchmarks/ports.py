"""A free TCP port on the loopback interface, for the servers and process groups the benchmarks start.

No torch here: gpu_check's --dry-run imports nothing heavy."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the OS picks it; the caller binds it next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
