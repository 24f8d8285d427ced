"""What a simulation run is worth: cost, SLO misses, backlog age, GPU use while work waits, churn and
convergence, computed from the per-step record of a run (each field of ``RunMetrics`` says how).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from autoscaler.core.policy_api import Policy
from autoscaler.sim.engine import simulate
from autoscaler.sim.records import SimDecision, SimRun
from autoscaler.sim.scenario import SimScenario

__all__ = ["Convergence", "RunMetrics", "RunResult", "Series", "run_policy", "summarize"]

FloatArray = npt.NDArray[np.float64]

_AGE_SAMPLES = 20000
_SERIES_POINTS = 1500


@dataclass(frozen=True, slots=True)
class Convergence:
    """How many decisions a policy took to settle after one step change in the trace (``change_points``).

    The decisions after the step, up to the next one (or the end), are numbered 1, 2, …; an answer counts
    only if at least one more decision follows it and, at some decision from then on, no stage misses the
    SLO.
    """

    time: float
    direction: str
    decisions: int | None
    """After an upward step the last decision that *raised* any target (0 if none did), after a downward
    step the last that changed any target. None: the targets were still changing, or the backlog never got
    under target, before the next step."""
    settle: int | None = None
    """The last decision that changed any target, up or down (also after an upward step, where
    ``decisions`` counts raises only); None as above."""


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """One policy's run of one scenario; ``dt`` is the simulation step."""

    scenario: str
    policy: str
    duration_seconds: float
    cost: float
    """Dollars: every node is billed from its launch request until its removal (or the end of the run), at
    its shape's price — pending, draining and warm-pool nodes included."""
    cost_per_hour: float
    slo_miss_seconds: float
    """Seconds (steps × dt) in which some stage's queue, at the end of the step, was above what that stage
    drains in ``config.targets.drain_seconds`` at the rate it processed work in that step:
    ``queued_k > drain_seconds × processed_k / dt`` (and > 0). A stage with queued work and no capacity
    misses; a stage starved by a slow upstream has no queue and does not."""
    p95_backlog_age_seconds: float
    """The 95th percentile, over units of work entering the pipeline, of the time from entering the first
    stage's queue to being processed by the last stage, FIFO at every stage. Exact for the fluid model: a
    unit is its position in the cumulative input, and it leaves when the last stage's cumulative output
    (converted back to input units by the selectivities) reaches that position. Work still queued at the
    end counts with its age at the end (a lower bound). Processing itself takes no time in the fluid model,
    so a pipeline that keeps up has ages near 0."""
    max_backlog_age_seconds: float
    gpu_utilization_while_queued: float | None
    """GPU-seconds busy / GPU-seconds on usable nodes, over the steps in which more than
    ``world.queued_threshold`` units waited at a GPU stage (work a GPU could take right now): high means GPU
    work is not left waiting while GPUs sit idle. None when GPU work never waited, or no GPU was usable."""
    gpu_queued_seconds: float
    gpu_utilization_while_upstream_queued: float | None
    """The same ratio over the steps in which more than the threshold was queued at a GPU stage *or upstream
    of one* (work that will need a GPU later): low means GPUs were paid for while the work that needs them
    sat behind a slower CPU stage. None as above."""
    gpu_upstream_queued_seconds: float
    scale_actions: int
    """(decision, shape) pairs whose target differed from the current count (running plus pending)."""
    reversals: int
    """Per shape, an action in the opposite direction to that shape's previous action; summed over shapes."""
    reversals_by_shape: Mapping[str, int]
    decisions: int
    decisions_to_converge: int | None
    """Worst ``Convergence.decisions`` over upward steps; None if one did not converge or the trace has no
    upward step. Downward steps are reported apart: they wait out the scale-down window by design."""
    decisions_to_converge_down: int | None
    decisions_to_settle: int | None
    """Worst ``Convergence.settle`` over upward steps."""
    convergence: tuple[Convergence, ...]
    node_hours: Mapping[str, float]
    peak_nodes: int
    completed_fraction: float
    """Work through the last stage / work that entered (in entry units)."""
    policy_errors: int
    first_policy_error: str | None
    wall_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "policy": self.policy,
            "duration_seconds": _r(self.duration_seconds),
            "cost": _r(self.cost, 4),
            "cost_per_hour": _r(self.cost_per_hour, 4),
            "slo_miss_seconds": _r(self.slo_miss_seconds),
            "p95_backlog_age_seconds": _r(self.p95_backlog_age_seconds),
            "max_backlog_age_seconds": _r(self.max_backlog_age_seconds),
            "gpu_utilization_while_queued": None
            if self.gpu_utilization_while_queued is None
            else _r(self.gpu_utilization_while_queued, 4),
            "gpu_queued_seconds": _r(self.gpu_queued_seconds),
            "gpu_utilization_while_upstream_queued": None
            if self.gpu_utilization_while_upstream_queued is None
            else _r(self.gpu_utilization_while_upstream_queued, 4),
            "gpu_upstream_queued_seconds": _r(self.gpu_upstream_queued_seconds),
            "scale_actions": self.scale_actions,
            "reversals": self.reversals,
            "reversals_by_shape": dict(self.reversals_by_shape),
            "decisions": self.decisions,
            "decisions_to_converge": self.decisions_to_converge,
            "decisions_to_converge_down": self.decisions_to_converge_down,
            "decisions_to_settle": self.decisions_to_settle,
            "convergence": [
                {"time": _r(c.time), "direction": c.direction, "decisions": c.decisions, "settle": c.settle}
                for c in self.convergence
            ],
            "node_hours": {k: _r(v, 3) for k, v in self.node_hours.items()},
            "peak_nodes": self.peak_nodes,
            "completed_fraction": _r(self.completed_fraction, 6),
            "policy_errors": self.policy_errors,
            "first_policy_error": self.first_policy_error,
            "wall_seconds": _r(self.wall_seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class Series:
    """Down-sampled time series for plotting (at most ~1,500 points)."""

    time: tuple[float, ...]
    backlog: Mapping[str, tuple[float, ...]]
    """Stage → units queued."""
    nodes: Mapping[str, tuple[int, ...]]
    """Shape → usable nodes."""
    billed_nodes: Mapping[str, tuple[int, ...]]
    """Shape → nodes being paid for (pending, usable, draining, warm pool)."""
    cost: tuple[float, ...]
    """Dollars spent so far."""
    input_rate: tuple[float, ...]
    """Units/s entering the pipeline (mean over the point's interval)."""
    output_rate: tuple[float, ...]
    """Units/s leaving the last stage, in its input units."""

    def to_json(self) -> dict[str, Any]:
        return {
            "time": [_r(t) for t in self.time],
            "backlog": {k: [_r(v) for v in vs] for k, vs in self.backlog.items()},
            "nodes": {k: list(vs) for k, vs in self.nodes.items()},
            "billed_nodes": {k: list(vs) for k, vs in self.billed_nodes.items()},
            "cost": [_r(c, 4) for c in self.cost],
            "input_rate": [_r(v) for v in self.input_rate],
            "output_rate": [_r(v) for v in self.output_rate],
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    metrics: RunMetrics
    series: Series = field(repr=False)

    def to_json(self, *, series: bool = False) -> dict[str, Any]:
        out = self.metrics.to_json()
        if series:
            out["series"] = self.series.to_json()
        return out


def _r(x: float, digits: int = 2) -> float:
    return round(float(x), digits)


def _inverse(cum: FloatArray, times: FloatArray, u: FloatArray) -> FloatArray:
    """For a nondecreasing cumulative curve ``cum`` at ``times``, when it first reaches each ``u``."""
    idx = np.searchsorted(cum, u, side="left")
    idx = np.clip(idx, 1, len(cum) - 1)
    lo, hi = cum[idx - 1], cum[idx]
    span = np.where(hi > lo, hi - lo, 1.0)
    frac = np.clip((u - lo) / span, 0.0, 1.0)
    return np.asarray(times[idx - 1] + frac * (times[idx] - times[idx - 1]), dtype=np.float64)


def _backlog_ages(run: SimRun) -> tuple[float, float]:
    n = run.steps
    boundaries = np.arange(n + 1, dtype=np.float64) * run.dt
    cum_in = np.concatenate([[0.0], np.cumsum(run.arrived[0])])
    sel = [w.selectivity for w in sorted(run.scenario.world.stages, key=lambda w: run.stages.index(w.name))]
    factor = float(np.prod(sel[:-1])) if len(sel) > 1 else 1.0
    cum_out = np.concatenate([[0.0], np.cumsum(run.processed[-1])]) / factor
    total = cum_in[-1]
    if total <= 0:
        return 0.0, 0.0
    u = (np.arange(_AGE_SAMPLES, dtype=np.float64) + 0.5) / _AGE_SAMPLES * total
    entered = _inverse(cum_in, boundaries, u)
    done = cum_out[-1]
    left = _inverse(cum_out, boundaries, np.minimum(u, done))
    left = np.where(u <= done * (1 + 1e-12), left, run.duration)
    ages = np.maximum(0.0, left - entered)
    return float(np.percentile(ages, 95)), float(ages.max())


def _settled(run: SimRun, window: Sequence[SimDecision], last: int) -> int | None:
    """``last`` (a decision number in ``window``) when another decision follows it and, at it or some
    decision after it, no stage misses the SLO; else None."""
    if last >= len(window):
        return None
    for d in window[max(last, 1) - 1 :]:
        step = min(run.steps - 1, max(0, round(d.time / run.dt) - 1))
        if not run.slo_miss[step]:
            return last
    return None


def _convergence(run: SimRun) -> tuple[Convergence, ...]:
    sc = run.scenario
    points = sc.trace.change_points(run.duration, sc.start_clock)
    if not points:
        return ()
    shapes = [s.name for s in run.shapes]
    initial = {s: sc.world_shape(s).initial for s in shapes}
    decs = run.decisions
    out = []
    for idx, (t_change, direction) in enumerate(points):
        t_next = points[idx + 1][0] if idx + 1 < len(points) else math.inf
        before = [d for d in decs if d.time <= t_change]
        prev = dict(before[-1].target) if before else initial
        window = [d for d in decs if t_change < d.time < t_next]
        targets = [prev] + [dict(d.target) for d in window]
        last_change = 0
        last_raise = 0
        for j in range(1, len(targets)):
            if targets[j] != targets[j - 1]:
                last_change = j
            if any(targets[j].get(k, 0) > targets[j - 1].get(k, 0) for k in targets[j]):
                last_raise = j
        out.append(
            Convergence(
                time=t_change,
                direction=direction,
                decisions=_settled(run, window, last_raise if direction == "up" else last_change),
                settle=_settled(run, window, last_change),
            )
        )
    return tuple(out)


def _worst(items: Sequence[Convergence], *, settle: bool = False) -> int | None:
    counts = [c.settle if settle else c.decisions for c in items]
    if not counts or any(n is None for n in counts):
        return None
    return max(n for n in counts if n is not None)


def _actions(run: SimRun) -> tuple[int, dict[str, int]]:
    actions = 0
    reversals = {s.name: 0 for s in run.shapes}
    last: dict[str, int] = {}
    for d in run.decisions:
        for name in reversals:
            delta = int(d.target.get(name, 0)) - int(d.current.get(name, 0))
            if delta == 0:
                continue
            actions += 1
            sign = 1 if delta > 0 else -1
            if last.get(name, sign) != sign:
                reversals[name] += 1
            last[name] = sign
    return actions, reversals


def _series(run: SimRun) -> Series:
    n = run.steps
    stride = max(1, math.ceil(n / _SERIES_POINTS))
    idx = np.arange(stride - 1, n, stride)
    prices = np.array([s.price_per_hour for s in run.shapes])
    step_cost = run.billed @ prices * run.dt / 3600.0
    cum_cost = np.cumsum(step_cost)
    in_units = np.add.reduceat(run.arrived[0], np.arange(0, n, stride))[: len(idx)]
    out_units = np.add.reduceat(run.processed[-1], np.arange(0, n, stride))[: len(idx)]
    span = stride * run.dt
    return Series(
        time=tuple(float(x) for x in (idx + 1) * run.dt),
        backlog={s: tuple(float(v) for v in run.queued[k, idx]) for k, s in enumerate(run.stages)},
        nodes={s.name: tuple(int(v) for v in run.live[idx, j]) for j, s in enumerate(run.shapes)},
        billed_nodes={s.name: tuple(int(v) for v in run.billed[idx, j]) for j, s in enumerate(run.shapes)},
        cost=tuple(float(v) for v in cum_cost[idx]),
        input_rate=tuple(float(v) / span for v in in_units),
        output_rate=tuple(float(v) / span for v in out_units),
    )


def _gpu_utilization(run: SimRun, steps: npt.NDArray[np.bool_]) -> float | None:
    """GPU-seconds busy / GPU-seconds usable over ``steps``; None when no GPU was usable in them."""
    live = float(run.gpu_live[steps].sum())
    return float(run.gpu_busy[steps].sum()) / live if live > 0 else None


def summarize(run: SimRun) -> RunResult:
    """The metrics (see the module docstring) and plotting series of one run."""
    cost = run.total_cost()
    hours = run.duration / 3600.0
    p95_age, max_age = _backlog_ages(run)
    queued = run.gpu_queued
    gpu_util = _gpu_utilization(run, queued)
    upstream_util = _gpu_utilization(run, run.gpu_bound_queued)
    actions, reversals = _actions(run)
    conv = _convergence(run)
    node_seconds = np.maximum(0.0, np.minimum(run.nodes.removed, run.duration) - run.nodes.requested)
    node_hours = {
        s.name: float(node_seconds[run.nodes.shape == j].sum()) / 3600.0 for j, s in enumerate(run.shapes)
    }
    entered = float(run.arrived[0].sum())
    sel = {w.name: w.selectivity for w in run.scenario.world.stages}
    factor = float(np.prod([sel[s] for s in run.stages[:-1]])) if len(run.stages) > 1 else 1.0
    completed = float(run.processed[-1].sum()) / factor / entered if entered > 0 else 1.0
    errors = [d.error for d in run.decisions if d.error is not None]
    metrics = RunMetrics(
        scenario=run.scenario.name,
        policy=run.policy,
        duration_seconds=run.duration,
        cost=cost,
        cost_per_hour=cost / hours if hours > 0 else 0.0,
        slo_miss_seconds=float(run.slo_miss.sum()) * run.dt,
        p95_backlog_age_seconds=p95_age,
        max_backlog_age_seconds=max_age,
        gpu_utilization_while_queued=gpu_util,
        gpu_queued_seconds=float(queued.sum()) * run.dt,
        gpu_utilization_while_upstream_queued=upstream_util,
        gpu_upstream_queued_seconds=float(run.gpu_bound_queued.sum()) * run.dt,
        scale_actions=actions,
        reversals=sum(reversals.values()),
        reversals_by_shape=reversals,
        decisions=len(run.decisions),
        decisions_to_converge=_worst([c for c in conv if c.direction == "up"]),
        decisions_to_converge_down=_worst([c for c in conv if c.direction == "down"]),
        decisions_to_settle=_worst([c for c in conv if c.direction == "up"], settle=True),
        convergence=conv,
        node_hours=node_hours,
        peak_nodes=int(run.live.sum(axis=1).max()) if run.steps else 0,
        completed_fraction=completed,
        policy_errors=len(errors),
        first_policy_error=errors[0] if errors else None,
        wall_seconds=run.wall_seconds,
    )
    return RunResult(metrics=metrics, series=_series(run))


def run_policy(
    scenario: SimScenario, policy: Policy, *, progress: Callable[[float, float], None] | None = None
) -> RunResult:
    """Simulate ``policy`` on ``scenario`` and summarise the run."""
    return summarize(simulate(scenario, policy, progress=progress))
