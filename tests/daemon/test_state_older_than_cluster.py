"""A state store older than the cluster (a lost ``-wal``, a restored copy, a replaced file) is said so at
start-up — a warning naming what was found, a degraded reason for a while — and what it finds is adopted:
raytide's floor in the cluster is re-asserted, not the store's older one, and raytide's own placeholders are
kept, not removed as orphans. A store that knows what the cluster shows says nothing."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import Config, parse_config
from autoscaler.core.warm_pool import standby_name
from autoscaler.daemon import Daemon, DryRunActuator
from autoscaler.daemon.reconcile_store_age import DEGRADED_SECONDS, cluster_floor
from autoscaler.ports import ClusterState, DemandBundle, Placeholder, node_type_resource
from autoscaler.types import frozen_map
from tests.support.daemon_fakes import (
    CONFIG_TEXT,
    FakeActuator,
    FakeCluster,
    FakeSource,
    ManualClock,
    make_config,
    make_daemon,
    telemetry_of,
)

OLDER = "state store older than the cluster"


@dataclass
class FloorCluster(FakeCluster):
    """A GCS view that also shows the floor last set, as Ray's cluster status does (marker bundles)."""

    floor: dict[str, int] = field(default_factory=dict)

    def __call__(self) -> ClusterState:
        state = super().__call__()
        demand = tuple(
            DemandBundle(frozen_map({node_type_resource(shape): 1.0}), n, "floor")
            for shape, n in sorted(self.floor.items())
            if n > 0
        )
        return replace(state, demand=demand)


class FloorActuator(FakeActuator):
    """Sets the floor the cluster then shows."""

    def __init__(self, cluster: FloorCluster) -> None:
        super().__init__(cluster)
        self.floor_cluster = cluster

    def set_target(self, counts: object) -> object:
        out = super().set_target(counts)  # type: ignore[arg-type]
        self.floor_cluster.floor = dict(self.floors[-1])
        return out


class FakeWarmPool:
    """Placeholders take an idle node of their shape at the next listing; removal frees the node."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.groups: dict[str, Placeholder] = {}
        self.log: list[str] = []
        self.lock = threading.Lock()

    def list(self) -> list[Placeholder]:
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
                        self._busy(node.node_id, True)
                        held.add(node.node_id)
                        self.groups[name] = replace(p, state="CREATED", node_id=node.node_id)
            return sorted(self.groups.values(), key=lambda p: p.name)

    def _busy(self, node_id: str, busy: bool) -> None:
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
            self.groups[name] = Placeholder(name, shape, f"{len(self.log) + 1:036x}", "PENDING", None)
        self.log.append(f"create {name}")
        return True

    def remove(self, name: str, pg_id: str | None = None) -> bool:
        with self.lock:
            p = self.groups.pop(name, None)
        if p is None:
            return False
        if p.node_id:
            self._busy(p.node_id, False)
        self.log.append(f"remove {name}")
        return True


def pool_config() -> Config:
    return parse_config(
        CONFIG_TEXT
        + "warm_pool: {enabled: true, min: {gpu1: 2}, refill_delay_seconds: 0, claim_waiting: false}\n"
    )


def copy_of(store: StateStore, to: Path) -> Path:
    """The store as it is now, as a separate file (what a lost -wal or an old backup leaves)."""
    store.checkpoint()
    shutil.copy(store.path, to)
    return to


def degraded_reasons(d: Daemon) -> list[str]:
    return [r for r in telemetry_of(d).health().reasons if OLDER in r]


async def test_a_floor_the_store_never_recorded_is_adopted_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = FloorCluster()
    source = FakeSource(backlog=100.0)
    with StateStore(tmp_path / "state.db") as store:
        d = make_daemon(store, source, cluster, FloorActuator(cluster))
        await d.start()
        await d.tick()
        assert cluster.floor == {"cpu4": 0, "gpu1": 4}
        old = copy_of(store, tmp_path / "old.db")
        # The backlog drains: the cluster's floor moves on, past what the old copy knows.
        source.backlog = 1.0
        for _ in range(3):
            await d.tick()
    newer = dict(cluster.floor)
    assert newer != {"cpu4": 0, "gpu1": 4}

    # The old copy comes back (a lost -wal, a restored backup): the floor in the cluster is adopted.
    monotonic = ManualClock(100.0)
    with StateStore(old) as store:
        actuator = FloorActuator(cluster)
        restarted = make_daemon(store, source, cluster, actuator, monotonic=monotonic)
        with caplog.at_level(logging.WARNING):
            notes = await restarted.start()
        assert actuator.floors == [newer], "the cluster's floor re-asserted, not the store's older one"
        assert restarted.floor == newer
        assert any(f"floor {newer} re-asserted" in n for n in notes)
        warning = next(r.getMessage() for r in caplog.records if "older than the cluster" in r.getMessage())
        assert str(cluster_floor(cluster())) in warning and "adopted the floor" in warning
        # Degraded, with the reason, for a while; then healthy again.
        out = await restarted.tick()
        assert any(OLDER in e and "floor in the cluster" in e for e in out.errors)
        assert degraded_reasons(restarted)
        monotonic.now += DEGRADED_SECONDS
        out = await restarted.tick()
        assert not [e for e in out.errors if OLDER in e]
        assert not degraded_reasons(restarted)


async def test_a_rolled_back_store_keeps_its_own_placeholders_and_removes_only_surplus_orphans(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = FakeCluster()
    cluster.add("gpu1")
    cluster.add("gpu1")
    pool = FakeWarmPool(cluster)
    store = StateStore(tmp_path / "state.db")
    empty = copy_of(store, tmp_path / "empty.db")  # before anything happened: a store rolled back to new
    d = make_daemon(store, FakeSource(), cluster, FakeActuator(cluster), config=pool_config(), warm_pool=pool)
    await d.start()
    for _ in range(3):
        await d.tick()
    mine = {m.name for m in d.pool}
    assert len(mine) == 2 and all(m.ready for m in d.pool)
    store.close()
    pool.create(standby_name("cpu4", 40), "cpu4")  # a shape the pool keeps none of: surplus
    created = len([e for e in pool.log if e.startswith("create")])

    with StateStore(empty) as rolled_back:
        restarted = make_daemon(
            rolled_back, FakeSource(), cluster, FakeActuator(cluster), config=pool_config(), warm_pool=pool
        )
        with caplog.at_level(logging.WARNING):
            notes = await restarted.start()
        # Its own placeholders are adopted, not removed as orphans; the cpu4 one is surplus and goes.
        assert {m.name for m in restarted.pool} == mine
        assert not [e for e in pool.log if e.startswith("remove") and e.split()[1] in mine]
        assert f"remove {standby_name('cpu4', 40)}" in pool.log
        assert any("orphan" in n for n in notes)
        warning = next(r.getMessage() for r in caplog.records if "older than the cluster" in r.getMessage())
        assert "placeholders the store does not know" in warning
        assert all(name in warning for name in mine) and "above its counter 1" in warning
        out = await restarted.tick()
        assert any(OLDER in e and "placeholders" in e for e in out.errors)
        # The pool is full already: nothing is created, and new names never reuse one it found.
        assert len([e for e in pool.log if e.startswith("create")]) == created
        assert {m.name for m in restarted.pool} == mine
        assert restarted.pool and all(m.ready for m in restarted.pool)


async def test_a_lost_log_is_said_even_when_the_cluster_shows_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = _lost_log_file(tmp_path / "state.db")
    cluster = FakeCluster()
    with StateStore(db) as store:
        d = make_daemon(store, FakeSource(), cluster, FakeActuator(cluster))
        with caplog.at_level(logging.WARNING):
            await d.start()
        messages = [r.getMessage() for r in caplog.records]
        assert any("write-ahead log (the -wal file) is gone" in m for m in messages)
        out = await d.tick()
        assert any(OLDER in e and "write-ahead log is gone" in e for e in out.errors)


async def test_a_store_that_knows_what_the_cluster_shows_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = FloorCluster()
    cluster.add("gpu1")
    pool = FakeWarmPool(cluster)
    with StateStore(tmp_path / "state.db") as store:
        d = make_daemon(
            store,
            FakeSource(backlog=3.0),
            cluster,
            FloorActuator(cluster),
            config=pool_config(),
            warm_pool=pool,
        )
        await d.start()
        for _ in range(3):
            await d.tick()
        assert cluster.floor and d.pool
        members = {m.name for m in d.pool}
        with caplog.at_level(logging.WARNING):
            again = make_daemon(
                store,
                FakeSource(backlog=3.0),
                cluster,
                FloorActuator(cluster),
                config=pool_config(),
                warm_pool=pool,
            )
            await again.start()
        assert not [r for r in caplog.records if "older than the cluster" in r.getMessage()]
        assert {m.name for m in again.pool} == members
        out = await again.tick()
        assert not [e for e in out.errors if OLDER in e]


async def test_a_dry_run_compares_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cluster = FloorCluster(floor={"gpu1": 3})  # a live raytide's floor; the dry run's scratch store is new
    with StateStore(tmp_path / "state.db") as store:
        d = make_daemon(store, FakeSource(), cluster, DryRunActuator(), config=make_config())
        with caplog.at_level(logging.WARNING):
            await d.start()
        assert not [r for r in caplog.records if "older than the cluster" in r.getMessage()]
        out = await d.tick()
        assert not [e for e in out.errors if OLDER in e]


async def test_an_unrecorded_draining_node_is_named_when_the_store_is_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = FloorCluster(floor={"gpu1": 2})
    node = cluster.add("gpu1")
    cluster.nodes = [replace(node, status="DRAINING", idle_seconds=None)]
    with StateStore(tmp_path / "state.db") as store:
        d = make_daemon(store, FakeSource(), cluster, FloorActuator(cluster))
        with caplog.at_level(logging.INFO):
            await d.start()
    assert any(
        "draining with no drain recorded" in r.getMessage() and node.node_id in r.getMessage()
        for r in caplog.records
    )


def _lost_log_file(db: Path) -> Path:
    """A state file that says a run is in progress, by a process that is gone, and has no -wal file."""
    StateStore(db).close()
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "INSERT INTO run (id, state, pid, process, started, changed) VALUES (1, 'running', ?, 'x', 1, 1)",
            (_dead_pid(),),
        )
    con.close()
    assert not Path(f"{db}-wal").exists()
    return db


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
