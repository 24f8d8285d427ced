"""What the daemon tells its service manager (ready, a status and a watchdog ping per completed tick,
stopping), injected clocks driving its timings, and port calls answered with typed outcomes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler.adapters.ray import cluster_state
from autoscaler.adapters.ray.cluster_state import ClusterStateError
from autoscaler.adapters.state_store import StateStore
from autoscaler.core.queries import QueryResult
from autoscaler.daemon.calls import Answered, NoAnswer, within
from autoscaler.ports import Action, StoredState, node_type_resource
from tests.support.daemon_fakes import (
    FakeActuator,
    FakeCluster,
    FakeSource,
    ManualClock,
    RecordingService,
    make_daemon,
    telemetry_of,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


class HeldStore:
    """A state store whose tick commits block while ``hold`` is clear (a stuck tick)."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def load(self) -> StoredState | None:
        return self.inner.load()

    def commit_tick(self, **kwargs: Any) -> None:
        self.entered.set()
        self.hold.wait()
        self.inner.commit_tick(**kwargs)

    def begin_action(self, key: str, **kwargs: Any) -> Action:
        return self.inner.begin_action(key, **kwargs)

    def finish_action(self, key: str, status: Any, detail: str = "", *, time: float | None = None) -> Action:
        return self.inner.finish_action(key, status, detail, time=time)

    def pending_actions(self) -> tuple[Action, ...]:
        return self.inner.pending_actions()


class RecordingServiceWithEvent(RecordingService):
    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def watchdog(self) -> None:
        super().watchdog()
        self.changed.set()


async def test_ready_once_the_cluster_was_observed_then_status_and_watchdog_per_tick(
    store: StateStore,
) -> None:
    cluster = FakeCluster(fail=ClusterStateError("GCS unreachable"))
    service = RecordingService()
    d = make_daemon(store, FakeSource(backlog=100.0), cluster, FakeActuator(cluster), service=service)
    await d.start()
    assert service.heard == []
    await d.tick()  # completed, but the GCS was not read: not ready yet
    assert service.kinds() == ["status", "watchdog"]
    assert service.heard[0].startswith("status tick 1 degraded: held, ")
    assert "GCS unreachable" in service.heard[0]
    cluster.fail = None
    await d.tick()
    await d.tick()
    assert service.kinds() == ["status", "watchdog", "ready", "status", "watchdog", "status", "watchdog"]
    assert service.heard[3] == "status tick 2 ok: cpu4 0->0, gpu1 0->4"
    assert all("\n" not in h and len(h) <= 210 for h in service.heard)


async def test_a_stuck_tick_stops_the_watchdog_and_shutdown_says_stopping(store: StateStore) -> None:
    cluster = FakeCluster()
    service = RecordingServiceWithEvent()
    held = HeldStore(store)
    d = make_daemon(held, FakeSource(backlog=100.0), cluster, FakeActuator(cluster), service=service)
    run = asyncio.create_task(d.run(install_signal_handlers=False))
    try:
        await asyncio.wait_for(service.changed.wait(), timeout=10)
        assert service.kinds() == ["ready", "status", "watchdog"]
        held.hold.clear()
        held.entered.clear()
        service.changed.clear()
        assert await asyncio.to_thread(held.entered.wait, 10)  # the next tick is stuck in its commit
        with pytest.raises(TimeoutError):  # two intervals pass without a ping
            await asyncio.wait_for(service.changed.wait(), timeout=2 * d.interval_seconds)
        assert service.kinds() == ["ready", "status", "watchdog"]
        held.hold.set()
        await asyncio.wait_for(service.changed.wait(), timeout=10)
        assert service.kinds()[3:] == ["status", "watchdog"]
    finally:
        held.hold.set()
        d.request_stop()
        await asyncio.wait_for(run, timeout=10)
    assert service.kinds()[-1] == "stopping"


class AdvancingSource(FakeSource):
    """Moves the monotonic clock while the tick waits for its metrics."""

    def __init__(self, mono: ManualClock, step: float, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.mono = mono
        self.step = step

    async def query_templates(
        self, names: Iterable[str] | None = None, *, at: float | None = None
    ) -> dict[str, QueryResult]:
        self.mono.now += self.step
        return await super().query_templates(names, at=at)


async def test_the_injected_clocks_time_the_tick_and_its_actions(store: StateStore) -> None:
    wall, mono = ManualClock(1_700_000_000.0), ManualClock(50.0)
    cluster = FakeCluster()
    d = make_daemon(
        store,
        AdvancingSource(mono, 2.5, backlog=100.0),
        cluster,
        FakeActuator(cluster),
        clock=wall,
        monotonic=mono,
    )
    await d.start()
    out = await d.tick()
    assert out.duration_s == 2.5 and out.snapshot.time == wall.now
    reg = telemetry_of(d).registry
    assert reg.get_sample_value("raytide_tick_duration_seconds_sum") == 2.5
    assert reg.get_sample_value("raytide_policy_duration_seconds_sum", {"policy": out.plan.policy}) == 0.0
    floor = store.action("floor:1")
    assert floor is not None and floor.created == floor.updated == wall.now


async def test_port_calls_answer_with_a_value_or_the_reason_there_is_none() -> None:
    async def value() -> int:
        return 3

    async def boom() -> int:
        raise ConnectionError("connection refused")

    async def hang() -> int:
        await asyncio.Event().wait()
        return 0

    assert await within(value(), 1.0, "x") == Answered(3)
    assert await within(boom(), 1.0, "metrics source") == NoAnswer("metrics source: connection refused")
    assert await within(hang(), 0.01, "Ray GCS") == NoAnswer("Ray GCS: no answer within 0.01 s")


def test_the_placeholder_marker_is_the_one_the_ray_adapters_use() -> None:
    assert node_type_resource("gpu1") == cluster_state.node_type_resource("gpu1")
