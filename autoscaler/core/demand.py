"""How fast each stage must work: its input rate, plus its backlog drained in time, plus headroom.

This is DS2's one-step idea applied to a Ray Data chain: a stage's target is what arrives plus what is
queued, and a downstream stage is sized now for the input of the stage above it and for everything queued
upstream of it, which passes through it as well — so the whole chain is sized in one decision, not one
stage per tick, and an upstream stage draining its queue faster than planned does not move it again.
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
    recent_throughput: Mapping[str, float] | None = None,
) -> tuple[StageDemand, ...]:
    """One StageDemand per stage, in the order given. Unknown inputs give ``hold=True``, never a zero.

    ``recent_arrival`` (stage → units/s since the previous decision) is used where it is higher than the
    windowed ``arrival_rate`` of a stage with no upstream: a rate over a long window lags a step in load by
    most of the window, and sizing from it would take several decisions to reach the target. A stage with
    an upstream stage is sized for that stage's input (× selectivity) plus its own queue and everything
    queued upstream, drained within the target. ``lead_seconds`` (stage → seconds until new capacity for it
    can be usable) projects a growing backlog to the moment that capacity lands, so the target does not
    creep up tick by tick while nodes boot: the backlog to drain is the one the new nodes will find, which
    the growth seen on each tick does not change. The growth is the input less what the stage processes
    now (``recent_throughput``, stage → units/s since the previous decision, where known; else its windowed
    throughput).
    """
    leads = lead_seconds or {}
    recent = recent_arrival or {}
    recent_tp = recent_throughput or {}
    inflow: dict[str, float] = {}
    queued: dict[str, float] = {}
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
        measured = max(0.0, st.arrival_rate.get(), recent.get(st.name, 0.0))
        backlog = max(0.0, st.backlog.get())
        lead = max(0.0, leads.get(st.name, 0.0))
        up = by_name.get(st.upstream) if st.upstream else None
        carried = 0.0
        if up is not None and up.name in inflow and up.throughput.known:
            # Blocks out per block in (1 when it cannot be measured yet): both windowed rates, so a
            # transient moves them together.
            up_tp = up.throughput.get()
            selectivity = st.arrival_rate.get() / up_tp if up_tp > 0 and st.arrival_rate.get() > 0 else 1.0
            # What reaches this stage for good is the upstream stage's input; what is queued upstream
            # passes through here as well, and is drained with this stage's own queue. An arrival above
            # that is the upstream draining its queue faster than planned — work already counted here —
            # and one below it is the upstream falling behind, which the growth term below counts.
            arrival = inflow[up.name] * selectivity
            carried = queued[up.name] * selectivity
        else:
            arrival = measured
        # Until new nodes land, whatever enters the pipeline and this stage does not process yet stays
        # queued at or before it: that is the queue the new nodes will find.
        growth = max(0.0, arrival - recent_tp.get(st.name, st.throughput.get()))
        projected = backlog + growth * lead
        inflow[st.name] = arrival
        queued[st.name] = backlog + carried
        drain = (projected + carried) / targets.drain_seconds
        target = (arrival + drain) * (1.0 + targets.headroom)
        parts = [f"arrival {_fmt(arrival)}/s" if up is None else f"input {_fmt(arrival)}/s via {up.name}"]
        if projected > backlog:
            # Say where the drain term comes from: the backlog the new nodes will find, not today's.
            parts.append(
                f"backlog {_fmt(backlog)}, {_fmt(projected)} by the time new nodes land in {_fmt(lead)} s, "
                f"drained in {_fmt(targets.drain_seconds)} s (+{_fmt(projected / targets.drain_seconds)}/s)"
            )
        elif backlog > 0:
            parts.append(
                f"backlog {_fmt(backlog)} drained in {_fmt(targets.drain_seconds)} s "
                f"(+{_fmt(backlog / targets.drain_seconds)}/s)"
            )
        if carried > 0 and up is not None:
            parts.append(
                f"+{_fmt(carried / targets.drain_seconds)}/s more from {up.name} once it catches up "
                f"({_fmt(carried)} queued upstream)"
            )
        if targets.headroom > 0:
            parts.append(f"+{targets.headroom:.0%} headroom")
        out[st.name] = StageDemand(
            stage=st.name, target_rate=target, reason=f"needs {_fmt(target)}/s: " + ", ".join(parts)
        )
    return tuple(out[s.name] for s in stages)
