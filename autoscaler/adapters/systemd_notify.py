"""systemd's notify protocol: the daemon's ``ServiceManager`` when it runs as a ``Type=notify`` unit.

Each message is one datagram to the unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names a
socket in the abstract namespace). No dependency, no thread: the socket is non-blocking, a send that fails
is logged once and dropped, and nothing here raises. ``from_environment`` picks this notifier when
systemd set the variable, and a no-op otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping

from autoscaler.ports import ServiceManager

__all__ = ["NullServiceManager", "SystemdNotifier", "from_environment", "watchdog_seconds"]

log = logging.getLogger(__name__)

_MAX_STATUS_CHARS = 512
"""A status is one line for ``systemctl status``; a longer one is cut rather than split or refused."""


class NullServiceManager:
    """No service manager is listening: every call does nothing."""

    def ready(self) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def stopping(self) -> None:
        pass


def _socket_address(name: str) -> str | None:
    """The address to send to: a filesystem path, or ``\\0name`` for ``@name`` (abstract namespace)."""
    if name.startswith("@") and len(name) > 1:
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None


class SystemdNotifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1`` to ``notify_socket``.

    A datagram the socket does not take (no listener, its queue full, an address that is not a unix
    socket path or ``@name``) is dropped: the service manager is an observer, and the daemon must not stall
    or fail because of it. The first failure is logged as a warning, later ones at debug level.
    """

    def __init__(self, notify_socket: str) -> None:
        self.notify_socket = notify_socket
        self._address = _socket_address(notify_socket)
        self._socket: socket.socket | None = None
        self._warned = False
        if self._address is None:
            self._complain(f"NOTIFY_SOCKET={notify_socket!r} is neither a path nor @abstract; ignoring it")

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        line = " ".join(text.split())
        self._send("STATUS=" + line[:_MAX_STATUS_CHARS])

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as e:
            self._complain(f"systemd notify {message.split('=', 1)[0]} to {self.notify_socket} failed: {e}")

    def _complain(self, text: str) -> None:
        if self._warned:
            log.debug("%s", text)
        else:
            self._warned = True
            log.warning("%s (further failures are logged at debug level)", text)


def watchdog_seconds(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog timeout systemd set for this process (``WATCHDOG_USEC``), or None when it set none.

    ``WATCHDOG_PID``, when present, names the process the watchdog is meant for; another process (a child
    that inherited the environment) has no watchdog.
    """
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(pid if pid is not None else os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "").strip())
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def from_environment(
    env: Mapping[str, str], *, interval_seconds: float | None = None, pid: int | None = None
) -> ServiceManager:
    """A ``SystemdNotifier`` when ``NOTIFY_SOCKET`` is set, else a ``NullServiceManager``.

    With ``interval_seconds`` (the tick interval) a warning is logged when ticks are further apart than half
    the watchdog timeout: a healthy daemon would then be killed between two pings.
    """
    name = env.get("NOTIFY_SOCKET", "").strip()
    if not name:
        return NullServiceManager()
    timeout = watchdog_seconds(env, pid)
    interval = interval_seconds if interval_seconds is not None else math.nan
    if timeout is not None and interval > timeout / 2:
        log.warning(
            "the tick interval (%gs) is longer than half the systemd watchdog (WatchdogSec=%gs): "
            "raise WatchdogSec= or shorten daemon.interval_seconds",
            interval,
            timeout,
        )
    return SystemdNotifier(name)
