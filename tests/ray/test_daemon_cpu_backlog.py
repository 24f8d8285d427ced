"""The daemon against a real local autoscaling cluster (v1 and v2), backlog on a CPU stage: the mirror of
``test_daemon_cluster.py``. The metrics are a fake reporting a backlog on a CPU-only ``decode`` stage; the
GCS view, the floor and the drains are real.

Scale-up adds cpu4 nodes and no gpu1 node (a gpu1 node could run the CPU stage too — it has a CPU — but
it is the expensive shape); once the backlog is gone, the idle cpu4 nodes are drained back to the minimum.

The module's second test (it shares the cluster) is the real-server variant of the daemon's fault holds:
a real Prometheus HTTP client against a port nobody listens on, a stand-in answering garbage and 503s,
and a GCS reader pointed at a closed port, each followed by a good tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import parse_config
from autoscaler.core.queries import QueryResult, make_sample
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, free_port
from autoscaler.ports import ClusterState
from tests.support.cluster_config import config_text
from tests.support.cluster_daemon import RecordingDaemon, cluster_daemon
from tests.support.cluster_watch import Watcher
from tests.support.fake_prometheus import FakePrometheus
from tests.support.polling import until_cluster

pytestmark = [pytest.mark.integration, pytest.mark.ray]

DECODE_STAGE = {
    "name": "decode",
    "operator": "decode",
    "resources": {"CPU": 1},
    "prior_rate": {"cpu4": 1.0, "gpu1": 1.0},
}

DATASET = "dataset_7"
DECODE = "MapBatches(decode)_1"


class CpuStageSource:
    """Ray Data metrics of a CPU-only job whose ``decode`` stage has ``backlog`` blocks queued.

    (A GPU stage downstream would rightly get GPU nodes too: raytide sizes a downstream stage for the
    work its upstream is about to release.)
    """

    def __init__(self, backlog: float) -> None:
        self.backlog = backlog
        self.rate = 1.0

    async def query_templates(
        self, names: Iterable[str] | None = None, *, at: float | None = None
    ) -> dict[str, QueryResult]:
        now = time.time()

        def decode(value: float) -> QueryResult:
            sample = make_sample({"dataset": DATASET, "operator": DECODE}, value, now)
            return QueryResult(query="q", samples=(sample,))

        busy = 1.0 if self.backlog else 0.0
        return {
            "stage_backlog": decode(self.backlog),
            "stage_throughput": decode(self.rate * busy),
            "stage_arrival": decode(self.rate * busy),
            "stage_slots": decode(busy),
            "stage_freshness": decode(1.0),
            "nodes_active": QueryResult(query="q"),
            "nodes_pending": QueryResult(query="q"),
            "node_cpu_utilization": QueryResult(query="q"),
            "node_gpu_utilization": QueryResult(query="q"),
            "targets_down": QueryResult(query="q"),
        }


async def test_cpu_backlog_adds_cpu_nodes_and_no_gpu_node(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    cfg = parse_config(config_text(stages=[DECODE_STAGE]))
    address = daemon_cluster.address
    actuator = RayActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
    )
    # (1 + 300 / 60) × 1.2 ≈ 7.2 decode slots at 1 block/s each: two cpu4 nodes.
    source = CpuStageSource(backlog=300.0)

    def read() -> ClusterState:
        return read_cluster_state(address)

    with StateStore(tmp_path / "state.db") as store, Watcher(address, "cpu4") as watcher:
        daemon = cluster_daemon(cfg, cluster=read, source=source, actuator=actuator, store=store)
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        try:
            state = await until_cluster(
                address, lambda s: s.node_counts() == {"cpu4": 2} and not s.pending_counts(), "two cpu4 nodes"
            )
            assert daemon.floor == {"cpu4": 2, "gpu1": 0}
            assert all(n.node_type == "cpu4" for n in state.workers)
            assert daemon.last is not None
            decode_change = next(c for c in daemon.last.plan.changes if c.shape == "cpu4")
            assert "decode" in decode_change.reason

            source.backlog = 0.0
            await until_cluster(address, lambda s: not s.workers, "back to the minimum (no workers)")
            assert daemon.floor == {"cpu4": 0, "gpu1": 0}
            assert watcher.max_others == 0, "the daemon launched gpu1 nodes for a CPU stage"
            assert daemon.last is not None and not daemon.last.degraded
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, timeout=30)


def _health(daemon: RecordingDaemon) -> str:
    return daemon.telemetry.state


async def test_faults_against_real_servers_hold_then_recover_on_the_next_good_tick(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    """Ticks driven one by one; the last test of the module (it leaves gpu1 nodes booting)."""
    prom = FakePrometheus(backlog=100.0, rate=1.0, slots=1.0)  # not started: its port refuses connections
    # The stand-in Prometheus reports the base config's GPU stage.
    cfg = parse_config(config_text(prometheus={"url": prom.url, "retries": 0}))
    address = daemon_cluster.address
    actuator = RayActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
    )
    gcs = {"address": address}

    def read() -> ClusterState:
        return read_cluster_state(gcs["address"], timeout_s=3)

    async with PrometheusSource(config=cfg.prometheus) as source:
        with StateStore(tmp_path / "state.db") as store:
            daemon = cluster_daemon(cfg, cluster=read, source=source, actuator=actuator, store=store)
            await daemon.start()
            try:
                down = await daemon.tick()
                assert down.degraded and down.plan.held
                assert down.floor is None  # nothing was ever set, nothing is set now
                assert _health(daemon) == "degraded"

                prom.start()
                good = await daemon.tick()
                assert not good.degraded, good.errors
                assert good.floor == {"cpu4": 0, "gpu1": 2}
                assert _health(daemon) == "ok"

                for mode in ("garbage", "error"):
                    prom.mode = mode
                    bad = await daemon.tick()
                    assert bad.degraded and bad.plan.held, mode
                    assert bad.floor == {"cpu4": 0, "gpu1": 2}, mode  # re-asserted unchanged
                    assert not bad.drained, mode
                prom.mode = "ok"

                gcs["address"] = f"127.0.0.1:{free_port()}"
                no_gcs = await daemon.tick()
                assert no_gcs.degraded and no_gcs.plan.held
                assert any("GCS" in e for e in no_gcs.errors), no_gcs.errors
                gcs["address"] = address

                prom.stop()  # gone again mid-run
                gone = await daemon.tick()
                assert gone.degraded and gone.plan.held

                prom.start()
                recovered = await daemon.tick()
                assert not recovered.degraded, recovered.errors
                assert recovered.floor == {"cpu4": 0, "gpu1": 2}
                assert _health(daemon) == "ok"
                assert [o.tick for o in (down, good, bad, no_gcs, gone, recovered)] == [1, 2, 4, 5, 6, 7]
            finally:
                prom.stop()
                actuator.release()
