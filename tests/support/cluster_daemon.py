"""The daemon on a real local cluster, as the ``tests/ray`` daemon tests build it: the real GCS view,
actuator and state store, a metrics source the test controls, and recording subclasses that keep what
happened for the assertions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from autoscaler.adapters.ray.actuator import FloorStatus, RayActuator
from autoscaler.adapters.state_store import StateStore
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.app.plugins import load_policy
from autoscaler.core.config import Config
from autoscaler.daemon import ClusterReader, Daemon, MetricsSource, TickOutcome, WarmPool
from autoscaler.ports import DrainResult


class RecordingActuator(RayActuator):
    """The real actuator, keeping the floor's channel per call (``channels``), each node asked to drain
    (``asked``) and each drain's result (``results``); ``before_drain`` and ``after_drain`` run test code
    right before a drain reaches the GCS and right after."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_drain: Callable[[str], None] = lambda node_id: None
        self.after_drain: Callable[[DrainResult], None] = lambda result: None
        self.channels: list[str] = []
        self.asked: list[str] = []
        self.results: list[DrainResult] = []

    def set_target(self, counts: Mapping[str, int]) -> FloorStatus:
        status = super().set_target(counts)
        self.channels.append(status.channel)
        return status

    def drain(self, node_id: str, *args: Any, **kwargs: Any) -> DrainResult:
        self.asked.append(node_id)
        self.before_drain(node_id)
        result = super().drain(node_id, *args, **kwargs)
        self.after_drain(result)
        self.results.append(result)
        return result


class RecordingDaemon(Daemon):
    """Keeps every tick's outcome (``Daemon.last`` holds only the newest). Its telemetry is the real one,
    whose health state and metrics registry the tests read."""

    telemetry: Telemetry

    def __init__(self, *, telemetry: Telemetry, **kwargs: Any) -> None:
        super().__init__(telemetry=telemetry, **kwargs)
        self.outcomes: list[TickOutcome] = []

    async def tick(self) -> TickOutcome:
        outcome = await super().tick()
        self.outcomes.append(outcome)
        return outcome


def cluster_daemon(
    cfg: Config,
    *,
    cluster: ClusterReader,
    source: MetricsSource,
    actuator: RayActuator,
    store: StateStore,
    warm_pool: WarmPool | None = None,
) -> RecordingDaemon:
    """A daemon with the config's policy and its own telemetry."""
    return RecordingDaemon(
        config=cfg,
        policy=load_policy(cfg.policy.name),
        source=source,
        cluster=cluster,
        actuator=actuator,
        store=store,
        telemetry=Telemetry(tick_interval_seconds=1.0),
        warm_pool=warm_pool,
    )
