"""The daemon's warm pool with fakes: filling, hiding standby nodes from the plan, claiming before launching,
claiming for waiting work on a nudge, restart reconciliation and holding when placeholders can't be read."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import Config, parse_config
from autoscaler.core.policy_api import Policy, PolicyContext, PolicyDecision
from autoscaler.core.warm_pool import standby_name
from autoscaler.daemon import Daemon
from autoscaler.ports import ClusterState, DemandBundle, Placeholder
from autoscaler.types import frozen_map
from tests.support.daemon_fakes import (
    CONFIG_TEXT,
    FakeActuator,
    FakeCluster,
    FakeSource,
    make_daemon,
    telemetry_of,
)

POOL = "warm_pool: {enabled: true, min: {gpu1: 1}, refill_delay_seconds: 0, claim_poll_seconds: 0.05}\n"


def pool_config() -> Config:
    return parse_config(CONFIG_TEXT + POOL)


@dataclass
class PoolCluster(FakeCluster):
    waiting: list[dict[str, float]] = field(default_factory=list)

    def __call__(self) -> ClusterState:
        state = super().__call__()
        demand = tuple(DemandBundle(frozen_map(b), 1, "task_actor") for b in self.waiting)
        return replace(state, demand=demand)


class FakeWarmPool:
    """Placeholders land on an idle node of their shape at the next listing; removal frees the node."""

    def __init__(self, cluster: FakeCluster, log: list[str]) -> None:
        self.cluster = cluster
        self.log = log
        self.groups: dict[str, Placeholder] = {}
        self.fail: Exception | None = None
        self.lock = threading.Lock()
        self.counter = 0

    def list(self) -> list[Placeholder]:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            held = {p.node_id for p in self.groups.values() if p.node_id}
            for name, p in list(self.groups.items()):
                if p.node_id is None:
                    node = next(
                        (
                            n
                            for n in self.cluster.nodes
                            if n.node_type == p.shape and n.status == "IDLE" and n.node_id not in held
                        ),
                        None,
                    )
                    if node is not None:
                        self._set_busy(node.node_id, True)
                        held.add(node.node_id)
                        self.groups[name] = replace(p, state="CREATED", node_id=node.node_id)
            return sorted(self.groups.values(), key=lambda p: p.name)

    def _set_busy(self, node_id: str, busy: bool) -> None:
        with self.cluster.lock:
            self.cluster.nodes = [
                replace(n, status="RUNNING" if busy else "IDLE", idle_seconds=None if busy else 0.0)
                if n.node_id == node_id
                else n
                for n in self.cluster.nodes
            ]

    def create(self, name: str, shape: str) -> bool:
        with self.lock:
            if name in self.groups:
                return False
            self.counter += 1
            self.groups[name] = Placeholder(name, shape, f"{self.counter:036x}", "PENDING", None)
        self.log.append(f"create {name}")
        return True

    def remove(self, name: str, pg_id: str | None = None) -> bool:
        with self.lock:
            p = self.groups.pop(name, None)
        if p is None:
            return False
        if p.node_id:
            self._set_busy(p.node_id, False)
        self.log.append(f"remove {name}")
        return True


@dataclass
class Rig:
    """A daemon with a warm pool, and the fakes around it."""

    daemon: Daemon
    cluster: PoolCluster
    actuator: FakeActuator
    pool: FakeWarmPool
    source: FakeSource
    store: StateStore

    def restarted(self) -> Daemon:
        """A new process on the same state file and cluster."""
        return make_daemon(
            self.store,
            FakeSource(),
            self.cluster,
            self.actuator,
            config=self.daemon.config,
            policy=self.daemon.policy,
            warm_pool=self.pool,
        )


def build(tmp_path: Path, cfg: Config | None = None, policy: Policy | None = None) -> Rig:
    cfg = cfg or pool_config()
    cluster = PoolCluster()
    actuator = FakeActuator(cluster)
    pool = FakeWarmPool(cluster, actuator.log)
    source = FakeSource(backlog=0.0, rate=0.0, slots=0.0)
    store = StateStore(tmp_path / "state.db")
    daemon = make_daemon(store, source, cluster, actuator, config=cfg, policy=policy, warm_pool=pool)
    return Rig(daemon, cluster, actuator, pool, source, store)


async def fill(daemon: Daemon) -> str:
    await daemon.start()
    for _ in range(4):
        await daemon.tick()
    ready = [m for m in daemon.pool if m.node_id]
    assert len(ready) == 1
    assert ready[0].node_id is not None
    return ready[0].node_id


async def test_pool_fills_and_the_plan_never_sees_standby_nodes(tmp_path: Path) -> None:
    rig = build(tmp_path)
    daemon, cluster = rig.daemon, rig.cluster
    standby = await fill(daemon)
    out = await daemon.tick()
    assert out.floor == {"cpu4": 0, "gpu1": 1}  # plan 0 + pool 1
    assert out.snapshot.count("gpu1") == 0
    assert standby not in {n.node_id for n in out.snapshot.nodes}
    assert out.pool is not None and out.pool.targets.counts["gpu1"] == 1
    assert cluster.count("gpu1") == 1 and not out.drained
    reg = telemetry_of(daemon).registry
    assert reg.get_sample_value("raytide_warm_pool_nodes", {"shape": "gpu1", "state": "ready"}) == 1
    assert reg.get_sample_value("raytide_warm_pool_cost_per_hour") == 1.0


async def test_scale_up_claims_standby_before_setting_the_floor(tmp_path: Path) -> None:
    # Room above the plan (gpu1 max 8): the pool is capped by the shape's max minus the plan.
    cfg = parse_config(
        CONFIG_TEXT.replace("price_per_hour: 1.0, min: 0, max: 4", "price_per_hour: 1.0, min: 0, max: 8")
        + POOL
    )
    rig = build(tmp_path, cfg)
    daemon, actuator, source = rig.daemon, rig.actuator, rig.source
    standby = await fill(daemon)
    source.backlog, source.rate, source.slots = 100.0, 1.0, 1.0
    actuator.log.clear()
    out = await daemon.tick()
    assert out.plan.target("gpu1") >= 2
    assert out.claimed == (standby_name("gpu1", 1),)
    assert actuator.log[0] == f"remove {standby_name('gpu1', 1)}"  # the claim comes before the floor
    assert out.pool is not None and out.pool.cold == {"gpu1": out.plan.target("gpu1") - 1}
    reg = telemetry_of(daemon).registry
    assert reg.get_sample_value("raytide_warm_pool_claims_total", {"shape": "gpu1", "trigger": "plan"}) == 1
    assert reg.get_sample_value("raytide_warm_pool_misses_total", {"shape": "gpu1"}) == out.pool.cold["gpu1"]
    # The claimed node is now the plan's capacity, and the pool refills with a new placeholder.
    out = await daemon.tick()
    assert standby in {n.node_id for n in out.snapshot.nodes}
    assert any(m.name != standby_name("gpu1", 1) for m in daemon.pool)


async def test_waiting_work_claims_a_standby_on_a_nudge(tmp_path: Path) -> None:
    rig = build(tmp_path)
    daemon, cluster, actuator = rig.daemon, rig.cluster, rig.actuator
    standby = await fill(daemon)
    run = asyncio.create_task(daemon.run(install_signal_handlers=False))
    try:
        cluster.waiting = [{"CPU": 1.0, "GPU": 1.0}]
        daemon.nudge()
        reg = telemetry_of(daemon).registry

        def claims() -> float | None:
            return reg.get_sample_value(
                "raytide_warm_pool_claims_total", {"shape": "gpu1", "trigger": "waiting"}
            )

        # The removal is logged when it starts (off the event loop) and counted once it has returned.
        for _ in range(500):
            if claims() is not None:
                break
            await asyncio.sleep(0.02)
        assert f"remove {standby_name('gpu1', 1)}" in actuator.log
        cluster.waiting = []
        assert standby not in {m.node_id for m in daemon.pool}
        assert claims() == 1
        assert reg.get_sample_value("raytide_warm_pool_claim_latency_seconds_count") == 1
    finally:
        daemon.request_stop()
        await asyncio.wait_for(run, timeout=10)


async def test_restart_adopts_the_pool_finishes_interrupted_claims_and_removes_orphans(
    tmp_path: Path,
) -> None:
    rig = build(tmp_path)
    daemon, pool, store = rig.daemon, rig.pool, rig.store
    await fill(daemon)
    mine = daemon.pool[0]
    # Another placeholder of ours, adopted after a restart; one with an interrupted claim; one orphan.
    store.begin_action(
        f"warm:{standby_name('gpu1', 7)}", kind="warm", payload={"name": standby_name("gpu1", 7)}
    )
    pool.create(standby_name("gpu1", 7), "gpu1")
    pool.create(standby_name("cpu4", 99), "cpu4")
    restarted = rig.restarted()
    notes = await restarted.start()
    names = {m.name for m in restarted.pool}
    assert names == {mine.name, standby_name("gpu1", 7)}
    assert standby_name("cpu4", 99) not in {p.name for p in pool.list()}
    assert any("orphan" in n for n in notes)
    # A claim that was recorded but not done at the crash is finished, not repeated and not adopted.
    store.begin_action(
        f"unwarm:{mine.name}",
        kind="unwarm",
        payload={"name": mine.name, "pg_id": mine.pg_id, "reason": "claim"},
    )
    again = rig.restarted()
    await again.start()
    assert mine.name not in {m.name for m in again.pool}
    assert mine.name not in {p.name for p in pool.list()}
    assert not [a for a in store.pending_actions() if a.kind in ("warm", "unwarm")]
    # New placeholders never reuse a name.
    out = await again.tick()
    assert out.pool is not None
    assert all(m.serial > 7 for m in out.pool.create)


async def test_unreadable_placeholders_hold_the_cluster(tmp_path: Path) -> None:
    rig = build(tmp_path)
    daemon, pool, source = rig.daemon, rig.pool, rig.source
    await fill(daemon)
    pool.fail = RuntimeError("GCS placement-group table unavailable")
    source.backlog, source.rate, source.slots = 100.0, 1.0, 1.0
    out = await daemon.tick()
    assert out.plan.held and out.degraded
    assert any("warm pool" in e for e in out.errors)
    assert out.claimed == ()


async def test_policy_override_sets_the_pool_within_its_caps(tmp_path: Path) -> None:
    class Wants3:
        name = "wants3"

        def decide(self, ctx: PolicyContext) -> PolicyDecision:
            return PolicyDecision(target_counts={"cpu4": 0, "gpu1": 0}, warm_pool={"gpu1": 9})

    cfg = parse_config(CONFIG_TEXT + POOL.replace("min: {gpu1: 1}", "max: {gpu1: 3}"))
    daemon = build(tmp_path, cfg, policy=Wants3()).daemon
    await daemon.start()
    out = await daemon.tick()
    assert out.pool is not None and out.pool.targets.counts["gpu1"] == 3
    assert "policy" in out.pool.targets.reasons["gpu1"]


@pytest.mark.parametrize("enabled", [False])
async def test_disabled_pool_touches_no_placeholder(tmp_path: Path, enabled: bool) -> None:
    rig = build(tmp_path, parse_config(CONFIG_TEXT))
    daemon, pool = rig.daemon, rig.pool
    await daemon.start()
    out = await daemon.tick()
    assert out.pool is None and not pool.groups and not daemon.pool


async def test_an_active_node_is_never_drained_because_a_standby_node_exists(tmp_path: Path) -> None:
    class OnceFilledOne:
        """Nothing until the pool is filled (four ticks), then one gpu1 node."""

        name = "one"

        def __init__(self) -> None:
            self.calls = 0

        def decide(self, ctx: PolicyContext) -> PolicyDecision:
            self.calls += 1
            return PolicyDecision(target_counts={"cpu4": 0, "gpu1": 1 if self.calls > 4 else 0})

    rig = build(tmp_path, policy=OnceFilledOne())
    daemon, cluster, actuator = rig.daemon, rig.cluster, rig.actuator
    await fill(daemon)
    out = await daemon.tick()
    assert len(out.claimed) == 1  # the standby node becomes the plan's one node, idle for now
    for _ in range(4):  # the pool refills with a second node
        out = await daemon.tick()
        assert not out.drained, "an idle active node was drained because a standby node was counted"
    assert [m for m in daemon.pool if m.node_id]
    assert cluster.count("gpu1") == 2 and not actuator.drains
