"""One decision: model update → policy → shape selection → guardrails → an explained Plan.

The same function serves ``raytide recommend`` (dry run), ``raytide run`` (acting) and the simulator, so a
recommendation is exactly what the daemon would do. Pure apart from updating the models object it is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from autoscaler.config import Config
from autoscaler.guardrails import GuardLimits, GuardState, apply_guardrails
from autoscaler.policy import Policy, PolicyContext, PolicyDecision
from autoscaler.selection import Selection, SelectionProblem, StageRequirement, select_shapes
from autoscaler.throughput import RateEstimate, ThroughputModels
from autoscaler.types import Placement, Plan, ShapeChange, Snapshot, StageDemand, UnmetDemand


@dataclass(frozen=True, slots=True)
class DecisionState:
    """Everything a decision carries to the next one, besides the models."""

    guard: GuardState = field(default_factory=GuardState)
    policy_state: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        return {"guard": self.guard.to_json(), "policy_state": dict(self.policy_state)}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> DecisionState:
        return DecisionState(
            guard=GuardState.from_json(data.get("guard", {})),
            policy_state=MappingProxyType(dict(data.get("policy_state", {}))),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    plan: Plan
    state: DecisionState
    estimates: Mapping[str, Mapping[str, RateEstimate]]
    """Stage → shape → the rate estimate the plan used (for display and explanation)."""


def limits_from(config: Config) -> GuardLimits:
    b = config.bounds
    return GuardLimits(
        max_nodes=b.max_nodes,
        budget_per_hour=b.budget_per_hour,
        max_step_up=b.max_step_up,
        max_step_down=b.max_step_down,
        scale_down_window_seconds=b.scale_down_window_seconds,
    )


def stage_estimates(
    snapshot: Snapshot, config: Config, models: ThroughputModels
) -> dict[str, dict[str, RateEstimate]]:
    shape_names = [s.name for s in snapshot.shapes]
    out: dict[str, dict[str, RateEstimate]] = {}
    for st in snapshot.stages:
        profile = config.stage_profile(st.name)
        priors = dict(profile.prior_rate) if profile else {}
        need = config.stage_resources(st.name)
        fitting = [
            s.name for s in snapshot.shapes if all(s.capacity(k) >= v for k, v in need.items() if v > 0)
        ]
        ests = models.estimates_for_stage(st.name, [n for n in shape_names if n in fitting], priors)
        out[st.name] = ests
    return out


def _requirements(
    demands: tuple[StageDemand, ...],
    estimates: Mapping[str, Mapping[str, RateEstimate]],
    config: Config,
) -> tuple[StageRequirement, ...]:
    reqs = []
    for d in demands:
        if d.hold or d.target_rate <= 0:
            continue
        ests = estimates.get(d.stage, {})
        per_slot: dict[str, float] = {}
        for shape, est in ests.items():
            # Linearise the sub-linear model at the scale this stage would need on that shape.
            n = max(1, est.slots_for(d.target_rate))
            rate = est.per_slot_at(n)
            if math.isfinite(rate) and rate > 0:
                per_slot[shape] = rate
        profile = config.stage_profile(d.stage)
        reqs.append(
            StageRequirement(
                name=d.stage,
                target_rate=d.target_rate,
                slot_resources=dict(config.stage_resources(d.stage)),
                per_slot_rate=per_slot,
                max_slots=profile.max_slots if profile else None,
            )
        )
    return tuple(reqs)


def _explain(
    shape: str,
    current: int,
    target: int,
    placements: tuple[Placement, ...],
    guard_reasons: list[str],
    policy_reasons: tuple[str, ...],
) -> str:
    mine = [p for p in placements if p.shape == shape]
    work = ", ".join(f"{p.slots} {p.stage} slot(s) giving {p.rate:.3g}/s" for p in mine)
    if target > current:
        head = f"add {target - current}: " + (work or "asked for by the policy")
    elif target < current:
        head = f"remove {current - target}: " + (
            f"{target} node(s) suffice for {work}" if work else "no work needs it"
        )
    else:
        head = "keep: " + (work or "no stage needs it")
    if guard_reasons:
        head += " — " + "; ".join(guard_reasons)
    elif not mine and policy_reasons and target != current:
        head += " — " + policy_reasons[0]
    return head


def _deadband(
    problem: SelectionProblem, selection: Selection, current: Mapping[str, int], config: Config
) -> Selection:
    """Keep the nodes there are while they still serve the demand with part of the headroom to spare.

    Without it every upward wiggle of a noisy rate adds a node at once, and the slow, windowed scale-down
    takes it away minutes later: churn and reversals for no gain. The check plans within today's counts
    for demand with only ``1 - scale_up_deadband`` of the headroom; if that leaves nothing unmet, the
    cluster is big enough, and that plan (which may also shed nodes, through the guardrails' window) is
    used — never the up half of a reshuffle without its down half.
    """
    h = config.targets.headroom
    keep = 1.0 - config.targets.scale_up_deadband
    if h <= 0 or keep >= 1.0:
        return selection
    factor = (1.0 + h * keep) / (1.0 + h)
    reduced = tuple(replace(r, target_rate=r.target_rate * factor) for r in problem.stages)
    within = select_shapes(replace(problem, stages=reduced, upper=dict(current)))
    if within.unmet or within.status != "optimal":
        return selection
    return within


def decide(
    snapshot: Snapshot,
    config: Config,
    models: ThroughputModels,
    policy: Policy,
    state: DecisionState,
) -> Decision:
    models.update(snapshot)
    ctx = PolicyContext(snapshot=snapshot, models=models, config=config, state=state.policy_state)
    result: PolicyDecision = policy.decide(ctx)
    estimates = stage_estimates(snapshot, config, models)
    current = snapshot.counts_including_pending()
    inputs_known = snapshot.inputs_complete
    placements: tuple[Placement, ...] = ()
    unmet: tuple[UnmetDemand, ...] = ()
    demands: tuple[StageDemand, ...] = ()
    if result.demands is not None:
        demands = result.demands
        if any(d.hold for d in demands):
            inputs_known = False
        problem = SelectionProblem(
            shapes=snapshot.shapes,
            stages=_requirements(demands, estimates, config),
            max_nodes=config.bounds.max_nodes,
            budget_per_hour=config.bounds.budget_per_hour,
            # Unknown inputs: whatever the selector says, never below what runs now.
            lower={} if inputs_known else dict(current),
        )
        selection = select_shapes(problem)
        if inputs_known and any(selection.counts.get(n, 0) > c for n, c in current.items()):
            selection = _deadband(problem, selection, current, config)
        proposed: dict[str, int] = dict(selection.counts)
        placements = selection.placements
        unmet = selection.unmet
    else:
        assert result.target_counts is not None
        proposed = {
            s.name: int(result.target_counts.get(s.name, current.get(s.name, 0))) for s in snapshot.shapes
        }

    guard = apply_guardrails(
        now=snapshot.time,
        shapes=snapshot.shapes,
        current=current,
        proposed=proposed,
        inputs_known=inputs_known,
        limits=limits_from(config),
        state=state.guard,
    )
    changes = tuple(
        ShapeChange(
            shape=s.name,
            current=current.get(s.name, 0),
            target=guard.targets[s.name],
            reason=_explain(
                s.name,
                current.get(s.name, 0),
                guard.targets[s.name],
                placements,
                guard.reasons[s.name],
                result.reasons,
            ),
            proposed=proposed.get(s.name),
        )
        for s in snapshot.shapes
    )
    reasons = list(result.reasons)
    if not inputs_known:
        reasons.append("some inputs are unknown: holding, no scale-down")
        reasons.extend(snapshot.errors)
    plan = Plan(
        time=snapshot.time,
        policy=policy.name,
        changes=changes,
        placements=placements,
        unmet=unmet,
        demands=demands,
        reasons=tuple(reasons),
        held=guard.held or not inputs_known,
    )
    return Decision(
        plan=plan,
        state=DecisionState(guard=guard.state, policy_state=MappingProxyType(dict(result.state))),
        estimates=estimates,
    )
