"""The testing kit for policy authors: builders, a fake clock, a runner, and the policy contract suite.

Build inputs without a cluster::

    config = make_config(shapes=[make_shape(name="cpu4", resources={"CPU": 4}, price_per_hour=0.2)])
    snap = make_snapshot(
        config=config,
        nodes=make_nodes(shape="cpu4", count=2, cpu_utilization=90),
        stages=[make_stage(name="decode", backlog=400, throughput=20, slots_busy=8)],
    )
    decision = run_policy(MyPolicy(), snap, config)     # guardrails included, exactly as the daemon runs it
    assert decision.plan.target("cpu4") == 3

Prove a policy keeps the contract every raytide policy must keep (deterministic, well-formed, JSON state,
bounded, no scale-down on unknown inputs, robust to empty and extreme inputs)::

    check_policy_contract(lambda: MyPolicy(threshold=3))        # raises AssertionError on a violation

or, with pytest, subclass :class:`PolicyContract` and override ``make_policy``.

The builders need only raytide; the random-input checks need ``hypothesis`` (the ``test`` extra), imported
when they run.
"""

from __future__ import annotations

import enum
import json
import math
import random
import time
import unittest.mock
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from autoscaler.core.config import Config, StageConfig
from autoscaler.core.decide import Decision, DecisionState, decide
from autoscaler.core.policy_api import Policy, PolicyContext, PolicyDecision
from autoscaler.core.throughput import ThroughputModels
from autoscaler.types import Node, NodeShape, Reading, Snapshot, StageDemand, StageObservation, frozen_map

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn, SearchStrategy

__all__ = [
    "FakeClock",
    "PolicyContract",
    "PolicyFactory",
    "PolicySession",
    "Scenario",
    "check_deterministic",
    "check_edge_cases",
    "check_guarded_bounds",
    "check_holds_on_unknown_inputs",
    "check_policy_contract",
    "check_state_round_trip",
    "check_well_formed",
    "contract_scenarios",
    "default_shapes",
    "extreme_scenarios",
    "make_config",
    "make_context",
    "make_node",
    "make_nodes",
    "make_shape",
    "make_snapshot",
    "make_stage",
    "make_stage_config",
    "random_scenarios",
    "run_policy",
    "unknown_scenarios",
]

PolicyFactory = Callable[[], Policy]
"""Makes a fresh policy instance (a class with its options bound, or a lambda)."""

Value = float | Reading | None
"""A reading as builders take it: a number, a ready Reading, or None for "unknown"."""


class _Same(enum.Enum):
    AS_THROUGHPUT = "as throughput"


def _reading(value: Value, what: str) -> Reading:
    if isinstance(value, Reading):
        return value
    if value is None:
        return Reading.unknown(f"{what} not given")
    return Reading.of(float(value))


# ------------------------------------------------------------------------------------------ builders


def make_shape(
    *,
    name: str = "cpu4",
    resources: Mapping[str, float] | None = None,
    price_per_hour: float = 0.2,
    min_count: int = 0,
    max_count: int = 100,
    launch_seconds: float = 60.0,
) -> NodeShape:
    """A node shape; defaults to a 4-CPU node at 0.20 $/h."""
    return NodeShape(
        name=name,
        resources=frozen_map(resources if resources is not None else {"CPU": 4.0}),
        price_per_hour=price_per_hour,
        min_count=min_count,
        max_count=max_count,
        launch_seconds=launch_seconds,
    )


def default_shapes() -> tuple[NodeShape, ...]:
    """A CPU shape and a GPU shape, the smallest heterogeneous cluster worth testing."""
    return (
        make_shape(name="cpu4", resources={"CPU": 4.0}, price_per_hour=0.2, max_count=20),
        make_shape(name="gpu1", resources={"CPU": 4.0, "GPU": 1.0}, price_per_hour=1.0, max_count=8),
    )


def make_stage_config(
    *,
    name: str,
    resources: Mapping[str, float] | None = None,
    prior_rate: Mapping[str, float] | None = None,
    max_slots: int | None = None,
) -> StageConfig:
    """A stage profile for :func:`make_config` (one slot needs ``resources``; default one CPU)."""
    return StageConfig(
        name=name,
        resources=dict(resources if resources is not None else {"CPU": 1.0}),
        prior_rate=dict(prior_rate or {}),
        max_slots=max_slots,
    )


def make_config(
    *,
    shapes: Iterable[NodeShape] | None = None,
    stages: Iterable[StageConfig] = (),
    max_nodes: int = 1000,
    budget_per_hour: float = math.inf,
    max_step_up: int = 10,
    max_step_down: int = 2,
    scale_down_window_seconds: float = 0.0,
    drain_seconds: float = 120.0,
    headroom: float = 0.2,
    default_stage_resources: Mapping[str, float] | None = None,
    policy: str = "throughput",
    policy_options: Mapping[str, Any] | None = None,
) -> Config:
    """A validated configuration (the same checks as a YAML file).

    Unlike the daemon's default (300 s), ``scale_down_window_seconds`` defaults to 0 here, so that one
    :func:`run_policy` call shows a policy's scale-down; pass 300 to test against the production window.
    """
    shape_list = list(shapes) if shapes is not None else list(default_shapes())
    data: dict[str, Any] = {
        "shapes": [
            {
                "name": s.name,
                "resources": dict(s.resources),
                "price_per_hour": s.price_per_hour,
                "min": s.min_count,
                "max": s.max_count,
                "launch_seconds": s.launch_seconds,
            }
            for s in shape_list
        ],
        "stages": [st.model_dump() for st in stages],
        "targets": {"drain_seconds": drain_seconds, "headroom": headroom},
        "bounds": {
            "max_nodes": max_nodes,
            "budget_per_hour": budget_per_hour,
            "max_step_up": max_step_up,
            "max_step_down": max_step_down,
            "scale_down_window_seconds": scale_down_window_seconds,
        },
        "policy": {"name": policy, "options": dict(policy_options or {})},
    }
    if default_stage_resources is not None:
        data["default_stage_resources"] = dict(default_stage_resources)
    return Config.model_validate(data)


def make_node(
    *,
    node_id: str,
    shape: str,
    cpu_utilization: Value = None,
    gpu_utilization: Value = None,
    idle_seconds: float | None = None,
) -> Node:
    """One live node; utilizations are 0–100 (None: unknown); ``idle_seconds`` None means busy."""
    return Node(
        node_id=node_id,
        shape=shape,
        cpu_utilization=_reading(cpu_utilization, "cpu utilization"),
        gpu_utilization=_reading(gpu_utilization, "gpu utilization"),
        idle_seconds=idle_seconds,
    )


def make_nodes(
    *,
    shape: str,
    count: int,
    cpu_utilization: Value = None,
    gpu_utilization: Value = None,
    idle_seconds: float | None = None,
    first: int = 0,
) -> tuple[Node, ...]:
    """``count`` alike nodes with ids ``<shape>-<first>``, ``<shape>-<first + 1>``, …"""
    return tuple(
        make_node(
            node_id=f"{shape}-{i}",
            shape=shape,
            cpu_utilization=cpu_utilization,
            gpu_utilization=gpu_utilization,
            idle_seconds=idle_seconds,
        )
        for i in range(first, first + count)
    )


def make_stage(
    *,
    name: str = "stage",
    backlog: Value = 0.0,
    throughput: Value = 0.0,
    arrival_rate: Value | _Same = _Same.AS_THROUGHPUT,
    slots_busy: Value = 0.0,
    slots_by_shape: Mapping[str, float] | None = None,
    upstream: str | None = None,
) -> StageObservation:
    """One stage observation; None makes a reading unknown. The arrival rate defaults to the throughput
    (a steady stage); give it to model a growing or shrinking backlog."""
    tp = _reading(throughput, "throughput")
    arrival = tp if isinstance(arrival_rate, _Same) else _reading(arrival_rate, "arrival rate")
    return StageObservation(
        name=name,
        backlog=_reading(backlog, "backlog"),
        throughput=tp,
        arrival_rate=arrival,
        slots_busy=_reading(slots_busy, "busy slots"),
        slots_by_shape=frozen_map(slots_by_shape),
        upstream=upstream,
    )


def make_snapshot(
    *,
    time: float = 0.0,
    config: Config | None = None,
    shapes: Iterable[NodeShape] | None = None,
    nodes: Iterable[Node] = (),
    node_counts: Mapping[str, int] | None = None,
    pending_counts: Mapping[str, int] | None = None,
    stages: Iterable[StageObservation] = (),
    errors: Iterable[str] = (),
    pending_demand: Iterable[Mapping[str, float]] = (),
) -> Snapshot:
    """A snapshot. Shapes come from ``shapes``, else ``config``, else :func:`default_shapes` — keep them
    the config's shapes, as the daemon does. ``node_counts`` defaults to the nodes counted by shape."""
    if shapes is not None:
        shape_t = tuple(shapes)
    elif config is not None:
        shape_t = config.node_shapes()
    else:
        shape_t = default_shapes()
    node_t = tuple(nodes)
    if node_counts is None:
        counted: dict[str, int] = {s.name: 0 for s in shape_t}
        for n in node_t:
            counted[n.shape] = counted.get(n.shape, 0) + 1
        node_counts = counted
    return Snapshot(
        time=time,
        shapes=shape_t,
        nodes=node_t,
        node_counts=_frozen_counts(node_counts),
        pending_counts=_frozen_counts(pending_counts or {}),
        stages=tuple(stages),
        errors=tuple(errors),
        pending_demand=tuple(frozen_map(b) for b in pending_demand),
    )


def _frozen_counts(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({str(k): int(v) for k, v in counts.items()})


def make_context(
    snapshot: Snapshot,
    config: Config,
    *,
    models: ThroughputModels | None = None,
    state: Mapping[str, Any] | None = None,
) -> PolicyContext:
    """The context a policy's ``decide`` receives, for calling a policy directly (no guardrails).

    Like the daemon, it updates ``models`` (a fresh one by default) with the snapshot first.
    """
    m = models if models is not None else ThroughputModels()
    m.update(snapshot)
    return PolicyContext(snapshot=snapshot, models=m, config=config, state=dict(state or {}))


# ------------------------------------------------------------------------------------------- running


@dataclass
class FakeClock:
    """Time as data for multi-tick scenarios: ``now`` only moves when the test says so."""

    now: float = 0.0

    def advance(self, seconds: float) -> float:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a clock only moves forward by a finite amount, got {seconds}")
        self.now += seconds
        return self.now

    def __call__(self) -> float:
        return self.now


def run_policy(
    policy: Policy,
    snapshot: Snapshot,
    config: Config,
    *,
    models: ThroughputModels | None = None,
    state: DecisionState | None = None,
) -> Decision:
    """One decision exactly as the daemon makes it: model update → policy → selection → guardrails.

    Pass ``models`` and the previous ``decision.state`` to run several ticks (or use PolicySession).
    """
    return decide(
        snapshot,
        config,
        models if models is not None else ThroughputModels(),
        policy,
        state if state is not None else DecisionState(),
    )


@dataclass
class PolicySession:
    """Several ticks of one policy, carrying models and state from one decision to the next::

    clock = FakeClock()
    session = PolicySession(policy, config)
    for _ in range(10):
        session.step(make_snapshot(time=clock.now, config=config, ...))
        clock.advance(15)
    """

    policy: Policy
    config: Config
    models: ThroughputModels = field(default_factory=ThroughputModels)
    state: DecisionState = field(default_factory=DecisionState)
    decisions: list[Decision] = field(default_factory=list)

    def step(self, snapshot: Snapshot) -> Decision:
        d = run_policy(self.policy, snapshot, self.config, models=self.models, state=self.state)
        self.state = d.state
        self.decisions.append(d)
        return d

    @property
    def last(self) -> Decision:
        if not self.decisions:
            raise LookupError("no step has run yet")
        return self.decisions[-1]


# ------------------------------------------------------------------------------------------ contract


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


def _fail(scenario: str, message: str) -> AssertionError:
    return AssertionError(f"[{scenario}] {message}")


def _decide_raw(policy: Policy, sc: Scenario, state: Mapping[str, Any] | None = None) -> PolicyDecision:
    try:
        return policy.decide(make_context(sc.snapshot, sc.config, state=state))
    except Exception as e:
        raise _fail(sc.name, f"decide raised {type(e).__name__}: {e}") from e


def _validate_decision(d: object, sc: Scenario) -> PolicyDecision:
    if not isinstance(d, PolicyDecision):
        raise _fail(sc.name, f"decide returned {type(d).__name__}, not a PolicyDecision")
    if (d.demands is None) == (d.target_counts is None):
        raise _fail(sc.name, "a decision must carry exactly one of demands or target_counts")
    shape_names = {s.name for s in sc.snapshot.shapes}
    stage_names = {s.name for s in sc.snapshot.stages}
    if d.target_counts is not None:
        if not isinstance(d.target_counts, Mapping):
            raise _fail(sc.name, f"target_counts is a {type(d.target_counts).__name__}, not a mapping")
        for shape, n in d.target_counts.items():
            if shape not in shape_names:
                raise _fail(
                    sc.name, f"target_counts names unknown shape {shape!r} (known: {sorted(shape_names)})"
                )
            if isinstance(n, bool) or not isinstance(n, int):
                raise _fail(sc.name, f"target_counts[{shape!r}] = {n!r} is not an int")
            if n < 0:
                raise _fail(sc.name, f"target_counts[{shape!r}] = {n} is negative")
    if d.demands is not None:
        seen: set[str] = set()
        for dem in d.demands:
            if not isinstance(dem, StageDemand):
                raise _fail(sc.name, f"demands holds a {type(dem).__name__}, not a StageDemand")
            if dem.stage not in stage_names:
                raise _fail(sc.name, f"demand for unknown stage {dem.stage!r} (known: {sorted(stage_names)})")
            if dem.stage in seen:
                raise _fail(sc.name, f"two demands for stage {dem.stage!r}")
            seen.add(dem.stage)
            if not (math.isfinite(dem.target_rate) and dem.target_rate >= 0):
                raise _fail(
                    sc.name, f"demand for {dem.stage!r} has target_rate {dem.target_rate}, not finite >= 0"
                )
    if not all(isinstance(r, str) for r in d.reasons):
        raise _fail(sc.name, "reasons must all be strings")
    _check_state(d.state, sc.name)
    return d


def _check_state(state: object, where: str) -> None:
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise _fail(where, f"state must be a mapping with string keys, got {type(state).__name__}")
    try:
        # The daemon persists dict(state): the top level may be any mapping, everything inside must be JSON.
        json.dumps(dict(state), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _fail(where, f"state is not JSON-serialisable ({e}): {state!r:.300}") from e


def _canonical(d: PolicyDecision) -> str:
    """A comparable form of a decision (floats by repr, so NaN equals NaN and 0.1 + 0.2 != 0.3)."""
    demands = (
        None if d.demands is None else [(x.stage, repr(x.target_rate), x.reason, x.hold) for x in d.demands]
    )
    counts = None if d.target_counts is None else sorted((k, repr(v)) for k, v in d.target_counts.items())
    state = json.dumps(d.state, sort_keys=True, default=repr)
    return repr((demands, counts, list(d.reasons), state))


def _check_plan(decision: Decision, sc: Scenario) -> None:
    cfg = sc.config
    plan = decision.plan
    targets = plan.targets()
    for s in sc.snapshot.shapes:
        if s.name not in targets:
            raise _fail(sc.name, f"the guarded plan has no target for shape {s.name!r}")
        t = targets[s.name]
        if isinstance(t, bool) or not isinstance(t, int):
            raise _fail(sc.name, f"the guarded target for {s.name!r} is {t!r}, not an int")
        if not s.min_count <= t <= s.max_count:
            raise _fail(
                sc.name, f"guarded target {t} for {s.name!r} is outside [{s.min_count}, {s.max_count}]"
            )
    total = sum(targets.values())
    if total > cfg.bounds.max_nodes:
        raise _fail(sc.name, f"the guarded plan has {total} nodes, over max_nodes {cfg.bounds.max_nodes}")
    cost = plan.cost_per_hour(sc.snapshot.shapes)
    budget = cfg.bounds.budget_per_hour
    if math.isfinite(budget) and cost > budget * (1 + 1e-9) + 1e-9:
        raise _fail(sc.name, f"the guarded plan costs {cost:.4f} $/h, over the budget {budget}")
    _check_state(decision.state.to_json(), sc.name + " (decision state)")


def _run_guarded(policy: Policy, sc: Scenario, state: DecisionState | None = None) -> Decision:
    try:
        return run_policy(policy, sc.snapshot, sc.config, state=state)
    except AssertionError:
        raise
    except Exception as e:
        raise _fail(sc.name, f"deciding through the guardrails raised {type(e).__name__}: {e}") from e


def _check_no_scale_down(decision: Decision, sc: Scenario) -> None:
    for s in sc.snapshot.shapes:
        cur = sc.current.get(s.name, 0)
        t = decision.plan.target(s.name)
        # Bounds may force a cut only when the cluster itself breaks them; the scenarios keep within them.
        if t < min(cur, s.max_count):
            raise _fail(
                sc.name,
                f"inputs are unknown, yet the guarded plan scales {s.name!r} down from {cur} to {t}",
            )


def _fresh(factory: PolicyFactory) -> Policy:
    p = factory()
    if not isinstance(p, Policy):
        raise AssertionError(
            f"the factory made a {type(p).__name__}, which lacks a 'name' attribute or a 'decide(ctx)' method"
        )
    if not isinstance(p.name, str) or not p.name:
        raise AssertionError(f"a policy's name must be a non-empty string, got {p.name!r}")
    return p


def _tick(sc: Scenario, t: float) -> Scenario:
    """The same scenario later in time (for multi-tick checks)."""
    s = sc.snapshot
    snap = Snapshot(
        time=s.time + t,
        shapes=s.shapes,
        nodes=s.nodes,
        node_counts=s.node_counts,
        pending_counts=s.pending_counts,
        stages=s.stages,
        errors=s.errors,
        pending_demand=s.pending_demand,
    )
    return Scenario(f"{sc.name} @+{t:g}s", sc.config, snap)


def check_well_formed(factory: PolicyFactory) -> None:
    """Every fixed scenario: a PolicyDecision with exactly one of demands/target_counts, target counts
    non-negative ints for known shapes, demands for known stages with finite rates, JSON state; and the
    guarded plan is within bounds."""
    for sc in contract_scenarios():
        _validate_decision(_decide_raw(_fresh(factory), sc), sc)
        _check_plan(_run_guarded(_fresh(factory), sc), sc)


def check_deterministic(factory: PolicyFactory) -> None:
    """The same context gives the same decision: twice on one instance, on a fresh instance, with the
    wall clock and the global random generators moved, and mid-way through a run of ticks."""
    import numpy as np

    for sc in contract_scenarios():
        p = _fresh(factory)
        ctx = make_context(sc.snapshot, sc.config)
        first = _canonical(_validate_decision(p.decide(ctx), sc))
        if _canonical(p.decide(ctx)) != first:
            raise _fail(
                sc.name, "the same context twice gave two different decisions (hidden instance state?)"
            )
        if _canonical(_fresh(factory).decide(ctx)) != first:
            raise _fail(sc.name, "two fresh instances disagree on the same context")
        real_time, real_mono = time.time(), time.monotonic()
        random.seed(12345)
        np.random.seed(54321)
        with (
            unittest.mock.patch("time.time", return_value=real_time + 86_400.0),
            unittest.mock.patch("time.monotonic", return_value=real_mono + 86_400.0),
        ):
            moved = _canonical(_fresh(factory).decide(ctx))
        if moved != first:
            raise _fail(sc.name, "the decision changed with the wall clock or the random state; use ctx.now")

    # A run of ticks: an instance that has seen earlier ticks and a fresh one given the same state agree.
    sc = contract_scenarios()[0]
    veteran = _fresh(factory)
    state: Mapping[str, Any] = {}
    for i, t in enumerate((0.0, 15.0, 30.0, 45.0)):
        step = _tick(sc, t)
        ctx = make_context(step.snapshot, step.config, state=state)
        d = _validate_decision(veteran.decide(ctx), step)
        if _canonical(_fresh(factory).decide(ctx)) != _canonical(d):
            raise _fail(step.name, f"at tick {i}, a fresh instance given the same state decided differently")
        state = d.state


def check_state_round_trip(factory: PolicyFactory) -> None:
    """State survives a restart: fed back after a JSON round trip, it gives the same decisions."""
    for base in contract_scenarios()[:3]:
        direct: Mapping[str, Any] = {}
        restored: Mapping[str, Any] = {}
        p = _fresh(factory)
        for t in (0.0, 20.0, 40.0):
            sc = _tick(base, t)
            a = _validate_decision(p.decide(make_context(sc.snapshot, sc.config, state=direct)), sc)
            b = _validate_decision(
                _fresh(factory).decide(make_context(sc.snapshot, sc.config, state=restored)), sc
            )
            if _canonical(a) != _canonical(b):
                raise _fail(
                    sc.name, "a decision from JSON-restored state differs from one with the live state"
                )
            direct = a.state
            restored = json.loads(json.dumps(dict(b.state)))


def check_holds_on_unknown_inputs(factory: PolicyFactory, *, max_examples: int = 15) -> None:
    """With any stage reading unknown or any observe error, the guarded plan scales nothing down."""
    for sc in unknown_scenarios():
        _check_no_scale_down(_run_guarded(_fresh(factory), sc), sc)
    _hypothesis_check(factory, max_examples=max_examples, unknown=True)


def check_guarded_bounds(factory: PolicyFactory, *, max_examples: int = 15) -> None:
    """For random clusters, the policy's decision is well-formed and the guarded plan within bounds."""
    _hypothesis_check(factory, max_examples=max_examples, unknown=False)


def check_edge_cases(factory: PolicyFactory) -> None:
    """Empty snapshots, a backlog of 1e12, zero rates, 50 shapes, NaN readings, counts over the bounds:
    the policy answers, and the guarded plan is within bounds — over a few ticks, with state carried."""
    names = {"empty snapshot", "no stages, some nodes", "NaN readings"}
    chosen = [sc for sc in contract_scenarios() if sc.name in names] + list(extreme_scenarios())
    for base in chosen:
        state: DecisionState | None = None
        policy = _fresh(factory)
        for t in (0.0, 400.0):
            sc = _tick(base, t)
            _validate_decision(_decide_raw(_fresh(factory), sc), sc)
            d = _run_guarded(policy, sc, state)
            _check_plan(d, sc)
            state = d.state


def check_policy_contract(policy_factory: PolicyFactory, *, max_examples: int = 15) -> None:
    """Run every contract check; raise one AssertionError listing each violation found."""
    checks: list[tuple[str, Callable[[], None]]] = [
        ("well_formed", lambda: check_well_formed(policy_factory)),
        ("deterministic", lambda: check_deterministic(policy_factory)),
        ("state_round_trip", lambda: check_state_round_trip(policy_factory)),
        ("edge_cases", lambda: check_edge_cases(policy_factory)),
        ("guarded_bounds", lambda: check_guarded_bounds(policy_factory, max_examples=max_examples)),
        (
            "holds_on_unknown_inputs",
            lambda: check_holds_on_unknown_inputs(policy_factory, max_examples=max_examples),
        ),
    ]
    failures = []
    for name, check in checks:
        try:
            check()
        except Exception as e:
            notes = "\n".join(getattr(e, "__notes__", []))
            failures.append(f"- {name}: {type(e).__name__}: {e}" + (f"\n{notes}" if notes else ""))
    if failures:
        raise AssertionError("the policy breaks the raytide policy contract:\n" + "\n".join(failures))


class PolicyContract:
    """The contract as pytest tests. In a plugin's test module::

    class TestMyPolicy(PolicyContract):
        def make_policy(self) -> Policy:
            return MyPolicy(threshold=3)
    """

    max_examples: ClassVar[int] = 15
    """Random examples per property check; raise it for a deeper (slower) run."""

    def make_policy(self) -> Policy:
        raise NotImplementedError(
            "override make_policy() to return a fresh instance of the policy under test"
        )

    def test_is_a_policy(self) -> None:
        _fresh(self.make_policy)

    def test_well_formed(self) -> None:
        check_well_formed(self.make_policy)

    def test_deterministic(self) -> None:
        check_deterministic(self.make_policy)

    def test_state_round_trip(self) -> None:
        check_state_round_trip(self.make_policy)

    def test_edge_cases(self) -> None:
        check_edge_cases(self.make_policy)

    def test_guarded_bounds(self) -> None:
        check_guarded_bounds(self.make_policy, max_examples=self.max_examples)

    def test_holds_on_unknown_inputs(self) -> None:
        check_holds_on_unknown_inputs(self.make_policy, max_examples=self.max_examples)


# ------------------------------------------------------------------------------------- random inputs


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


def _hypothesis_check(factory: PolicyFactory, *, max_examples: int, unknown: bool) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(random_scenarios(unknown=unknown))
    def prop(sc: Scenario) -> None:
        _validate_decision(_decide_raw(_fresh(factory), sc), sc)
        d = _run_guarded(_fresh(factory), sc)
        _check_plan(d, sc)
        if unknown:
            _check_no_scale_down(d, sc)

    prop()
