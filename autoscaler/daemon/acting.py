"""Acting on Ray: setting the floor and draining idle nodes, each call's outcome moved in the action ledger.

The floor is lowered *before* a drain, because an accepted drain of a node the floor still wants makes the
autoscaler relaunch it; only nodes the GCS reports idle are drained (Ray refuses ``IDLE_TERMINATION`` for a
busy node anyway).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Literal

from autoscaler.daemon.actions import ActionLedger
from autoscaler.daemon.calls import describe, off_loop
from autoscaler.ports import Actuator, ClusterState, DrainResult, RayNode, TelemetrySink
from autoscaler.types import Plan

__all__ = ["Acting", "DrainAnswer", "DryRunActuator", "choose_drains"]

log = logging.getLogger(__name__)

DrainAnswer = Literal["accepted", "refused", "no answer"]
"""``no answer``: the call failed or timed out (said in the tick's errors)."""


class DryRunActuator:
    """Acts on nothing: logs what it would do (``raytide run --dry-run``)."""

    def __init__(self) -> None:
        self.floors: list[dict[str, int]] = []
        self.drains: list[str] = []

    def set_target(self, counts: Mapping[str, int]) -> object:
        self.floors.append(dict(counts))
        log.info("dry run: would set the floor to %s", dict(counts), extra={"floor": dict(counts)})
        return None

    def drain(self, node_id: str) -> DrainResult:
        self.drains.append(node_id)
        log.info("dry run: would drain node %s", node_id, extra={"node_id": node_id})
        return DrainResult(node_id=node_id, accepted=False, message="dry run: nothing drained")


def choose_drains(
    plan: Plan,
    cluster: ClusterState,
    *,
    share: float,
    exclude: Iterable[str] = (),
    already: Mapping[str, int] | None = None,
) -> list[RayNode]:
    """The idle nodes to drain for ``plan``: per shape whose target is below its live, not-draining nodes,
    at most ``max(1, floor(share × live nodes))`` of them — less the ``already`` drained in the same step
    window — only nodes the GCS reports idle, longest idle first. Never a busy node, the head, or one
    already being drained."""
    excluded = set(exclude)
    done = already or {}
    chosen: list[RayNode] = []
    for change in plan.changes:
        if change.target >= change.current:
            continue
        live = [n for n in cluster.workers if n.node_type == change.shape]
        active = [n for n in live if n.status != "DRAINING" and n.node_id not in excluded]
        excess = len(active) - change.target
        if excess <= 0:
            continue
        cap = max(1, math.floor(share * len(live))) - done.get(change.shape, 0)
        if cap <= 0:
            continue
        idle = [n for n in active if n.status == "IDLE" and n.idle_seconds is not None and not n.is_head]
        idle.sort(key=lambda n: (-(n.idle_seconds or 0.0), n.node_id))
        chosen.extend(idle[: min(excess, cap)])
    return chosen


class Acting:
    """Calls the actuator for actions already recorded as intended, and moves each to its outcome."""

    def __init__(
        self, *, actuator: Actuator, ledger: ActionLedger, telemetry: TelemetrySink, act_timeout_s: float
    ) -> None:
        self._actuator = actuator
        self._ledger = ledger
        self._telemetry = telemetry
        self._timeout = act_timeout_s

    async def set_floor(self, key: str, counts: dict[str, int], errors: list[str]) -> bool:
        """True once the actuator took the floor; a failure is added to ``errors``."""
        try:
            await off_loop(lambda: self._actuator.set_target(counts), self._timeout)
        except Exception as e:
            msg = f"setting the floor {counts} failed: {describe(e)}"
            errors.append(msg)
            self._telemetry.record_actuation_error("floor")
            await self._ledger.move(key, "failed", msg)
            return False
        await self._ledger.move(key, "confirmed", "")
        return True

    async def drain(self, key: str, node_id: str, errors: list[str]) -> DrainAnswer:
        """Ask Ray to drain ``node_id``; an accepted drain (or one without an answer, which Ray may have
        accepted) stays ``sent`` until the cluster shows the node gone."""
        try:
            result = await off_loop(lambda: self._actuator.drain(node_id), self._timeout)
        except TimeoutError:
            errors.append(f"drain of {node_id} timed out; checking whether the node goes")
            self._telemetry.record_actuation_error("drain")
            await self._ledger.move(key, "sent", "timed out; outcome unknown")
            return "no answer"
        except Exception as e:
            msg = f"drain of {node_id} failed: {describe(e)}"
            errors.append(msg)
            self._telemetry.record_actuation_error("drain")
            await self._ledger.move(key, "failed", msg)
            return "no answer"
        if result.accepted:
            await self._ledger.move(key, "sent", "accepted by the GCS")
            return "accepted"
        await self._ledger.move(key, "failed", f"refused: {result.message}")
        return "refused"
