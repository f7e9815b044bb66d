"""Choosing local ports so that several processes on one machine never collide."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", start: int = 0, tries: int = 200) -> int:
    """A TCP port that can be bound on ``host`` right now.

    Args:
        host: the address to bind.
        start: 0 lets the system pick any free port; otherwise the first free one from ``start``
            on (a predictable port, such as faust's web port from 6066).
        tries: how many ports from ``start`` to try.

    Raises:
        OSError: no port in start..start+tries-1 is free.
    """
    for port in range(start, start + tries) if start else [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError(f"no free port in {start}..{start + tries - 1} on {host}")
