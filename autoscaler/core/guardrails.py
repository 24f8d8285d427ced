"""Guardrails applied around every policy: bounds, step limits, scale-down stabilization, fail-static.

Order matters and is fixed: (1) no scale-down while any input is unknown; (2) scale down only to the
highest count asked for during the stabilization window, and only once the window has been watched in
full; (3) at most ``max_step_up``/``max_step_down`` nodes per shape per tick; (4) hard bounds last —
per-shape min/max, total nodes and the budget — so nothing earlier can push a plan over a bound.

The step limits hold per step window (one tick interval), not per tick: :func:`limit_steps_in_window` holds
an extra tick of the same window (a nudge) to what the window's first tick left of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.types import NodeShape


@dataclass(frozen=True, slots=True)
class GuardLimits:
    max_nodes: int
    budget_per_hour: float
    max_step_up: int
    max_step_down: int
    scale_down_window_seconds: float


@dataclass(frozen=True, slots=True)
class GuardState:
    """Proposals seen within the stabilization window: (time, counts per shape), oldest first."""

    history: tuple[tuple[float, tuple[tuple[str, int], ...]], ...] = ()
    watching_since: float | None = None
    """When the guard first saw a complete set of inputs; scale-down waits one window after it."""

    def to_json(self) -> dict[str, Any]:
        return {
            "history": [[t, dict(c)] for t, c in self.history],
            "watching_since": self.watching_since,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> GuardState:
        try:
            hist = tuple(
                (float(t), tuple(sorted((str(k), int(v)) for k, v in dict(c).items())))
                for t, c in data.get("history", [])
            )
            since = data.get("watching_since")
            return GuardState(history=hist, watching_since=None if since is None else float(since))
        except (TypeError, ValueError) as e:
            raise ValueError(f"guard state is malformed: {e}") from e


@dataclass(frozen=True, slots=True)
class GuardResult:
    targets: dict[str, int]
    reasons: dict[str, list[str]]
    state: GuardState
    held: bool


def apply_guardrails(
    *,
    now: float,
    shapes: tuple[NodeShape, ...],
    current: Mapping[str, int],
    proposed: Mapping[str, int],
    inputs_known: bool,
    limits: GuardLimits,
    state: GuardState,
) -> GuardResult:
    """Turn a policy's proposal into a safe target. Pure: the same arguments give the same result."""
    window = limits.scale_down_window_seconds
    reasons: dict[str, list[str]] = {s.name: [] for s in shapes}
    cur = {s.name: max(0, int(current.get(s.name, 0))) for s in shapes}
    want = {s.name: max(0, int(proposed.get(s.name, cur[s.name]))) for s in shapes}

    history = tuple(h for h in state.history if h[0] > now - window)
    since: float | None = state.watching_since
    if inputs_known:
        history = (*history, (now, tuple(sorted(want.items()))))
        since = now if since is None else since
    new_state = GuardState(history=history, watching_since=since)

    held = False
    out = dict(want)
    for s in shapes:
        n = s.name
        if out[n] >= cur[n]:
            continue
        if not inputs_known:
            out[n] = cur[n]
            reasons[n].append("no scale-down while inputs are unknown")
            held = True
            continue
        if since is None or now - since < window:
            watched = 0.0 if since is None else now - since
            out[n] = cur[n]
            reasons[n].append(
                f"scale-down waits for a full {window:.0f} s window of plans (watched {watched:.0f} s)"
            )
            continue
        highest = max(dict(c).get(n, cur[n]) for _, c in history) if history else cur[n]
        if highest > out[n]:
            out[n] = min(cur[n], highest)
            reasons[n].append(f"held at {out[n]}: a plan in the last {window:.0f} s asked for {highest}")

    for s in shapes:
        n = s.name
        if out[n] > cur[n] + limits.max_step_up:
            out[n] = cur[n] + limits.max_step_up
            reasons[n].append(f"step limited to +{limits.max_step_up} per tick")
        elif out[n] < cur[n] - limits.max_step_down:
            out[n] = cur[n] - limits.max_step_down
            reasons[n].append(f"step limited to -{limits.max_step_down} per tick")

    _enforce_bounds(shapes, cur, out, reasons, limits)
    return GuardResult(targets=out, reasons=reasons, state=new_state, held=held)


def _enforce_bounds(
    shapes: tuple[NodeShape, ...],
    current: Mapping[str, int],
    out: dict[str, int],
    reasons: dict[str, list[str]],
    limits: GuardLimits,
) -> None:
    for s in shapes:
        if out[s.name] < s.min_count:
            out[s.name] = s.min_count
            reasons[s.name].append(f"raised to the shape's minimum {s.min_count}")
        if out[s.name] > s.max_count:
            out[s.name] = s.max_count
            reasons[s.name].append(f"capped at the shape's maximum {s.max_count}")

    def total() -> int:
        return sum(out.values())

    def cost() -> float:
        return sum(s.price_per_hour * out[s.name] for s in shapes)

    # Take back additions first (most expensive shape first: the cheapest capacity is the last to go), and
    # only cut into what already runs when the running cluster itself is over a bound.
    by_price = sorted(shapes, key=lambda s: (-s.price_per_hour, s.name))
    budget = limits.budget_per_hour

    def violated() -> bool:
        return total() > limits.max_nodes or (math.isfinite(budget) and cost() > budget + 1e-9)

    def keep_running(s: NodeShape) -> int:
        return max(s.min_count, min(current.get(s.name, 0), out[s.name]))

    def keep_minimum(s: NodeShape) -> int:
        return s.min_count

    for floor_of in (keep_running, keep_minimum):
        for s in by_price:
            floor = floor_of(s)
            while out[s.name] > floor and violated():
                why = (
                    f"trimmed to stay within max_nodes {limits.max_nodes}"
                    if total() > limits.max_nodes
                    else f"trimmed to stay within the budget {budget:.2f} $/h"
                )
                out[s.name] -= 1
                if why not in reasons[s.name]:
                    reasons[s.name].append(why)


@dataclass(frozen=True, slots=True)
class StepWindow:
    """The node counts (running + launching) the ticks of one step window saw: per shape the lowest and the
    highest. Empty for a window no tick has seen yet."""

    low: tuple[tuple[str, int], ...] = ()
    high: tuple[tuple[str, int], ...] = ()

    def seen(self, current: Mapping[str, int]) -> StepWindow:
        """This window once a tick has seen ``current``."""
        low, high = dict(self.low), dict(self.high)
        for name, n in current.items():
            count = max(0, int(n))
            low[name] = min(low.get(name, count), count)
            high[name] = max(high.get(name, count), count)
        return StepWindow(low=tuple(sorted(low.items())), high=tuple(sorted(high.items())))


def limit_steps_in_window(
    *,
    shapes: tuple[NodeShape, ...],
    current: Mapping[str, int],
    targets: Mapping[str, int],
    window: StepWindow,
    limits: GuardLimits,
    window_seconds: float,
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """``targets`` (already guarded for this tick) held to the step limits of the whole window: at most
    ``max_step_up`` above the lowest count the window saw and ``max_step_down`` below the highest.

    ``window`` must include this tick's ``current``. On a window's first tick it changes nothing. It only
    ever shrinks a step — never turns a rise into a cut or a cut into a rise — and gives way to the hard
    bounds as :func:`apply_guardrails` does: never below a shape's minimum (when the target was not), never
    over a maximum, ``max_nodes`` or the budget.
    """
    low, high = dict(window.low), dict(window.high)
    out = {s.name: int(targets.get(s.name, current.get(s.name, 0))) for s in shapes}
    reasons: dict[str, list[str]] = {s.name: [] for s in shapes}
    per = f"per {window_seconds:g} s (ticks a nudge adds share it)"
    for s in shapes:
        n, cur, want = s.name, max(0, int(current.get(s.name, 0))), out[s.name]
        if want > cur:
            cap = max(cur, low.get(n, cur) + limits.max_step_up, min(want, s.min_count))
            if want > cap:
                out[n] = cap
                reasons[n].append(f"step limited to +{limits.max_step_up} {per}")
        elif want < cur:
            keep = min(cur, high.get(n, cur) - limits.max_step_down, max(want, s.max_count))
            if want < keep:
                out[n] = keep
                reasons[n].append(f"step limited to -{limits.max_step_down} {per}")
    # A cut kept smaller can put the plan back over max_nodes or the budget, which the cut may have been
    # for: give back the kept nodes, most expensive first, until it is within them again.
    budget = limits.budget_per_hour

    def violated() -> bool:
        total = sum(out.values())
        cost = sum(s.price_per_hour * out[s.name] for s in shapes)
        return total > limits.max_nodes or (math.isfinite(budget) and cost > budget + 1e-9)

    for s in sorted(shapes, key=lambda s: (-s.price_per_hour, s.name)):
        floor = int(targets.get(s.name, out[s.name]))
        while out[s.name] > floor and violated():
            out[s.name] -= 1
    for s in shapes:
        if out[s.name] == int(targets.get(s.name, out[s.name])):
            reasons[s.name] = []
    return out, reasons
