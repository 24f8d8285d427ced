"""Builders of policy inputs without a cluster: shapes, configs, nodes, stage observations, snapshots and the
context a policy's ``decide`` receives. Every builder is keyword-only, with defaults that make a small CPU+GPU
cluster."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from autoscaler.core.config import Config, StageConfig
from autoscaler.core.policy_api import PolicyContext
from autoscaler.core.throughput import ThroughputModels
from autoscaler.types import Node, NodeShape, Reading, Snapshot, StageObservation, frozen_map

__all__ = [
    "Value",
    "default_shapes",
    "make_config",
    "make_context",
    "make_node",
    "make_nodes",
    "make_shape",
    "make_snapshot",
    "make_stage",
    "make_stage_config",
]

Value = float | Reading | None
"""A reading as builders take it: a number, a ready Reading, or None for "unknown"."""


class _Same(enum.Enum):
    AS_THROUGHPUT = "as throughput"


def _reading(value: Value, what: str) -> Reading:
    if isinstance(value, Reading):
        return value
    if value is None:
        return Reading.unknown(f"{what} not given")
    return Reading.of(float(value))


def make_shape(
    *,
    name: str = "cpu4",
    resources: Mapping[str, float] | None = None,
    price_per_hour: float = 0.2,
    min_count: int = 0,
    max_count: int = 100,
    launch_seconds: float = 60.0,
) -> NodeShape:
    """A node shape; defaults to a 4-CPU node at 0.20 $/h."""
    return NodeShape(
        name=name,
        resources=frozen_map(resources if resources is not None else {"CPU": 4.0}),
        price_per_hour=price_per_hour,
        min_count=min_count,
        max_count=max_count,
        launch_seconds=launch_seconds,
    )


def default_shapes() -> tuple[NodeShape, ...]:
    """A CPU shape and a GPU shape, the smallest heterogeneous cluster worth testing."""
    return (
        make_shape(name="cpu4", resources={"CPU": 4.0}, price_per_hour=0.2, max_count=20),
        make_shape(name="gpu1", resources={"CPU": 4.0, "GPU": 1.0}, price_per_hour=1.0, max_count=8),
    )


def make_stage_config(
    *,
    name: str,
    resources: Mapping[str, float] | None = None,
    prior_rate: Mapping[str, float] | None = None,
    max_slots: int | None = None,
) -> StageConfig:
    """A stage profile for :func:`make_config` (one slot needs ``resources``; default one CPU)."""
    return StageConfig(
        name=name,
        resources=dict(resources if resources is not None else {"CPU": 1.0}),
        prior_rate=dict(prior_rate or {}),
        max_slots=max_slots,
    )


def make_config(
    *,
    shapes: Iterable[NodeShape] | None = None,
    stages: Iterable[StageConfig] = (),
    max_nodes: int = 1000,
    budget_per_hour: float = math.inf,
    max_step_up: int = 10,
    max_step_down: int = 2,
    scale_down_window_seconds: float = 0.0,
    drain_seconds: float = 120.0,
    headroom: float = 0.2,
    default_stage_resources: Mapping[str, float] | None = None,
    policy: str = "throughput",
    policy_options: Mapping[str, Any] | None = None,
) -> Config:
    """A validated configuration (the same checks as a YAML file).

    Unlike the daemon's default (300 s), ``scale_down_window_seconds`` defaults to 0 here, so that one
    :func:`run_policy` call shows a policy's scale-down; pass 300 to test against the production window.
    """
    shape_list = list(shapes) if shapes is not None else list(default_shapes())
    data: dict[str, Any] = {
        "shapes": [
            {
                "name": s.name,
                "resources": dict(s.resources),
                "price_per_hour": s.price_per_hour,
                "min": s.min_count,
                "max": s.max_count,
                "launch_seconds": s.launch_seconds,
            }
            for s in shape_list
        ],
        "stages": [st.model_dump() for st in stages],
        "targets": {"drain_seconds": drain_seconds, "headroom": headroom},
        "bounds": {
            "max_nodes": max_nodes,
            "budget_per_hour": budget_per_hour,
            "max_step_up": max_step_up,
            "max_step_down": max_step_down,
            "scale_down_window_seconds": scale_down_window_seconds,
        },
        "policy": {"name": policy, "options": dict(policy_options or {})},
    }
    if default_stage_resources is not None:
        data["default_stage_resources"] = dict(default_stage_resources)
    return Config.model_validate(data)


def make_node(
    *,
    node_id: str,
    shape: str,
    cpu_utilization: Value = None,
    gpu_utilization: Value = None,
    idle_seconds: float | None = None,
) -> Node:
    """One live node; utilizations are 0–100 (None: unknown); ``idle_seconds`` None means busy."""
    return Node(
        node_id=node_id,
        shape=shape,
        cpu_utilization=_reading(cpu_utilization, "cpu utilization"),
        gpu_utilization=_reading(gpu_utilization, "gpu utilization"),
        idle_seconds=idle_seconds,
    )


def make_nodes(
    *,
    shape: str,
    count: int,
    cpu_utilization: Value = None,
    gpu_utilization: Value = None,
    idle_seconds: float | None = None,
    first: int = 0,
) -> tuple[Node, ...]:
    """``count`` alike nodes with ids ``<shape>-<first>``, ``<shape>-<first + 1>``, …"""
    return tuple(
        make_node(
            node_id=f"{shape}-{i}",
            shape=shape,
            cpu_utilization=cpu_utilization,
            gpu_utilization=gpu_utilization,
            idle_seconds=idle_seconds,
        )
        for i in range(first, first + count)
    )


def make_stage(
    *,
    name: str = "stage",
    backlog: Value = 0.0,
    throughput: Value = 0.0,
    arrival_rate: Value | _Same = _Same.AS_THROUGHPUT,
    slots_busy: Value = 0.0,
    slots_by_shape: Mapping[str, float] | None = None,
    upstream: str | None = None,
) -> StageObservation:
    """One stage observation; None makes a reading unknown. The arrival rate defaults to the throughput
    (a steady stage); give it to model a growing or shrinking backlog."""
    tp = _reading(throughput, "throughput")
    arrival = tp if isinstance(arrival_rate, _Same) else _reading(arrival_rate, "arrival rate")
    return StageObservation(
        name=name,
        backlog=_reading(backlog, "backlog"),
        throughput=tp,
        arrival_rate=arrival,
        slots_busy=_reading(slots_busy, "busy slots"),
        slots_by_shape=frozen_map(slots_by_shape),
        upstream=upstream,
    )


def make_snapshot(
    *,
    time: float = 0.0,
    config: Config | None = None,
    shapes: Iterable[NodeShape] | None = None,
    nodes: Iterable[Node] = (),
    node_counts: Mapping[str, int] | None = None,
    pending_counts: Mapping[str, int] | None = None,
    stages: Iterable[StageObservation] = (),
    errors: Iterable[str] = (),
    pending_demand: Iterable[Mapping[str, float]] = (),
) -> Snapshot:
    """A snapshot. Shapes come from ``shapes``, else ``config``, else :func:`default_shapes` — keep them
    the config's shapes, as the daemon does. ``node_counts`` defaults to the nodes counted by shape."""
    if shapes is not None:
        shape_t = tuple(shapes)
    elif config is not None:
        shape_t = config.node_shapes()
    else:
        shape_t = default_shapes()
    node_t = tuple(nodes)
    if node_counts is None:
        counted: dict[str, int] = {s.name: 0 for s in shape_t}
        for n in node_t:
            counted[n.shape] = counted.get(n.shape, 0) + 1
        node_counts = counted
    return Snapshot(
        time=time,
        shapes=shape_t,
        nodes=node_t,
        node_counts=_frozen_counts(node_counts),
        pending_counts=_frozen_counts(pending_counts or {}),
        stages=tuple(stages),
        errors=tuple(errors),
        pending_demand=tuple(frozen_map(b) for b in pending_demand),
    )


def _frozen_counts(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({str(k): int(v) for k, v in counts.items()})


def make_context(
    snapshot: Snapshot,
    config: Config,
    *,
    models: ThroughputModels | None = None,
    state: Mapping[str, Any] | None = None,
) -> PolicyContext:
    """The context a policy's ``decide`` receives, for calling a policy directly (no guardrails).

    Like the daemon, it updates ``models`` (a fresh one by default) with the snapshot first.
    """
    m = models if models is not None else ThroughputModels()
    m.update(snapshot)
    return PolicyContext(snapshot=snapshot, models=m, config=config, state=dict(state or {}))
