"""The daemon against a real local autoscaling cluster (v1 and v2): the metrics are a fake reporting a
backlog on a GPU stage; the GCS view, the floor and the drains are real.

Scale-up adds gpu1 nodes and no cpu4 node; once the backlog is gone and the (shortened) scale-down window
has passed, idle nodes are drained back to the minimum, and a node running a task is never drained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.adapters.state_store import StateStore
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.app.plugins import load_policy
from autoscaler.core.config import parse_config
from autoscaler.daemon import Daemon
from autoscaler.devcluster.cluster import LocalAutoscalingCluster
from autoscaler.ports import ClusterState, DrainResult
from tests.support.daemon_fakes import FakeSource

pytestmark = [pytest.mark.integration, pytest.mark.ray]

CONFIG = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2, min: 0, max: 2, launch_seconds: 5}
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.0, min: 0, max: 2, launch_seconds: 5}
stages:
  - {name: infer, operator: "Infer", resources: {CPU: 1, GPU: 1}, prior_rate: {gpu1: 1.0}}
targets: {drain_seconds: 60, headroom: 0.2}
bounds: {max_step_down: 2, scale_down_window_seconds: 3}
daemon: {interval_seconds: 1, drain_share_per_tick: 0.5, observe_timeout_seconds: 10,
         act_timeout_seconds: 15, http_port: null}
ray: {floor_form: resource, use_coordinator: false}
"""


class RecordingActuator(RayActuator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drained: list[str] = []

    def drain(self, node_id: str, *args: Any, **kwargs: Any) -> DrainResult:
        self.drained.append(node_id)
        return super().drain(node_id, *args, **kwargs)


async def _until(
    read: Callable[[], ClusterState], check: Callable[[ClusterState], bool], what: str, timeout_s: float = 45
) -> ClusterState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await asyncio.to_thread(read)
        if check(state):
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out waiting for {what}: {state.node_counts()} {state.pending_counts()}"
            )
        await asyncio.sleep(0.5)


async def test_daemon_scales_gpu_up_then_drains_idle_nodes_never_busy_ones(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    import ray

    cfg = parse_config(CONFIG)
    address = daemon_cluster.address
    actuator = RecordingActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
    )
    assert isinstance(actuator, RecordingActuator)
    source = FakeSource(backlog=100.0)

    def read() -> ClusterState:
        return read_cluster_state(address)

    seen_cpu4: list[int] = []

    def watch(state: ClusterState) -> None:
        seen_cpu4.append(state.node_counts().get("cpu4", 0) + state.pending_counts().get("cpu4", 0))

    with StateStore(tmp_path / "state.db") as store:
        daemon = Daemon(
            config=cfg,
            policy=load_policy(cfg.policy.name),
            source=source,
            cluster=read,
            actuator=actuator,
            store=store,
            telemetry=Telemetry(tick_interval_seconds=1.0),
        )
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        try:

            def two_gpus(s: ClusterState) -> bool:
                watch(s)
                return s.node_counts() == {"gpu1": 2} and not s.pending_counts()

            state = await _until(read, two_gpus, "two gpu1 nodes")
            assert daemon.floor == {"cpu4": 0, "gpu1": 2}
            assert all(n.node_type == "gpu1" for n in state.workers)

            daemon_cluster.connect()
            busy = state.workers[0]
            strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(busy.node_id, soft=False)

            def sleep_long() -> None:
                time.sleep(600)

            driver: Any = ray  # ray.remote's overloads do not know the node-affinity strategy
            ref = driver.remote(num_cpus=1, num_gpus=1, scheduling_strategy=strategy)(sleep_long).remote()
            await _until(read, lambda s: s.node(busy.node_id).status == "RUNNING", "the task to start")

            source.backlog, source.rate, source.slots = 0.0, 0.0, 0.0
            state = await _until(
                read, lambda s: [n.node_id for n in s.workers] == [busy.node_id], "the idle gpu1 drained"
            )
            # The busy node stays: the daemon wants 0 gpu1 but never picks a busy node.
            await asyncio.sleep(4)
            state = await asyncio.to_thread(read)
            watch(state)
            assert [n.node_id for n in state.workers] == [busy.node_id]
            assert busy.node_id not in actuator.drained
            assert daemon.floor == {"cpu4": 0, "gpu1": 0}

            ray.cancel(ref, force=True)
            state = await _until(read, lambda s: not s.workers, "back to the minimum (no workers)")
            assert busy.node_id in actuator.drained
            assert not any(seen_cpu4), "the daemon launched cpu4 nodes for a GPU stage"
            assert daemon.last is not None and not daemon.last.degraded
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, timeout=30)
            if ray.is_initialized():
                ray.shutdown()
        assert store.pending_actions() == () or all(a.status == "sent" for a in store.pending_actions())
