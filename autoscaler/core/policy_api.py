"""The policy interface: a policy is a pure function of a ``PolicyContext`` returning a ``PolicyDecision``.

A policy sees the snapshot, the throughput models, its own state and the time as data, and returns either
per-stage demand (the planner then picks the cheapest shapes) or target node counts per shape. It must not
read the clock, the network or a random source: the same context must give the same decision. Guardrails are
applied by the caller around every policy, built-in or third-party, so a policy cannot break a bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from autoscaler.types import Snapshot, StageDemand

if TYPE_CHECKING:  # annotations only: loading a plugin must not load the models' scikit-learn
    from autoscaler.core.config import Config
    from autoscaler.core.throughput import ThroughputModels

ENTRY_POINT_GROUP = "raytide.policies"


def _empty_state() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PolicyContext:
    snapshot: Snapshot
    models: ThroughputModels
    """Read-only for the policy: the caller updates the models before the policy runs."""
    config: Config
    state: Mapping[str, Any] = field(default_factory=_empty_state)
    """What this policy returned as ``state`` last time (JSON-serialisable; persisted by the daemon)."""

    @property
    def now(self) -> float:
        return self.snapshot.time


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Either ``demands`` (per stage) or ``target_counts`` (per shape); reasons in plain words."""

    demands: tuple[StageDemand, ...] | None = None
    target_counts: Mapping[str, int] | None = None
    reasons: tuple[str, ...] = ()
    state: Mapping[str, Any] = field(default_factory=_empty_state)
    warm_pool: Mapping[str, int] | None = None
    """Optional standby nodes per shape, overriding the warm pool's own sizing for the shapes named (the
    warm pool must be enabled; its caps — shape max, ``warm_pool.max``, node and money budgets — apply)."""

    def __post_init__(self) -> None:
        if (self.demands is None) == (self.target_counts is None):
            raise ValueError("a PolicyDecision carries exactly one of demands or target_counts")
        if self.warm_pool is not None:
            for shape, n in self.warm_pool.items():
                if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                    raise ValueError(f"warm_pool[{shape!r}] must be an int >= 0, got {n!r}")


@runtime_checkable
class Policy(Protocol):
    name: str

    def decide(self, ctx: PolicyContext) -> PolicyDecision: ...
