"""Loopback ports for the processes modelhost starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port no one listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
