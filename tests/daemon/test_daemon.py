"""The daemon with fake adapters: scale up, persist, restart without re-launching, faults, drains, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from autoscaler.adapters.ray.cluster_state import ClusterStateError
from autoscaler.adapters.state_store import StateStore
from autoscaler.app.plugins import load_policy
from autoscaler.daemon import Daemon, DryRunActuator, choose_drains
from autoscaler.ports import DrainResult
from autoscaler.types import Plan, ShapeChange
from tests.support.daemon_fakes import (
    FakeActuator,
    FakeCluster,
    FakeSource,
    make_config,
    make_daemon,
    telemetry_of,
)


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs."""


def daemon(
    store: StateStore,
    source: FakeSource,
    cluster: FakeCluster,
    actuator: FakeActuator,
    **daemon_cfg: object,
) -> Daemon:
    return make_daemon(store, source, cluster, actuator, config=make_config(**daemon_cfg))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


async def test_scales_up_persists_and_restarts_without_relaunching(store: StateStore) -> None:
    cluster = FakeCluster()
    source = FakeSource(backlog=100.0)
    first = FakeActuator(cluster)
    d = daemon(store, source, cluster, first)
    assert await d.start() == []
    out = await d.tick()
    assert out.errors == () and out.floor == {"cpu4": 0, "gpu1": 4}
    assert cluster.count("gpu1") == 4 and cluster.count("cpu4") == 0
    out = await d.tick()
    assert out.floor == {"cpu4": 0, "gpu1": 4} and first.launched == 4
    assert telemetry_of(d).health().ready

    stored = store.load()
    assert stored is not None and stored.tick == 2 and stored.plan.targets() == {"cpu4": 0, "gpu1": 4}
    assert store.pending_actions() == ()

    # A new process on the same state file: same floor re-asserted, nothing new launched.
    second = FakeActuator(cluster)
    again = daemon(store, source, cluster, second)
    notes = await again.start()
    assert any("re-asserted" in n for n in notes)
    assert second.floors == [{"cpu4": 0, "gpu1": 4}]
    assert again.tick_number == 2
    out = await again.tick()
    assert out.tick == 3 and out.floor == {"cpu4": 0, "gpu1": 4}
    assert second.launched == 0 and cluster.count("gpu1") == 4


async def test_crash_after_write_ahead_reasserts_the_floor_once(store: StateStore) -> None:
    """kill -9 between the commit and the floor call: the restart sends the intended floor, no duplicates."""
    cluster = FakeCluster()
    source = FakeSource(backlog=100.0)
    crashing = FakeActuator(cluster)
    crashing.fail = Crash()  # type: ignore[assignment]
    d = daemon(store, source, cluster, crashing)
    await d.start()
    with pytest.raises(Crash):
        await d.tick()
    assert cluster.count("gpu1") == 0
    [pending] = store.pending_actions()
    assert pending.kind == "floor" and pending.status == "intended"

    fresh = FakeActuator(cluster)
    again = daemon(store, source, cluster, fresh)
    await again.start()
    assert fresh.floors == [{"cpu4": 0, "gpu1": 4}] and fresh.launched == 4
    assert store.pending_actions() == ()
    await again.tick()
    await again.tick()
    assert fresh.launched == 4 and cluster.count("gpu1") == 4


@pytest.mark.parametrize("second_node", ["busy", "idle"])
async def test_restart_reconciles_drains_left_in_flight(store: StateStore, second_node: str) -> None:
    cluster = FakeCluster()
    source = FakeSource(backlog=100.0)
    act = FakeActuator(cluster)
    d = daemon(store, source, cluster, act)
    await d.start()
    await d.tick()
    assert cluster.count("gpu1") == 4

    source.backlog, source.rate, source.slots = 0.0, 0.0, 0.0
    act.drain = lambda node_id: (_ for _ in ()).throw(Crash())  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await d.tick()
    pending = [a for a in store.pending_actions() if a.kind == "drain"]
    assert len(pending) == 2  # share 0.5 of 4 nodes
    gone, other = (a.node_id for a in pending)
    assert gone is not None and other is not None
    cluster.remove(gone)  # Ray had drained it before the crash
    if second_node == "busy":
        cluster.nodes = [
            replace(n, status="RUNNING", idle_seconds=None) if n.node_id == other else n
            for n in cluster.nodes
        ]

    fresh = FakeActuator(cluster)
    again = daemon(store, source, cluster, fresh)
    notes = await again.start()
    assert fresh.floors == [{"cpu4": 0, "gpu1": 0}]  # the floor first, then any drain
    assert store.action(f"drain:{gone}").status == "confirmed"  # type: ignore[union-attr]
    if second_node == "busy":
        assert fresh.drains == []
        assert store.action(f"drain:{other}").status == "abandoned"  # type: ignore[union-attr]
        assert any("abandoned" in n for n in notes)
    else:
        assert fresh.drains == [other]
        assert store.action(f"drain:{other}").status == "sent"  # type: ignore[union-attr]
        await again.tick()  # the node is gone now: confirmed
        assert store.action(f"drain:{other}").status == "confirmed"  # type: ignore[union-attr]
    assert all(a.node_id not in (gone, other) for a in store.pending_actions())


FAULTS = ["metrics-down", "metrics-slow", "metrics-garbage", "gcs-down", "gcs-slow", "actuator-raises"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_faults_hold_degrade_and_recover(store: StateStore, fault: str) -> None:
    cluster = FakeCluster()
    source = FakeSource(backlog=100.0)
    act = FakeActuator(cluster)
    d = daemon(store, source, cluster, act)
    await d.start()
    await d.tick()
    assert cluster.count("gpu1") == 4 and telemetry_of(d).state == "ok"

    # The backlog is gone, which would scale down — but a fault hides or breaks something.
    source.backlog, source.rate, source.slots = 0.0, 0.0, 0.0
    if fault == "metrics-down":
        source.fail = ConnectionError("connection refused")
    elif fault == "metrics-slow":
        source.slow_s = 2.0
    elif fault == "metrics-garbage":
        source.garbage = True
    elif fault == "gcs-down":
        cluster.fail = ClusterStateError("GCS at 10.0.0.1:6379 unreachable")
    elif fault == "gcs-slow":
        cluster.slow_s = 1.0  # observe_timeout_seconds is 0.5
    else:
        act.fail = RuntimeError("drain_node RPC failed")
    drains_before = list(act.drains)
    for _ in range(2):
        out = await d.tick()
        assert out.degraded and out.errors
        assert cluster.count("gpu1") == 4 and act.drains == drains_before
        assert out.drained == ()
    health = telemetry_of(d).health()
    assert str(telemetry_of(d).state) == "degraded" and not health.ready and health.reasons
    if fault != "actuator-raises":
        assert out.plan.held
        # The floor last set stays asserted while held.
        assert out.floor == {"cpu4": 0, "gpu1": 4}

    source.fail, source.slow_s, source.garbage = None, 0.0, False
    cluster.fail, cluster.slow_s, act.fail = None, 0.0, None
    out = await d.tick()
    assert not out.degraded and out.floor == {"cpu4": 0, "gpu1": 0}
    assert len(out.drained) == 2 and cluster.count("gpu1") == 2
    assert telemetry_of(d).state == "ok" and telemetry_of(d).health().ready


async def test_drains_only_idle_nodes_longest_idle_first_and_at_most_the_share(store: StateStore) -> None:
    cluster = FakeCluster()
    short = cluster.add("gpu1", idle_seconds=5.0)
    busy1 = cluster.add("gpu1", busy=True)
    longest = cluster.add("gpu1", idle_seconds=50.0)
    busy2 = cluster.add("gpu1", busy=True)
    source = FakeSource(backlog=0.0, rate=0.0, slots=0.0)
    act = FakeActuator(cluster)
    d = daemon(store, source, cluster, act)
    await d.start()
    out = await d.tick()
    assert out.drained == (longest.node_id, short.node_id)  # share 0.5 of 4 = 2, longest idle first
    assert act.log[0] == "floor {'cpu4': 0, 'gpu1': 0}"  # lowered BEFORE the drains
    assert act.log[1:] == [f"drain {longest.node_id}", f"drain {short.node_id}"]
    for _ in range(3):
        await d.tick()
    assert busy1.node_id not in act.drains and busy2.node_id not in act.drains
    assert {n.node_id for n in cluster.nodes} == {busy1.node_id, busy2.node_id}


class AnsweringActuator(FakeActuator):
    """Answers each node's drain as told: a result, an exception, or a hang longer than the act timeout."""

    def __init__(self, cluster: FakeCluster, answers: dict[str, DrainResult | Exception | float]) -> None:
        super().__init__(cluster)
        self.answers = answers

    def drain(self, node_id: str) -> DrainResult:
        answer = self.answers[node_id]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, float):
            time.sleep(answer)
            return DrainResult(node_id, True)
        return answer


async def test_only_a_drain_ray_refused_is_reported_refused(store: StateStore) -> None:
    cluster = FakeCluster()
    refused = cluster.add("gpu1", idle_seconds=30.0)
    failed = cluster.add("gpu1", idle_seconds=20.0)
    hangs = cluster.add("gpu1", idle_seconds=10.0)
    act = AnsweringActuator(
        cluster,
        {
            refused.node_id: DrainResult(refused.node_id, False, "no longer idle"),
            failed.node_id: RuntimeError("drain_node RPC failed"),
            hangs.node_id: 2.0,  # act_timeout_seconds is 0.5
        },
    )
    d = daemon(store, FakeSource(backlog=0.0, rate=0.0, slots=0.0), cluster, act, drain_share_per_tick=1.0)
    await d.start()
    out = await d.tick()
    assert out.refused == (refused.node_id,)
    assert out.drained == ()
    assert out.degraded and len(out.errors) == 2, out.errors
    assert "failed" in out.errors[0] and "timed out" in out.errors[1]
    assert store.action(f"drain:{refused.node_id}").status == "failed"  # type: ignore[union-attr]
    assert store.action(f"drain:{hangs.node_id}").status == "sent"  # type: ignore[union-attr]


def test_choose_drains_caps_at_the_share_and_never_picks_busy_or_draining_nodes() -> None:
    cluster = FakeCluster()
    idle = [cluster.add("cpu4", idle_seconds=float(i)) for i in range(8)]
    cluster.add("cpu4", busy=True)
    cluster.nodes.append(replace(idle[7], node_id="f" * 56, status="DRAINING"))
    state = cluster()
    plan = Plan(time=0.0, policy="p", changes=(ShapeChange("cpu4", 10, 0, "r"),))
    chosen = choose_drains(plan, state, share=0.25, exclude=[idle[7].node_id])
    assert [n.node_id for n in chosen] == [idle[6].node_id, idle[5].node_id]  # max(1, 0.25 * 10) = 2
    one = choose_drains(plan, state, share=0.01)
    assert len(one) == 1  # at least one
    up = Plan(time=0.0, policy="p", changes=(ShapeChange("cpu4", 10, 10, "r"),))
    assert choose_drains(up, state, share=1.0) == []


async def test_sigterm_finishes_the_current_tick_then_exits(store: StateStore) -> None:
    cluster = FakeCluster()
    source = FakeSource(backlog=100.0)
    source.gate = asyncio.Event()
    act = FakeActuator(cluster)
    d = daemon(store, source, cluster, act)
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(source.entered.wait(), timeout=5)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.05)
    assert not task.done()  # the tick is still waiting for its metrics
    source.gate.set()
    await asyncio.wait_for(task, timeout=5)
    stored = store.load()
    assert stored is not None and stored.tick == 1 and source.calls == 1
    assert cluster.count("gpu1") == 4  # the tick acted in full
    assert telemetry_of(d).state == "stopping"
    # Nothing was released: the floor stays for the next start.
    assert act.floors == [{"cpu4": 0, "gpu1": 4}]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_runs_at_one_second_ticks(store: StateStore) -> None:
    cluster = FakeCluster()
    d = daemon(store, FakeSource(backlog=100.0), cluster, FakeActuator(cluster))
    started = time.monotonic()
    await d.run(max_ticks=3, install_signal_handlers=False)
    elapsed = time.monotonic() - started
    assert d.tick_number == 3 and 1.8 <= elapsed < 3.5


async def test_dry_run_actuator_changes_nothing(store: StateStore) -> None:
    cluster = FakeCluster()
    cluster.add("gpu1")
    dry = DryRunActuator()
    cfg = make_config()
    d = Daemon(
        config=cfg,
        policy=load_policy(cfg.policy.name),
        source=FakeSource(backlog=0.0, rate=0.0, slots=0.0),
        cluster=cluster,
        actuator=dry,
        store=store,
    )  # no telemetry: the daemon records nothing and still runs
    await d.start()
    out = await d.tick()
    assert dry.floors == [{"cpu4": 0, "gpu1": 0}] and len(dry.drains) == 1
    assert out.drained == () and cluster.count("gpu1") == 1


# ------------------------------------------------------------------------------------------ the CLI


def test_run_refuses_a_bad_config_with_its_path(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from autoscaler.app.cli import EXIT_CONFIG, app

    bad = tmp_path / "bad.yaml"
    bad.write_text("shapes: []\ndaemon: {interval_seconds: -1}\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad), "--once"])
    assert result.exit_code == EXIT_CONFIG
    assert "daemon.interval_seconds" in result.output and "shapes" in result.output


def test_run_says_what_to_fix_when_the_gcs_is_unreachable(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from autoscaler.app.cli import EXIT_SOURCE, app
    from autoscaler.devcluster.cluster import free_port
    from tests.support.daemon_fakes import CONFIG_TEXT

    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG_TEXT)
    address = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["run", "--config", str(cfg), "--ray-address", address, "--once"])
    assert result.exit_code == EXIT_SOURCE
    assert address in result.output and "--ray-address" in result.output
