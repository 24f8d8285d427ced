"""The warm-pool controller: standby placeholders planned each tick, created, claimed and retired, kept in
line with what Ray lists, and claimed between ticks for work waiting in Ray.

Sizing and planning are pure (:mod:`autoscaler.core.warm_pool`); this module does the calls and keeps the
membership. Standby and retiring nodes are hidden from the plan: counting them would drain an active node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from autoscaler.core.config import Config
from autoscaler.core.warm_pool import (
    PoolMemory,
    PoolPlan,
    Standby,
    active_counts,
    claims_for_waiting,
    plan_pool,
    pool_targets,
)
from autoscaler.daemon.actions import ActionLedger
from autoscaler.daemon.calls import describe, off_loop
from autoscaler.ports import (
    Action,
    ClusterReader,
    ClusterState,
    Placeholder,
    RayNode,
    TelemetrySink,
    WarmPool,
)
from autoscaler.types import Plan, Resources, Snapshot

__all__ = ["PoolController", "PoolView", "waiting_work"]

log = logging.getLogger(__name__)

_CREATE_GRACE_S = 30.0
"""A placeholder created this recently may be missing from a listing without being gone."""


@dataclass(frozen=True, slots=True)
class PoolView:
    """Node counts without the pool's standby and retiring nodes, and those nodes' ids."""

    live: dict[str, int]
    pending: dict[str, int]
    hidden: frozenset[str]


@dataclass(slots=True)
class _Membership:
    """What this process knows of its placeholders beyond the stored :class:`PoolMemory`."""

    created_at: dict[str, float] = field(default_factory=dict)
    """Placeholder name → when this process created it (a fresh one may not be listed yet)."""
    removed: dict[str, float] = field(default_factory=dict)
    """Placeholder name → when this process removed it (a listing read before may still show it)."""
    retiring: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Node id → (shape, since): standby nodes whose placeholder was retired, to be drained once idle."""
    pending: list[Action] = field(default_factory=list)
    """warm/unwarm actions left unfinished by the previous process, settled at the first pool listing."""
    recent_claims: list[tuple[Standby, float]] = field(default_factory=list)
    """Claims of the last ``refill_delay_seconds``; waiting work is fitted into these first."""


class PoolController:
    """Owns the warm pool's membership; every blocking call goes through :class:`WarmPool`."""

    def __init__(
        self,
        *,
        config: Config,
        pool: WarmPool,
        cluster: ClusterReader,
        ledger: ActionLedger,
        telemetry: TelemetrySink,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self.config = config
        self._port = pool
        self._cluster = cluster
        self._ledger = ledger
        self._telemetry = telemetry
        self._clock = clock
        self._monotonic = monotonic
        self.memory = PoolMemory()
        self._own = _Membership()
        self.lock = asyncio.Lock()
        """Held while the membership changes: ticks and between-tick claims take turns."""
        self._claim_now = asyncio.Event()
        self._nudged_at: float | None = None

    def load(self, memory: PoolMemory, pending: Sequence[Action]) -> None:
        """At start-up: the stored membership and the pool actions the previous process left unfinished."""
        self.memory = memory
        self._own.pending = [a for a in pending if a.kind in ("warm", "unwarm")]

    def nudged(self) -> None:
        """Work may be waiting: look now, and time the claim latency from this moment."""
        if self._nudged_at is None:
            self._nudged_at = self._monotonic()
        self._claim_now.set()

    # ------------------------------------------------------------------------------------ observing

    async def listing(self) -> Sequence[Placeholder]:
        return await asyncio.to_thread(self._port.list)

    async def first_sync(self) -> list[str]:
        """Settle with Ray's placeholders at start-up; an unreadable listing waits for the first tick."""
        try:
            listing = await asyncio.wait_for(
                self.listing(), timeout=self.config.daemon.observe_timeout_seconds
            )
        except Exception as e:
            return [f"warm pool: cannot list placeholders yet ({describe(e)}); the first good tick will"]
        async with self.lock:
            return await self._settle(listing, self._clock())

    async def settle(self, listing: Sequence[Placeholder], now: float) -> list[str]:
        async with self.lock:
            return await self._settle(listing, now)

    def view(self, now: float, cluster: ClusterState, names: Sequence[str]) -> PoolView:
        """Counts the plan may see: standby and retiring nodes taken out; launches remembered."""
        pending = cluster.pending_counts()
        self.memory.launches.observe(
            now, pending, {n: [w.node_id for w in cluster.workers if w.node_type == n] for n in names}
        )
        members = list(self.memory.members.values())
        retiring: dict[str, int] = {}
        for shape, _ in self._own.retiring.values():
            retiring[shape] = retiring.get(shape, 0) + 1
        live, pending = active_counts(cluster.node_counts(), pending, members, retiring)
        hidden = frozenset({m.node_id for m in members if m.node_id} | set(self._own.retiring))
        return PoolView(live, pending, hidden)

    # ------------------------------------------------------------------------------------ a tick

    def plan(
        self, now: float, plan: Plan, snapshot: Snapshot, override: Mapping[str, int] | None
    ) -> PoolPlan:
        wp = self.config.warm_pool
        targets = plan.targets()
        self.memory.remember_plan(now, targets, wp.history_seconds)
        sized = pool_targets(self.config, self.memory, targets, override=override)
        current = {
            s.name: snapshot.count(s.name) + int(snapshot.pending_counts.get(s.name, 0))
            for s in snapshot.shapes
        }
        return plan_pool(
            now=now,
            config=self.config,
            memory=self.memory,
            plan_targets=targets,
            plan_current=current,
            targets=sized,
        )

    def checkpoint(self) -> tuple[dict[str, Standby], int]:
        return dict(self.memory.members), self.memory.next_serial

    def restore(self, point: tuple[dict[str, Standby], int]) -> None:
        """Back to :meth:`checkpoint`: the tick that changed the membership was never committed."""
        self.memory.members, self.memory.next_serial = point

    def intended(self, pool_plan: PoolPlan, now: float) -> list[Action]:
        """Write-ahead records of the pool changes; the membership becomes what they lead to."""
        actions: list[Action] = []
        for m in (*pool_plan.claims, *pool_plan.retire):
            why = "claim" if m in pool_plan.claims else "retire"
            actions.append(_unwarm(m, why, now))
            self.memory.members.pop(m.name, None)
        for m in pool_plan.create:
            actions.append(
                ActionLedger.intended(
                    f"warm:{m.name}", "warm", shape=m.shape, payload={"name": m.name}, now=now
                )
            )
            self.memory.members[m.name] = m
            self.memory.next_serial = max(self.memory.next_serial, m.serial + 1)
        return actions

    async def claim(self, pool_plan: PoolPlan, now: float, errors: list[str], t0: float) -> list[str]:
        """The plan's claims (before anything else: a standby node is capacity now); returns their names."""
        claimed: list[str] = []
        async with self.lock:
            for m in pool_plan.claims:
                if await self._remove(m, "claim", errors):
                    claimed.append(m.name)
                    self.memory.last_claim[m.shape] = now
                    self._own.recent_claims.append((m, self._monotonic()))
                    self._telemetry.pool_claimed(m.shape, "plan", self._monotonic() - t0)
        for shape, n in pool_plan.cold.items():
            self._telemetry.pool_missed(shape, n)
        return claimed

    async def apply(self, pool_plan: PoolPlan, now: float, errors: list[str]) -> None:
        """Create the new placeholders and retire the surplus ones (their nodes are drained once idle)."""
        async with self.lock:
            for m in pool_plan.create:
                key = f"warm:{m.name}"
                try:
                    await self._act(partial(self._port.create, m.name, m.shape))
                except Exception as e:
                    msg = f"creating placeholder {m.name} failed: {describe(e)}"
                    errors.append(msg)
                    self._telemetry.record_actuation_error("warm")
                    self.memory.members.pop(m.name, None)
                    await self._ledger.move(key, "failed", msg)
                    continue
                self._own.created_at[m.name] = self._monotonic()
                await self._ledger.move(key, "confirmed", "")
            for m in pool_plan.retire:
                if await self._remove(m, "retire", errors) and m.node_id is not None:
                    self._own.retiring[m.node_id] = (m.shape, now)

    def retired_to_drain(
        self, cluster: ClusterState, now: float, *, exclude: set[str], draining: set[str]
    ) -> list[RayNode]:
        """Nodes of retired placeholders, drained once the GCS reports them idle; given up on (left to the
        plan) when gone or not idle within ``drain_confirm_seconds``."""
        out: list[RayNode] = []
        alive = {n.node_id: n for n in cluster.workers}
        for node_id, (_, since) in list(self._own.retiring.items()):
            node = alive.get(node_id)
            if node is None or now - since > self.config.daemon.drain_confirm_seconds:
                del self._own.retiring[node_id]
            elif node.status == "IDLE" and node_id not in exclude and node_id not in draining:
                out.append(node)
        return out

    def drained(self, node_id: str) -> None:
        """A retiring node's drain was accepted: no longer ours to watch."""
        self._own.retiring.pop(node_id, None)

    def record(self, pool_plan: PoolPlan | None) -> None:
        ready: dict[str, int] = {}
        waiting: dict[str, int] = {}
        for m in self.memory.members.values():
            counts = ready if m.ready else waiting
            counts[m.shape] = counts.get(m.shape, 0) + 1
        shapes = self.config.node_shapes()
        prices = {s.name: s.price_per_hour for s in shapes}
        cost = sum(prices.get(m.shape, 0.0) for m in self.memory.members.values())
        targets = dict(pool_plan.targets.counts) if pool_plan is not None else {}
        for s in shapes:
            ready.setdefault(s.name, 0)
            waiting.setdefault(s.name, 0)
            if pool_plan is None:
                targets[s.name] = ready[s.name] + waiting[s.name]
        self._telemetry.record_pool(ready, waiting, targets, cost)

    # ------------------------------------------------------------------------------------ between ticks

    async def run_claims(self, *, stop: asyncio.Event, tick_now: asyncio.Event, idle_wait_s: float) -> None:
        """Hand ready standby nodes to work waiting in Ray for resources, until ``stop``; sets ``tick_now``
        after a claim so the plan sees the new capacity soon."""
        wp = self.config.warm_pool
        first_seen: float | None = None
        while not stop.is_set():
            ready = [m for m in self.memory.members.values() if m.ready]
            wait = wp.claim_poll_seconds if ready else idle_wait_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_now.wait(), timeout=wait)
            self._claim_now.clear()
            nudged_at, self._nudged_at = self._nudged_at, None
            if stop.is_set() or not any(m.ready for m in self.memory.members.values()):
                continue
            try:
                cluster = await asyncio.wait_for(
                    asyncio.to_thread(self._cluster), timeout=self.config.daemon.observe_timeout_seconds
                )
            except Exception as e:
                log.debug("warm pool: cannot read waiting work: %s", e)
                continue
            waiting = waiting_work(cluster)
            if not waiting:
                first_seen = None
                continue
            if first_seen is None:
                first_seen = nudged_at if nudged_at is not None else self._monotonic()
            async with self.lock:
                claimed = await self._claim_for_waiting(waiting, first_seen)
            if claimed:
                first_seen = None
                tick_now.set()

    async def _claim_for_waiting(self, waiting: Sequence[Resources], since: float) -> list[str]:
        own = self._own
        cutoff = self._monotonic() - self.config.warm_pool.refill_delay_seconds
        own.recent_claims = [(m, t) for m, t in own.recent_claims if t >= cutoff]
        ready = [m for m in self.memory.members.values() if m.ready]
        shapes = self.config.node_shapes()
        claims, _ = claims_for_waiting(waiting, ready, shapes, already=[m for m, _ in own.recent_claims])
        if not claims:
            return []
        now = self._clock()
        done: list[str] = []
        errors: list[str] = []
        for m in claims:
            if m.name not in self.memory.members:
                continue  # a tick claimed it meanwhile
            await self._ledger.begin(_unwarm(m, "claim (waiting work)", now))
            self.memory.members.pop(m.name, None)
            if await self._remove(m, "claim", errors):
                done.append(m.name)
                self.memory.last_claim[m.shape] = now
                own.recent_claims.append((m, self._monotonic()))
                latency = self._monotonic() - since
                self._telemetry.pool_claimed(m.shape, "waiting", latency)
                log.info(
                    "warm pool: claimed %s (%s) for waiting work, %.2f s after it was seen",
                    m.name,
                    m.shape,
                    latency,
                    extra={"claimed": m.name, "shape": m.shape, "claim_latency_s": round(latency, 3)},
                )
        for e in errors:
            log.warning("warm pool: %s", e)
        return done

    # ------------------------------------------------------------------------------------ internals

    async def _act(self, fn: Callable[[], bool]) -> bool:
        return await off_loop(fn, self.config.daemon.act_timeout_seconds)

    async def _remove(self, m: Standby, why: str, errors: list[str]) -> bool:
        """Remove one placeholder whose ``unwarm`` action is already recorded as intended."""
        key = f"unwarm:{m.name}"
        try:
            await self._act(partial(self._port.remove, m.name, m.pg_id))
        except Exception as e:
            msg = f"removing placeholder {m.name} ({why}) failed: {describe(e)}"
            errors.append(msg)
            self._telemetry.record_actuation_error("unwarm")
            await self._ledger.move(key, "failed", msg)
            # Still ours and still holding its node: keep it in the pool, the next tick tries again.
            self.memory.members.setdefault(m.name, m)
            return False
        self._own.created_at.pop(m.name, None)
        self._own.removed[m.name] = self._monotonic()
        await self._ledger.move(key, "confirmed", why)
        return True

    def _sync(self, listing: Sequence[Placeholder]) -> list[Placeholder]:
        """Bring the membership in line with the placeholders Ray has; returns the orphans (raytide
        placeholders that are not ours, e.g. left by a lost state file) to remove."""
        own = self._own
        members = self.memory.members
        listed = {p.name: p for p in listing}
        pending = {a.payload.get("name"): a for a in own.pending}
        orphans: list[Placeholder] = []
        recent = self._monotonic() - _CREATE_GRACE_S
        for name, at in list(own.removed.items()):
            if at < recent:
                del own.removed[name]
        for p in listing:
            if p.name in own.removed:
                continue  # removed since this listing was read (Ray removes asynchronously)
            if p.name in pending and pending[p.name].kind == "unwarm":
                # A claim or retirement the previous process began: finish it, never hand it out again.
                members.pop(p.name, None)
                orphans.append(p)
            elif p.name in members or (p.name in pending and pending[p.name].kind == "warm"):
                members[p.name] = p.as_standby()
            else:
                orphans.append(p)
        fresh = self._monotonic() - _CREATE_GRACE_S
        for name in list(members):
            if name not in listed and own.created_at.get(name, -math.inf) < fresh:
                del members[name]
                own.created_at.pop(name, None)
        return orphans

    async def _settle(self, listing: Sequence[Placeholder], now: float) -> list[str]:
        """Sync with the listing, finish the previous process's pool actions and remove orphans."""
        notes: list[str] = []
        orphans = self._sync(listing)
        listed = {p.name for p in listing}
        for a in self._own.pending:
            name = a.payload.get("name")
            if a.kind == "warm":
                done = name in listed
                await self._ledger.move(
                    a.key, "confirmed" if done else "abandoned", "adopted" if done else "never created"
                )
                notes.append(f"{a.key}: {'adopted' if done else 'never created, abandoned'}")
            elif name not in listed:
                await self._ledger.move(a.key, "confirmed", "the placeholder is gone")
                notes.append(f"{a.key}: already removed")
        unwarm_pending = {a.payload.get("name") for a in self._own.pending if a.kind == "unwarm"}
        self._own.pending = []
        for p in orphans:
            why = "removal interrupted by a restart" if p.name in unwarm_pending else "orphan"
            await self._ledger.begin(_unwarm(p.as_standby(), why, now))
            errors: list[str] = []
            removed = await self._remove(p.as_standby(), why, errors)
            self.memory.members.pop(p.name, None)  # an orphan is never ours, even when its removal failed
            notes.append(f"{p.name}: {why}, " + ("removed" if removed else "; ".join(errors)))
        return notes


def waiting_work(cluster: ClusterState) -> list[Resources]:
    """Bundles of work waiting in Ray for resources (tasks, actors, others' placement groups)."""
    return [
        d.resources
        for d in cluster.demand
        if d.source in ("task_actor", "placement_group") and not d.raytide_placeholder
        for _ in range(max(0, d.count))
    ]


def _unwarm(m: Standby, why: str, now: float) -> Action:
    """The write-ahead record of removing placeholder ``m`` (a claim, a retirement or an orphan)."""
    return ActionLedger.intended(
        f"unwarm:{m.name}",
        "unwarm",
        shape=m.shape,
        node_id=m.node_id,
        payload={"name": m.name, "pg_id": m.pg_id, "reason": why},
        now=now,
    )
