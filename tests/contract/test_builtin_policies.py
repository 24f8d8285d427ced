"""Every built-in policy passes the policy contract — loaded through its entry point, as a plugin would be.

Also checks that the contract suite itself catches the faults it promises to catch.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from autoscaler.app.plugins import load_policy
from autoscaler.core.policy_api import Policy, PolicyContext, PolicyDecision
from autoscaler.testing import (
    PolicyContract,
    check_deterministic,
    check_policy_contract,
    check_state_round_trip,
    check_well_formed,
)
from autoscaler.types import StageDemand


class TestThroughputContract(PolicyContract):
    def make_policy(self) -> Policy:
        return load_policy("throughput")


class TestUtilizationContract(PolicyContract):
    def make_policy(self) -> Policy:
        return load_policy("utilization")


class TestBacklogContract(PolicyContract):
    def make_policy(self) -> Policy:
        return load_policy("backlog")


class TestRayDefaultContract(PolicyContract):
    def make_policy(self) -> Policy:
        return load_policy("ray-default")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("throughput", {"drain_seconds": 10.0, "headroom": 0.0}),
        ("utilization", {"target_utilization": 0.5, "tolerance": 0.0}),
        ("backlog", {"target_backlog_per_slot": 0.5}),
        ("ray-default", {"upscaling_speed": 3.0, "idle_timeout_seconds": 0.0}),
    ],
)
def test_builtin_policies_with_options_keep_the_contract(name: str, options: dict[str, Any]) -> None:
    check_policy_contract(lambda: load_policy(name, options), max_examples=5)


# ----------------------------------------------------------------------- the suite catches violations


class _Random:
    name = "random"

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        return PolicyDecision(target_counts={s.name: random.randint(0, 5) for s in ctx.snapshot.shapes})


class _Clock:
    name = "clock"

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        return PolicyDecision(target_counts={}, state={"seen": time.time()})


class _Counter:
    """Keeps its memory on the instance instead of in the returned state."""

    name = "counter"

    def __init__(self) -> None:
        self.calls = 0

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        self.calls += 1
        return PolicyDecision(target_counts={s.name: self.calls for s in ctx.snapshot.shapes})


class _Negative:
    name = "negative"

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        return PolicyDecision(target_counts={s.name: -1 for s in ctx.snapshot.shapes})


class _UnknownShape:
    name = "unknown-shape"

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        return PolicyDecision(target_counts={"no-such-shape": 1})


class _SetState:
    name = "set-state"

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        return PolicyDecision(target_counts={}, state={"seen": {1, 2}})


class _NanDemand:
    name = "nan-demand"

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        return PolicyDecision(
            demands=tuple(
                StageDemand(s.name, s.backlog.value or float("nan"), "") for s in ctx.snapshot.stages
            )
        )


class _CrashesOnUnknown:
    name = "crashes"

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        if not ctx.snapshot.inputs_complete:
            raise RuntimeError("no data")
        return PolicyDecision(target_counts={})


class _NoDecide:
    name = "no-decide"


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (_Random, "disagree|different decisions"),
        (_Clock, "same context twice"),
        (_Counter, "same context twice"),
    ],
)
def test_contract_catches_nondeterminism(factory: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_deterministic(factory)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (_Negative, "is negative"),
        (_UnknownShape, "unknown shape 'no-such-shape'"),
        (_SetState, "not JSON-serialisable"),
        (_NanDemand, "not finite"),
        (_CrashesOnUnknown, "decide raised RuntimeError"),
        (_NoDecide, "lacks a 'name' attribute or a 'decide"),
    ],
)
def test_contract_catches_malformed_decisions(factory: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_well_formed(factory)


def test_contract_catches_state_kept_on_the_instance() -> None:
    with pytest.raises(AssertionError, match="JSON-restored state"):
        check_state_round_trip(_Counter)


def test_contract_runner_lists_every_violation() -> None:
    with pytest.raises(AssertionError) as e:
        check_policy_contract(_Clock, max_examples=3)
    text = str(e.value)
    assert "- deterministic:" in text and "- state_round_trip:" in text
    assert "- well_formed:" not in text
