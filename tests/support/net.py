"""Sockets for tests: a loopback port nothing listens on."""

from __future__ import annotations

import socket


def closed_port() -> int:
    """A loopback port nobody listens on right now (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
