"""The testing kit for policy authors: builders, a fake clock, a runner, and the policy contract suite.

Build inputs without a cluster::

    config = make_config(shapes=[make_shape(name="cpu4", resources={"CPU": 4}, price_per_hour=0.2)])
    snap = make_snapshot(
        config=config,
        nodes=make_nodes(shape="cpu4", count=2, cpu_utilization=90),
        stages=[make_stage(name="decode", backlog=400, throughput=20, slots_busy=8)],
    )
    decision = run_policy(MyPolicy(), snap, config)     # guardrails included, exactly as the daemon runs it
    assert decision.plan.target("cpu4") == 3

Prove a policy keeps the contract every raytide policy must keep (deterministic, well-formed, JSON state,
bounded, no scale-down on unknown inputs, robust to empty and extreme inputs)::

    check_policy_contract(lambda: MyPolicy(threshold=3))        # raises AssertionError on a violation

or, with pytest, subclass :class:`PolicyContract` and override ``make_policy``.

The builders need only raytide; the random-input checks need ``hypothesis`` (the ``test`` extra), imported
when they run. Import from ``autoscaler.testing``: the modules behind it may move.
"""

from autoscaler.testing.builders import (
    default_shapes,
    make_config,
    make_context,
    make_node,
    make_nodes,
    make_shape,
    make_snapshot,
    make_stage,
    make_stage_config,
)
from autoscaler.testing.clock import FakeClock
from autoscaler.testing.contract import (
    PolicyContract,
    PolicyFactory,
    check_deterministic,
    check_edge_cases,
    check_guarded_bounds,
    check_holds_on_unknown_inputs,
    check_policy_contract,
    check_state_round_trip,
    check_well_formed,
)
from autoscaler.testing.scenarios import (
    Scenario,
    contract_scenarios,
    extreme_scenarios,
    random_scenarios,
    unknown_scenarios,
)
from autoscaler.testing.session import PolicySession, run_policy

__all__ = [
    "FakeClock",
    "PolicyContract",
    "PolicyFactory",
    "PolicySession",
    "Scenario",
    "check_deterministic",
    "check_edge_cases",
    "check_guarded_bounds",
    "check_holds_on_unknown_inputs",
    "check_policy_contract",
    "check_state_round_trip",
    "check_well_formed",
    "contract_scenarios",
    "default_shapes",
    "extreme_scenarios",
    "make_config",
    "make_context",
    "make_node",
    "make_nodes",
    "make_shape",
    "make_snapshot",
    "make_stage",
    "make_stage_config",
    "random_scenarios",
    "run_policy",
    "unknown_scenarios",
]
