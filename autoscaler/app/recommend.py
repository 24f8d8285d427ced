"""``raytide recommend``: read recent history from Prometheus, learn from it, and plan — acting on nothing.

The throughput models need more than one instant to learn from, so the recommendation replays the last
``history_seconds`` of metrics (instant queries evaluated at past times) through the very decision function
the daemon runs, and reports the decision for the newest instant. The whole reading runs under one deadline,
retries included; when it fires, the error names the query that was still unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.core.config import Config
from autoscaler.core.decide import Decision, DecisionState, decide
from autoscaler.core.observe import build_snapshot
from autoscaler.core.policy_api import Policy
from autoscaler.core.throughput import ThroughputModels
from autoscaler.core.warm_pool import PoolMemory, PoolTargets, pool_targets
from autoscaler.types import Snapshot

T = TypeVar("T")

MAX_INSTANTS = 10_000
"""Most history instants one recommendation reads (``--history`` / ``--step``): each is a round of queries."""
PROBE_QUERY = "vector(1)"
"""The cheap first query that tells an unreachable or failing server from missing metrics."""
_QUERY_EXCERPT = 120


class DeadlineExceeded(Exception):
    """The reading did not finish within its deadline; the message names the query it was waiting for."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    snapshot: Snapshot
    decision: Decision
    history: tuple[Snapshot, ...]
    warm_pool: PoolTargets | None = None
    """Standby nodes per shape the daemon would keep next to this plan (None when the pool is off)."""


def sample_times(end: float, history_seconds: float, step_seconds: float) -> list[float]:
    """Evaluation instants, oldest first, ending at ``end``; at most ``MAX_INSTANTS``."""
    if step_seconds <= 0:
        raise ValueError("step must be > 0")
    n = max(0, int(history_seconds // step_seconds))
    if n + 1 > MAX_INSTANTS:
        raise ValueError(
            f"a history of {history_seconds:g} s in steps of {step_seconds:g} s is {n + 1} instants to read; "
            f"at most {MAX_INSTANTS} (shorten the history or lengthen the step)"
        )
    return [end - k * step_seconds for k in range(n, -1, -1)]


async def within_deadline(
    work: Coroutine[Any, Any, T], deadline_seconds: float, source: PrometheusSource
) -> T:
    """``work``'s result, or ``DeadlineExceeded`` naming the query ``source`` was still waiting for when
    ``deadline_seconds`` had passed (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=deadline_seconds)
    if task in done:
        return task.result()
    waiting = source.pending()  # before cancelling: a cancelled query is no longer pending
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise DeadlineExceeded(_waiting_for(source, waiting, deadline_seconds))


def _waiting_for(source: PrometheusSource, waiting: list[tuple[str, float | None]], deadline: float) -> str:
    head = f"Prometheus at {source.url} did not answer within the {deadline:g} s deadline (--deadline)"
    if not waiting:
        return head
    promql, at = waiting[0]
    names = {q: n for n, q in source.templates.items()}
    if promql == PROBE_QUERY:
        what = f"the first query ({PROBE_QUERY!r}, which only checks that the server answers)"
    else:
        text = promql if len(promql) <= _QUERY_EXCERPT else promql[:_QUERY_EXCERPT] + "…"
        what = f"template {names[promql]!r} ({text!r})" if promql in names else repr(text)
    if at is not None:
        what += f" at {datetime.fromtimestamp(at, UTC):%Y-%m-%dT%H:%M:%SZ}"
    more = len(waiting) - 1
    return f"{head}: still waiting for {what}" + (
        f" and {more} other quer{'y' if more == 1 else 'ies'}" if more else ""
    )


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
