"""The systemd notifier against real unix datagram sockets (a path and the abstract namespace)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.adapters.systemd_notify import (
    NullServiceManager,
    SystemdNotifier,
    from_environment,
    watchdog_seconds,
)
from autoscaler.ports import ServiceManager


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)  # a missing datagram fails the test instead of hanging it
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    address = str(tmp_path / "notify.sock")
    sock = _receiver(address)
    try:
        yield address, sock
    finally:
        sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"raytide-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


def _drive(service: ServiceManager) -> None:
    service.ready()
    service.status("tick 1: ok, targets cpu4=1 gpu1=0")
    service.watchdog()
    service.stopping()


def _received(sock: socket.socket, count: int) -> list[str]:
    return [sock.recv(4096).decode() for _ in range(count)]


EXPECTED = ["READY=1", "STATUS=tick 1: ok, targets cpu4=1 gpu1=0", "WATCHDOG=1", "STOPPING=1"]


def test_path_socket_gets_one_datagram_per_message_in_order(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    service = from_environment({"NOTIFY_SOCKET": address})
    assert isinstance(service, SystemdNotifier)
    _drive(service)
    assert _received(sock, 4) == EXPECTED


def test_abstract_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    name, sock = abstract_socket
    service = from_environment({"NOTIFY_SOCKET": name})
    _drive(service)
    assert _received(sock, 4) == EXPECTED


def test_status_is_one_line(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = SystemdNotifier(address)
    notifier.status("degraded:\n  prometheus: connection refused\r\n")
    notifier.status("x" * 10_000)
    first, second = _received(sock, 2)
    assert first == "STATUS=degraded: prometheus: connection refused"
    assert second.startswith("STATUS=xxx") and "\n" not in second and len(second) < 10_000
    notifier.close()


def test_unset_variable_is_a_no_op() -> None:
    service = from_environment({})
    assert isinstance(service, NullServiceManager)
    _drive(service)  # nothing to assert but that it does nothing and does not raise
    assert isinstance(from_environment({"NOTIFY_SOCKET": "  "}), NullServiceManager)


def test_no_listener_never_raises_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.DEBUG, logger="autoscaler.adapters.systemd_notify"):
        _drive(notifier)
        _drive(notifier)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "READY" in warnings[0].getMessage()


def test_unusable_address_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="autoscaler.adapters.systemd_notify"):
        notifier = SystemdNotifier("vsock:2:1234")
        _drive(notifier)
    assert len(caplog.records) == 1 and "vsock:2:1234" in caplog.records[0].getMessage()


def test_full_receiver_queue_does_not_block(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = SystemdNotifier(address)
    # Nobody reads: the receiver's queue fills and the non-blocking send fails; each call must return.
    for _ in range(5_000):
        notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_watchdog_seconds() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_seconds({}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    mine = str(os.getpid())
    assert watchdog_seconds({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": mine}) == 1.0
    # The watchdog belongs to another process (this one inherited the environment).
    assert watchdog_seconds({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2) is None


def test_interval_longer_than_half_the_watchdog_warns(
    path_socket: tuple[str, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    address, _ = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000"}
    with caplog.at_level(logging.WARNING, logger="autoscaler.adapters.systemd_notify"):
        from_environment(env, interval_seconds=5.0)
        assert caplog.records == []
        from_environment(env, interval_seconds=6.0)
    assert len(caplog.records) == 1 and "WatchdogSec=10s" in caplog.records[0].getMessage()
