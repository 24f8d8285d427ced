"""``raytide simulate``: a discrete-time simulator of a Ray cluster running a multi-stage pipeline.

It measures the decision quality of any policy through the very ``autoscaler.core.decide.decide`` the daemon
runs (guardrails and planner included). Public API::

    from autoscaler.sim import load_scenario, simulate, summarize
    run = simulate(load_scenario("scenarios/step.yaml"), load_policy("throughput"))
    print(summarize(run).metrics.to_json())
"""

from autoscaler.sim.engine import Simulation, simulate
from autoscaler.sim.records import NodeLog, SimDecision, SimRun
from autoscaler.sim.results import Convergence, RunMetrics, RunResult, Series, run_policy, summarize
from autoscaler.sim.scenario import (
    SimScenario,
    load_scenario,
    parse_scenario,
    resolve_scenarios,
    scenarios_dir,
)

__all__ = [
    "Convergence",
    "NodeLog",
    "RunMetrics",
    "RunResult",
    "Series",
    "SimDecision",
    "SimRun",
    "SimScenario",
    "Simulation",
    "load_scenario",
    "parse_scenario",
    "resolve_scenarios",
    "run_policy",
    "scenarios_dir",
    "simulate",
    "summarize",
]
