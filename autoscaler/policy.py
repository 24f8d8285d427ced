"""The policy plugin API, for policy authors: the interface and the loader, at a path that stays put.

A policy sees the snapshot, the throughput models, its own state and the time as data, and returns either
per-stage demand (the planner then picks the cheapest shapes) or target node counts per shape. It must not
read the clock, the network or a random source: the same context must give the same decision. Guardrails are
applied by the caller around every policy, built-in or third-party, so a policy cannot break a bound.
"""

from autoscaler.app.plugins import PolicyLoadError, installed_policies, load_policy
from autoscaler.core.policy_api import ENTRY_POINT_GROUP, Policy, PolicyContext, PolicyDecision

__all__ = [
    "ENTRY_POINT_GROUP",
    "Policy",
    "PolicyContext",
    "PolicyDecision",
    "PolicyLoadError",
    "installed_policies",
    "load_policy",
]
