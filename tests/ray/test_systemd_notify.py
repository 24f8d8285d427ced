"""A real ``raytide run`` on a local Ray cluster speaks systemd's notify protocol to a real datagram socket.

``NOTIFY_SOCKET`` names a unix datagram socket the test binds, as systemd would for a ``Type=notify`` unit.
The daemon must send ``READY=1`` once its first tick has observed the cluster, then per completed tick a
one-line ``STATUS=`` and ``WATCHDOG=1``, and ``STOPPING=1`` when SIGTERM stops it (exit 0). That a stuck tick
stops the pings is the daemon's unit test (tests/daemon); here the ordering and the wiring are checked.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType
from tests.deploy.live import RaytideRun
from tests.support.programs import require_ray_cli

pytestmark = [pytest.mark.integration, pytest.mark.ray]

CONFIG = """
shapes:
  - {{name: cpu4, resources: {{CPU: 4}}, price_per_hour: 0.2, min: 0, max: 1, launch_seconds: 5}}
daemon: {{interval_seconds: 1, observe_timeout_seconds: 8, act_timeout_seconds: 15, http_port: null,
         state_path: "{state}"}}
ray: {{floor_form: resource, use_coordinator: false}}
"""
WAIT_S = 120.0
"""For the first tick (the CLI's imports and the GCS connection come first), and for the exit."""
TICKS = 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalAutoscalingCluster]:
    require_ray_cli()
    with LocalAutoscalingCluster(
        [LocalNodeType("cpu4", {"CPU": 4}, max_workers=1)], autoscaler_v2=False, include_dashboard=True
    ) as c:
        yield c


def _receive(sock: socket.socket, until: float) -> str | None:
    sock.settimeout(max(0.05, until - time.monotonic()))
    try:
        return sock.recv(65536).decode("utf-8")
    except TimeoutError:
        return None


def test_run_notifies_ready_status_watchdog_then_stopping(
    cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    config = tmp_path / "raytide.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "state.db"), encoding="utf-8")
    address = str(tmp_path / "notify.sock")
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(60_000_000)}
        raytide = RaytideRun(config, cluster.address, tmp_path / "raytide.log", env=env)
        try:
            deadline = time.monotonic() + WAIT_S
            while messages.count("WATCHDOG=1") < TICKS and time.monotonic() < deadline:
                if raytide.process.poll() is not None:
                    break
                got = _receive(sock, deadline)
                if got is not None:
                    messages.append(got)
            assert messages.count("WATCHDOG=1") >= TICKS, f"{messages}\n{raytide.log_tail()}"
            code = raytide.terminate(timeout=WAIT_S)
            deadline = time.monotonic() + 5.0  # everything it sent is queued in the socket already
            while (got := _receive(sock, deadline)) is not None:
                messages.append(got)
        finally:
            raytide.terminate()
    print("notify messages:", *messages, sep="\n  ")

    assert code == 0, raytide.log_tail()
    assert messages[0] == "READY=1", messages
    assert messages.count("READY=1") == 1
    assert messages[-1] == "STOPPING=1", messages
    ticks = messages[1 : messages.index("STOPPING=1")]
    # Per completed tick: the status, then the watchdog ping.
    assert len(ticks) >= 2 * TICKS and len(ticks) % 2 == 0, ticks
    for status, ping in zip(ticks[::2], ticks[1::2], strict=True):
        assert status.startswith("STATUS=") and len(status) > len("STATUS=") and "\n" not in status
        assert ping == "WATCHDOG=1"
