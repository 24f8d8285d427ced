"""raytide's own metrics (prometheus-client, in a registry of their own; listed in docs/own-metrics.md) and
the health state behind ``/healthz`` and ``/readyz``.

The daemon calls ``record_tick`` once per tick, and ``record_actuation_error``, ``set_health`` and the
warm-pool calls when something happens; the MQTT publisher reports through the
``mqtt_events.EventHooks`` methods. ``model_errors`` is pure, like the decision core.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from autoscaler.types import Plan, Snapshot

__all__ = [
    "DURATION_BUCKETS",
    "HealthReport",
    "HealthState",
    "Telemetry",
    "model_errors",
]

HealthState = Literal["starting", "ok", "degraded", "stopping"]
_HEALTH_STATES: tuple[str, ...] = get_args(HealthState)

DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""1 ms to 10 s: from a pure decision to a tick that waits on Prometheus or the GCS."""

_MAX_REASONS = 20
"""Readiness reasons beyond this are summarised: a cluster with many broken stages would otherwise put an
unbounded list into every ``/readyz`` answer."""


def model_errors(plan: Plan, snapshot: Snapshot) -> dict[str, float]:
    """Per stage, ``|predicted − observed| / observed`` of a plan's modelled rate against what followed.

    ``predicted`` is the sum of the plan's placement rates for the stage; ``observed`` is the stage's
    throughput in ``snapshot`` (the one observed after ``plan`` was made). Stages the plan placed no work
    for, stages missing from the snapshot, and stages whose throughput is unknown, zero or not finite are
    left out: there is no meaningful ratio to report for them, and a made-up 0 would read as "perfect".

    The planned rate is capacity, headroom included; a stage that keeps up with its input only processes
    what arrives, so for such a stage the error includes the headroom (see docs/own-metrics.md).
    """
    predicted: dict[str, float] = {}
    for p in plan.placements:
        predicted[p.stage] = predicted.get(p.stage, 0.0) + p.rate
    observed = {st.name: st.throughput for st in snapshot.stages}
    out: dict[str, float] = {}
    for stage, pred in predicted.items():
        reading = observed.get(stage)
        if reading is None or reading.value is None:
            continue
        obs = reading.value
        if not (math.isfinite(obs) and obs > 0 and math.isfinite(pred)):
            continue
        out[stage] = abs(pred - obs) / obs
    return out


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What ``/healthz`` and ``/readyz`` answer from."""

    state: HealthState
    alive: bool
    """The loop ticked recently enough (or is still within its first ticks)."""
    ready: bool
    """Alive, state ``ok`` and the last snapshot's inputs all known."""
    reasons: tuple[str, ...]
    """Why it is not ready (empty when ready)."""
    last_tick_age_seconds: float | None
    """Seconds since the last tick (monotonic clock); None before the first one."""


def _raytide_version() -> str:
    try:
        return metadata.version("raytide")
    except metadata.PackageNotFoundError:
        return "unknown"


def _unknown_inputs(snapshot: Snapshot) -> tuple[str, ...]:
    reasons = list(snapshot.errors)
    for st in snapshot.stages:
        reasons.extend(st.unknown_reasons())
    return tuple(reasons)


class Telemetry:
    """raytide's own metrics and health, in a registry of their own.

    ``tick_interval_seconds`` and ``stale_ticks`` define liveness: the loop is alive while its last tick
    (or, before the first tick, the construction of this object) is at most ``stale_ticks`` intervals old.
    Clocks are injectable so tests need not sleep: ``monotonic`` measures tick ages, ``wall_clock`` (Unix
    seconds, the clock ``Snapshot.time`` uses) measures data freshness.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        tick_interval_seconds: float = 10.0,
        stale_ticks: float = 3.0,
        version: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(tick_interval_seconds) and tick_interval_seconds > 0):
            raise ValueError(f"tick_interval_seconds must be > 0, got {tick_interval_seconds}")
        if not (math.isfinite(stale_ticks) and stale_ticks > 0):
            raise ValueError(f"stale_ticks must be > 0, got {stale_ticks}")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.tick_interval_seconds = tick_interval_seconds
        self.stale_ticks = stale_ticks
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._started_at = monotonic()
        self._last_tick_at: float | None = None
        self._last_complete_time: float | None = None
        self._inputs_unknown: tuple[str, ...] = ("no snapshot yet",)
        self._state: HealthState = "starting"
        self._reasons: tuple[str, ...] = ()
        self._previous_plan: Plan | None = None
        # Label values set on the previous tick, so series of shapes and stages that are gone are removed
        # instead of being exported with their last value forever.
        self._shapes: set[str] = set()
        self._unmet_stages: set[str] = set()
        self._error_stages: set[str] = set()

        r = self.registry
        self.tick_duration = Histogram(
            "raytide_tick_duration_seconds",
            "Duration of one control-loop tick (observe → decide → act → publish).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.policy_duration = Histogram(
            "raytide_policy_duration_seconds",
            "Duration of one policy call (decision included: policy, shape selection, guardrails).",
            ["policy"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "raytide_decisions",
            "Per-shape decisions, by direction (up, down, hold), one per shape per tick.",
            ["shape", "direction"],
            registry=r,
        )
        self.nodes_target = Gauge(
            "raytide_nodes_target",
            "Nodes per shape the last plan asked for (after guardrails).",
            ["shape"],
            registry=r,
        )
        self.nodes_current = Gauge(
            "raytide_nodes_current",
            "Running nodes per shape in the last snapshot.",
            ["shape"],
            registry=r,
        )
        self.nodes_pending = Gauge(
            "raytide_nodes_pending",
            "Launching nodes per shape in the last snapshot.",
            ["shape"],
            registry=r,
        )
        self.unmet_demand = Gauge(
            "raytide_stage_unmet_demand_per_second",
            "Work units per second a stage needs that the last plan cannot serve (0 when all is served).",
            ["stage"],
            registry=r,
        )
        self.model_error = Gauge(
            "raytide_stage_model_error_ratio",
            "|planned − observed| / observed throughput of a stage: previous plan vs the next snapshot.",
            ["stage"],
            registry=r,
        )
        self.actuation_errors = Counter(
            "raytide_actuation_errors",
            "Failed actuation attempts, by kind.",
            ["kind"],
            registry=r,
        )
        self.last_complete_snapshot = Gauge(
            "raytide_last_complete_snapshot_timestamp_seconds",
            "Unix time of the last snapshot whose inputs were all known (0 before the first).",
            registry=r,
        )
        self.data_age = Gauge(
            "raytide_data_age_seconds",
            "Seconds since the last snapshot whose inputs were all known (+Inf before the first).",
            registry=r,
        )
        self.data_age.set_function(self._data_age)
        self.last_tick = Gauge(
            "raytide_last_tick_timestamp_seconds",
            "Unix time at which the last tick was recorded.",
            registry=r,
        )
        self.inputs_unknown = Gauge(
            "raytide_inputs_unknown",
            "1 when the last snapshot had unknown inputs (errors or unknown stage readings), else 0.",
            registry=r,
        )
        self.held = Gauge(
            "raytide_held",
            "1 when the last plan held the cluster as it is (unknown inputs, no safe action), else 0.",
            registry=r,
        )
        self.health_state = Gauge(
            "raytide_health_state",
            "1 for the daemon's current health state, 0 for the others.",
            ["state"],
            registry=r,
        )
        self.build_info = Gauge(
            "raytide_build_info",
            "Always 1; the labels tell which raytide and Python run.",
            ["version", "python_version"],
            registry=r,
        )
        self.build_info.labels(
            version=version or _raytide_version(), python_version=platform.python_version()
        ).set(1)
        self.pool_size = Gauge(
            "raytide_warm_pool_nodes",
            "Standby nodes in the warm pool: ready (holding a node) or waiting (its node is launching).",
            ["shape", "state"],
            registry=r,
        )
        self.pool_target = Gauge(
            "raytide_warm_pool_target_nodes", "Standby nodes the warm pool aims for.", ["shape"], registry=r
        )
        self.pool_cost = Gauge(
            "raytide_warm_pool_cost_per_hour", "What the standby nodes cost together ($/h).", registry=r
        )
        self.pool_claims = Counter(
            "raytide_warm_pool_claims",
            "Standby nodes handed to the pipeline; trigger=plan (a scale-up) or waiting (work waiting).",
            ["shape", "trigger"],
            registry=r,
        )
        self.pool_misses = Counter(
            "raytide_warm_pool_misses",
            "Nodes a scale-up needed that the warm pool could not give (launched cold).",
            ["shape"],
            registry=r,
        )
        self.pool_claim_latency = Histogram(
            "raytide_warm_pool_claim_latency_seconds",
            "From the moment raytide saw the need (tick start or first sight of waiting work) to the "
            "placeholder's removal.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.events_published = Counter(
            "raytide_mqtt_events_published",
            "MQTT events the broker acknowledged, by topic kind (decisions, health).",
            ["topic"],
            registry=r,
        )
        self.events_dropped = Counter(
            "raytide_mqtt_events_dropped",
            "MQTT events dropped unsent (queue full or closing), by topic kind (decisions, health).",
            ["topic"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "raytide_mqtt_connected",
            "1 while the MQTT publisher is connected to its broker, else 0.",
            registry=r,
        )
        self._export_health()

    # --- per tick -------------------------------------------------------------------------------------

    def record_tick(self, duration_s: float, plan: Plan, snapshot: Snapshot, policy_seconds: float) -> None:
        """Record one finished tick: its timings, the plan it made and the snapshot it made it from."""
        self._last_tick_at = self._monotonic()
        self.last_tick.set(self._wall_clock())
        if math.isfinite(duration_s) and duration_s >= 0:
            self.tick_duration.observe(duration_s)
        if math.isfinite(policy_seconds) and policy_seconds >= 0:
            self.policy_duration.labels(policy=plan.policy).observe(policy_seconds)

        for change in plan.changes:
            self.decisions.labels(shape=change.shape, direction=change.direction).inc()

        targets = plan.targets()
        shapes = set(targets) | {s.name for s in snapshot.shapes}
        for shape in shapes:
            if shape in targets:
                self.nodes_target.labels(shape=shape).set(targets[shape])
            else:
                self.nodes_target.remove(shape)
            self.nodes_current.labels(shape=shape).set(snapshot.count(shape))
            self.nodes_pending.labels(shape=shape).set(int(snapshot.pending_counts.get(shape, 0)))
        for gone in self._shapes - shapes:
            for g in (self.nodes_target, self.nodes_current, self.nodes_pending):
                g.remove(gone)
        self._shapes = shapes

        unmet: dict[str, float] = {st.name: 0.0 for st in snapshot.stages}
        unmet.update({d.stage: 0.0 for d in plan.demands})
        for u in plan.unmet:
            short = u.target_rate - u.planned_rate
            if math.isfinite(short):
                unmet[u.stage] = unmet.get(u.stage, 0.0) + max(0.0, short)
        self._set_per_stage(self.unmet_demand, unmet, self._unmet_stages)
        self._unmet_stages = set(unmet)

        errors = model_errors(self._previous_plan, snapshot) if self._previous_plan is not None else {}
        self._set_per_stage(self.model_error, errors, self._error_stages)
        self._error_stages = set(errors)
        self._previous_plan = plan

        self._inputs_unknown = _unknown_inputs(snapshot)
        if snapshot.inputs_complete:
            self._last_complete_time = snapshot.time
            self.last_complete_snapshot.set(snapshot.time)
        self.inputs_unknown.set(0 if snapshot.inputs_complete else 1)
        self.held.set(1 if plan.held else 0)

    def record_pool(
        self,
        ready: Mapping[str, int],
        waiting: Mapping[str, int],
        targets: Mapping[str, int],
        cost_per_hour: float,
    ) -> None:
        """The warm pool after a tick: standby nodes per shape (ready, or waiting for a node), its target."""
        for shape in set(ready) | set(waiting) | set(targets):
            self.pool_size.labels(shape=shape, state="ready").set(int(ready.get(shape, 0)))
            self.pool_size.labels(shape=shape, state="waiting").set(int(waiting.get(shape, 0)))
            self.pool_target.labels(shape=shape).set(int(targets.get(shape, 0)))
        if math.isfinite(cost_per_hour):
            self.pool_cost.set(cost_per_hour)

    def pool_claimed(self, shape: str, trigger: str, latency_s: float | None) -> None:
        self.pool_claims.labels(shape=shape, trigger=trigger).inc()
        if latency_s is not None and math.isfinite(latency_s) and latency_s >= 0:
            self.pool_claim_latency.observe(latency_s)

    def pool_missed(self, shape: str, nodes: int) -> None:
        if nodes > 0:
            self.pool_misses.labels(shape=shape).inc(nodes)

    def record_actuation_error(self, kind: str) -> None:
        self.actuation_errors.labels(kind=kind).inc()

    def set_health(self, state: HealthState, reasons: Iterable[str] = ()) -> None:
        if state not in _HEALTH_STATES:
            raise ValueError(f"unknown health state {state!r}; expected one of {', '.join(_HEALTH_STATES)}")
        self._state = state
        self._reasons = tuple(reasons)
        self._export_health()

    # --- hooks for the MQTT publisher (mqtt_events.EventHooks) ----------------------------------------

    def event_published(self, topic: str) -> None:
        self.events_published.labels(topic=topic).inc()

    def event_dropped(self, topic: str) -> None:
        self.events_dropped.labels(topic=topic).inc()

    def connection_changed(self, connected: bool) -> None:
        self.mqtt_connected.set(1 if connected else 0)

    # --- health ---------------------------------------------------------------------------------------

    @property
    def state(self) -> HealthState:
        return self._state

    def health(self) -> HealthReport:
        now = self._monotonic()
        since = self._last_tick_at if self._last_tick_at is not None else self._started_at
        age = now - since
        limit = self.stale_ticks * self.tick_interval_seconds
        alive = age <= limit
        reasons: list[str] = []
        if not alive:
            what = "last tick" if self._last_tick_at is not None else "start, and no tick yet"
            reasons.append(f"no tick for {age:.1f}s since {what} (limit {limit:g}s)")
        if self._state != "ok":
            reasons.append(f"state is {self._state}")
        reasons.extend(self._reasons)
        if self._inputs_unknown:
            reasons.extend(f"input unknown: {r}" for r in self._inputs_unknown)
        if len(reasons) > _MAX_REASONS:
            extra = len(reasons) - (_MAX_REASONS - 1)
            reasons = [*reasons[: _MAX_REASONS - 1], f"… and {extra} more"]
        ready = alive and self._state == "ok" and not self._inputs_unknown
        return HealthReport(
            state=self._state,
            alive=alive,
            ready=ready,
            reasons=() if ready else tuple(reasons),
            last_tick_age_seconds=None if self._last_tick_at is None else age,
        )

    # --- internals ------------------------------------------------------------------------------------

    def _data_age(self) -> float:
        if self._last_complete_time is None:
            return math.inf
        return max(0.0, self._wall_clock() - self._last_complete_time)

    def _export_health(self) -> None:
        for s in _HEALTH_STATES:
            self.health_state.labels(state=s).set(1 if s == self._state else 0)

    @staticmethod
    def _set_per_stage(gauge: Gauge, values: dict[str, float], before: set[str]) -> None:
        for stage, value in values.items():
            gauge.labels(stage=stage).set(value)
        for gone in before - set(values):
            gauge.remove(gone)
