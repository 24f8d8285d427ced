"""The daemon and a real Ray Data job on one real local autoscaling cluster (v1 and v2): cooperation through
Ray Data's ``AutoscalingCoordinator`` while the daemon ticks.

The job (``autoscaler.demo.pipeline --no-infer``: a CPU ``decode`` map over many blocks) runs as its own
driver; Ray Data's cluster autoscaler registers with the coordinator and asks for CPUs as it goes. The
daemon's metrics are a fake reporting a backlog on a GPU stage, so it wants two gpu1 nodes, and it
registers that floor with the same coordinator. Checked: raytide's floor goes through the coordinator,
the autoscaler's floor carries Ray Data's bundles and raytide's together, the job finishes with every row,
and when the job ends (Ray Data withdraws its request) raytide's floor and nodes are still there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import node_type_resource, read_cluster_state
from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import parse_config
from autoscaler.devcluster.cluster import LocalAutoscalingCluster
from autoscaler.ports import ClusterState
from tests.support.cluster_config import config_text
from tests.support.cluster_daemon import RecordingActuator, cluster_daemon
from tests.support.daemon_fakes import FakeSource

pytestmark = [pytest.mark.integration, pytest.mark.ray]

BLOCKS = 120
GPU1 = node_type_resource("gpu1")
TIMEOUT_S = 240.0


class _Remote:
    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.name = name
        self.calls = calls

    def remote(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((self.name, args, kwargs))
        return self.name


class _FakeCoordinator:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.request_resources = _Remote("request_resources", self.calls)
        self.get_reserved_resources = _Remote("get_reserved_resources", self.calls)


class _FakeRay:
    def get(self, ref: Any, timeout: float | None = None) -> Any:
        return ref


def test_each_registration_makes_the_coordinator_reread_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a cluster: Ray Data's coordinator re-reads the nodes every 20 s on its own, so raytide asks
    it to recompute after registering; otherwise the nodes raytide launched idle until that tick."""
    actuator = RayActuator("127.0.0.1:1", {"gpu1": {"GPU": 1.0, GPU1: 1.0}}, floor_form="resource")
    coordinator = _FakeCoordinator()
    monkeypatch.setattr(actuator, "_find_coordinator", lambda: coordinator)
    monkeypatch.setattr(actuator, "_ray", lambda: _FakeRay())
    monkeypatch.setattr(actuator, "_version", "v2")
    status = actuator.set_target({"gpu1": 2})
    assert status.channel == "coordinator"
    assert [c[0] for c in coordinator.calls] == ["request_resources", "get_reserved_resources"]
    assert coordinator.calls[1][1:] == (("raytide",), {"recompute": True})


def _floor(state: ClusterState) -> tuple[int, int]:
    """(raytide's gpu1 markers, Ray Data's bundles) in the autoscaler's floor."""
    floor = [d for d in state.demand if d.source == "floor"]
    markers = sum(d.count for d in floor if GPU1 in d.resources)
    others = sum(d.count for d in floor if not any(k.startswith("raytide-node-type:") for k in d.resources))
    return markers, others


async def test_ray_datas_requests_and_raytides_floor_coexist_while_the_daemon_ticks(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    import ray

    cfg = parse_config(
        config_text(bounds={"scale_down_window_seconds": 300}, ray={"use_coordinator": "auto"})
    )
    address = daemon_cluster.address
    actuator = RecordingActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator="auto"
    )
    assert isinstance(actuator, RecordingActuator)
    source = FakeSource(backlog=100.0)

    def read() -> ClusterState:
        return read_cluster_state(address)

    job_log = tmp_path / "job.log"
    with StateStore(tmp_path / "state.db") as store, job_log.open("wb") as job_out:
        daemon = cluster_daemon(cfg, cluster=read, source=source, actuator=actuator, store=store)
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        job = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "autoscaler.demo.pipeline",
                "--address",
                address,
                "--bursts",
                str(BLOCKS),
                "--decode-seconds",
                "1.0",
                "--no-infer",
            ],
            stdout=job_out,
            stderr=subprocess.STDOUT,
        )
        both_seen = False
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while job.returncode is None:
                assert time.monotonic() < deadline, "the Ray Data job did not finish"
                markers, ray_data = _floor(await asyncio.to_thread(read))
                both_seen = both_seen or (markers == 2 and ray_data > 0)
                await asyncio.sleep(0.5)
            output = job_log.read_text(errors="replace")
            assert job.returncode == 0, output[-3000:]
            assert f"{BLOCKS * 4} rows" in output, output[-3000:]
            assert both_seen, "the autoscaler's floor never held Ray Data's bundles and raytide's together"
            assert "coordinator" in actuator.channels
            # Once the coordinator exists, raytide never again owns the floor directly.
            first = actuator.channels.index("coordinator")
            assert set(actuator.channels[first:]) == {"coordinator"}

            # Ray Data withdrew its request when the job ended; raytide's is still there, nodes too.
            async def raytide_alone() -> bool:
                markers, ray_data = _floor(await asyncio.to_thread(read))
                return markers == 2 and ray_data == 0

            deadline = time.monotonic() + 60
            while not await raytide_alone():
                assert time.monotonic() < deadline, f"floor after the job: {_floor(read())}"
                await asyncio.sleep(0.5)
            state = await asyncio.to_thread(read)
            assert state.node_counts().get("gpu1", 0) == 2
            # (cpu4 may be in raytide's floor too: it scales nothing down before it has watched a full
            # scale-down window, so the cpu4 nodes Ray Data's job brought up are kept as they are.)
            assert daemon.floor is not None and daemon.floor["gpu1"] == 2
            assert daemon.last is not None and not daemon.last.degraded
            print("raytide drains:", [(d.node_id[:8], d.accepted, d.message) for d in actuator.results])
        finally:
            if job.returncode is None:
                job.kill()
                await job.wait()
            daemon.request_stop()
            await asyncio.wait_for(task, timeout=30)
            try:
                actuator.release()
            finally:
                if ray.is_initialized():
                    ray.shutdown()
