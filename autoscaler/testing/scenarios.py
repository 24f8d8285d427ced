"""The contract's inputs: named (config, snapshot) scenarios — fixed ordinary, idle, empty, unknown and
extreme clusters, and a hypothesis strategy of random valid ones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoscaler.core.config import Config
from autoscaler.testing.builders import (
    Value,
    make_config,
    make_node,
    make_nodes,
    make_shape,
    make_snapshot,
    make_stage,
    make_stage_config,
)
from autoscaler.types import Node, NodeShape, Snapshot, StageObservation

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

__all__ = ["Scenario", "contract_scenarios", "extreme_scenarios", "random_scenarios", "unknown_scenarios"]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named input for the contract checks: a config and a snapshot of a cluster it describes."""

    name: str
    config: Config
    snapshot: Snapshot

    @property
    def current(self) -> dict[str, int]:
        return self.snapshot.counts_including_pending()


def _typical_config(**bounds: Any) -> Config:
    return make_config(
        stages=[
            make_stage_config(name="decode", resources={"CPU": 1}, prior_rate={"cpu4": 5.0, "gpu1": 5.0}),
            make_stage_config(name="infer", resources={"CPU": 1, "GPU": 1}, prior_rate={"gpu1": 20.0}),
        ],
        **bounds,
    )


def _pipeline(
    *,
    backlog: Value = 200.0,
    throughput: Value = 20.0,
    slots: Value = 4.0,
    infer_backlog: Value = 10.0,
    infer_throughput: Value = 20.0,
) -> tuple[StageObservation, ...]:
    return (
        make_stage(
            name="decode",
            backlog=backlog,
            throughput=throughput,
            slots_busy=slots,
            slots_by_shape={"cpu4": 4.0},
        ),
        make_stage(
            name="infer",
            backlog=infer_backlog,
            throughput=infer_throughput,
            slots_busy=1.0,
            slots_by_shape={"gpu1": 1.0},
            upstream="decode",
        ),
    )


def _typical_nodes(
    *, cpu: int = 2, gpu: int = 1, util: Value = 80.0, idle: float | None = None
) -> tuple[Node, ...]:
    return make_nodes(shape="cpu4", count=cpu, cpu_utilization=util, idle_seconds=idle) + make_nodes(
        shape="gpu1", count=gpu, cpu_utilization=util, gpu_utilization=util, idle_seconds=idle
    )


def contract_scenarios() -> tuple[Scenario, ...]:
    """The fixed inputs of the contract: ordinary, idle, empty, unknown and extreme clusters."""
    cfg = _typical_config(max_nodes=40, budget_per_hour=20.0)
    out = [
        Scenario(
            "busy pipeline",
            cfg,
            make_snapshot(time=1000.0, config=cfg, nodes=_typical_nodes(), stages=_pipeline()),
        ),
        Scenario(
            "idle cluster",
            cfg,
            make_snapshot(
                time=5000.0,
                config=cfg,
                nodes=_typical_nodes(cpu=3, gpu=2, util=0.0, idle=1000.0),
                stages=_pipeline(
                    backlog=0.0, throughput=0.0, slots=0.0, infer_backlog=0.0, infer_throughput=0.0
                ),
            ),
        ),
        Scenario(
            "launching nodes and pending demand",
            cfg,
            make_snapshot(
                time=2000.0,
                config=cfg,
                nodes=_typical_nodes(cpu=1, gpu=1, util=100.0),
                pending_counts={"cpu4": 2},
                stages=_pipeline(backlog=5000.0),
                pending_demand=[{"CPU": 1.0}] * 12 + [{"CPU": 1.0, "GPU": 1.0}] * 3,
            ),
        ),
    ]
    empty_cfg = make_config()
    out.append(Scenario("empty snapshot", empty_cfg, make_snapshot(config=empty_cfg)))
    out.append(
        Scenario(
            "no stages, some nodes",
            empty_cfg,
            make_snapshot(time=60.0, config=empty_cfg, nodes=_typical_nodes()),
        )
    )
    out.extend(unknown_scenarios())
    out.extend(extreme_scenarios())
    return tuple(out)


def unknown_scenarios() -> tuple[Scenario, ...]:
    """Inputs some of which are unknown: the guarded plan must not scale anything down."""
    cfg = _typical_config(max_nodes=40)
    nodes = _typical_nodes(cpu=4, gpu=2, util=5.0, idle=900.0)
    return (
        Scenario(
            "stage readings unknown",
            cfg,
            make_snapshot(
                time=100.0, config=cfg, nodes=nodes, stages=_pipeline(backlog=None, throughput=None)
            ),
        ),
        Scenario(
            "NaN readings",
            cfg,
            make_snapshot(
                time=100.0,
                config=cfg,
                nodes=_typical_nodes(cpu=4, gpu=2, util=math.nan, idle=900.0),
                stages=_pipeline(
                    backlog=math.nan, throughput=math.nan, slots=math.nan, infer_backlog=math.nan
                ),
            ),
        ),
        Scenario(
            "observe errors",
            cfg,
            make_snapshot(
                time=100.0,
                config=cfg,
                nodes=nodes,
                stages=_pipeline(
                    backlog=0.0, throughput=0.0, slots=0.0, infer_backlog=0.0, infer_throughput=0.0
                ),
                errors=["prometheus: connection refused"],
            ),
        ),
        Scenario(
            "node utilization unknown",
            cfg,
            make_snapshot(
                time=100.0,
                config=cfg,
                nodes=_typical_nodes(cpu=4, gpu=2, util=None),
                stages=_pipeline(backlog=None),
            ),
        ),
    )


def extreme_scenarios() -> tuple[Scenario, ...]:
    """Huge backlogs, zero rates, many shapes: the policy must answer, and the plan stay in bounds."""
    cfg = _typical_config(max_nodes=60, budget_per_hour=30.0)
    many = tuple(
        make_shape(
            name=f"s{i:02d}",
            resources={"CPU": float(2 ** (i % 5)), **({"GPU": float(1 + i % 3)} if i % 4 == 0 else {})},
            price_per_hour=0.1 + 0.07 * i,
            max_count=5 + i % 7,
        )
        for i in range(50)
    )
    many_cfg = make_config(
        shapes=many,
        stages=[
            make_stage_config(name="decode", resources={"CPU": 1}),
            make_stage_config(name="infer", resources={"CPU": 1, "GPU": 1}),
        ],
        max_nodes=80,
        budget_per_hour=40.0,
    )
    many_nodes = tuple(
        make_node(node_id=f"{s.name}-0", shape=s.name, cpu_utilization=50.0 + i, gpu_utilization=90.0)
        for i, s in enumerate(many[:20])
    )
    return (
        Scenario(
            "backlog 1e12",
            cfg,
            make_snapshot(
                time=10.0,
                config=cfg,
                nodes=_typical_nodes(util=100.0),
                stages=_pipeline(backlog=1e12, throughput=1e6, infer_backlog=1e12),
                pending_demand=[{"CPU": 1.0}] * 100,
            ),
        ),
        Scenario(
            "zero rates",
            cfg,
            make_snapshot(
                time=10.0,
                config=cfg,
                nodes=_typical_nodes(util=0.0),
                stages=_pipeline(backlog=500.0, throughput=0.0, slots=0.0, infer_throughput=0.0),
            ),
        ),
        Scenario(
            "50 shapes",
            many_cfg,
            make_snapshot(
                time=10.0,
                config=many_cfg,
                nodes=many_nodes,
                stages=_pipeline(backlog=1e6, throughput=50.0, infer_backlog=1e4),
                pending_demand=[{"CPU": 1.0}] * 30 + [{"CPU": 1.0, "GPU": 1.0}] * 10,
            ),
        ),
        Scenario(
            "counts over the bounds",
            cfg,
            make_snapshot(
                time=10.0,
                config=cfg,
                nodes=_typical_nodes(cpu=30, gpu=12, util=95.0),
                stages=_pipeline(backlog=1e5),
            ),
        ),
    )


def random_scenarios(
    *, unknown: bool = False, max_shapes: int = 4, max_stages: int = 3
) -> SearchStrategy[Scenario]:
    """A hypothesis strategy of valid (config, snapshot) pairs with random bounds, counts and readings.

    ``unknown=True`` makes some input unknown (an observe error or an unknown stage reading) and keeps the
    current counts within every bound, so that a guarded plan has no excuse to scale down.
    """
    from hypothesis import strategies as st

    @st.composite
    def build(draw: DrawFn) -> Scenario:
        n_shapes = draw(st.integers(1, max_shapes))
        shapes: list[NodeShape] = []
        for i in range(n_shapes):
            cpu = draw(st.sampled_from([1.0, 2.0, 4.0, 8.0, 16.0]))
            gpu = draw(st.sampled_from([0.0, 0.0, 1.0, 2.0, 4.0]))
            lo = draw(st.integers(0, 2))
            shapes.append(
                make_shape(
                    name=f"s{i}",
                    resources={"CPU": cpu, **({"GPU": gpu} if gpu else {})},
                    price_per_hour=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0])),
                    min_count=lo,
                    max_count=draw(st.integers(lo, lo + 8)),
                )
            )
        stage_cfgs = []
        n_stages = draw(st.integers(0, max_stages))
        for j in range(n_stages):
            host = draw(st.sampled_from(shapes))
            need = {"CPU": draw(st.sampled_from([0.5, 1.0, host.capacity("CPU")]))}
            if host.capacity("GPU") > 0 and draw(st.booleans()):
                need["GPU"] = 1.0
            priors = {
                s.name: draw(st.sampled_from([0.5, 5.0, 100.0]))
                for s in shapes
                if all(s.capacity(r) >= a for r, a in need.items()) and draw(st.booleans())
            }
            stage_cfgs.append(make_stage_config(name=f"st{j}", resources=need, prior_rate=priors))

        counts: dict[str, int] = {}
        pending: dict[str, int] = {}
        for s in shapes:
            top = s.max_count if unknown else s.max_count + 2
            counts[s.name] = draw(st.integers(0, top))
            pending[s.name] = draw(st.integers(0, max(0, top - counts[s.name]) if unknown else 2))
        min_nodes = sum(s.min_count for s in shapes)
        min_cost = sum(s.min_count * s.price_per_hour for s in shapes)
        if unknown:
            # Keep the running cluster inside every bound: only then is any cut a policy/guard fault.
            cur_nodes = sum(counts[s.name] + pending[s.name] for s in shapes)
            cur_cost = sum((counts[s.name] + pending[s.name]) * s.price_per_hour for s in shapes)
            max_nodes = max(min_nodes, cur_nodes) + draw(st.integers(0, 10))
            budget = draw(st.sampled_from([math.inf, max(min_cost, cur_cost) + 5.0]))
        else:
            max_nodes = min_nodes + draw(st.integers(0, 20))
            budget = draw(st.sampled_from([math.inf, min_cost, min_cost + 2.0, min_cost + 50.0]))
        config = make_config(
            shapes=shapes,
            stages=stage_cfgs,
            max_nodes=max_nodes,
            budget_per_hour=budget,
            max_step_up=draw(st.integers(1, 6)),
            max_step_down=draw(st.integers(1, 3)),
            scale_down_window_seconds=draw(st.sampled_from([0.0, 60.0, 300.0])),
        )

        value = st.one_of(
            st.none(),
            st.just(math.nan),
            st.sampled_from([0.0, 1.0, 7.5, 1e12]),
            st.floats(0.0, 1e4, allow_nan=False),
        )
        known = st.one_of(st.sampled_from([0.0, 1.0, 7.5, 1e12]), st.floats(0.0, 1e4, allow_nan=False))
        nodes: list[Node] = []
        for s in shapes:
            for k in range(counts[s.name]):
                nodes.append(
                    make_node(
                        node_id=f"{s.name}-{k}",
                        shape=s.name,
                        cpu_utilization=draw(st.one_of(st.none(), st.floats(0.0, 100.0))),
                        gpu_utilization=draw(st.one_of(st.none(), st.floats(0.0, 100.0))),
                        idle_seconds=draw(st.one_of(st.none(), st.floats(0.0, 2000.0))),
                    )
                )
        stages = []
        for j, sc_cfg in enumerate(stage_cfgs):
            reading = value if not unknown else st.one_of(known, st.none(), st.just(math.nan))
            split = {s.name: draw(st.floats(0.0, 8.0)) for s in shapes if draw(st.booleans())}
            stages.append(
                make_stage(
                    name=sc_cfg.name,
                    backlog=draw(reading),
                    throughput=draw(reading),
                    arrival_rate=draw(reading),
                    slots_busy=draw(reading),
                    slots_by_shape=split,
                    upstream=f"st{j - 1}" if j > 0 and draw(st.booleans()) else None,
                )
            )
        errors: list[str] = []
        if unknown:
            has_unknown_stage = any(not s.complete for s in stages)
            if not has_unknown_stage or draw(st.booleans()):
                errors.append("observe: a source failed")
        elif draw(st.integers(0, 4)) == 0:
            errors.append("observe: a source failed")
        demand = [
            dict(draw(st.sampled_from([c.resources for c in stage_cfgs]))) if stage_cfgs else {"CPU": 1.0}
            for _ in range(draw(st.integers(0, 6)))
        ]
        snap = make_snapshot(
            time=draw(st.floats(0.0, 1e6)),
            config=config,
            nodes=nodes,
            pending_counts=pending,
            stages=stages,
            errors=errors,
            pending_demand=demand,
        )
        return Scenario("random" + (" with unknown inputs" if unknown else ""), config, snap)

    return build()
