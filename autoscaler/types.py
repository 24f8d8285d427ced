"""Value types shared by the whole decision core.

Everything here is a frozen dataclass: a snapshot, once built, cannot change under the policy that reads it,
and two equal inputs always compare equal (which the determinism tests rely on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Resources = Mapping[str, float]
"""Ray resource name → amount (``CPU``, ``GPU``, ``memory`` in bytes, or any custom resource)."""


def frozen_map(values: Mapping[str, float] | None = None) -> Mapping[str, float]:
    """A read-only copy, so a frozen dataclass holding it is really immutable."""
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True, slots=True)
class Reading:
    """A measured number, or the explicit statement that it is unknown and why.

    Missing, NaN, infinite, stale or contradictory metrics become ``Reading.unknown(reason)`` — never 0 —
    so that nothing downstream can mistake "no data" for "no load".
    """

    value: float | None
    reason: str = ""

    @staticmethod
    def of(value: float) -> Reading:
        if not math.isfinite(value):
            return Reading(None, f"not a finite number ({value})")
        return Reading(float(value))

    @staticmethod
    def unknown(reason: str) -> Reading:
        return Reading(None, reason)

    @property
    def known(self) -> bool:
        return self.value is not None

    def get(self) -> float:
        """The value; raises if unknown (callers check ``known`` first)."""
        if self.value is None:
            raise ValueError(f"reading is unknown: {self.reason}")
        return self.value

    def or_else(self, default: float) -> float:
        return default if self.value is None else self.value


@dataclass(frozen=True, slots=True)
class NodeShape:
    """A Ray node type raytide may launch: its resources, its price and its bounds."""

    name: str
    resources: Resources
    price_per_hour: float
    min_count: int = 0
    max_count: int = 1000
    launch_seconds: float = 120.0

    def capacity(self, resource: str) -> float:
        return float(self.resources.get(resource, 0.0))


def slot_hosts(shapes: Sequence[NodeShape]) -> Callable[[Mapping[str, float]], list[NodeShape]]:
    """``need`` → the shapes with room for one slot needing it, remembered per kind of slot: stages share
    a few kinds, and a decision asks for every stage."""
    seen: dict[tuple[tuple[str, float], ...], list[NodeShape]] = {}

    def hosts(need: Mapping[str, float]) -> list[NodeShape]:
        kind = tuple((k, v) for k, v in need.items() if v > 0)
        found = seen.get(kind)
        if found is None:
            found = seen[kind] = [s for s in shapes if all(s.capacity(k) >= v for k, v in kind)]
        return found

    return hosts


@dataclass(frozen=True, slots=True)
class Node:
    """One live node as seen by the observe step."""

    node_id: str
    shape: str
    cpu_utilization: Reading = field(default_factory=lambda: Reading.unknown("not observed"))
    gpu_utilization: Reading = field(default_factory=lambda: Reading.unknown("not observed"))
    idle_seconds: float | None = None
    """Seconds the node has been idle (no tasks, no actors); None while busy or unknown."""


@dataclass(frozen=True, slots=True)
class StageObservation:
    """One pipeline stage (a Ray Data operator of one dataset) at one instant.

    Work is counted in one unit per stage (blocks by default: Ray Data's queue metrics count blocks and
    ``num_task_inputs_processed`` counts task inputs, which are blocks), so backlog and rates are comparable.
    """

    name: str
    backlog: Reading
    """Units of work waiting for this stage."""
    throughput: Reading
    """Units of work completed per second, over the observation window."""
    arrival_rate: Reading
    """Units of work arriving per second (throughput plus the backlog's growth)."""
    slots_busy: Reading
    """Tasks or actors of this stage running now (the slots doing the work)."""
    slots_by_shape: Mapping[str, float] = field(default_factory=frozen_map)
    """How the busy slots split over node shapes, when known (attribution for the throughput models)."""
    upstream: str | None = None
    """The stage feeding this one, when known: its extra output after scaling becomes this stage's input."""

    @property
    def complete(self) -> bool:
        return all(r.known for r in (self.backlog, self.throughput, self.arrival_rate, self.slots_busy))

    def unknown_reasons(self) -> tuple[str, ...]:
        named = {
            "backlog": self.backlog,
            "throughput": self.throughput,
            "arrival_rate": self.arrival_rate,
            "slots_busy": self.slots_busy,
        }
        return tuple(f"{self.name}.{k}: {r.reason}" for k, r in named.items() if not r.known)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one tick observed. All later steps are pure functions of this and explicit state."""

    time: float
    shapes: tuple[NodeShape, ...]
    nodes: tuple[Node, ...]
    node_counts: Mapping[str, int]
    """Running nodes per shape, as reported by the autoscaler (or counted from ``nodes``)."""
    pending_counts: Mapping[str, int]
    """Nodes per shape that are launching and not yet usable."""
    stages: tuple[StageObservation, ...]
    errors: tuple[str, ...] = ()
    """Everything that went wrong while observing; non-empty means some inputs are unknown."""
    pending_demand: tuple[Mapping[str, float], ...] = ()
    """Resource bundles waiting for a node (tasks and actors Ray could not place), as Ray's autoscaler sees
    them; what demand-driven policies such as ``ray-default`` scale on."""

    def shape(self, name: str) -> NodeShape:
        for s in self.shapes:
            if s.name == name:
                return s
        raise KeyError(f"unknown node shape {name!r}")

    def stage(self, name: str) -> StageObservation:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"unknown stage {name!r}")

    def count(self, shape: str) -> int:
        return int(self.node_counts.get(shape, 0))

    def counts_including_pending(self) -> dict[str, int]:
        return {s.name: self.count(s.name) + int(self.pending_counts.get(s.name, 0)) for s in self.shapes}

    @property
    def inputs_complete(self) -> bool:
        return not self.errors and all(st.complete for st in self.stages)


@dataclass(frozen=True, slots=True)
class StageDemand:
    """How much work per second a stage must be able to do, and why."""

    stage: str
    target_rate: float
    reason: str
    hold: bool = False
    """True when the stage's inputs are unknown: keep its current capacity, do not shrink it."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Slots of one stage on one node shape in a plan."""

    stage: str
    shape: str
    slots: int
    rate: float
    """Modelled units per second these slots deliver."""


@dataclass(frozen=True, slots=True)
class UnmetDemand:
    """Demand the plan cannot serve, reported as data (not raised)."""

    stage: str
    target_rate: float
    planned_rate: float
    reason: str


Direction = Literal["up", "down", "hold"]


@dataclass(frozen=True, slots=True)
class ShapeChange:
    shape: str
    current: int
    target: int
    reason: str
    proposed: int | None = None
    """What the policy and planner asked for before guardrails (None when the policy gave counts)."""

    @property
    def delta(self) -> int:
        return self.target - self.current

    @property
    def direction(self) -> Direction:
        if self.target > self.current:
            return "up"
        if self.target < self.current:
            return "down"
        return "hold"


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of one decision: node counts per shape, where the work goes, and why."""

    time: float
    policy: str
    changes: tuple[ShapeChange, ...]
    placements: tuple[Placement, ...] = ()
    unmet: tuple[UnmetDemand, ...] = ()
    demands: tuple[StageDemand, ...] = ()
    reasons: tuple[str, ...] = ()
    held: bool = False
    """True when guardrails held the cluster as it is (unknown inputs, no safe action)."""

    def target(self, shape: str) -> int:
        for c in self.changes:
            if c.shape == shape:
                return c.target
        raise KeyError(shape)

    def targets(self) -> dict[str, int]:
        return {c.shape: c.target for c in self.changes}

    def cost_per_hour(self, shapes: tuple[NodeShape, ...]) -> float:
        prices = {s.name: s.price_per_hour for s in shapes}
        return sum(prices[c.shape] * c.target for c in self.changes)
