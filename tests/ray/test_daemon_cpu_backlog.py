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
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.adapters.state_store import StateStore
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.app.plugins import load_policy
from autoscaler.core.config import parse_config
from autoscaler.core.queries import QueryResult, make_sample
from autoscaler.daemon import Daemon
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, free_port
from autoscaler.ports import ClusterState
from tests.ray.fake_prometheus import FakePrometheus

pytestmark = [pytest.mark.integration, pytest.mark.ray]

CONFIG = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2, min: 0, max: 2, launch_seconds: 5}
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.0, min: 0, max: 2, launch_seconds: 5}
stages:
  - {name: decode, operator: "decode", resources: {CPU: 1}, prior_rate: {cpu4: 1.0, gpu1: 1.0}}
targets: {drain_seconds: 60, headroom: 0.2}
bounds: {max_step_down: 2, scale_down_window_seconds: 3}
daemon: {interval_seconds: 1, drain_share_per_tick: 0.5, observe_timeout_seconds: 10,
         act_timeout_seconds: 15, http_port: null}
ray: {floor_form: resource, use_coordinator: false}
"""

FAULTS_CONFIG = CONFIG.replace(
    '{name: decode, operator: "decode", resources: {CPU: 1}, prior_rate: {cpu4: 1.0, gpu1: 1.0}}',
    '{name: infer, operator: "Infer", resources: {CPU: 1, GPU: 1}, prior_rate: {gpu1: 1.0}}',
)
"""The GPU stage the stand-in Prometheus reports (:mod:`tests.ray.fake_prometheus`)."""

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


async def _until(
    read: Callable[[], ClusterState], check: Callable[[ClusterState], bool], what: str, timeout_s: float = 90
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


async def test_cpu_backlog_adds_cpu_nodes_and_no_gpu_node(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    cfg = parse_config(CONFIG)
    address = daemon_cluster.address
    actuator = RayActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
    )
    # (1 + 300 / 60) × 1.2 ≈ 7.2 decode slots at 1 block/s each: two cpu4 nodes.
    source = CpuStageSource(backlog=300.0)

    def read() -> ClusterState:
        return read_cluster_state(address)

    seen_gpu1: list[int] = []

    def watch(state: ClusterState) -> None:
        seen_gpu1.append(state.node_counts().get("gpu1", 0) + state.pending_counts().get("gpu1", 0))

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

            def two_cpu4(s: ClusterState) -> bool:
                watch(s)
                return s.node_counts() == {"cpu4": 2} and not s.pending_counts()

            state = await _until(read, two_cpu4, "two cpu4 nodes")
            assert daemon.floor == {"cpu4": 2, "gpu1": 0}
            assert all(n.node_type == "cpu4" for n in state.workers)
            assert daemon.last is not None
            decode_change = next(c for c in daemon.last.plan.changes if c.shape == "cpu4")
            assert "decode" in decode_change.reason

            source.backlog = 0.0

            def no_workers(s: ClusterState) -> bool:
                watch(s)
                return not s.workers

            await _until(read, no_workers, "back to the minimum (no workers)")
            assert daemon.floor == {"cpu4": 0, "gpu1": 0}
            assert not any(seen_gpu1), "the daemon launched gpu1 nodes for a CPU stage"
            assert daemon.last is not None and not daemon.last.degraded
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, timeout=30)


def _health(daemon: Daemon) -> str:
    return daemon.telemetry.state


async def test_faults_against_real_servers_hold_then_recover_on_the_next_good_tick(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    """Ticks driven one by one; the last test of the module (it leaves gpu1 nodes booting)."""
    prom = FakePrometheus(backlog=100.0, rate=1.0, slots=1.0)  # not started: its port refuses connections
    cfg = parse_config(
        FAULTS_CONFIG.replace("daemon: {", f"prometheus: {{url: '{prom.url}', retries: 0}}\ndaemon: {{")
    )
    address = daemon_cluster.address
    actuator = RayActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
    )
    gcs = {"address": address}

    def read() -> ClusterState:
        return read_cluster_state(gcs["address"], timeout_s=3)

    async with PrometheusSource(config=cfg.prometheus) as source:
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
