"""The policy plugin API: a policy is a pure function of a context, found by name or ``module:attr``.

A policy sees the snapshot, the throughput models, its own state and the time as data, and returns either
per-stage demand (the planner then picks the cheapest shapes) or target node counts per shape. It must not
read the clock, the network or a random source: the same context must give the same decision. Guardrails are
applied by the caller around every policy, built-in or third-party, so a policy cannot break a bound.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from autoscaler.config import Config
from autoscaler.throughput import ThroughputModels
from autoscaler.types import Snapshot, StageDemand

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


class PolicyLoadError(Exception):
    """A policy reference that cannot be used; the message says what to fix."""


def installed_policies() -> dict[str, str]:
    """Policy name → the object its entry point names, for every installed policy plugin."""
    return {ep.name: ep.value for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)}


def _import_ref(ref: str) -> object:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise PolicyLoadError(
            f"policy reference {ref!r} is neither an installed policy ({', '.join(installed_policies())}) "
            "nor of the form 'package.module:attribute'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise PolicyLoadError(
            f"policy {ref!r}: cannot import module {module_name!r} ({e}). Is the package installed in this "
            "environment (pip install it), or is the module path misspelt?"
        ) from e
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise PolicyLoadError(f"policy {ref!r}: module {module_name!r} has no attribute {attr!r}") from e
    return obj


def load_policy(ref: str, options: Mapping[str, Any] | None = None) -> Policy:
    """Instantiate a policy by installed name or ``module:attr``, passing ``options`` as keyword arguments."""
    installed = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if ref in installed:
        try:
            factory: object = installed[ref].load()
        except Exception as e:
            raise PolicyLoadError(
                f"installed policy {ref!r} ({installed[ref].value}) failed to import: {e}"
            ) from e
    else:
        factory = _import_ref(ref)
    opts = dict(options or {})
    try:
        json.dumps(opts)
    except TypeError as e:
        raise PolicyLoadError(f"policy {ref!r}: options must be plain YAML/JSON values ({e})") from e
    if isinstance(factory, type) or (callable(factory) and not hasattr(factory, "decide")):
        try:
            policy = factory(**opts)
        except (TypeError, ValueError) as e:
            raise PolicyLoadError(f"policy {ref!r}: bad options {sorted(opts)}: {e}") from e
    else:
        if opts:
            raise PolicyLoadError(f"policy {ref!r} is an instance and takes no options")
        policy = factory
    if not isinstance(policy, Policy):
        raise PolicyLoadError(
            f"policy {ref!r} resolved to {type(policy).__name__}, which has no 'name' attribute and "
            "'decide(ctx) -> PolicyDecision' method"
        )
    return policy
