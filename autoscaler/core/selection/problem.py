"""The question shape selection answers, and its answer: stage requirements, the problem, the selection.

Value types only, checked on construction and frozen; the planner that answers is in the rest of this package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from autoscaler.types import NodeShape, Placement, UnmetDemand

Status = Literal["optimal", "partial", "infeasible_bounds"]


def _check_amount(what: str, value: float, *, allow_inf: bool = False) -> None:
    if math.isnan(value) or (math.isinf(value) and not (allow_inf and value > 0)) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")


def _freeze_float(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in values.items()})


def _freeze_int(values: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({str(k): int(v) for k, v in values.items()})


@dataclass(frozen=True, slots=True)
class StageRequirement:
    """What one stage needs: a rate, what one slot takes, and how fast one slot runs on each shape."""

    name: str
    target_rate: float
    """Units of work per second needed (>= 0)."""
    slot_resources: Mapping[str, float]
    """What one slot (task or actor) needs, e.g. ``{"CPU": 1, "GPU": 1}``."""
    per_slot_rate: Mapping[str, float]
    """Shape name → units/s one slot delivers there; shapes missing or at 0 are not eligible."""
    max_slots: int | None = None
    min_slots: int = 0
    """Slots to keep regardless of the target (e.g. actors that exist now); soft, see Selection.reasons."""

    def __post_init__(self) -> None:
        # Checked inline, and described only when wrong: stages are built (and copied with new targets)
        # several times per decision.
        if not 0.0 <= self.target_rate < math.inf:
            _check_amount(f"stage {self.name!r}: target_rate", self.target_rate)
        for res, amount in self.slot_resources.items():
            if not 0.0 <= amount < math.inf:
                _check_amount(f"stage {self.name!r}: slot resource {res!r}", amount)
        for shape, rate in self.per_slot_rate.items():
            if not 0.0 <= rate < math.inf:
                _check_amount(f"stage {self.name!r}: per-slot rate on {shape!r}", rate)
        if self.min_slots < 0:
            raise ValueError(f"stage {self.name!r}: min_slots must be >= 0, got {self.min_slots}")
        if self.max_slots is not None:
            if self.max_slots < 0:
                raise ValueError(f"stage {self.name!r}: max_slots must be >= 0, got {self.max_slots}")
            if self.max_slots < self.min_slots:
                raise ValueError(
                    f"stage {self.name!r}: min_slots ({self.min_slots}) is above max_slots ({self.max_slots})"
                )
        object.__setattr__(self, "target_rate", float(self.target_rate))
        # Frozen copies: callers often pass plain dicts, and a frozen dataclass should stay frozen.
        object.__setattr__(self, "slot_resources", _freeze_float(self.slot_resources))
        object.__setattr__(self, "per_slot_rate", _freeze_float(self.per_slot_rate))


def _empty_int_map() -> Mapping[str, int]:
    return MappingProxyType({})


def _empty_reserved() -> Mapping[str, Mapping[str, float]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SelectionProblem:
    """Shapes with bounds and prices, stage requirements, and cluster-wide limits."""

    shapes: tuple[NodeShape, ...]
    stages: tuple[StageRequirement, ...]
    max_nodes: int
    budget_per_hour: float
    """Dollars per hour; ``math.inf`` for no budget."""
    lower: Mapping[str, int] = field(default_factory=_empty_int_map)
    """Extra per-shape lower bounds (e.g. hold what runs now), combined with ``min_count`` by max."""
    upper: Mapping[str, int] = field(default_factory=_empty_int_map)
    """Extra per-shape upper bounds, combined with ``max_count`` by min."""
    reserved: Mapping[str, Mapping[str, float]] = field(default_factory=_empty_reserved)
    """Per shape, resources on every node that stages cannot use (system daemons, a head's share)."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.shapes]
        if len(set(names)) != len(names):
            raise ValueError(f"node shape names must be unique, got {names}")
        stage_names = [k.name for k in self.stages]
        if len(set(stage_names)) != len(stage_names):
            raise ValueError(f"stage names must be unique, got {stage_names}")
        for s in self.shapes:
            _check_amount(f"shape {s.name!r}: price_per_hour", s.price_per_hour)
            for res, amount in s.resources.items():
                _check_amount(f"shape {s.name!r}: resource {res!r}", amount)
            if s.min_count < 0 or s.max_count < 0:
                raise ValueError(f"shape {s.name!r}: min_count and max_count must be >= 0")
            if s.min_count > s.max_count:
                raise ValueError(f"shape {s.name!r}: min_count ({s.min_count}) > max_count ({s.max_count})")
        if self.max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0, got {self.max_nodes}")
        _check_amount("budget_per_hour", self.budget_per_hour, allow_inf=True)
        known = set(names)
        for label, bounds in (("lower", self.lower), ("upper", self.upper)):
            for shape, value in bounds.items():
                if shape not in known:
                    raise ValueError(f"{label} bound for unknown node shape {shape!r}")
                if value < 0:
                    raise ValueError(f"{label} bound for {shape!r} must be >= 0, got {value}")
        for shape, res_map in self.reserved.items():
            if shape not in known:
                raise ValueError(f"reserved resources for unknown node shape {shape!r}")
            for res, amount in res_map.items():
                _check_amount(f"reserved {res!r} on {shape!r}", amount)
        object.__setattr__(self, "lower", _freeze_int(self.lower))
        object.__setattr__(self, "upper", _freeze_int(self.upper))
        object.__setattr__(
            self, "reserved", MappingProxyType({k: _freeze_float(v) for k, v in self.reserved.items()})
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen node counts, where each stage's slots go, and what could not be served."""

    counts: Mapping[str, int]
    """Nodes per shape; every shape of the problem is present."""
    placements: tuple[Placement, ...]
    """Slots per (stage, shape) with at least one slot, sorted by (stage, shape)."""
    unmet: tuple[UnmetDemand, ...]
    """Stages whose target is not met, with the planned rate and why."""
    cost_per_hour: float
    status: Status
    """``optimal``: every target met; ``partial``: some demand unmet (see ``unmet``);
    ``infeasible_bounds``: the minimum counts alone break max_nodes or the budget — the counts are
    those minimums and the stages are placed on them as well as they fit."""
    reasons: tuple[str, ...] = ()
    """Plain-words notes about the plan as a whole (bounds that conflicted, min_slots not kept)."""
