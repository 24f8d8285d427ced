"""``example-fixed``: keep a fixed number of nodes of one shape, and leave every other shape as it is.

The smallest useful raytide policy — a floor of standby capacity, say — and a template for your own.
"""

from __future__ import annotations

from autoscaler.policy import PolicyContext, PolicyDecision

__all__ = ["FixedPolicy"]


class FixedPolicy:
    name = "example-fixed"

    def __init__(self, *, shape: str = "cpu4", count: int = 1) -> None:
        # Options come from the YAML configuration: check them here, so a typo fails at start-up.
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an integer >= 0, got {count!r}")
        self._shape = shape
        self._count = count

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        snap = ctx.snapshot
        known = {s.name for s in snap.shapes}
        if self._shape not in known:
            # Shapes missing from target_counts keep their current count.
            return PolicyDecision(
                target_counts={},
                reasons=(f"shape {self._shape!r} is not configured (known: {', '.join(sorted(known))})",),
            )
        # Everything the policy needs comes from ctx, time included (ctx.now): no clock, no I/O. State is read
        # defensively: on the first tick, or after a reset, it is empty or not what this version wrote.
        held_since = ctx.state.get("held_since")
        if isinstance(held_since, bool) or not isinstance(held_since, int | float):
            held_since = ctx.now
        return PolicyDecision(
            target_counts={self._shape: self._count},
            reasons=(f"keep {self._count} {self._shape} node(s), as configured since t={held_since:g}",),
            state={"held_since": held_since},
        )
