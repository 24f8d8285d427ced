"""``throughput``: the default policy — size every stage for its input plus its backlog, in one step.

Like DS2, it reasons from each stage's true processing rate (learned per node shape by the throughput models)
rather than from utilization, so it moves straight to the capacity the pipeline needs instead of creeping
there tick by tick. The planner turns its per-stage demand into the cheapest mix of node shapes.

Its state (JSON) remembers each stage's backlog at the previous decision — so a step in load is seen at the
next decision, not a rate window later — and since when each shape has had launches pending, so a backlog
that grows while nodes boot is sized once, for the moment they land.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autoscaler.demand import DemandTargets, stage_demands
from autoscaler.policy import PolicyContext, PolicyDecision
from autoscaler.types import Snapshot


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

        window = _rate_window_seconds(ctx)
        recent: dict[str, float] = {}
        seen: dict[str, list[float]] = {}
        for st in snap.stages:
            if not (st.backlog.known and st.throughput.known):
                continue
            seen[st.name] = [snap.time, st.backlog.get(), st.throughput.get()]
            before = prev.get(st.name)
            if before and len(before) in (2, 3) and snap.time > before[0]:
                dt = snap.time - before[0]
                tp_prev = before[2] if len(before) == 3 else None
                recent[st.name] = (
                    recent_throughput(st.throughput.get(), tp_prev, window, dt)
                    + (st.backlog.get() - before[1]) / dt
                )
        new_pending = {
            s.name: pending_since.get(s.name, snap.time)
            for s in snap.shapes
            if int(snap.pending_counts.get(s.name, 0)) > 0
        }
        leads = _lead_seconds(ctx, snap, new_pending)
        demands = stage_demands(snap.stages, targets, lead_seconds=leads, recent_arrival=recent)
        state: dict[str, Any] = {"backlog": seen, "pending_since": new_pending}
        return PolicyDecision(
            demands=demands, reasons=tuple(d.reason for d in demands if d.hold), state=state
        )


def recent_throughput(now: float, before: float | None, window: float, dt: float) -> float:
    """Throughput over the last ``dt`` seconds, from a rate over ``window`` now and ``dt`` ago.

    A windowed rate moves by (what entered − what left the window) / window between two readings; taking
    what left as the previous reading's mean gives ``now + (window / dt − 1) · (now − before)``: exact for a
    rate that was steady before the last ``dt``, and what turns a step in throughput into a number at the
    next decision instead of a window later. Without a previous reading, or when ``dt`` covers the window,
    the windowed rate itself.
    """
    if before is None or not (0 < dt < window) or not (math.isfinite(now) and math.isfinite(before)):
        return max(0.0, now)
    return max(0.0, now + (window / dt - 1.0) * (now - before))


def _rate_window_seconds(ctx: PolicyContext) -> float:
    text = ctx.config.prometheus.rate_window
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return float(text[: -len(suffix)]) * units[suffix]
    return 60.0


def _lead_seconds(ctx: PolicyContext, snap: Snapshot, pending_since: Mapping[str, float]) -> dict[str, float]:
    """Per stage: seconds until capacity for it can land — what is already launching, else a new launch."""
    out: dict[str, float] = {}
    for st in snap.stages:
        need = ctx.config.stage_resources(st.name)
        leads = []
        for shape in snap.shapes:
            if not all(shape.capacity(k) >= v for k, v in need.items() if v > 0):
                continue
            if shape.name in pending_since:
                leads.append(max(0.0, shape.launch_seconds - (snap.time - pending_since[shape.name])))
            else:
                leads.append(shape.launch_seconds)
        if leads:
            out[st.name] = min(leads)
    return out
