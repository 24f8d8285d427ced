"""The one wiring of a daemon (``raytide run`` and ``raytide demo``): what it builds from a configuration, the
part it names when something cannot be built, and the servers it starts and stops around the daemon."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from pathlib import Path

import httpx
import pytest

import autoscaler.app.wiring as wiring_module
from autoscaler.app.plugins import load_policy
from autoscaler.app.wiring import Wiring, WiringError, WiringOptions, wire
from autoscaler.core.config import Config, parse_config
from autoscaler.daemon import DryRunActuator
from autoscaler.ports import ClusterState

CONFIG = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.20, min: 0, max: 3, launch_seconds: 5}
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.00, min: 0, max: 3, launch_seconds: 5}
stages:
  - {name: decode, operator: "MapBatches\\\\(decode\\\\)", resources: {CPU: 1}}
daemon: {interval_seconds: 3, http_port: %s}
warm_pool: {enabled: true, min: {gpu1: 1}, max: {gpu1: 1}}
"""


def _config(http_port: str = "null") -> Config:
    return parse_config(CONFIG % http_port, "<test>")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def readable_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up read of the cluster answers (an empty cluster) without a Ray GCS."""

    def read(address: str, *, timeout_s: float) -> ClusterState:
        return ClusterState(time=0.0, autoscaler_version="v2", nodes=())

    monkeypatch.setattr(wiring_module, "read_cluster_state", read)


def test_an_unreachable_cluster_is_named_as_the_part_that_failed(tmp_path: Path) -> None:
    cfg = _config()
    options = WiringOptions(
        ray_address=f"127.0.0.1:{_closed_port()}", state_path=tmp_path / "state.db", configure_logging=False
    )
    with pytest.raises(WiringError) as failed:
        wire(cfg, load_policy("throughput"), options)
    assert failed.value.part == "cluster"
    assert "unreachable" in str(failed.value)
    assert not (tmp_path / "state.db").exists()


@pytest.mark.usefixtures("readable_cluster")
def test_a_dry_run_acts_on_nothing_and_keeps_its_state_in_a_scratch_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    options = WiringOptions(
        ray_address="127.0.0.1:6379",
        dry_run=True,
        state_path=tmp_path / "state.db",
        configure_logging=False,
    )
    with wire(_config(), load_policy("throughput"), options) as wiring:
        assert isinstance(wiring.actuator, DryRunActuator)
        assert wiring.warm_pool is None  # no standby nodes are held in a dry run, even with the pool enabled
        assert [p.name for p in temp.glob("raytide-dry-run-*/state.db")] == ["state.db"]
    assert list(temp.iterdir()) == []
    assert not (tmp_path / "state.db").exists()


@pytest.mark.usefixtures("readable_cluster")
def test_a_state_file_that_cannot_be_opened_is_named_as_the_part_that_failed(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    options = WiringOptions(
        ray_address="127.0.0.1:6379", state_path=blocker / "state.db", configure_logging=False, dry_run=False
    )
    with pytest.raises(WiringError) as failed:
        wire(_config(), load_policy("throughput"), options, actuator=DryRunActuator())
    assert failed.value.part == "state"


async def test_the_endpoint_serves_while_the_daemon_is_open_and_nudges_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoscaler.adapters.state_store import StateStore

    cfg = _config(http_port="0")
    wiring = Wiring(
        config=cfg,
        policy=load_policy("throughput"),
        options=WiringOptions(ray_address="127.0.0.1:6379", interval_seconds=2.0, configure_logging=False),
        actuator=DryRunActuator(),
        warm_pool=None,
        store=StateStore(tmp_path / "state.db"),
        scratch=None,
    )
    with wiring:
        async with wiring.daemon() as daemon:
            assert daemon.interval_seconds == 2.0
            assert daemon.config is cfg
            assert wiring.telemetry is not None
            url = wiring.endpoint_url
            assert url is not None
            nudges: list[bool] = []
            monkeypatch.setattr(daemon, "nudge", lambda: nudges.append(True))
            async with httpx.AsyncClient() as client:
                metrics = await client.get(f"{url}/metrics")
                assert metrics.status_code == 200
                assert "raytide_" in metrics.text
                nudged = await client.post(f"{url}/nudge")
                assert nudged.status_code == 202
                assert nudges == [True]
        assert wiring.endpoint_url is None
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{url}/metrics")


@pytest.mark.usefixtures("readable_cluster")
async def test_the_daemon_tells_systemd_it_is_ready_when_notify_socket_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_config(
        CONFIG % "null" + f"prometheus: {{url: 'http://127.0.0.1:{_closed_port()}'}}\n",
        "<test>",
    )
    cfg = cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update={"observe_timeout_seconds": 2.0})})
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.0)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        options = WiringOptions(
            ray_address="127.0.0.1:6379",
            dry_run=True,
            state_path=tmp_path / "state.db",
            configure_logging=False,
        )
        with wire(cfg, load_policy("throughput"), options) as wiring:
            async with wiring.daemon() as daemon:
                await daemon.run(max_ticks=1, install_signal_handlers=False)
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(sock.recv(65536).decode())
    assert messages[0] == "READY=1", messages
    assert "WATCHDOG=1" in messages
