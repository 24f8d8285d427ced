"""``throughput``: the default policy — size every stage for its input plus its backlog, in one step.

Like DS2, it reasons from each stage's true processing rate (learned per node shape by the throughput models)
rather than from utilization, so it moves straight to the capacity the pipeline needs instead of creeping
there tick by tick. The planner turns its per-stage demand into the cheapest mix of node shapes.

Its state (JSON) remembers each stage's backlog at the previous decision and the throughput it measured
over the last rate window — so a step in load is seen, exactly, at the next decision, not a rate window
later — and since when each shape has had launches pending, so a backlog that grows while nodes boot is
sized once, for the moment they land.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autoscaler.core.demand import DemandTargets, stage_demands
from autoscaler.core.policy_api import PolicyContext, PolicyDecision
from autoscaler.types import Snapshot, slot_hosts


def _float_pairs(raw: object) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            if isinstance(v, list | tuple) and all(isinstance(x, int | float) for x in v):
                out[str(k)] = [float(x) for x in v]
    return out


def _floats(raw: object) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float) and math.isfinite(v)}


class ThroughputPolicy:
    name = "throughput"

    def __init__(self, *, drain_seconds: float | None = None, headroom: float | None = None) -> None:
        """Options override ``targets`` from the configuration for this policy only."""
        if drain_seconds is not None and drain_seconds <= 0:
            raise ValueError("drain_seconds must be > 0")
        if headroom is not None and headroom < 0:
            raise ValueError("headroom must be >= 0")
        self._drain_seconds = drain_seconds
        self._headroom = headroom

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        t = ctx.config.targets
        targets = DemandTargets(
            drain_seconds=self._drain_seconds if self._drain_seconds is not None else t.drain_seconds,
            headroom=self._headroom if self._headroom is not None else t.headroom,
        )
        snap = ctx.snapshot
        prev = _float_pairs(ctx.state.get("backlog"))
        pending_since = _floats(ctx.state.get("pending_since"))

        window = ctx.config.prometheus.rate_window_seconds
        history = _histories(ctx.state.get("history"))
        recent: dict[str, float] = {}
        recent_tp: dict[str, float] = {}
        seen: dict[str, list[float]] = {}
        kept: dict[str, list[list[float]]] = {}
        for st in snap.stages:
            if not (st.backlog.known and st.throughput.known):
                continue
            seen[st.name] = [snap.time, st.backlog.get(), st.throughput.get()]
            before = prev.get(st.name)
            if before and len(before) in (2, 3) and snap.time > before[0]:
                dt = snap.time - before[0]
                tp_prev = before[2] if len(before) == 3 else None
                left = _left_window(history.get(st.name, []), snap.time - window, dt)
                tp = recent_throughput(st.throughput.get(), tp_prev, window, dt, left=left)
                recent_tp[st.name] = tp
                recent[st.name] = tp + (st.backlog.get() - before[1]) / dt
                # Each entry: when, and the throughput over the ``dt`` before then.
                past = [h for h in history.get(st.name, []) if h[0] >= snap.time - window - 2 * dt]
                kept[st.name] = [*past, [snap.time, dt, tp]]
        new_pending = {
            s.name: pending_since.get(s.name, snap.time)
            for s in snap.shapes
            if int(snap.pending_counts.get(s.name, 0)) > 0
        }
        leads = _lead_seconds(ctx, snap, new_pending)
        demands = stage_demands(
            snap.stages, targets, lead_seconds=leads, recent_arrival=recent, recent_throughput=recent_tp
        )
        state: dict[str, Any] = {"backlog": seen, "pending_since": new_pending, "history": kept}
        return PolicyDecision(
            demands=demands, reasons=tuple(d.reason for d in demands if d.hold), state=state
        )


def recent_throughput(
    now: float, before: float | None, window: float, dt: float, *, left: float | None = None
) -> float:
    """Throughput over the last ``dt`` seconds, from a rate over ``window`` now and ``dt`` ago.

    A windowed rate moves by (what entered − what left the window) / window between two readings, so the
    last ``dt`` ran at ``now + (window / dt) · (now − before)`` minus what left — plus the throughput over the
    ``dt`` that just left the window. ``left`` is that throughput when an earlier decision measured it
    (exact however the rate moved before); without it, the previous reading's mean stands in, which is exact
    for a rate that was steady before the last ``dt`` but overshoots while a rise is still inside the window
    (what leaves is below the mean). Either way a step in throughput becomes a number at the next decision
    instead of a window later. Without a previous reading, or when ``dt`` covers the window, the windowed
    rate itself.
    """
    if before is None or not (0 < dt < window) or not (math.isfinite(now) and math.isfinite(before)):
        return max(0.0, now)
    gone = left if left is not None and math.isfinite(left) and left >= 0 else before
    return max(0.0, (window / dt) * (now - before) + gone)


def _left_window(history: list[list[float]], start: float, dt: float) -> float | None:
    """The throughput measured over ``[start - dt, start]`` — the slice a windowed rate just dropped — if an
    earlier decision measured exactly that slice (same spacing, same end within a quarter of it)."""
    for when, span, tp in reversed(history):
        if abs(when - start) <= 0.25 * dt and abs(span - dt) <= 0.25 * dt:
            return tp
    return None


def _histories(raw: object) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            if isinstance(v, list):
                out[str(k)] = _history_rows(v)
    return out


def _history_rows(rows: list[object]) -> list[list[float]]:
    # Runs for every remembered row of every stage on every decision, and the rows are almost always the
    # policy's own (a list of three finite floats), which are copied without a call per row. A finite sum
    # proves all three finite (an inf or nan in any of them makes it inf or nan); the rest goes through
    # _history_row.
    out: list[list[float]] = []
    isfinite = math.isfinite
    for row in rows:
        if type(row) is list and len(row) == 3:
            a, b, c = row
            if type(a) is float and type(b) is float and type(c) is float and isfinite(a + b + c):
                out.append([a, b, c])
                continue
        if (r := _history_row(row)) is not None:
            out.append(r)
    return out


def _history_row(row: object) -> list[float] | None:
    if not (isinstance(row, list | tuple) and len(row) == 3):
        return None
    a, b, c = row
    if not (isinstance(a, int | float) and isinstance(b, int | float) and isinstance(c, int | float)):
        return None
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        return None
    return [float(a), float(b), float(c)]


def _lead_seconds(ctx: PolicyContext, snap: Snapshot, pending_since: Mapping[str, float]) -> dict[str, float]:
    """Per stage: seconds until the capacity planned for it lands.

    With launches pending on shapes the stage can run on: their time left, averaged over the slots of the
    stage they bring (pending nodes × slots per node). The stage's queue grows until that capacity is
    there, less and less as it lands, and the plan that launched them counted on all of them; the average
    is where a queue growing at today's rate, slowing as the slots land one after another, comes to. The
    projection then counts down with the boot instead of creeping up at every decision. With none pending,
    the fastest new launch — the soonest any new capacity could help.
    """
    out: dict[str, float] = {}
    hosts_of = slot_hosts(snap.shapes)
    for st in snap.stages:
        need = {k: v for k, v in ctx.config.stage_resources(st.name).items() if v > 0}
        hosts = hosts_of(need)
        weighted = 0.0
        slots = 0.0
        fresh: list[float] = []
        for shape in hosts:
            fresh.append(shape.launch_seconds)
            pending = int(snap.pending_counts.get(shape.name, 0))
            if shape.name in pending_since and pending > 0:
                per_node = min((math.floor(shape.capacity(k) / v) for k, v in need.items()), default=1)
                left = max(0.0, shape.launch_seconds - (snap.time - pending_since[shape.name]))
                weighted += pending * per_node * left
                slots += pending * per_node
        if slots > 0:
            out[st.name] = weighted / slots
        elif fresh:
            out[st.name] = min(fresh)
    return out
