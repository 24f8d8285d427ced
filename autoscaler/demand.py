"""How fast each stage must work: its input rate, plus its backlog drained in time, plus headroom.

This is DS2's one-step idea applied to a Ray Data chain: a stage's target is what arrives plus what is
queued, and when an upstream stage is about to be scaled up, the extra output it will produce is counted
as input of its downstream stage now — so the whole chain is sized in one decision, not one stage per tick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.types import StageDemand, StageObservation


@dataclass(frozen=True, slots=True)
class DemandTargets:
    drain_seconds: float
    headroom: float


def _chain_order(stages: tuple[StageObservation, ...]) -> list[StageObservation]:
    """Upstream before downstream; a stage whose upstream is unknown or a cycle keeps its given order."""
    by_name = {s.name: s for s in stages}
    ordered: list[StageObservation] = []
    placed: set[str] = set()

    def visit(st: StageObservation, seen: frozenset[str]) -> None:
        if st.name in placed:
            return
        up = by_name.get(st.upstream) if st.upstream else None
        if up is not None and up.name not in seen:
            visit(up, seen | {st.name})
        placed.add(st.name)
        ordered.append(st)

    for st in stages:
        visit(st, frozenset())
    return ordered


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def stage_demands(
    stages: tuple[StageObservation, ...],
    targets: DemandTargets,
    *,
    lead_seconds: Mapping[str, float] | None = None,
    recent_arrival: Mapping[str, float] | None = None,
) -> tuple[StageDemand, ...]:
    """One StageDemand per stage, in the order given. Unknown inputs give ``hold=True``, never a zero.

    ``recent_arrival`` (stage → units/s since the previous decision) is used where it is higher than the
    windowed ``arrival_rate``: a rate over a long window lags a step in load by most of the window, and
    sizing from it would take several decisions to reach the target. ``lead_seconds`` (stage → seconds until
    new capacity for it can be usable) projects a growing backlog to the moment that capacity lands, so the
    target does not creep up tick by tick while nodes boot: the backlog to drain is the one the new nodes
    will find, which the growth seen on each tick does not change.
    """
    leads = lead_seconds or {}
    recent = recent_arrival or {}
    need: dict[str, float] = {}
    out: dict[str, StageDemand] = {}
    by_name: Mapping[str, StageObservation] = {s.name: s for s in stages}
    for st in _chain_order(stages):
        if not st.complete:
            out[st.name] = StageDemand(
                stage=st.name,
                target_rate=0.0,
                reason="holding: inputs unknown (" + "; ".join(st.unknown_reasons()) + ")",
                hold=True,
            )
            continue
        arrival = max(0.0, st.arrival_rate.get(), recent.get(st.name, 0.0))
        backlog = max(0.0, st.backlog.get())
        growth = max(0.0, arrival - st.throughput.get())
        lead = max(0.0, leads.get(st.name, 0.0))
        projected = backlog + growth * lead
        drain = projected / targets.drain_seconds
        extra = 0.0
        up = by_name.get(st.upstream) if st.upstream else None
        if up is not None and up.name in need and up.throughput.known:
            # Once the upstream stage runs at what it is sized for, this stage receives that (times the
            # blocks out per block in; 1 when it cannot be measured yet). Only the part above the arrival
            # already counted is extra: the recent arrival may already include some of the upstream's rise.
            up_tp = up.throughput.get()
            selectivity = st.arrival_rate.get() / up_tp if up_tp > 0 and st.arrival_rate.get() > 0 else 1.0
            extra = max(0.0, need[up.name] * selectivity - arrival)
        need[st.name] = arrival + drain + extra
        target = need[st.name] * (1.0 + targets.headroom)
        parts = [f"arrival {_fmt(arrival)}/s"]
        if projected > backlog:
            # Say where the drain term comes from: the backlog the new nodes will find, not today's.
            parts.append(
                f"backlog {_fmt(backlog)}, {_fmt(projected)} by the time new nodes land in {_fmt(lead)} s, "
                f"drained in {_fmt(targets.drain_seconds)} s (+{_fmt(drain)}/s)"
            )
        elif backlog > 0:
            parts.append(
                f"backlog {_fmt(backlog)} drained in {_fmt(targets.drain_seconds)} s (+{_fmt(drain)}/s)"
            )
        if extra > 0 and up is not None:
            parts.append(f"+{_fmt(extra)}/s more from {up.name} once it catches up")
        if targets.headroom > 0:
            parts.append(f"+{targets.headroom:.0%} headroom")
        out[st.name] = StageDemand(
            stage=st.name, target_rate=target, reason=f"needs {_fmt(target)}/s: " + ", ".join(parts)
        )
    return tuple(out[s.name] for s in stages)
