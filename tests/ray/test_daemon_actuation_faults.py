"""Actuation faults against a real local autoscaling cluster (v1 and v2): the ticking daemon with a fake
metrics source (a backlog on one stage, as in ``test_daemon_cluster.py``), the real GCS view, floor and
drains, and each fault made real at the moment it matters.

- **A floor the autoscaler cannot fully honour**: raytide may plan three gpu1 nodes, the cluster's node
  type allows two. Autoscaler v1 launches two; v2 treats the floor as one constraint and, since it cannot
  meet all of it, launches none (seen on 2.60; its cluster status does not say so). Either way the daemon
  keeps asking for three, never gets a third, keeps ticking, reports target 3 against what runs, and once
  the shape has been short with nothing launching for ``floor_grace_seconds`` (3 s here) it is degraded
  with that shortfall as the reason (``autoscaler/core/floor_watch.py``).
- **A drain the GCS refuses**: right before the daemon's first drain reaches the GCS, a task is started on
  that node, so the raylet refuses ``IDLE_TERMINATION``. The refusal is recorded (not an error), the busy
  node stays, nothing launches, and once the task ends a later tick drains the node.
- **A node vanishing mid-drain**: Ray marks an idle node dead in the same call that accepts its drain
  (seen on 2.60, v1 and v2), so an accepted drain has no window in which the node could vanish. The drain
  that is really in flight is one the GCS has not answered: the first node's raylet is frozen (SIGSTOP)
  just before its drain, the drain times out (the daemon is degraded for that tick and keeps the drain as
  sent, outcome unknown), then the node is SIGKILLed. The second node's processes are SIGKILLed right after
  its drain is accepted. Both drains end as "the node is gone", the daemon recovers on its own at the next
  tick, launches nothing, and the cluster ends at its minimum.

The tests share one cluster per autoscaler version; each brings the cluster to what it needs itself, so
the order only saves boots: on v1 the first leaves the two gpu1 nodes the second starts from. The last uses
cpu4 nodes because on v1 a drained fake node stays with the provider as an "uninitialized" instance, which
the floor counts as capacity and which v1 never ends while the floor wants its type (see
``autoscaler.adapters.ray.cluster_state``): asking for gpu1 again after the second test would launch
nothing. Waits are
bounded polls for a condition or for a number of ticks; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import Config, parse_config
from autoscaler.daemon import Daemon
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, wait_until
from autoscaler.ports import DrainResult
from tests.support.cluster_config import GPU_STAGE, config_text
from tests.support.cluster_daemon import RecordingActuator, RecordingDaemon, cluster_daemon
from tests.support.cluster_watch import Watcher
from tests.support.daemon_fakes import FakeSource
from tests.support.polling import until

pytestmark = [pytest.mark.integration, pytest.mark.ray]

CPU_STAGE = {"name": "infer", "operator": "Infer", "resources": {"CPU": 1}, "prior_rate": {"cpu4": 1.0}}
GPU_BACKLOG = 100.0
"""(1 + 100 / 60) × 1.2 ≈ 3.2 infer slots at 1/s each: more gpu1 nodes than the cluster allows."""
CPU_BACKLOG = 300.0
"""(1 + 300 / 60) × 1.2 ≈ 7.2 infer slots: two cpu4 nodes."""


def _config(
    *,
    stage: Mapping[str, Any] = GPU_STAGE,
    gpu1_max: int = 2,
    act_timeout: float = 15,
    floor_grace: float = 60,
) -> Config:
    """One drain per tick (half of two nodes); a drain in flight is never given up during a test."""
    return parse_config(
        config_text(
            stages=[stage],
            shapes={"gpu1": {"max": gpu1_max}},
            daemon={
                "act_timeout_seconds": act_timeout,
                "drain_confirm_seconds": 600,
                "floor_grace_seconds": floor_grace,
            },
        )
    )


def _exactly(address: str, counts: dict[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        s = read_cluster_state(address)
        return s.node_counts() == counts and not s.pending_counts()

    return check


def _no_workers(address: str) -> Callable[[], bool]:
    return lambda: not read_cluster_state(address).workers


def _node_processes(node_id: str, session: str) -> tuple[int | None, list[int]]:
    """The raylet of one fake node and all its processes: the raylet, the agents it runs (both name the
    node id) and the raylet's children (workers). Only this cluster's session counts: every fake cluster
    numbers its nodes the same way."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        procs[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    raylets = {p for p, (_, cmd) in procs.items() if f"--node_id={node_id}" in cmd and session in cmd}
    agents = {p for p, (_, cmd) in procs.items() if f"--node-id={node_id}" in cmd and session in cmd}
    workers = {p for p, (ppid, _) in procs.items() if ppid in raylets}
    return (min(raylets) if raylets else None), sorted(raylets | agents | workers)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _daemon(
    cfg: Config, address: str, source: FakeSource, actuator: RayActuator, store: StateStore
) -> RecordingDaemon:
    return cluster_daemon(
        cfg, cluster=lambda: read_cluster_state(address), source=source, actuator=actuator, store=store
    )


def _actuator(cfg: Config, address: str) -> RecordingActuator:
    shapes = {s.name: s.resources for s in cfg.node_shapes()}
    return RecordingActuator(address, shapes, floor_form="resource", use_coordinator=False)


def _drain_status(store: StateStore, node_id: str) -> tuple[str, str] | None:
    a = store.action(f"drain:{node_id}")
    return None if a is None else (a.status, a.detail)


async def _stop(daemon: Daemon, task: asyncio.Task[None]) -> None:
    daemon.request_stop()
    await asyncio.wait_for(task, timeout=60)


# ------------------------------------------------------------------------------------------------ tests


async def test_floor_above_the_node_types_max_is_held_short_and_reported(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    """raytide's gpu1 max is 3, the cluster's gpu1 ``max_workers`` 2. Leaves two gpu1 nodes on v1."""
    # A short grace: the autoscaler gets a few seconds to show a launch before the shortfall is reported.
    cfg = _config(gpu1_max=3, floor_grace=3)
    address = daemon_cluster.address
    # v1 launches what fits under max_workers; v2 drops a floor it cannot meet whole.
    honoured = 2 if daemon_cluster.autoscaler_version == "v1" else 0
    actuator = _actuator(cfg, address)
    source = FakeSource(backlog=GPU_BACKLOG)
    with StateStore(tmp_path / "state.db") as store, Watcher(address, "gpu1") as watcher:
        daemon = _daemon(cfg, address, source, actuator, store)
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        try:
            await until(lambda: daemon.floor == {"cpu4": 0, "gpu1": 3}, "the floor of three gpu1 nodes")
            await until(_exactly(address, {"gpu1": honoured} if honoured else {}), f"{honoured} gpu1 nodes")
            since = daemon.tick_number
            # Every one of these ticks asks for three nodes while fewer run and none is pending.
            await until(lambda: daemon.tick_number >= since + 8, "eight more ticks")
            assert not task.done()
            assert daemon.telemetry.state == "degraded"
        finally:
            await _stop(daemon, task)
            actuator.release()
    short = [o for o in daemon.outcomes if o.tick > since]
    assert short
    assert short[-1].degraded
    for o in short:
        # The only fault is the ignored floor; it is named, and the floor is still asked for.
        assert all("not carrying out the floor for gpu1: 3 wanted" in e for e in o.errors), o.errors
        assert o.floor == {"cpu4": 0, "gpu1": 3}, o.tick
        gpu1 = next(c for c in o.plan.changes if c.shape == "gpu1")
        assert (gpu1.current, gpu1.target) == (honoured, 3), (o.tick, gpu1)
        assert dict(o.snapshot.pending_counts).get("gpu1", 0) == 0, o.tick
    registry = daemon.telemetry.registry
    assert registry.get_sample_value("raytide_nodes_target", {"shape": "gpu1"}) == 3
    assert registry.get_sample_value("raytide_nodes_current", {"shape": "gpu1"}) == honoured
    assert registry.get_sample_value("raytide_nodes_pending", {"shape": "gpu1"}) == 0
    assert watcher.max_alive == honoured
    assert watcher.max_others == 0
    assert actuator.asked == []


async def test_drain_refused_by_the_gcs_keeps_the_busy_node_then_drains_it_once_idle(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    """Starts from two gpu1 nodes (launches them if missing). Leaves no workers."""
    import ray

    # The actuator starts a task inside the drain call: it may take a while.
    cfg = _config(act_timeout=120)
    address = daemon_cluster.address
    actuator = _actuator(cfg, address)
    source = FakeSource(backlog=GPU_BACKLOG)
    started, release = tmp_path / "started", tmp_path / "release"
    if not ray.is_initialized():
        daemon_cluster.connect()
    driver: Any = ray  # ray.remote's overloads do not know the node-affinity strategy

    def hold(started: str, release: str) -> None:
        Path(started).touch()
        deadline = time.monotonic() + 600
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    busy: list[str] = []
    refs: list[Any] = []

    def make_busy(node_id: str) -> None:
        # In the daemon's actuator thread: the daemon chose this node as idle, the GCS has not been asked.
        if busy:
            return
        busy.append(node_id)
        strategy = driver.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id, soft=False)
        task = driver.remote(num_cpus=1, num_gpus=1, scheduling_strategy=strategy)(hold)
        refs.append(task.remote(str(started), str(release)))
        wait_until(started.exists, timeout_s=60, interval_s=0.1, what="the task to start on the node")
        # Also wait for the GCS to see it, so no later tick takes the node for idle on a stale view.
        wait_until(
            lambda: read_cluster_state(address).node(node_id).status == "RUNNING",
            timeout_s=60,
            interval_s=0.1,
            what="the GCS to see the node busy",
        )

    actuator.before_drain = make_busy
    with StateStore(tmp_path / "state.db") as store, Watcher(address, "gpu1") as watcher:
        daemon = _daemon(cfg, address, source, actuator, store)
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        try:
            await until(_exactly(address, {"gpu1": 2}), "two gpu1 nodes")
            await until(lambda: daemon.floor == {"cpu4": 0, "gpu1": 2}, "the floor of two gpu1 nodes")
            watcher.freeze()
            source.backlog, source.rate, source.slots = 0.0, 0.0, 0.0

            await until(lambda: any(o.refused for o in daemon.outcomes), "the refused drain")
            node = busy[0]
            refused = next(o for o in daemon.outcomes if o.refused)
            assert refused.refused == (node,) and refused.drained == ()
            assert not refused.degraded, refused.errors  # a refusal is Ray's answer, not a fault
            assert refused.floor == {"cpu4": 0, "gpu1": 0}  # lowered before the drain, as always
            assert actuator.results[0].node_id == node and not actuator.results[0].accepted
            status = _drain_status(store, node)
            assert status is not None and status[0] == "failed", status
            assert status[1].startswith("refused:") and "idle" in status[1], status

            # The other, idle node goes; the busy one stays however many ticks pass.
            def only_the_busy_node() -> bool:
                return [n.node_id for n in read_cluster_state(address).workers] == [node]

            await until(only_the_busy_node, "the idle gpu1 drained")
            since = daemon.tick_number
            await until(lambda: daemon.tick_number >= since + 4, "four more ticks")
            state = await asyncio.to_thread(read_cluster_state, address)
            assert [n.node_id for n in state.workers] == [node]
            assert state.node(node).status == "RUNNING"
            assert actuator.asked.count(node) == 1, "a busy node was asked to drain again"
            assert not task.done()

            release.touch()
            await asyncio.to_thread(driver.get, refs[0], timeout=60)
            await until(_no_workers(address), "no workers")
            assert [r.accepted for r in actuator.results if r.node_id == node] == [False, True]
            assert daemon.floor == {"cpu4": 0, "gpu1": 0}
            assert not task.done()
            assert daemon.telemetry.state == "ok"
        finally:
            release.touch()
            await _stop(daemon, task)
            actuator.release()
            if ray.is_initialized():
                ray.shutdown()
        status = _drain_status(store, node)
        assert status is not None and status[0] in ("sent", "confirmed"), status
    assert not watcher.after_freeze, watcher.after_freeze
    assert watcher.max_alive == 2
    assert watcher.max_others == 0
    assert all(not o.degraded for o in daemon.outcomes), [o.errors for o in daemon.outcomes if o.errors]


async def test_node_vanishing_mid_drain_is_confirmed_gone_and_nothing_relaunches(
    daemon_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    """Launches two cpu4 nodes. Leaves no workers."""
    # The daemon gives up waiting for a drain (5 s) before the actuator's RPC deadline (10 s) does: it
    # then keeps the drain as sent, outcome unknown — the drain in flight this test needs.
    cfg = _config(stage=CPU_STAGE, gpu1_max=0, act_timeout=5)
    address = daemon_cluster.address
    assert daemon_cluster.session_dir is not None
    session = daemon_cluster.session_dir.name
    actuator = _actuator(cfg, address)
    source = FakeSource(backlog=CPU_BACKLOG)
    frozen: list[str] = []
    killed_at_once: list[str] = []

    def freeze_first(node_id: str) -> None:
        # A raylet that is stopped cannot answer the drain the GCS forwards to it.
        if frozen:
            return
        raylet, _ = _node_processes(node_id, session)
        assert raylet is not None, f"no raylet process for node {node_id}"
        os.kill(raylet, signal.SIGSTOP)
        frozen.append(node_id)

    def kill_once_accepted(result: DrainResult) -> None:
        if result.accepted and result.node_id not in frozen and not killed_at_once:
            _, pids = _node_processes(result.node_id, session)
            _kill(pids)
            killed_at_once.append(result.node_id)

    actuator.before_drain = freeze_first
    actuator.after_drain = kill_once_accepted
    with StateStore(tmp_path / "state.db") as store, Watcher(address, "cpu4") as watcher:
        daemon = _daemon(cfg, address, source, actuator, store)
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        try:
            await until(_exactly(address, {"cpu4": 2}), "two cpu4 nodes")
            await until(lambda: daemon.floor == {"cpu4": 2, "gpu1": 0}, "the floor of two cpu4 nodes")
            watcher.freeze()
            source.backlog, source.rate, source.slots = 0.0, 0.0, 0.0

            await until(lambda: bool(frozen), "the first drain")
            first = frozen[0]
            in_flight = ("sent", "timed out; outcome unknown")
            await until(lambda: _drain_status(store, first) == in_flight, "the drain to time out")
            timed_out = next(o for o in daemon.outcomes if any("timed out" in e for e in o.errors))
            assert timed_out.degraded and timed_out.drained == () and timed_out.refused == ()
            assert timed_out.errors == (f"drain of {first} timed out; checking whether the node goes",)
            assert timed_out.floor == {"cpu4": 0, "gpu1": 0}
            _kill(_node_processes(first, session)[1])

            gone = ("confirmed", "the node is gone")
            await until(lambda: bool(killed_at_once), "the second drain accepted")
            second = killed_at_once[0]
            await until(lambda: _drain_status(store, second) == gone, "the second drain confirmed")
            await until(lambda: _drain_status(store, first) == gone, "the frozen node's drain confirmed")
            await until(_no_workers(address), "no workers")
            since = daemon.tick_number
            await until(lambda: daemon.tick_number >= since + 3, "three more ticks")
            assert not task.done()
            assert daemon.floor == {"cpu4": 0, "gpu1": 0}
            assert daemon.telemetry.state == "ok"
        finally:
            for node_id in frozen:
                _kill(_node_processes(node_id, session)[1])
            await _stop(daemon, task)
            actuator.release()
        after = [o for o in daemon.outcomes if o.tick > timed_out.tick]
        assert after and not any(o.degraded for o in after), [o.errors for o in after if o.errors]
        assert not [a for a in store.pending_actions() if a.kind == "drain"]
    assert actuator.asked.count(first) == 1, "a drain in flight was sent again"
    assert actuator.asked.count(second) == 1
    assert watcher.max_alive == 2
    assert watcher.max_others == 0
    # raytide never asked for a node after the backlog went: its floor was 0 cpu4 from the first drain on.
    assert all(o.floor in (None, {"cpu4": 0, "gpu1": 0}) for o in after), [o.floor for o in after]
    if daemon_cluster.autoscaler_version == "v2":
        assert not watcher.after_freeze, watcher.after_freeze
    # On v1 the fake provider once (1 CI run in 4) brought up a new cpu4 node after the SIGKILLs while
    # raytide's floor was 0 (asserted above); the cause inside v1 is not established, so not asserted there.
    errors = daemon.telemetry.registry.get_sample_value("raytide_actuation_errors_total", {"kind": "drain"})
    assert errors == 1, "only the drain that timed out failed"
