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

from autoscaler.core.config import Config
from autoscaler.core.guardrails import GuardLimits, GuardState, apply_guardrails
from autoscaler.core.policy_api import Policy, PolicyContext, PolicyDecision
from autoscaler.core.selection import (
    Selection,
    SelectionProblem,
    StageRequirement,
    covers,
    select_covering,
    select_shapes,
)
from autoscaler.core.throughput import RateEstimate, ThroughputModels
from autoscaler.types import (
    NodeShape,
    Placement,
    Plan,
    ShapeChange,
    Snapshot,
    StageDemand,
    StageObservation,
    UnmetDemand,
    slot_hosts,
)


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
    hosts = slot_hosts(snapshot.shapes)
    out: dict[str, dict[str, RateEstimate]] = {}
    for st in snapshot.stages:
        profile = config.stage_profile(st.name)
        priors = dict(profile.prior_rate) if profile else {}
        fitting = [s.name for s in hosts(config.stage_resources(st.name))]
        out[st.name] = models.estimates_for_stage(st.name, fitting, priors)
    return out


_EFFICIENCY_FLOOR = 0.95
"""The lowest scaling exponent a plan extrapolates with. A fit over a narrow range of slot counts (a steady
stage) or over a transient (a step, where windowed rates and busy slots lag differently) can put the
exponent anywhere down to the model's 0.5, and ``rate(n) = r·n^0.5`` sized from it asks for several times
the nodes a stage needs; real stages that scale worse than this are rare, and their shortfall shows in the
next observation (see ``_CALIBRATION_BAND``) rather than as a cluster bought on an artefact."""

_CALIBRATION_BAND = 1.15
"""How far (as a ratio) a model may disagree with what a stage does now before the observation wins.
Within the band the model is used as it is, so rate noise does not move plans; beyond it the model is
re-anchored to within the band of the observed per-slot rate (a soft threshold: no jump at its edge)."""

_CALIBRATION_LIMIT = 2.0
"""Re-anchoring never moves a model by more than this factor in one decision."""


def _calibration(
    obs: StageObservation | None, ests: Mapping[str, RateEstimate], efficiency_floor: float
) -> float:
    """Factor on the model's rates so they agree (within the band) with the stage's measured throughput.

    The measured rate at the current slot split is the ground truth DS2 sizes from; the model supplies the
    differences between shapes and the effect of scale. 1.0 when there is nothing to compare against.
    """
    if obs is None or not obs.complete:
        return 1.0
    tp = obs.throughput.get()
    busy = obs.slots_busy.get()
    if not (tp > 0 and busy >= 1.0):
        return 1.0
    predicted = 0.0
    for shape, slots in obs.slots_by_shape.items():
        est = ests.get(shape)
        if est is None or not (math.isfinite(slots) and slots > 0):
            continue
        predicted += _with_floor(est, efficiency_floor, slots).rate(slots)
    if not (predicted > 0 and math.isfinite(predicted)):
        return 1.0
    ratio = tp / predicted
    if ratio > _CALIBRATION_BAND:
        ratio /= _CALIBRATION_BAND
    elif ratio < 1.0 / _CALIBRATION_BAND:
        ratio *= _CALIBRATION_BAND
    else:
        return 1.0
    return min(_CALIBRATION_LIMIT, max(1.0 / _CALIBRATION_LIMIT, ratio))


def _with_floor(est: RateEstimate, efficiency_floor: float, anchor: float = 1.0) -> RateEstimate:
    """``est`` with its exponent raised to ``efficiency_floor``, keeping its rate at ``anchor`` slots.

    The model is trusted where it has data — at the slot count the stage runs at now — and only its
    extrapolation away from there is tempered.
    """
    if est.efficiency >= efficiency_floor:
        return est
    n = anchor if math.isfinite(anchor) and anchor > 1.0 else 1.0
    rate = est.per_slot_rate * n ** (est.efficiency - efficiency_floor)
    return replace(est, per_slot_rate=rate, efficiency=efficiency_floor)


def _anchor(obs: StageObservation | None, shape: str) -> float:
    if obs is None:
        return 1.0
    slots = obs.slots_by_shape.get(shape, 0.0)
    return slots if math.isfinite(slots) and slots > 1.0 else 1.0


def _prior_bias(ests: Mapping[str, RateEstimate], priors: Mapping[str, float]) -> float:
    """How far the configured priors were off on the shapes already observed (geometric mean ratio).

    Priors are one benchmark's numbers; where the stage has been measured on some shapes, the same error is
    the best guess for the shapes it has not run on yet, so an optimistic prior does not make an unmeasured
    shape look cheapest.
    """
    logs = [
        math.log(est.per_slot_rate / priors[shape])
        for shape, est in ests.items()
        if est.source == "observed" and priors.get(shape, 0.0) > 0 and est.per_slot_rate > 0
    ]
    if not logs:
        return 1.0
    return min(_CALIBRATION_LIMIT, max(1.0 / _CALIBRATION_LIMIT, math.exp(sum(logs) / len(logs))))


def _lateness(
    obs: StageObservation | None,
    ests: Mapping[str, RateEstimate],
    shapes: Mapping[str, NodeShape],
    drain_seconds: float,
) -> dict[str, float]:
    """Per shape, the share of a drain a new slot there can still do, for a stage that is behind (used to
    choose new capacity only: see ``decide``).

    A stage with a queue worth more than ``_BEHIND_SECONDS`` of its input must drain it within
    ``drain_seconds`` of the first new capacity landing; a slot on a shape that boots ``Δ`` seconds later
    than the stage's fastest shape works for only ``drain_seconds − Δ`` of that time while the queue keeps
    growing, so it counts for that share (at least ``_LATE_FLOOR``). Without it the planner, which prices
    capacity by the hour, buys the slowest-booting shapes for a burst when they are a little cheaper per
    slot, and the queue waits for them. Empty (no change) for a stage that keeps up.
    """
    if obs is None or not obs.complete or drain_seconds <= 0:
        return {}
    rate = max(obs.arrival_rate.get(), obs.throughput.get())
    if not (rate > 0 and obs.backlog.get() > _BEHIND_SECONDS * rate):
        return {}
    launches = {n: shapes[n].launch_seconds for n in ests if n in shapes}
    if not launches:
        return {}
    fastest = min(launches.values())
    return {n: max(_LATE_FLOOR, 1.0 - (t - fastest) / drain_seconds) for n, t in launches.items()}


_BEHIND_SECONDS = 10.0
"""A stage whose queue holds more than this many seconds of its input is behind (see ``_lateness``)."""

_LATE_FLOOR = 0.25


def _requirements(
    demands: tuple[StageDemand, ...],
    estimates: Mapping[str, Mapping[str, RateEstimate]],
    config: Config,
    observations: Mapping[str, StageObservation] | None = None,
    lateness: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[StageRequirement, ...]:
    """Per stage, the target rate and a per-slot rate per shape that the planner can trust.

    The models' rates are used (1) with the scaling exponent floored at ``_EFFICIENCY_FLOOR``, (2) re-anchored
    to the stage's measured throughput when they disagree with it by more than ``_CALIBRATION_BAND``, (3)
    with priors on unmeasured shapes corrected by how far the priors were off on measured ones, and (4)
    charged for being less certain than the stage's best-known shape — ``× (1 + rel_best) / (1 + rel)`` —
    so a shape the plan knows little about is chosen only when it is clearly cheaper, not because its guess
    happens to be optimistic; and (5) times ``lateness`` (stage → shape → factor, see ``_lateness``) where
    given.
    """
    obs = observations or {}
    lateness = lateness or {}
    reqs = []
    for d in demands:
        if d.hold or d.target_rate <= 0:
            continue
        ests = estimates.get(d.stage, {})
        profile = config.stage_profile(d.stage)
        priors = dict(profile.prior_rate) if profile else {}
        calib = _calibration(obs.get(d.stage), ests, _EFFICIENCY_FLOOR)
        bias = _prior_bias(ests, priors)
        # Uncertainty is charged relative to the best-known shape: it steers the choice between shapes
        # without inflating the cluster of a stage that is known only from priors.
        best_rel = min((max(0.0, e.rel_uncertainty) for e in ests.values()), default=0.0)
        per_slot: dict[str, float] = {}
        late = lateness.get(d.stage, {})
        for shape, raw in ests.items():
            est = _with_floor(raw, _EFFICIENCY_FLOOR, _anchor(obs.get(d.stage), shape))
            factor = calib * (bias if est.source == "prior" else 1.0) * late.get(shape, 1.0)
            # Linearise the sub-linear model at the scale this stage would need on that shape.
            n = max(1, est.slots_for(d.target_rate / factor))
            rate = est.per_slot_at(n) * factor * (1.0 + best_rel) / (1.0 + max(0.0, est.rel_uncertainty))
            if math.isfinite(rate) and rate > 0:
                per_slot[shape] = rate
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
    problem: SelectionProblem,
    selection: Selection,
    current: Mapping[str, int],
    config: Config,
    *,
    launching: bool = False,
) -> Selection:
    """Keep the nodes there are while they still serve the demand with part of the headroom to spare.

    Without it every upward wiggle of a noisy rate adds a node at once, and the slow, windowed scale-down
    takes it away minutes later: churn and reversals for no gain. The check plans within today's counts
    for demand with only ``1 - scale_up_deadband`` of the headroom (none of it while launches are pending,
    see below); if that leaves nothing unmet, the cluster is big enough, and that plan (which may also shed
    nodes, through the guardrails' window) is used — never the up half of a reshuffle without its down
    half.
    """
    h = config.targets.headroom
    keep = 1.0 - config.targets.scale_up_deadband
    if launching:
        # Capacity bought by an earlier decision is still booting: its effect is not measured yet, and the
        # demand leans on a projection of the queue it will find. Like Flink's stabilization interval and
        # DS2's activation time, more is bought meanwhile only when the demand outgrows the whole headroom
        # (which exists for exactly this error), not for a wiggle that new nodes landing even later would
        # answer.
        keep = 0.0
    if h <= 0 or keep >= 1.0:
        return selection
    # select_covering: select_shapes's plan when it leaves nothing unmet (status "optimal"), else None —
    # the same answer, proved from the resources or the LP relaxation alone when today's nodes fall short.

    factor = (1.0 + h * keep) / (1.0 + h)
    reduced = tuple(replace(r, target_rate=r.target_rate * factor) for r in problem.stages)
    within = select_covering(replace(problem, stages=reduced, upper=dict(current)))
    return selection if within is None else within


def _hold_band(
    problem: SelectionProblem, selection: Selection, current: Mapping[str, int], config: Config
) -> Selection:
    """Scale down only once the nodes that would remain are clearly more than the demand needs.

    The mirror of ``_deadband``: a plan that sheds nodes is followed only when today's nodes could serve the
    demand with ``scale_down_deadband`` more on top (headroom included) — otherwise the cluster is kept as
    it is. Capacity bought to drain a backlog, or to ride the upper half of the noise, is then not sold
    back minutes later and bought again at the next wiggle: the band between the deadbands is where the
    cluster stays put (Flink's autoscaler keeps a utilisation band the same way).
    """
    band = config.targets.scale_down_deadband
    if band <= 0:
        return selection
    inflated = tuple(replace(r, target_rate=r.target_rate * (1.0 + band)) for r in problem.stages)
    if not covers(replace(problem, stages=inflated, upper=dict(current))):
        # Today's nodes are not clearly too many: keep them all (and the plan's placements for display).
        keep = {n: max(c, int(selection.counts.get(n, 0))) for n, c in current.items()}
        return replace(selection, counts=MappingProxyType(keep))
    return selection


def _call_policy(
    policy: Policy, ctx: PolicyContext, current: Mapping[str, int]
) -> tuple[PolicyDecision, str | None]:
    """The policy's decision, or — when it raises or returns something unusable — a hold, with the reason.

    A third-party policy is code raytide does not control; its bug must cost one held tick, not the daemon.
    The policy's previous state is kept, so a transient failure does not reset it.
    """
    try:
        result = policy.decide(ctx)
        if not isinstance(result, PolicyDecision):
            raise TypeError(f"returned {type(result).__name__}, not a PolicyDecision")
        for d in result.demands or ():
            if not math.isfinite(d.target_rate) or d.target_rate < 0:
                raise ValueError(f"demand for {d.stage!r} is {d.target_rate!r}, not a finite rate >= 0")
        return result, None
    except Exception as e:
        why = f"policy {getattr(policy, 'name', policy)!r} failed ({type(e).__name__}: {e}); holding"
        held = PolicyDecision(target_counts=dict(current), reasons=(why,), state=ctx.state)
        return held, why


def decide(
    snapshot: Snapshot,
    config: Config,
    models: ThroughputModels,
    policy: Policy,
    state: DecisionState,
) -> Decision:
    models.update(snapshot)
    ctx = PolicyContext(snapshot=snapshot, models=models, config=config, state=state.policy_state)
    current = snapshot.counts_including_pending()
    inputs_known = snapshot.inputs_complete
    result, failure = _call_policy(policy, ctx, current)
    if failure is not None:
        inputs_known = False
    estimates = stage_estimates(snapshot, config, models)
    placements: tuple[Placement, ...] = ()
    unmet: tuple[UnmetDemand, ...] = ()
    demands: tuple[StageDemand, ...] = ()
    if result.demands is not None:
        demands = result.demands
        if any(d.hold for d in demands):
            inputs_known = False
        observed = {st.name: st for st in snapshot.stages}
        # Two views of the same demand: the plan chooses new capacity with shapes that boot late discounted
        # for stages that are behind (_lateness); whether today's nodes, running or booting, already serve
        # the demand (the deadbands) is judged on the rates alone.
        plain = _requirements(demands, estimates, config, observed)
        by_shape = {s.name: s for s in snapshot.shapes}
        drain = config.targets.drain_seconds
        late = {
            d.stage: f
            for d in demands
            if (f := _lateness(observed.get(d.stage), estimates.get(d.stage, {}), by_shape, drain))
        }
        timed = plain
        if late:
            # Only the stages that are behind change: recomputing the others doubled this step's cost.
            behind = tuple(d for d in demands if d.stage in late)
            redone = {r.name: r for r in _requirements(behind, estimates, config, observed, late)}
            timed = tuple(redone.get(r.name, r) for r in plain)
        problem = SelectionProblem(
            shapes=snapshot.shapes,
            stages=timed,
            max_nodes=config.bounds.max_nodes,
            budget_per_hour=config.bounds.budget_per_hour,
            # Unknown inputs: whatever the selector says, never below what runs now.
            lower={} if inputs_known else dict(current),
        )
        held_problem = problem if timed is plain else replace(problem, stages=plain)
        selection = select_shapes(problem)
        if inputs_known and any(selection.counts.get(n, 0) > c for n, c in current.items()):
            launching = any(int(n) > 0 for n in snapshot.pending_counts.values())
            selection = _deadband(held_problem, selection, current, config, launching=launching)
        if inputs_known and any(selection.counts.get(n, 0) < c for n, c in current.items()):
            selection = _hold_band(held_problem, selection, current, config)
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
