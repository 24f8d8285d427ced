"""A stand-in daemon for the kill -9 test in test_state_store.py, and the sample data both share.

``python -m tests.support.state_store_writer DB ROUND [CHECKPOINT_SECONDS]`` resumes from the store at DB,
begins a run as the daemon does (printing ``run <how the previous one ended>``), begins one drain it never
finishes (printing ``stuck <key>`` once that is committed), then loops for ever: per tick it begins,
confirms and commits like the daemon will, printing ``tick <n>`` after each commit returned. Everything it
writes is a pure function of the tick, so the test can check that what it finds is exactly one whole tick.
``CHECKPOINT_SECONDS`` goes to the store (a large one: checkpoints only at the start and after the drain).
"""

from __future__ import annotations

import sys
from types import MappingProxyType
from typing import Any

from autoscaler.adapters.state_store import StateStore
from autoscaler.types import (
    Node,
    NodeShape,
    Placement,
    Plan,
    Reading,
    ShapeChange,
    Snapshot,
    StageDemand,
    StageObservation,
    UnmetDemand,
    frozen_map,
)

T0 = 1_700_000_000.0
KEEP_DECISIONS = 25
SHAPES = (
    NodeShape("cpu4", frozen_map({"CPU": 4.0, "memory": 16e9}), 0.2, max_count=50),
    NodeShape("gpu1", frozen_map({"CPU": 8.0, "GPU": 1.0}), 1.5, min_count=1, launch_seconds=300.0),
)


def tick_time(tick: int) -> float:
    return T0 + 10.0 * tick


def sample_snapshot(tick: int) -> Snapshot:
    # Big enough (tens of KB) that a commit takes long enough for SIGKILL to land inside some of them.
    nodes = tuple(
        Node(
            node_id=f"{i:056x}",
            shape="cpu4" if i % 4 else "gpu1",
            cpu_utilization=Reading.of(float((i * 7 + tick) % 100)),
            gpu_utilization=Reading.unknown("no GPU metrics") if i % 4 else Reading.of(55.5),
            idle_seconds=None if i % 3 else float(tick),
        )
        for i in range(80)
    )
    stages = tuple(
        StageObservation(
            name=f"stage{j}",
            backlog=Reading.of(float(tick * j)),
            throughput=Reading.of(12.5 + j),
            arrival_rate=Reading.unknown("rate window too short") if j == 3 else Reading.of(13.0),
            slots_busy=Reading.of(float(j + 1)),
            slots_by_shape=frozen_map({"cpu4": float(j), "gpu1": 1.0}),
            upstream=None if j == 0 else f"stage{j - 1}",
        )
        for j in range(8)
    )
    return Snapshot(
        time=tick_time(tick),
        shapes=SHAPES,
        nodes=nodes,
        node_counts=MappingProxyType({"cpu4": 30, "gpu1": 10}),
        pending_counts=MappingProxyType({"cpu4": tick % 3}),
        stages=stages,
        errors=("prometheus: timeout",) if tick % 5 == 0 else (),
        pending_demand=(frozen_map({"CPU": 1.0}),) * (tick % 4),
    )


def sample_plan(tick: int) -> Plan:
    return Plan(
        time=tick_time(tick),
        policy="throughput",
        changes=(
            ShapeChange("cpu4", 30, 30 + tick % 3, f"add {tick % 3}", proposed=31),
            ShapeChange("gpu1", 10, 10, "keep"),
        ),
        placements=(Placement("stage1", "cpu4", 4 + tick % 2, 51.5),),
        unmet=(UnmetDemand("stage3", 100.0, 80.0, "max_slots reached"),) if tick % 2 else (),
        demands=(StageDemand("stage1", 50.0, "catch up", hold=False),),
        reasons=(f"tick {tick}",),
        held=tick % 5 == 0,
    )


def sample_models(tick: int) -> dict[str, Any]:
    return {"version": 1, "tick": tick, "pairs": [{"stage": "stage1", "samples": [[1.0, 2.0]] * 20}]}


def sample_decision_state(tick: int) -> dict[str, Any]:
    return {"guard": {"history": [[tick_time(tick), {"cpu4": 31}]], "watching_since": T0}, "policy_state": {}}


def main(db: str, round_: int, checkpoint_seconds: float = 30.0) -> None:
    store = StateStore(db, keep_decisions=KEEP_DECISIONS, checkpoint_seconds=checkpoint_seconds)
    print(f"run {store.begin_run().previous}", flush=True)
    stored = store.load()
    tick = 0 if stored is None else stored.tick
    stuck = f"drain:stuck-{round_}"
    store.begin_action(stuck, kind="drain", node_id=f"stuck-{round_}", payload={"round": round_})
    print(f"stuck {stuck}", flush=True)
    while True:
        tick += 1
        t = tick_time(tick)
        key = f"floor:{tick}"
        store.begin_action(key, kind="floor", payload={"counts": {"cpu4": 30 + tick % 3}}, time=t)
        store.finish_action(key, "confirmed", time=t)
        store.commit_tick(
            tick=tick,
            time=t,
            models=sample_models(tick),
            decision_state=sample_decision_state(tick),
            plan=sample_plan(tick),
            snapshot=sample_snapshot(tick),
            reasons=[f"floor {key} confirmed"],
        )
        print(f"tick {tick}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(float(a) for a in sys.argv[3:4]))
