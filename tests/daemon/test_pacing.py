"""Nudges cannot loosen the daemon's limits: they are rate-limited, and the ticks they add share the
interval's step limits and drain share (driven by the injected monotonic clock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.adapters.state_store import StateStore
from autoscaler.core.config import Config
from autoscaler.daemon import Daemon
from autoscaler.daemon.pacing import Pacing
from tests.support.daemon_fakes import (
    FakeActuator,
    FakeCluster,
    FakeSource,
    ManualClock,
    make_config,
    make_daemon,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def with_bounds(cfg: Config, **bounds: object) -> Config:
    return cfg.model_copy(update={"bounds": cfg.bounds.model_copy(update=bounds)})


def test_nudges_are_accepted_at_most_one_per_gap() -> None:
    mono = ManualClock(100.0)
    pacing = Pacing(interval_s=5.0, nudge_gap_s=0.5, monotonic=mono)
    assert pacing.nudge() is True
    assert [pacing.nudge() for _ in range(1000)] == [False] * 1000
    mono.now += 0.49
    assert pacing.nudge() is False
    mono.now += 0.01
    assert pacing.nudge() is True


def test_a_nudged_tick_shares_the_window_a_timed_tick_opens_one() -> None:
    mono = ManualClock(0.0)
    pacing = Pacing(interval_s=5.0, nudge_gap_s=0.5, monotonic=mono)
    pacing.begin_tick()
    pacing.see({"cpu": 1})
    mono.now = 1.0
    pacing.nudge()
    pacing.begin_tick()
    assert pacing.see({"cpu": 4}).low == (("cpu", 1),)  # shared: the window remembers the first tick
    mono.now = 2.0
    pacing.begin_tick()  # not nudged (a caller's own tick, or the timer): a new window
    assert pacing.see({"cpu": 4}).low == (("cpu", 4),)
    pacing.nudge()
    pacing.timer_fired()  # the timer started the tick, whatever nudge came meanwhile
    pacing.begin_tick()
    assert pacing.see({"cpu": 5}).low == (("cpu", 5),)
    mono.now = 8.0
    pacing.nudge()
    pacing.begin_tick()  # nudged, but the window is a whole interval old: a new one
    assert pacing.see({"cpu": 9}).low == (("cpu", 9),)
    mono.now = 12.5
    pacing.nudge()
    pacing.begin_tick()
    assert pacing.see({"cpu": 10}).low == (("cpu", 9),)
    mono.now = 13.0 - 1e-6  # ticks spaced by the gap reach the interval's end give or take the clock's jitter
    pacing.nudge()
    pacing.begin_tick()
    assert pacing.see({"cpu": 10}).low == (("cpu", 10),)


def paced_daemon(
    store: StateStore, source: FakeSource, cluster: FakeCluster, mono: ManualClock, **bounds: object
) -> Daemon:
    """A daemon ticking every 5 s (by the clock ``mono``) with these bounds."""
    cfg = with_bounds(make_config(interval_seconds=5.0), **bounds)
    return make_daemon(store, source, cluster, FakeActuator(cluster), config=cfg, monotonic=mono)


async def test_the_daemon_declines_a_nudge_that_comes_too_soon(store: StateStore) -> None:
    mono = ManualClock(10.0)
    cluster = FakeCluster()
    d = paced_daemon(store, FakeSource(), cluster, mono)
    assert d.nudge() is True
    assert d.nudge() is False
    mono.now += 0.5
    assert d.nudge() is True


async def test_nudged_ticks_share_the_intervals_step_up(store: StateStore) -> None:
    mono = ManualClock(10.0)
    cluster = FakeCluster()  # the fake actuator launches the floor's nodes at once
    d = paced_daemon(store, FakeSource(backlog=100.0), cluster, mono, max_step_up=1)
    await d.start()
    out = await d.tick()
    assert out.floor == {"cpu4": 0, "gpu1": 1}  # the policy wants 4 GPU nodes: +1 per interval
    for _ in range(3):  # nudged ticks within the interval: no further step
        mono.now += 0.5
        assert d.nudge()
        out = await d.tick()
        assert out.plan.targets()["gpu1"] == 1 and cluster.count("gpu1") == 1
    change = next(c for c in out.plan.changes if c.shape == "gpu1")
    assert change.reason.startswith("keep:") and "+1 per 5 s (ticks a nudge adds share it)" in change.reason
    mono.now = 15.0  # a whole interval since the window opened: a nudged tick opens the next one
    assert d.nudge()
    assert (await d.tick()).floor == {"cpu4": 0, "gpu1": 2}
    assert (await d.tick()).floor == {"cpu4": 0, "gpu1": 3}  # a timed tick opens a window of its own


async def test_nudged_ticks_share_the_intervals_drain_share(store: StateStore) -> None:
    mono = ManualClock(10.0)
    cluster = FakeCluster()
    for i in range(4):
        cluster.add("gpu1", idle_seconds=10.0 + i)
    d = paced_daemon(store, FakeSource(backlog=0.0, rate=0.0, slots=0.0), cluster, mono)
    await d.start()
    out = await d.tick()
    assert len(out.drained) == 2  # drain share 0.5 of 4 nodes
    mono.now += 0.5
    assert d.nudge()
    out = await d.tick()
    assert out.drained == () and cluster.count("gpu1") == 2  # the interval's share is used up
    mono.now += 5.0
    assert d.nudge()
    out = await d.tick()
    assert len(out.drained) == 1 and cluster.count("gpu1") == 1  # a new interval: 0.5 of 2
