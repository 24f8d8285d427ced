"""The policy contract every raytide policy must keep (deterministic, well-formed, JSON state, bounded, no
scale-down on unknown inputs, robust to empty and extreme inputs): each check as a function, all of them at
once (``check_policy_contract``), and as pytest tests (``PolicyContract``)."""

from __future__ import annotations

import json
import math
import random
import time
import unittest.mock
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from autoscaler.core.decide import Decision, DecisionState
from autoscaler.core.policy_api import Policy, PolicyDecision
from autoscaler.testing.builders import make_context
from autoscaler.testing.scenarios import (
    Scenario,
    contract_scenarios,
    extreme_scenarios,
    random_scenarios,
    unknown_scenarios,
)
from autoscaler.testing.session import run_policy
from autoscaler.types import Snapshot, StageDemand

__all__ = [
    "PolicyContract",
    "PolicyFactory",
    "check_deterministic",
    "check_edge_cases",
    "check_guarded_bounds",
    "check_holds_on_unknown_inputs",
    "check_policy_contract",
    "check_state_round_trip",
    "check_well_formed",
]

PolicyFactory = Callable[[], Policy]
"""Makes a fresh policy instance (a class with its options bound, or a lambda)."""


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
