"""Restart reconcile: the actions a previous process intended or sent but never finished, checked against the
cluster instead of repeated blindly or forgotten.

- floor: the newest one is re-asserted (idempotent: the same counts launch nothing new); older ones are
  superseded. Without a pending floor, the last floor set is re-asserted the same way. When the store was
  found older than the cluster (:mod:`autoscaler.daemon.reconcile_store_age`), the floor found in the cluster
  is re-asserted instead and every pending one is superseded by it.
- drain: node gone → ``confirmed``; node draining → awaited (checked on the next ticks); node alive and idle →
  drained again if the last plan still wants fewer nodes of its shape than are alive (the floor was
  re-asserted first), else ``abandoned``; node busy → ``abandoned``. An unreadable cluster leaves them
  awaited.
- warm/unwarm: left to the warm-pool controller's first listing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from autoscaler.daemon.acting import Acting
from autoscaler.daemon.actions import ActionLedger
from autoscaler.daemon.calls import describe
from autoscaler.ports import Action, ClusterReader, ClusterState, RayNode
from autoscaler.types import Plan

__all__ = ["Reconciled", "reconcile"]

_HANDLED = ("floor", "drain", "warm", "unwarm")


@dataclass(frozen=True, slots=True)
class Reconciled:
    notes: list[str]
    """What reconciliation did, one line each."""
    floor: dict[str, int] | None
    """The floor re-asserted; None when there was none or it could not be set."""
    pending: tuple[Action, ...]
    """Every action found pending (the warm pool settles its own at its first listing)."""


async def reconcile(
    *,
    ledger: ActionLedger,
    acting: Acting,
    cluster: ClusterReader,
    floor: dict[str, int] | None,
    tick: int,
    plan: Plan | None,
    observe_timeout_s: float,
    clock: Callable[[], float],
    found_floor: dict[str, int] | None = None,
) -> Reconciled:
    """``floor``, ``tick`` and ``plan``: what the last committed tick left; ``found_floor``: the floor found
    in the cluster, newer than the store's."""
    pending = await ledger.load_pending()
    notes: list[str] = []
    for a in pending:
        if a.kind not in _HANDLED:
            await ledger.move(a.key, "abandoned", f"{a.kind} is not something this daemon does")
            notes.append(f"{a.key}: abandoned ({a.kind} unsupported)")
    floors = [a for a in pending if a.kind == "floor"]
    if found_floor is not None:
        for a in floors:
            await ledger.move(a.key, "abandoned", "superseded by the floor found in the cluster")
        floor_set = await _reassert_floor(ledger, acting, [], found_floor, tick, clock, notes)
    else:
        floor_set = await _reassert_floor(ledger, acting, floors, floor, tick, clock, notes)
    drains = [a for a in pending if a.kind == "drain"]
    if drains:
        await _settle_drains(
            ledger, acting, cluster, drains, floor_set is not None, plan, observe_timeout_s, clock, notes
        )
    return Reconciled(notes, floor_set, pending)


async def _reassert_floor(
    ledger: ActionLedger,
    acting: Acting,
    floors: list[Action],
    floor: dict[str, int] | None,
    tick: int,
    clock: Callable[[], float],
    notes: list[str],
) -> dict[str, int] | None:
    if floors:
        newest = floors[-1]
        counts = newest.payload.get("counts")
        if isinstance(counts, Mapping):
            floor = {str(k): int(v) for k, v in counts.items()}
        for a in floors[:-1]:
            await ledger.move(a.key, "abandoned", f"superseded by {newest.key}")
    if floor is None:
        if floors:
            await ledger.move(floors[-1].key, "abandoned", "no counts recorded")
        return None
    key = floors[-1].key if floors else f"floor:{tick}:restart"
    if not floors:
        await ledger.begin(ActionLedger.intended(key, "floor", payload={"counts": floor}, now=clock()))
    errors: list[str] = []
    if not await acting.set_floor(key, floor, errors):
        notes.extend(errors)
        return None
    notes.append(f"floor {floor} re-asserted (idempotent: launches nothing new)")
    return dict(floor)


async def _settle_drains(
    ledger: ActionLedger,
    acting: Acting,
    read: ClusterReader,
    drains: list[Action],
    floor_ok: bool,
    plan: Plan | None,
    observe_timeout_s: float,
    clock: Callable[[], float],
    notes: list[str],
) -> None:
    try:
        cluster = await asyncio.wait_for(asyncio.to_thread(read), timeout=observe_timeout_s)
    except Exception as e:
        notes.append(f"cannot read the cluster ({describe(e)}): {len(drains)} drain(s) stay pending")
        for a in drains:
            if a.node_id:
                ledger.await_drain(a, a.node_id, since=a.updated)
        return
    targets = plan.targets() if plan is not None else {}
    for a in drains:
        node = next((n for n in cluster.nodes if n.node_id == a.node_id and n.alive), None)
        if a.node_id is None or node is None:
            await ledger.move(a.key, "confirmed", "the node is gone (found at restart)")
            notes.append(f"{a.key}: node gone, confirmed")
        elif node.status == "DRAINING":
            ledger.await_drain(a, node.node_id, since=a.updated)
            notes.append(f"{a.key}: node draining, still sent")
        elif node.status == "IDLE" and floor_ok and _still_wanted(node, cluster, targets):
            await ledger.begin(
                ActionLedger.intended(a.key, "drain", shape=node.node_type, node_id=node.node_id, now=clock())
            )
            answer = await acting.drain(a.key, node.node_id, [])
            verdict = "accepted" if answer == "accepted" else "not accepted"
            notes.append(f"{a.key}: idle and still above target, drained again ({verdict})")
        else:
            why = "busy" if node.status != "IDLE" else "no longer above the target (or floor not re-asserted)"
            await ledger.move(a.key, "abandoned", f"at restart the node is alive and {why}")
            notes.append(f"{a.key}: abandoned ({why})")


def _still_wanted(node: RayNode, cluster: ClusterState, targets: Mapping[str, int]) -> bool:
    """The plan wants fewer nodes of this node's shape than are alive and not draining."""
    if node.node_type not in targets:
        return False
    active = [n for n in cluster.workers if n.node_type == node.node_type and n.status != "DRAINING"]
    return len(active) > targets[node.node_type]
