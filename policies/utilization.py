"""``utilization``: scale each node shape on its measured utilization, like the Kubernetes HPA.

Per shape, ``desired = ceil(current × mean utilization / target)``, where utilization is the nodes' GPU
utilization for shapes with GPUs (the GPU is what such a node is paid for) and CPU utilization otherwise.
Within ``tolerance`` of the target the count is kept, as the HPA does, so that noise does not resize the
cluster. It knows nothing about stages or backlogs: it is the baseline that reacts to load already on the
nodes, one step behind demand. Unknown utilization keeps the shape's count — never a shrink on no data.
"""

from __future__ import annotations

import math

from autoscaler.core.policy_api import PolicyContext, PolicyDecision
from autoscaler.types import NodeShape, Reading, Snapshot


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


class UtilizationPolicy:
    name = "utilization"

    def __init__(self, *, target_utilization: float = 0.7, tolerance: float = 0.1) -> None:
        """``target_utilization`` is a fraction (0.7 = 70%); ``tolerance`` is the HPA's relative band."""
        target = _number("target_utilization", target_utilization)
        tol = _number("tolerance", tolerance)
        if not 0 < target <= 1:
            raise ValueError(f"target_utilization must be in (0, 1], got {target}")
        if not 0 <= tol < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tol}")
        self._target = target
        self._tolerance = tol

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        snap = ctx.snapshot
        targets: dict[str, int] = {}
        reasons: list[str] = []
        for shape in snap.shapes:
            target, reason = self._decide_shape(snap, shape)
            targets[shape.name] = target
            reasons.append(f"{shape.name}: {reason}")
        return PolicyDecision(target_counts=targets, reasons=tuple(reasons))

    def _decide_shape(self, snap: Snapshot, shape: NodeShape) -> tuple[int, str]:
        running = snap.count(shape.name)
        pending = max(0, int(snap.pending_counts.get(shape.name, 0)))
        keep = running + pending
        metric = "GPU" if shape.capacity("GPU") > 0 else "CPU"
        readings: list[Reading] = [
            n.gpu_utilization if metric == "GPU" else n.cpu_utilization
            for n in snap.nodes
            if n.shape == shape.name
        ]
        known = [r.get() for r in readings if r.known]
        if running <= 0:
            return keep, "keep: no running node to measure (utilization cannot scale a shape up from zero)"
        if not known:
            why = readings[0].reason if readings else "no node of this shape was observed"
            return keep, f"keep {keep}: {metric} utilization unknown ({why}); no change without data"
        # Readings outside 0–100 are clamped, not trusted: a counter glitch must not multiply the count.
        mean = sum(min(100.0, max(0.0, v)) for v in known) / len(known) / 100.0
        ratio = mean / self._target
        seen = (
            f"mean {metric} utilization {mean:.0%} over {len(known)} of {running} node(s), "
            f"target {self._target:.0%}"
        )
        if abs(ratio - 1.0) <= self._tolerance:
            return keep, f"keep {keep}: {seen}, within the ±{self._tolerance:.0%} tolerance"
        desired = math.ceil(running * ratio - 1e-9)
        if running <= desired <= keep:
            # Nodes already launching cover the increase; cancelling them would only add churn.
            return keep, f"keep {keep}: {seen}; wants {desired}, nodes already launching cover it"
        verb = "scale up" if desired > keep else "scale down"
        return desired, f"{verb} to {desired}: {seen} (ceil({running} × {ratio:.3g}))"
