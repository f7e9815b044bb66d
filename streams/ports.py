"""Choosing local ports so that several workers on one machine never collide."""

from __future__ import annotations

import socket


def first_free_port(start: int, host: str = "127.0.0.1", tries: int = 200) -> int:
    """The first port >= start that can be bound on host."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {start}..{start + tries - 1} on {host}")
