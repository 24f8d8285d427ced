"""``raytide recommend``: read recent history from Prometheus, learn from it, and plan — acting on nothing.

The throughput models need more than one instant to learn from, so the recommendation replays the last
``history_seconds`` of metrics (instant queries evaluated at past times) through the very decision function
the daemon runs, and reports the decision for the newest instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.core.config import Config
from autoscaler.core.decide import Decision, DecisionState, decide
from autoscaler.core.observe import build_snapshot
from autoscaler.core.policy_api import Policy
from autoscaler.core.throughput import ThroughputModels
from autoscaler.core.warm_pool import PoolMemory, PoolTargets, pool_targets
from autoscaler.types import Snapshot


@dataclass(frozen=True, slots=True)
class Recommendation:
    snapshot: Snapshot
    decision: Decision
    history: tuple[Snapshot, ...]
    warm_pool: PoolTargets | None = None
    """Standby nodes per shape the daemon would keep next to this plan (None when the pool is off)."""


def sample_times(end: float, history_seconds: float, step_seconds: float) -> list[float]:
    """Evaluation instants, oldest first, ending at ``end``."""
    if step_seconds <= 0:
        raise ValueError("step must be > 0")
    n = max(0, int(history_seconds // step_seconds))
    return [end - k * step_seconds for k in range(n, -1, -1)]


async def fetch_history(
    source: PrometheusSource,
    config: Config,
    times: list[float],
    progress: Callable[[int, int], None] | None = None,
) -> list[Snapshot]:
    snapshots = []
    for i, t in enumerate(times):
        results = await source.query_templates(at=t)
        snapshots.append(build_snapshot(config, t, results))
        if progress is not None:
            progress(i + 1, len(times))
    return snapshots


def recommend_from(
    history: list[Snapshot], config: Config, policy: Policy, *, min_samples: int = 2
) -> Recommendation:
    """Pure: replay the snapshots through ``decide`` and keep the last decision."""
    if not history:
        raise ValueError("no snapshots to recommend from")
    models = ThroughputModels(min_samples=min_samples)
    state = DecisionState()
    decision: Decision | None = None
    pool = PoolMemory()
    for snap in history:
        decision = decide(snap, config, models, policy, state)
        state = decision.state
        if not decision.plan.held:
            pool.remember_plan(snap.time, decision.plan.targets(), config.warm_pool.history_seconds)
    assert decision is not None
    # The replay is short and has no launch observations: the sizing uses the configured launch times and
    # only the rises within the replayed history, so it can only under-state what a long-running daemon keeps.
    sized = pool_targets(config, pool, decision.plan.targets()) if config.warm_pool.enabled else None
    return Recommendation(snapshot=history[-1], decision=decision, history=tuple(history), warm_pool=sized)
