"""The plugin keeps raytide's policy contract, and behaves as documented."""

from __future__ import annotations

from raytide_policy_example import FixedPolicy

from autoscaler.policy import Policy, installed_policies, load_policy
from autoscaler.testing import (
    FakeClock,
    PolicyContract,
    PolicySession,
    make_config,
    make_nodes,
    make_snapshot,
    run_policy,
)


class TestFixedPolicyContract(PolicyContract):
    def make_policy(self) -> Policy:
        # Through the entry point, exactly as the daemon loads it from the configuration.
        return load_policy("example-fixed", {"shape": "cpu4", "count": 2})


class TestFixedPolicyOnAnUnknownShape(PolicyContract):
    max_examples = 5

    def make_policy(self) -> Policy:
        return FixedPolicy(shape="not-configured", count=3)


def test_entry_point_is_installed() -> None:
    assert installed_policies()["example-fixed"] == "raytide_policy_example:FixedPolicy"


def test_scales_to_the_fixed_count_within_guardrails() -> None:
    config = make_config(max_step_up=3)  # default shapes: cpu4, gpu1
    snap = make_snapshot(config=config, nodes=make_nodes(shape="gpu1", count=1))
    plan = run_policy(FixedPolicy(shape="cpu4", count=5), snap, config).plan
    assert plan.target("cpu4") == 3  # +3 per tick at most (bounds.max_step_up)
    assert plan.target("gpu1") == 1  # untouched


def test_state_carries_over_ticks() -> None:
    config = make_config()
    clock = FakeClock(now=100.0)
    session = PolicySession(FixedPolicy(count=1), config)
    for _ in range(3):
        session.step(make_snapshot(time=clock.now, config=config))
        clock.advance(15.0)
    assert session.state.policy_state["held_since"] == 100.0
    assert session.last.plan.target("cpu4") == 1
