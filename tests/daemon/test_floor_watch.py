"""A floor the autoscaler does not carry out: the pure watch, and the daemon reporting it degraded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.state_store import StateStore
from autoscaler.core.floor_watch import Shortfall, watch_floor
from autoscaler.daemon import Daemon, DryRunActuator
from autoscaler.ports import Actuator
from tests.support.daemon_fakes import (
    FakeActuator,
    FakeCluster,
    FakeSource,
    ManualClock,
    make_config,
    make_daemon,
    telemetry_of,
)


def test_short_with_nothing_launching_is_reported_after_the_grace_only() -> None:
    since, short = watch_floor({"gpu1": 3}, {"gpu1": 2}, {}, now=100.0, since={}, grace=60.0)
    assert since == {"gpu1": 100.0} and short == []
    since, short = watch_floor({"gpu1": 3}, {"gpu1": 2}, {}, now=159.0, since=since, grace=60.0)
    assert short == []
    since, short = watch_floor({"gpu1": 3}, {"gpu1": 2}, {}, now=160.0, since=since, grace=60.0)
    assert short == [Shortfall("gpu1", 3, 2, 60.0)]
    assert "gpu1: 3 wanted, 2 alive, none launching for 60 s" in short[0].message()


def test_a_launch_on_its_way_or_enough_nodes_reset_the_clock() -> None:
    since = {"gpu1": 0.0, "cpu4": 0.0}
    # gpu1 launching (a floor arriving in rounds), cpu4 met: neither is short, and their clocks restart.
    since, short = watch_floor(
        {"gpu1": 4, "cpu4": 1}, {"gpu1": 1, "cpu4": 1}, {"gpu1": 1}, now=500.0, since=since, grace=60.0
    )
    assert since == {} and short == []
    since, short = watch_floor({"gpu1": 4}, {"gpu1": 2}, {}, now=510.0, since=since, grace=60.0)
    assert since == {"gpu1": 510.0} and short == []


def test_a_floor_of_zero_or_more_nodes_than_asked_is_never_short() -> None:
    since, short = watch_floor({"gpu1": 0, "cpu4": 1}, {"cpu4": 3}, {}, now=1e6, since={}, grace=0.0)
    assert since == {} and short == []


# ------------------------------------------------------------------------------------------ the daemon


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


T0 = 1_700_000_000.0


def _daemon(
    store: StateStore, cluster: FakeCluster, actuator: Actuator, clock: ManualClock, **kwargs: Any
) -> Daemon:
    return make_daemon(
        store,
        FakeSource(backlog=100.0),
        cluster,
        actuator,
        config=make_config(floor_grace_seconds=30.0),
        clock=clock,
        **kwargs,
    )


async def test_an_ignored_floor_makes_the_daemon_degraded_until_the_nodes_come(store: StateStore) -> None:
    cluster = FakeCluster()
    actuator = FakeActuator(cluster, launch=False)  # the autoscaler ignores the floor, as v2 does above max
    clock = ManualClock(T0)
    d = _daemon(store, cluster, actuator, clock)
    await d.start()
    first = await d.tick()
    assert first.floor == {"cpu4": 0, "gpu1": 4} and not first.degraded
    clock.now += 20.0
    assert not (await d.tick()).degraded  # first seen short: the autoscaler may not have looked yet
    clock.now += 25.0
    assert not (await d.tick()).degraded  # within the grace
    clock.now += 10.0
    out = await d.tick()
    assert out.degraded and out.floor == {"cpu4": 0, "gpu1": 4}  # still asking, never lowering
    [why] = out.errors
    assert "not carrying out the floor for gpu1: 4 wanted, 0 alive" in why
    assert telemetry_of(d).state == "degraded"
    for _ in range(4):
        cluster.add("gpu1")
    clock.now += 1.0
    assert not (await d.tick()).degraded
    assert str(telemetry_of(d).state) == "ok"  # str(): mypy keeps the narrowing from the check above


async def test_a_dry_run_never_reports_its_floor_as_ignored(store: StateStore) -> None:
    cluster = FakeCluster()
    clock = ManualClock(T0)
    d = _daemon(store, cluster, DryRunActuator(), clock)
    await d.start()
    for _ in range(5):
        out = await d.tick()
        assert not out.degraded, out.errors
        clock.now += 30.0


@pytest.mark.parametrize("dry_run", [True, False])
async def test_the_dry_run_flag_decides_not_the_actuator_type(store: StateStore, dry_run: bool) -> None:
    """An explicit ``dry_run`` wins over what the actuator's type suggests."""
    cluster = FakeCluster()
    clock = ManualClock(T0)
    actuator: Actuator = FakeActuator(cluster, launch=False) if dry_run else DryRunActuator()
    d = _daemon(store, cluster, actuator, clock, dry_run=dry_run)
    assert d.dry_run is dry_run
    await d.start()
    degraded = []
    for _ in range(4):
        degraded.append((await d.tick()).degraded)
        clock.now += 30.0
    assert any(degraded) is not dry_run
