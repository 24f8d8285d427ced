"""Running a policy exactly as the daemon does (models, policy, planner, guardrails): one decision, or a
session of ticks that carries models and state from one decision to the next."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoscaler.core.config import Config
from autoscaler.core.decide import Decision, DecisionState, decide
from autoscaler.core.policy_api import Policy
from autoscaler.core.throughput import ThroughputModels
from autoscaler.types import Snapshot

__all__ = ["PolicySession", "run_policy"]


def run_policy(
    policy: Policy,
    snapshot: Snapshot,
    config: Config,
    *,
    models: ThroughputModels | None = None,
    state: DecisionState | None = None,
) -> Decision:
    """One decision exactly as the daemon makes it: model update → policy → selection → guardrails.

    Pass ``models`` and the previous ``decision.state`` to run several ticks (or use PolicySession).
    """
    return decide(
        snapshot,
        config,
        models if models is not None else ThroughputModels(),
        policy,
        state if state is not None else DecisionState(),
    )


@dataclass
class PolicySession:
    """Several ticks of one policy, carrying models and state from one decision to the next::

    clock = FakeClock()
    session = PolicySession(policy, config)
    for _ in range(10):
        session.step(make_snapshot(time=clock.now, config=config, ...))
        clock.advance(15)
    """

    policy: Policy
    config: Config
    models: ThroughputModels = field(default_factory=ThroughputModels)
    state: DecisionState = field(default_factory=DecisionState)
    decisions: list[Decision] = field(default_factory=list)

    def step(self, snapshot: Snapshot) -> Decision:
        d = run_policy(self.policy, snapshot, self.config, models=self.models, state=self.state)
        self.state = d.state
        self.decisions.append(d)
        return d

    @property
    def last(self) -> Decision:
        if not self.decisions:
            raise LookupError("no step has run yet")
        return self.decisions[-1]
