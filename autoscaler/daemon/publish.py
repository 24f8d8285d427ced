"""Publishing a tick: raytide's own metrics and health, an MQTT decision event, one structured log line
with the decision and its reasons, and the service manager's status and watchdog ping."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from autoscaler.core.warm_pool import PoolPlan
from autoscaler.ports import EventSink, HealthState, ServiceManager, TelemetrySink
from autoscaler.types import Plan, Snapshot

__all__ = ["NoTelemetry", "Publisher", "TickOutcome", "status_line"]

log = logging.getLogger(__name__)

_STATUS_MAX = 200
"""A service manager's status is one short line."""


@dataclass(frozen=True, slots=True)
class TickOutcome:
    """What one tick saw, decided and did."""

    tick: int
    snapshot: Snapshot
    plan: Plan
    floor: dict[str, int] | None
    """The floor set (or re-asserted) this tick; None when the actuator was not called."""
    drained: tuple[str, ...] = ()
    """Node ids whose drain Ray accepted."""
    refused: tuple[str, ...] = ()
    """Node ids whose drain Ray refused (a drain that failed or got no answer is in ``errors``)."""
    errors: tuple[str, ...] = ()
    """Everything that went wrong: observation errors and actuation failures."""
    duration_s: float = 0.0
    pool: PoolPlan | None = None
    """What the tick planned for the warm pool (None when it has none or held)."""
    claimed: tuple[str, ...] = ()
    """Placeholders removed to hand their node to the plan."""

    @property
    def degraded(self) -> bool:
        return bool(self.errors)


def status_line(outcome: TickOutcome) -> str:
    """One line for the service manager: the tick, its health, what the plan changes, the first error."""
    changes = ", ".join(f"{c.shape} {c.current}->{c.target}" for c in outcome.plan.changes) or "no shapes"
    text = f"tick {outcome.tick} {'degraded' if outcome.degraded else 'ok'}: "
    text += ("held, " if outcome.plan.held else "") + changes
    if outcome.errors:
        n = len(outcome.errors)
        text += f"; {n} error{'s' if n > 1 else ''}: {outcome.errors[0]}"
    text = " ".join(text.split())
    return text if len(text) <= _STATUS_MAX else text[: _STATUS_MAX - 3] + "..."


class NoTelemetry:
    """Records nothing: the daemon's telemetry when none is given."""

    def record_tick(self, duration_s: float, plan: Plan, snapshot: Snapshot, policy_seconds: float) -> None:
        pass

    def record_pool(
        self,
        ready: Mapping[str, int],
        waiting: Mapping[str, int],
        targets: Mapping[str, int],
        cost_per_hour: float,
    ) -> None:
        pass

    def pool_claimed(self, shape: str, trigger: str, latency_s: float | None) -> None:
        pass

    def pool_missed(self, shape: str, nodes: int) -> None:
        pass

    def record_actuation_error(self, kind: str) -> None:
        pass

    def set_health(self, state: HealthState, reasons: Iterable[str] = ()) -> None:
        pass


class Publisher:
    """Tells everyone outside what a tick did; the service manager hears only of ticks that completed."""

    def __init__(
        self, *, telemetry: TelemetrySink, events: EventSink | None, service: ServiceManager | None
    ) -> None:
        self._telemetry = telemetry
        self._events = events
        self._service = service
        self._ready = False

    def publish(
        self, outcome: TickOutcome, *, policy_s: float, committed: bool, observed_cluster: bool
    ) -> None:
        """``committed``: the tick's decision was stored (and so is announced); ``observed_cluster``: the
        GCS was read this tick (the service is ready from the first such tick on)."""
        plan, errors = outcome.plan, outcome.errors
        self._telemetry.record_tick(outcome.duration_s, plan, outcome.snapshot, policy_s)
        state: HealthState = "degraded" if errors else "ok"
        if errors:
            self._telemetry.set_health(state, errors)
        else:
            self._telemetry.set_health(state)
        if self._events is not None:
            try:
                if committed:
                    self._events.publish_decision(plan)
                self._events.publish_health(state, errors)
            except Exception as e:
                log.warning("mqtt: could not queue events: %s", e)
        _log_tick(outcome)
        if self._service is not None:
            if observed_cluster and not self._ready:
                self._service.ready()
                self._ready = True
            self._service.status(status_line(outcome))
            self._service.watchdog()

    def stopping(self) -> None:
        reasons = ["the daemon is stopping"]
        self._telemetry.set_health("stopping", reasons)
        if self._events is not None:
            self._events.publish_health("stopping", reasons)
        if self._service is not None:
            self._service.stopping()


def _log_tick(outcome: TickOutcome) -> None:
    plan, pool = outcome.plan, outcome.pool
    changes = {c.shape: f"{c.current}->{c.target}" for c in plan.changes}
    log.info(
        "tick %d: %s%s",
        outcome.tick,
        "held: " if plan.held else "",
        ", ".join(f"{k} {v}" for k, v in changes.items()),
        extra={
            "tick": outcome.tick,
            "policy": plan.policy,
            "held": plan.held,
            "changes": changes,
            "floor": outcome.floor,
            "drained": list(outcome.drained),
            "refused": list(outcome.refused),
            "reasons": list(plan.reasons),
            "change_reasons": {c.shape: c.reason for c in plan.changes},
            "errors": list(outcome.errors),
            "duration_s": round(outcome.duration_s, 4),
            **(
                {
                    "warm_pool": dict(pool.targets.counts),
                    "warm_pool_reasons": dict(pool.targets.reasons),
                    "claimed": list(outcome.claimed),
                    "cold": dict(pool.cold),
                }
                if pool is not None
                else {}
            ),
        },
    )
