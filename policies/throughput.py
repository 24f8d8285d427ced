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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.core.demand import DemandTargets, stage_demands
from autoscaler.core.policy_api import PolicyContext, PolicyDecision
from autoscaler.types import Snapshot, slot_hosts


@dataclass(frozen=True, slots=True)
class RateHistory:
    """The throughputs that past decisions measured, oldest first, as columns: decision ``k`` measured
    ``throughput[k]`` over the ``span[k]`` seconds that ended at ``end[k]``."""

    end: tuple[float, ...] = ()
    span: tuple[float, ...] = ()
    throughput: tuple[float, ...] = ()

    def left_window(self, start: float, dt: float) -> float | None:
        """The throughput measured over ``[start - dt, start]`` — the slice a windowed rate just dropped —
        if a decision measured exactly that slice (same spacing, same end within a quarter of it)."""
        for when, span, tp in zip(
            reversed(self.end), reversed(self.span), reversed(self.throughput), strict=True
        ):
            if abs(when - start) <= 0.25 * dt and abs(span - dt) <= 0.25 * dt:
                return tp
        return None

    def since(self, start: float) -> RateHistory:
        """The measurements that ended at ``start`` or later."""
        ends = self.end
        keep = [k for k, e in enumerate(ends) if e >= start]
        if not keep:
            return _NO_HISTORY
        lo, hi = keep[0], keep[-1] + 1
        if hi - lo == len(keep):  # the usual case, a run of the newest ones: slices
            return RateHistory(ends[lo:hi], self.span[lo:hi], self.throughput[lo:hi])
        return RateHistory(
            tuple(ends[k] for k in keep),
            tuple(self.span[k] for k in keep),
            tuple(self.throughput[k] for k in keep),
        )

    def then(self, end: float, span: float, throughput: float) -> RateHistory:
        """This history with one more measurement."""
        return RateHistory((*self.end, end), (*self.span, span), (*self.throughput, throughput))


_NO_HISTORY = RateHistory()


@dataclass(frozen=True, slots=True)
class StageMemory:
    """What the policy remembers of one stage from its last decision."""

    time: float
    backlog: float
    throughput: float | None
    """The windowed throughput read then (None only in state from before it was remembered)."""
    history: RateHistory = _NO_HISTORY
    """The per-decision throughputs of about the last rate window."""


@dataclass(frozen=True, slots=True)
class ThroughputState:
    """The policy's state between decisions, and its JSON form (``ctx.state``)."""

    stages: Mapping[str, StageMemory]
    pending_since: Mapping[str, float]
    """Per shape with launches pending: since when it has had some."""

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": {
                name: {
                    "time": m.time,
                    "backlog": m.backlog,
                    "throughput": m.throughput,
                    "history": {
                        "end": list(m.history.end),
                        "span": list(m.history.span),
                        "throughput": list(m.history.throughput),
                    },
                }
                for name, m in self.stages.items()
            },
            "pending_since": dict(self.pending_since),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ThroughputState:
        """Reads its own layout and the one written before this class (``backlog``: stage → ``[time,
        backlog]`` or ``[time, backlog, throughput]``; ``history``: stage → ``[[end, span, throughput],
        ...]``), so a daemon restarted on newer code keeps what the older one learned. Entries that are not
        well-formed are dropped: unreadable state is a first decision, not a crash."""
        stages = raw.get("stages")
        memory = _stages(stages) if isinstance(stages, Mapping) else _old_stages(raw)
        return cls(stages=memory, pending_since=_floats(raw.get("pending_since")))


def _number(x: object) -> float | None:
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _floats(raw: object) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float) and math.isfinite(v)}


def _stages(raw: Mapping[Any, Any]) -> dict[str, StageMemory]:
    out: dict[str, StageMemory] = {}
    for name, entry in raw.items():
        if not isinstance(entry, Mapping):
            continue
        when, backlog = _number(entry.get("time")), _number(entry.get("backlog"))
        if when is None or backlog is None:
            continue
        cols = entry.get("history")
        history = _history(cols) if isinstance(cols, Mapping) else _NO_HISTORY
        out[str(name)] = StageMemory(when, backlog, _number(entry.get("throughput")), history)
    return out


_FLOAT_ONLY = {float}


def _history(cols: Mapping[Any, Any]) -> RateHistory:
    # Runs for every stage on every decision, over about a rate window of measurements each, and the
    # columns are almost always the policy's own (finite floats): checked and copied without a call per
    # value. A finite sum proves a column finite (an inf or nan in it makes the sum inf or nan); anything
    # else is read measurement by measurement.
    end, span, tp = cols.get("end"), cols.get("span"), cols.get("throughput")
    if not (isinstance(end, list) and isinstance(span, list) and isinstance(tp, list)):
        return _NO_HISTORY
    if (
        len(end) == len(span) == len(tp)
        and set(map(type, end)) | set(map(type, span)) | set(map(type, tp)) <= _FLOAT_ONLY
        and math.isfinite(sum(end) + sum(span) + sum(tp))
    ):
        return RateHistory(tuple(end), tuple(span), tuple(tp))
    return _history_of_rows(zip(end, span, tp, strict=False))


def _history_of_rows(rows: Iterable[object]) -> RateHistory:
    ends: list[float] = []
    spans: list[float] = []
    tps: list[float] = []
    for row in rows:
        if not (isinstance(row, list | tuple) and len(row) == 3):
            continue
        end, span, tp = (_number(x) for x in row)
        if end is not None and span is not None and tp is not None:
            ends.append(end)
            spans.append(span)
            tps.append(tp)
    return RateHistory(tuple(ends), tuple(spans), tuple(tps))


def _old_stages(raw: Mapping[str, Any]) -> dict[str, StageMemory]:
    """The layout before ``ThroughputState``: positional lists, told apart by their length."""
    readings, rows = raw.get("backlog"), raw.get("history")
    if not isinstance(readings, Mapping):
        return {}
    histories = rows if isinstance(rows, Mapping) else {}
    out: dict[str, StageMemory] = {}
    for name, v in readings.items():
        if not (isinstance(v, list | tuple) and len(v) in (2, 3)):
            continue
        values = [_number(x) for x in v]
        when, backlog = values[0], values[1]
        if when is None or backlog is None or (len(values) == 3 and values[2] is None):
            continue
        old_rows = histories.get(name)
        history = _history_of_rows(old_rows) if isinstance(old_rows, list) else _NO_HISTORY
        out[str(name)] = StageMemory(when, backlog, values[2] if len(values) == 3 else None, history)
    return out


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
        state = ThroughputState.from_json(ctx.state)
        window = ctx.config.prometheus.rate_window_seconds
        recent: dict[str, float] = {}
        recent_tp: dict[str, float] = {}
        memory: dict[str, StageMemory] = {}
        for st in snap.stages:
            if not (st.backlog.known and st.throughput.known):
                continue
            backlog, tp_now = st.backlog.get(), st.throughput.get()
            history = _NO_HISTORY
            before = state.stages.get(st.name)
            if before is not None and snap.time > before.time:
                dt = snap.time - before.time
                left = before.history.left_window(snap.time - window, dt)
                tp = recent_throughput(tp_now, before.throughput, window, dt, left=left)
                recent_tp[st.name] = tp
                recent[st.name] = tp + (backlog - before.backlog) / dt
                history = before.history.since(snap.time - window - 2 * dt).then(snap.time, dt, tp)
            memory[st.name] = StageMemory(snap.time, backlog, tp_now, history)
        new_pending = {
            s.name: state.pending_since.get(s.name, snap.time)
            for s in snap.shapes
            if int(snap.pending_counts.get(s.name, 0)) > 0
        }
        leads = _lead_seconds(ctx, snap, new_pending)
        demands = stage_demands(
            snap.stages, targets, lead_seconds=leads, recent_arrival=recent, recent_throughput=recent_tp
        )
        kept = ThroughputState(stages=memory, pending_since=new_pending)
        return PolicyDecision(
            demands=demands, reasons=tuple(d.reason for d in demands if d.hold), state=kept.to_json()
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
