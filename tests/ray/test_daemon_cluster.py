"""The daemon against a real local autoscaling cluster (v1 and v2): the metrics are a fake reporting a
backlog on a GPU stage; the GCS view, the floor and the drains are real.

Scale-up adds gpu1 nodes and no cpu4 node; once the backlog is gone and the (shortened) scale-down window
has passed, idle nodes are drained back to the minimum, and a node running a task is never drained.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import parse_config
from autoscaler.devcluster.cluster import LocalAutoscalingCluster
from autoscaler.ports import ClusterState
from tests.support.cluster_config import config_text
from tests.support.cluster_daemon import RecordingActuator, cluster_daemon
from tests.support.cluster_watch import Watcher
from tests.support.daemon_fakes import FakeSource
from tests.support.polling import until, until_cluster

pytestmark = [pytest.mark.integration, pytest.mark.ray]

TIMEOUT_S = 45.0


async def test_daemon_scales_gpu_up_then_drains_idle_nodes_never_busy_ones(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    import ray

    cfg = parse_config(config_text())
    address = daemon_cluster.address
    actuator = RecordingActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
    )
    assert isinstance(actuator, RecordingActuator)
    source = FakeSource(backlog=100.0)

    def read() -> ClusterState:
        return read_cluster_state(address)

    with StateStore(tmp_path / "state.db") as store, Watcher(address, "gpu1") as watcher:
        daemon = cluster_daemon(cfg, cluster=read, source=source, actuator=actuator, store=store)
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        try:
            state = await until_cluster(
                address,
                lambda s: s.node_counts() == {"gpu1": 2} and not s.pending_counts(),
                "two gpu1 nodes",
                timeout_s=TIMEOUT_S,
            )
            assert daemon.floor == {"cpu4": 0, "gpu1": 2}
            assert all(n.node_type == "gpu1" for n in state.workers)

            daemon_cluster.connect()
            busy = state.workers[0]
            strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(busy.node_id, soft=False)

            def sleep_long() -> None:
                time.sleep(600)

            driver: Any = ray  # ray.remote's overloads do not know the node-affinity strategy
            ref = driver.remote(num_cpus=1, num_gpus=1, scheduling_strategy=strategy)(sleep_long).remote()
            await until_cluster(
                address,
                lambda s: s.node(busy.node_id).status == "RUNNING",
                "the task to start",
                timeout_s=TIMEOUT_S,
            )

            source.backlog, source.rate, source.slots = 0.0, 0.0, 0.0
            state = await until_cluster(
                address,
                lambda s: [n.node_id for n in s.workers] == [busy.node_id],
                "the idle gpu1 drained",
                timeout_s=TIMEOUT_S,
            )
            # The busy node stays: the daemon wants 0 gpu1 but never picks a busy node.
            since = daemon.tick_number
            await until(lambda: daemon.tick_number >= since + 4, "four more ticks", timeout_s=TIMEOUT_S)
            state = await asyncio.to_thread(read)
            assert [n.node_id for n in state.workers] == [busy.node_id]
            assert busy.node_id not in actuator.asked
            assert daemon.floor == {"cpu4": 0, "gpu1": 0}

            ray.cancel(ref, force=True)
            state = await until_cluster(
                address, lambda s: not s.workers, "back to the minimum (no workers)", timeout_s=TIMEOUT_S
            )
            assert busy.node_id in actuator.asked
            assert watcher.max_others == 0, "the daemon launched cpu4 nodes for a GPU stage"
            assert daemon.last is not None and not daemon.last.degraded
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, timeout=30)
            if ray.is_initialized():
                ray.shutdown()
        assert store.pending_actions() == () or all(a.status == "sent" for a in store.pending_actions())
