"""The warm pool on a real local autoscaling cluster whose node provider takes 15 s to boot a node.

The metrics are a fake (an idle GPU stage, so the plan itself wants no node); the GCS, the placeholders,
the floor and the autoscaler are real. Behaviour checked, not timing: waiting GPU work runs on the standby
node (no new node needed), the pool refills with a new node, a restart adopts the pool and removes orphan
placeholders, a claim interrupted by a crash is finished rather than repeated, the pool stays within its
budget, and without a pool the same work has to wait for a node that joins after it was submitted.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.adapters.ray.placeholders import RayWarmPool, placeholder_bundle
from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import Config, parse_config
from autoscaler.core.warm_pool import STANDBY_PREFIX
from autoscaler.devcluster.cluster import LocalAutoscalingCluster
from autoscaler.ports import ClusterState
from tests.support.cluster_config import config_text
from tests.support.cluster_daemon import cluster_daemon
from tests.support.daemon_fakes import FakeSource
from tests.support.polling import until

pytestmark = [pytest.mark.integration, pytest.mark.ray]

LAUNCH_DELAY_S = 15.0


@pytest.fixture(scope="module")
def launch_delay_s() -> float:
    return LAUNCH_DELAY_S


def _config(enabled: bool = True) -> Config:
    return parse_config(
        config_text(
            launch_seconds=15,
            shapes={"gpu1": {"max": 3}},
            targets=None,
            daemon={"drain_share_per_tick": None},
            warm_pool={
                "enabled": enabled,
                "min": {"gpu1": 1},
                "budget_per_hour": 1.5,
                "claim_poll_seconds": 0.5,
            },
        )
    )


def _node_of_gpu_task() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _gauge(run: _Run, name: str, **labels: str) -> float:
    value = run.daemon.telemetry.registry.get_sample_value(name, labels)
    assert value is not None, f"{name} {labels} not exported"
    return value


class _Run:
    """A daemon on the cluster, started as a task; ``stop()`` finishes it, ``crash()`` abandons it."""

    def __init__(self, cluster: LocalAutoscalingCluster, store: StateStore, cfg: Config) -> None:
        address = cluster.address
        self.actuator = RayActuator.from_shapes(
            address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
        )
        self.pool = RayWarmPool(self.actuator.ray_driver, {s.name: s.resources for s in cfg.node_shapes()})
        self.source = FakeSource(backlog=0.0, rate=0.0, slots=0.0)
        self.daemon = cluster_daemon(
            cfg,
            cluster=lambda: read_cluster_state(address),
            source=self.source,
            actuator=self.actuator,
            store=store,
            warm_pool=self.pool,
        )
        self.notes: list[str] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.notes = await self.daemon.start()
        self.task = asyncio.create_task(self.daemon.run(install_signal_handlers=False))

    async def stop(self) -> None:
        self.daemon.request_stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=30)

    async def crash(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    def ready(self) -> list[str]:
        return [m.node_id for m in self.daemon.pool if m.node_id]


async def test_standby_serves_waiting_work_refills_and_survives_restarts(
    slow_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    import ray

    address = slow_cluster.address
    cfg = _config()
    budget = cfg.warm_pool.budget_per_hour
    pool_costs: list[float] = []

    def read() -> ClusterState:
        return read_cluster_state(address)

    with StateStore(tmp_path / "state.db") as store:
        run = _Run(slow_cluster, store, cfg)
        await run.start()
        try:
            # The pool fills: a placeholder makes the autoscaler launch a gpu1 node and holds it.
            await until(lambda: len(run.ready()) == 1, "a ready standby gpu1 node", in_thread=False)
            standby = run.ready()[0]
            state = await asyncio.to_thread(read)
            assert state.node(standby).node_type == "gpu1"
            assert state.node(standby).status != "IDLE", "a standby node must not look idle to Ray"
            pool_costs.append(_gauge(run, "raytide_warm_pool_cost_per_hour"))

            # A backlog jump: GPU work waits in Ray; it runs on the standby node, not on a new one.
            driver: Any = ray
            if not ray.is_initialized():
                slow_cluster.connect()
            before = {n.node_id for n in (await asyncio.to_thread(read)).workers}
            ref = driver.remote(num_cpus=1, num_gpus=1)(_node_of_gpu_task).remote()
            ran_on = str(await asyncio.to_thread(ray.get, ref, timeout=LAUNCH_DELAY_S * 4))
            assert ran_on == standby
            assert standby in before
            claims = _gauge(run, "raytide_warm_pool_claims_total", shape="gpu1", trigger="waiting")
            assert claims == 1

            # The pool refills in the background. Ray places the new placeholder on any gpu1 node whose whole
            # capacity is free: a new one, or the claimed node itself once its work is done (the task above
            # has returned), which is cheaper than a launch. Either is right; what must hold is that the
            # claimed work ran first and the pool is full again.
            await until(lambda: len(run.ready()) == 1, "the pool to refill", in_thread=False)
            refilled = run.ready()[0]
            assert (await asyncio.to_thread(read)).node(refilled).node_type == "gpu1"
            pool_costs.append(_gauge(run, "raytide_warm_pool_cost_per_hour"))

            # A crash mid-claim (the intent recorded, the placeholder not yet removed), plus an orphan
            # placeholder nobody owns: the restart finishes the claim and removes the orphan.
            member = run.daemon.pool[0]
            await run.crash()
            store.begin_action(
                f"unwarm:{member.name}",
                kind="unwarm",
                shape=member.shape,
                node_id=member.node_id,
                payload={"name": member.name, "pg_id": member.pg_id, "reason": "claim"},
            )
            orphan = f"{STANDBY_PREFIX}:cpu4:999"
            driver.util.placement_group(
                [placeholder_bundle("cpu4", {"CPU": 4})],
                strategy="STRICT_PACK",
                name=orphan,
                lifetime="detached",
            )
            await until(
                lambda: orphan in {p.name for p in run.pool.list()}, "the orphan to exist", timeout_s=10
            )

            run = _Run(slow_cluster, store, cfg)
            await run.start()
            # Ray removes placement groups asynchronously.
            await until(
                lambda: not {orphan, member.name} & {p.name for p in run.pool.list()},
                "the orphan and the interrupted claim's placeholder to be removed",
                timeout_s=10,
            )
            assert member.name not in {m.name for m in run.daemon.pool}
            assert any("orphan" in n for n in run.notes)
            # The claimed node is not given back to the pool; a new placeholder refills it.
            await until(
                lambda: len(run.ready()) == 1, "the pool to refill after the restart", in_thread=False
            )
            assert run.daemon.pool[0].name != member.name
            state = await asyncio.to_thread(read)
            assert len([p for p in await asyncio.to_thread(run.pool.list)]) == 1
            pool_costs.append(_gauge(run, "raytide_warm_pool_cost_per_hour"))
            assert refilled in {n.node_id for n in state.workers}
        finally:
            await run.stop()
    assert all(c <= budget for c in pool_costs), pool_costs


async def test_without_a_pool_waiting_work_waits_for_a_new_node(
    slow_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    import ray

    address = slow_cluster.address
    with StateStore(tmp_path / "state.db") as store:
        run = _Run(slow_cluster, store, _config(enabled=False))
        # The previous test's pool outlives its daemon (placeholders are detached, by design); remove it.
        for p in await asyncio.to_thread(run.pool.list):
            await asyncio.to_thread(run.pool.remove, p.name, p.pg_id)
        await run.start()
        try:
            # The plan wants no node: the daemon drains the idle ones, then GPU work has nowhere to go.
            await until(lambda: not read_cluster_state(address).workers, "every idle node drained")
            if not ray.is_initialized():
                slow_cluster.connect()
            driver: Any = ray
            ref = driver.remote(num_cpus=1, num_gpus=1)(_node_of_gpu_task).remote()
            ran_on = str(await asyncio.to_thread(ray.get, ref, timeout=LAUNCH_DELAY_S * 6))
            state = await asyncio.to_thread(read_cluster_state, address)
            assert state.node(ran_on).node_type == "gpu1"
            assert not run.daemon.pool
        finally:
            await run.stop()
