"""Fakes for the daemon's ports: a metrics source, a GCS view and an actuator that launch nodes at once, a
service manager that records what it hears, manual clocks, and a builder for a daemon made of them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoscaler.adapters.telemetry import Telemetry
from autoscaler.app.plugins import load_policy
from autoscaler.core.config import Config, parse_config
from autoscaler.core.policy_api import Policy
from autoscaler.core.queries import QueryResult, make_sample
from autoscaler.daemon import Daemon
from autoscaler.ports import (
    Actuator,
    ClusterReader,
    ClusterState,
    DrainResult,
    MetricsSource,
    RayNode,
    StateJournal,
)

DS = "dataset_1"
INFER = "MapBatches(Infer)_2"

CONFIG_TEXT = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2, min: 0, max: 4, launch_seconds: 5}
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.0, min: 0, max: 4, launch_seconds: 5}
stages:
  - {name: infer, operator: "Infer", resources: {CPU: 1, GPU: 1}, prior_rate: {gpu1: 1.0}}
targets: {drain_seconds: 60, headroom: 0.2}
bounds: {max_step_down: 4, scale_down_window_seconds: 0}
daemon: {interval_seconds: 1, drain_share_per_tick: 0.5, observe_timeout_seconds: 0.5,
         act_timeout_seconds: 0.5, http_port: null}
"""


def make_config(**daemon: object) -> Config:
    cfg = parse_config(CONFIG_TEXT)
    if daemon:
        cfg = cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update=daemon)})
    return cfg


def stage_results(backlog: float, rate: float, slots: float, now: float) -> dict[str, QueryResult]:
    def one(value: float) -> QueryResult:
        return QueryResult(query="q", samples=(make_sample({"dataset": DS, "operator": INFER}, value, now),))

    return {
        "stage_backlog": one(backlog),
        "stage_throughput": one(rate),
        "stage_arrival": one(rate),
        "stage_slots": one(slots),
        "stage_freshness": one(1.0),
        "nodes_active": QueryResult(query="q"),
        "nodes_pending": QueryResult(query="q"),
        "node_cpu_utilization": QueryResult(query="q"),
        "node_gpu_utilization": QueryResult(query="q"),
        "targets_down": QueryResult(query="q"),
    }


class FakeSource:
    """Reports ``backlog`` on the GPU stage; ``fail``/``slow``/``garbage`` break it."""

    def __init__(self, backlog: float = 0.0, rate: float = 1.0, slots: float = 1.0) -> None:
        self.backlog = backlog
        self.rate = rate
        self.slots = slots
        self.fail: Exception | None = None
        self.slow_s = 0.0
        self.garbage = False
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def query_templates(
        self, names: Iterable[str] | None = None, *, at: float | None = None
    ) -> dict[str, QueryResult]:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        if self.fail is not None:
            raise self.fail
        if self.garbage:
            return {"stage_backlog": "<html>oops</html>"}  # type: ignore[dict-item]
        return stage_results(self.backlog, self.rate, self.slots, 1000.0)


@dataclass
class FakeCluster:
    """A GCS view; nodes appear when the actuator's floor asks for them (instantly)."""

    nodes: list[RayNode] = field(default_factory=list)
    fail: Exception | None = None
    slow_s: float = 0.0
    """Each read blocks this long (it runs in a worker thread, as the real reader does)."""
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> ClusterState:
        if self.slow_s:
            time.sleep(self.slow_s)
        if self.fail is not None:
            raise self.fail
        with self.lock:
            return ClusterState(time=0.0, autoscaler_version="v2", nodes=tuple(self.nodes))

    def add(self, node_type: str, *, busy: bool = False, idle_seconds: float = 10.0) -> RayNode:
        with self.lock:
            self.counter += 1
            node = RayNode(
                node_id=f"{self.counter:056x}",
                node_type=node_type,
                ip=f"10.0.0.{self.counter}",
                status="RUNNING" if busy else "IDLE",
                idle_seconds=None if busy else idle_seconds,
            )
            self.nodes.append(node)
            return node

    def remove(self, node_id: str) -> None:
        with self.lock:
            self.nodes = [n for n in self.nodes if n.node_id != node_id]

    def count(self, node_type: str) -> int:
        return sum(1 for n in self.nodes if n.node_type == node_type)


class FakeActuator:
    """Launches the floor's missing nodes at once; accepts drains of idle nodes only (as Ray does)."""

    def __init__(self, cluster: FakeCluster, *, launch: bool = True) -> None:
        self.cluster = cluster
        self.launch = launch
        self.floors: list[dict[str, int]] = []
        self.drains: list[str] = []
        self.fail: Exception | None = None
        self.launched = 0
        self.log: list[str] = []

    def set_target(self, counts: Mapping[str, int]) -> object:
        if self.fail is not None:
            raise self.fail
        self.floors.append(dict(counts))
        self.log.append(f"floor {dict(counts)}")
        if self.launch:
            for shape, n in counts.items():
                for _ in range(n - self.cluster.count(shape)):
                    self.cluster.add(shape)
                    self.launched += 1
        return None

    def drain(self, node_id: str) -> DrainResult:
        if self.fail is not None:
            raise self.fail
        self.drains.append(node_id)
        self.log.append(f"drain {node_id}")
        node = next((n for n in self.cluster.nodes if n.node_id == node_id), None)
        if node is None:
            return DrainResult(node_id, False, "no such alive node")
        if node.status != "IDLE":
            return DrainResult(node_id, False, "The node to be idle terminated is no longer idle.")
        self.cluster.remove(node_id)
        return DrainResult(node_id, True)


class ManualClock:
    """A clock that moves only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class RecordingService:
    """A service manager that keeps what it heard, in order: ``ready``, ``status <text>``, ``watchdog``,
    ``stopping``."""

    heard: list[str] = field(default_factory=list)

    def ready(self) -> None:
        self.heard.append("ready")

    def status(self, text: str) -> None:
        self.heard.append(f"status {text}")

    def watchdog(self) -> None:
        self.heard.append("watchdog")

    def stopping(self) -> None:
        self.heard.append("stopping")

    def kinds(self) -> list[str]:
        return [h.split(" ", 1)[0] for h in self.heard]


def make_daemon(
    store: StateJournal,
    source: MetricsSource,
    cluster: ClusterReader,
    actuator: Actuator,
    *,
    config: Config | None = None,
    policy: Policy | None = None,
    telemetry: Telemetry | None = None,
    **kwargs: Any,
) -> Daemon:
    """A daemon with (by default) ``make_config()``, its policy and a telemetry of its own; ``kwargs`` go to
    the constructor."""
    cfg = config or make_config()
    return Daemon(
        config=cfg,
        policy=policy if policy is not None else load_policy(cfg.policy.name),
        source=source,
        cluster=cluster,
        actuator=actuator,
        store=store,
        telemetry=telemetry if telemetry is not None else Telemetry(tick_interval_seconds=1.0),
        **kwargs,
    )


def telemetry_of(daemon: Daemon) -> Telemetry:
    """The real telemetry :func:`make_daemon` gave the daemon (its health and registry)."""
    assert isinstance(daemon.telemetry, Telemetry)
    return daemon.telemetry
