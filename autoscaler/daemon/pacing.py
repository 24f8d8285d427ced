"""How fast the daemon may change the cluster, in time rather than in ticks: the nudge rate limit and the
step window.

A nudge (``POST /nudge``) adds a tick. Without pacing every extra tick would bring a fresh ``max_step_*``
and drain share, so whoever can nudge could loosen every per-tick limit at will. So nudges are accepted at
most one per gap, and the ticks share a window of one interval: a tick the interval's timer starts opens a
window, and a tick a nudge starts shares the open one — unless that one is a whole interval old — with
its step budget (:func:`~autoscaler.core.guardrails.limit_steps_in_window`) and its drains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from autoscaler.core.guardrails import GuardLimits, StepWindow, limit_steps_in_window
from autoscaler.types import NodeShape, Plan, ShapeChange

__all__ = ["Pacing", "pace"]

_SLACK = 0.01
"""Share of the interval by which a nudged tick may come early and still open a new window. Ticks a nudge
starts are spaced by the gap and land on the interval's boundary to within the clock's jitter: without the
slack a window would open one gap late about half the time, and a nudged daemon would step slower than a
timed one."""


class Pacing:
    """The nudge rate limit and the current step window. ``monotonic`` is the daemon's clock."""

    def __init__(self, *, interval_s: float, nudge_gap_s: float, monotonic: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.nudge_gap_s = nudge_gap_s
        self._monotonic = monotonic
        self._last_nudge: float | None = None
        self._nudged = False
        self._opened: float | None = None
        self.window = StepWindow()
        self._drained: dict[str, int] = {}

    def nudge(self) -> bool:
        """A nudge arrived: True when it is accepted (the next tick is nudged), False when it came within
        ``nudge_gap_s`` of the last accepted one."""
        now = self._monotonic()
        if self._last_nudge is not None and now - self._last_nudge < self.nudge_gap_s:
            return False
        self._last_nudge = now
        self._nudged = True
        return True

    def timer_fired(self) -> None:
        """The interval's timer, not a nudge, starts the next tick."""
        self._nudged = False

    def begin_tick(self) -> None:
        """A tick starts: it opens a window, or — nudged within the open one's interval — shares it."""
        now = self._monotonic()
        shared = (
            self._nudged and self._opened is not None and now - self._opened < self.interval_s * (1 - _SLACK)
        )
        self._nudged = False
        if not shared:
            self._opened = now
            self.window = StepWindow()
            self._drained = {}

    def see(self, current: Mapping[str, int]) -> StepWindow:
        """The tick sees ``current`` (running + launching per shape): the window it acts in."""
        self.window = self.window.seen(current)
        return self.window

    @property
    def drained(self) -> Mapping[str, int]:
        """Shape → nodes drained by earlier ticks of this window."""
        return dict(self._drained)

    def record_drain(self, shape: str) -> None:
        self._drained[shape] = self._drained.get(shape, 0) + 1


def pace(
    plan: Plan, shapes: tuple[NodeShape, ...], window: StepWindow, limits: GuardLimits, window_s: float
) -> Plan:
    """``plan`` with its steps held to what ``window`` left of the step limits (each change held says so)."""
    current = {c.shape: c.current for c in plan.changes}
    targets = {c.shape: c.target for c in plan.changes}
    paced, reasons = limit_steps_in_window(
        shapes=shapes, current=current, targets=targets, window=window, limits=limits, window_seconds=window_s
    )
    if all(paced.get(c.shape, c.target) == c.target for c in plan.changes):
        return plan
    changes = tuple(
        _retarget(c, paced[c.shape], reasons[c.shape]) if paced.get(c.shape, c.target) != c.target else c
        for c in plan.changes
    )
    return replace(plan, changes=changes)


def _retarget(change: ShapeChange, target: int, why: list[str]) -> ShapeChange:
    reason = change.reason
    # The explanation opens with the step it explains ("add 6: ..."): it must name the step now taken.
    old, new = change.target - change.current, target - change.current
    for verb, was, now in (("add", old, new), ("remove", -old, -new)):
        if reason.startswith(f"{verb} {was}:"):
            head = f"{verb} {now}:" if now > 0 else "keep:"
            reason = head + reason[len(f"{verb} {was}:") :]
    reason += ("; " if " — " in reason else " — ") + "; ".join(why)
    return replace(change, target=target, reason=reason)
