"""The daemon behind ``raytide run``: one tick = observe → decide → guard → act → publish, every interval.

**Observe.** The metrics source (Prometheus, or the embedded scrape of Ray's exporters) answers the observe
templates and :func:`autoscaler.core.observe.build_snapshot` turns them into a ``Snapshot``; the cluster state
from the GCS is joined in and is authoritative for node counts, pending launches, which nodes exist and how
long each has been idle. A failure of either (unreachable, slower than ``observe_timeout_seconds``, garbage)
becomes ``Snapshot.errors``: the decision then holds.

**Decide.** :func:`autoscaler.core.decide.decide` with the models and decision state the store kept.

**Guard + act.** A held plan changes nothing: the floor last set is re-asserted (so a coordinator
registration does not expire during an outage) and nothing is drained. Otherwise, write-ahead: the tick is
committed together with the ``intended`` floor and drain actions (one transaction), then the floor is set
to the plan's targets (idempotent), and only then are nodes drained — the floor is lowered *before* a drain,
because an accepted drain of a node the floor still wants makes the autoscaler relaunch it. Per shape whose
target is below what runs, at most ``drain_share_per_tick`` of its nodes (at least one) are drained, and only
nodes the GCS reports idle, longest idle first; Ray refuses ``IDLE_TERMINATION`` for a busy node anyway.
Each action is finished in the store with its outcome. An accepted drain stays ``sent`` until the node is
gone from the GCS (``confirmed``) or ``drain_confirm_seconds`` pass (``abandoned``).

**Publish.** ``Telemetry.record_tick``, health (``degraded`` with reasons while anything failed), an MQTT
decision event when configured, and one structured log line with the decision and its reasons.

**Restart.** :meth:`Daemon.start` loads models, decision state, the last plan and the floor last set, then
reconciles the actions that were intended or sent but never finished:

- floor: the newest one is re-asserted (idempotent: the same counts launch nothing new); older ones are
  marked superseded. Without a pending floor, the last floor set is re-asserted the same way.
- drain: node gone → ``confirmed``; node draining → stays ``sent`` (checked on the next ticks); node alive
  and idle → drained again if the last plan still wants fewer nodes of its shape than are alive (the floor
  was re-asserted first), else ``abandoned``; node busy → ``abandoned`` (raytide never drains busy nodes).
  An unreadable cluster at start-up leaves them pending for the next start or tick.

**Stopping.** SIGTERM/SIGINT let the current tick finish, then the daemon exits. It releases nothing: the
floor stays in place so that a restart (or a crash) does not shrink the cluster. To hand the cluster back
to Ray's own autoscaling, stop raytide and clear the floor (``ray.autoscaler.sdk.request_resources([])``);
with Ray Data's coordinator the registration expires by itself.

Adapters are passed to :class:`Daemon` as keyword arguments and only need the small protocols below, so
tests use fakes; every blocking call (GCS, actuator, SQLite) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from autoscaler.adapters.ray.cluster_state import node_type_resource
from autoscaler.adapters.state_store import StateStore
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.core.config import Config
from autoscaler.core.decide import Decision, DecisionState, decide
from autoscaler.core.floor_watch import watch_floor
from autoscaler.core.observe import OBSERVE_TEMPLATES, build_snapshot
from autoscaler.core.policy_api import Policy, PolicyContext, PolicyDecision
from autoscaler.core.queries import QueryResult, make_sample
from autoscaler.core.throughput import ThroughputModels
from autoscaler.core.warm_pool import (
    PoolMemory,
    PoolPlan,
    PoolTargets,
    Standby,
    active_counts,
    claims_for_waiting,
    plan_pool,
    pool_targets,
)
from autoscaler.ports import (
    Action,
    ActionKind,
    Actuator,
    ClusterReader,
    ClusterState,
    DemandBundle,
    DrainResult,
    EventSink,
    MetricsSource,
    Placeholder,
    RayNode,
    WarmPool,
)
from autoscaler.types import Node, Plan, Resources, Snapshot, frozen_map

__all__ = [
    "Actuator",
    "ClusterReader",
    "Daemon",
    "DryRunActuator",
    "EventSink",
    "MetricsSource",
    "TickOutcome",
    "WarmPool",
    "choose_drains",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MIN_NUDGE_GAP_S = 0.5
_CREATE_GRACE_S = 30.0
"""A placeholder created this recently may be missing from a listing without being gone."""
_DAEMON_KEY = "daemon"
"""Key of the daemon's own part of the stored decision state (``DecisionState.from_json`` ignores it)."""


# ------------------------------------------------------------------------------------------ adapters


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


# ------------------------------------------------------------------------------------------ pure parts


def choose_drains(
    plan: Plan, cluster: ClusterState, *, share: float, exclude: Iterable[str] = ()
) -> list[RayNode]:
    """The idle nodes to drain for ``plan``: per shape whose target is below its live, not-draining nodes,
    at most ``max(1, floor(share × live nodes))`` of them, only nodes the GCS reports idle, longest idle
    first. Never a busy node, the head, or one already being drained."""
    excluded = set(exclude)
    chosen: list[RayNode] = []
    for change in plan.changes:
        if change.target >= change.current:
            continue
        live = [n for n in cluster.workers if n.node_type == change.shape]
        active = [n for n in live if n.status != "DRAINING" and n.node_id not in excluded]
        excess = len(active) - change.target
        if excess <= 0:
            continue
        cap = max(1, math.floor(share * len(live)))
        idle = [n for n in active if n.status == "IDLE" and n.idle_seconds is not None and not n.is_head]
        idle.sort(key=lambda n: (-(n.idle_seconds or 0.0), n.node_id))
        chosen.extend(idle[: min(excess, cap)])
    return chosen


def _counts_result(counts: Mapping[str, int], now: float) -> QueryResult:
    """GCS counts in the shape of the ``nodes_active``/``nodes_pending`` answers observe reads."""
    return QueryResult(
        query="(GCS cluster state)",
        samples=tuple(make_sample({"NodeType": k}, float(v), now) for k, v in sorted(counts.items())),
    )


def _ours(d: DemandBundle) -> bool:
    """Demand of raytide's own placeholders (their bundle holds a node-type marker) is not work."""
    return d.source == "placement_group" and any(k.startswith(node_type_resource("")) for k in d.resources)


def _waiting(cluster: ClusterState) -> list[Resources]:
    """Bundles of work waiting in Ray for resources (tasks, actors, others' placement groups)."""
    return [
        d.resources
        for d in cluster.demand
        if d.source in ("task_actor", "placement_group") and not _ours(d)
        for _ in range(max(0, d.count))
    ]


def _join_cluster(
    snapshot: Snapshot, cluster: ClusterState, hidden: frozenset[str] = frozenset()
) -> Snapshot:
    """Nodes from the GCS (ids, types, idle times) with utilization from the metrics, matched by IP.
    ``hidden`` nodes (standby and retiring ones) are left out: they are not the plan's capacity."""
    by_ip: dict[str, Node] = {}
    for n in snapshot.nodes:
        by_ip[n.node_id.rsplit("/", 1)[-1].rsplit(":", 1)[0]] = n
    nodes = []
    for rn in cluster.workers:
        if rn.node_id in hidden:
            continue
        metric = by_ip.get(rn.ip)
        node = Node(node_id=rn.node_id, shape=rn.node_type, idle_seconds=rn.idle_seconds)
        if metric is not None:
            node = replace(
                node, cpu_utilization=metric.cpu_utilization, gpu_utilization=metric.gpu_utilization
            )
        nodes.append(node)
    demand = tuple(
        frozen_map(d.resources)
        for d in cluster.demand
        if d.source != "floor" and not _ours(d)
        for _ in range(max(0, d.count))
    )
    return replace(snapshot, nodes=tuple(nodes), pending_demand=demand)


# ------------------------------------------------------------------------------------------ the daemon


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


@dataclass(slots=True)
class _SentDrain:
    key: str
    node_id: str
    since: float


@dataclass(slots=True)
class _Memory:
    tick: int = 0
    models: ThroughputModels = field(default_factory=ThroughputModels)
    state: DecisionState = field(default_factory=DecisionState)
    plan: Plan | None = None
    floor: dict[str, int] | None = None
    sent: dict[str, _SentDrain] = field(default_factory=dict)
    pool: PoolMemory = field(default_factory=PoolMemory)
    created_at: dict[str, float] = field(default_factory=dict)
    """Placeholder name → when this process created it (a fresh one may not be listed yet)."""
    retiring: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Node id → (shape, since): standby nodes whose placeholder was retired, to be drained once idle."""
    removed: dict[str, float] = field(default_factory=dict)
    """Placeholder name → when this process removed it (a listing read before may still show it)."""
    pool_pending: list[Action] = field(default_factory=list)
    """warm/unwarm actions left unfinished by the previous process, settled at the first pool listing."""
    pool_synced: bool = False
    recent_claims: list[tuple[Standby, float]] = field(default_factory=list)
    """Claims of the last ``refill_delay_seconds``; waiting work is fitted into these first."""


class _TimedPolicy:
    """Times each call of the wrapped policy (the pure core has no clock, so timing lives out here)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.last_seconds = 0.0
        self.last_warm_pool: Mapping[str, int] | None = None
        """The policy's warm-pool override of its last call (None when it gave none or failed)."""

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        t0 = time.perf_counter()
        self.last_warm_pool = None
        try:
            result = self.inner.decide(ctx)
            if isinstance(result, PolicyDecision):
                self.last_warm_pool = result.warm_pool
            return result
        finally:
            self.last_seconds = time.perf_counter() - t0


class Daemon:
    """The autoscaling loop. Construct, ``await start()`` (load + reconcile), then ``await run()``.

    ``clock`` is wall-clock seconds (snapshot and action times); ``interval_seconds`` and the timeouts
    default to the configuration's ``daemon:`` section.
    """

    def __init__(
        self,
        *,
        config: Config,
        policy: Policy,
        source: MetricsSource,
        cluster: ClusterReader,
        actuator: Actuator,
        store: StateStore,
        telemetry: Telemetry | None = None,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        interval_seconds: float | None = None,
        warm_pool: WarmPool | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self._timed_policy = _TimedPolicy(policy)
        self._source = source
        self._cluster = cluster
        self._actuator = actuator
        self._store = store
        self.interval_seconds = (
            interval_seconds if interval_seconds is not None else config.daemon.interval_seconds
        )
        if not (math.isfinite(self.interval_seconds) and self.interval_seconds > 0):
            raise ValueError(f"interval_seconds must be > 0, got {self.interval_seconds}")
        self.telemetry = telemetry or Telemetry(tick_interval_seconds=self.interval_seconds)
        self._events = events
        self._clock = clock
        self._mem = _Memory()
        self._started = False
        self._stop = asyncio.Event()
        self._pool = warm_pool if config.warm_pool.enabled else None
        self._pool_lock = asyncio.Lock()
        self._tick_now = asyncio.Event()
        self._claim_now = asyncio.Event()
        self._nudged_at: float | None = None
        self._hidden: frozenset[str] = frozenset()
        """Standby and retiring nodes of the last observation (not the plan's capacity)."""
        self._floor_since: dict[str, float] = {}
        """Shape → since when it has had fewer nodes than the floor and none launching (floor_watch)."""
        self.last: TickOutcome | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    @property
    def tick_number(self) -> int:
        return self._mem.tick

    @property
    def floor(self) -> dict[str, int] | None:
        return None if self._mem.floor is None else dict(self._mem.floor)

    @property
    def pool(self) -> tuple[Standby, ...]:
        """The warm pool's placeholders (ready and waiting), by name."""
        return tuple(sorted(self._mem.pool.members.values(), key=lambda m: m.name))

    def request_stop(self) -> None:
        """Finish the current tick (if any) and return from :meth:`run`."""
        self._stop.set()

    def nudge(self) -> None:
        """A push from the data path (``POST /nudge``): check for waiting work and tick now, not at the next
        interval. Call on the daemon's event loop."""
        if self._nudged_at is None:
            self._nudged_at = time.monotonic()
        self._tick_now.set()
        self._claim_now.set()

    async def start(self) -> list[str]:
        """Load the stored state and reconcile unfinished actions; returns what reconciliation did."""
        stored = await asyncio.to_thread(self._store.load)
        if stored is not None:
            self._mem.tick = stored.tick
            self._mem.models = ThroughputModels.from_json(stored.models)
            self._mem.state = DecisionState.from_json(stored.decision_state)
            self._mem.plan = stored.plan
            own = stored.decision_state.get(_DAEMON_KEY, {})
            floor = own.get("floor") if isinstance(own, Mapping) else None
            if isinstance(floor, Mapping):
                self._mem.floor = {str(k): int(v) for k, v in floor.items()}
            if isinstance(own, Mapping):
                self._mem.pool = PoolMemory.from_json(own.get("warm_pool"))
        notes = await self._reconcile()
        if self._pool is not None:
            notes.extend(await self._first_pool_sync())
        self._started = True
        for note in notes:
            log.info("reconcile: %s", note)
        return notes

    async def run(self, *, max_ticks: int | None = None, install_signal_handlers: bool = True) -> None:
        """Tick every ``interval_seconds`` until stopped (SIGTERM/SIGINT or :meth:`request_stop`)."""
        if not self._started:
            await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
        # Everything allocated so far (imports, config, models) lives for the whole run: moving it out of the
        # collector's generations keeps full collections short, and with them the ticks' latency tail.
        gc.collect()
        gc.freeze()
        done = 0
        claimer: asyncio.Task[None] | None = None
        if self._pool is not None and self.config.warm_pool.claim_waiting:
            claimer = asyncio.create_task(self.run_claims(), name="raytide-warm-pool-claims")
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self._tick_now.clear()
                await self.tick()
                done += 1
                if max_ticks is not None and done >= max_ticks:
                    break
                await self._sleep_until_tick(started)
        finally:
            if claimer is not None:
                claimer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await claimer
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.telemetry.set_health("stopping", ["the daemon is stopping"])
            if self._events is not None:
                self._events.publish_health("stopping", ["the daemon is stopping"])
            gc.unfreeze()

    async def _sleep_until_tick(self, started: float) -> None:
        """Sleep until the next interval, or until stopped or nudged — but a nudged tick starts no sooner
        than ``_MIN_NUDGE_GAP_S`` after the previous one (the GCS needs a moment to show what changed)."""
        wait = max(0.0, self.interval_seconds - (time.monotonic() - started))
        stop = asyncio.ensure_future(self._stop.wait())
        early = asyncio.ensure_future(self._tick_now.wait())
        try:
            await asyncio.wait({stop, early}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (stop, early):
                f.cancel()
        gap = min(self.interval_seconds, _MIN_NUDGE_GAP_S) - (time.monotonic() - started)
        if gap > 0 and not self._stop.is_set():
            await asyncio.sleep(gap)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s: finishing the current tick, then exiting (the floor stays in place)", sig.name)
        self._stop.set()

    # ------------------------------------------------------------------------------------ one tick

    async def tick(self) -> TickOutcome:
        """One observe → decide → guard → act → publish round. Never raises for cluster or metrics trouble."""
        t0 = time.monotonic()
        mem = self._mem
        now = self._clock()
        snapshot, cluster = await self._observe(now)
        errors: list[str] = list(snapshot.errors)
        if cluster is not None and mem.floor is not None and not isinstance(self._actuator, DryRunActuator):
            self._floor_since, short = watch_floor(
                mem.floor,
                cluster.node_counts(),
                cluster.pending_counts(),
                now=now,
                since=self._floor_since,
                grace=self.config.daemon.floor_grace_seconds,
            )
            errors.extend(s.message() for s in short)

        decision: Decision = decide(snapshot, self.config, mem.models, self._timed_policy, mem.state)
        policy_s = self._timed_policy.last_seconds
        plan = decision.plan
        tick = mem.tick + 1

        # Guard: act only on a plan made from a complete view of the cluster.
        hold = plan.held or cluster is None or bool(snapshot.errors)
        floor: dict[str, int] | None
        drains: list[RayNode] = []
        pool_plan: PoolPlan | None = None
        if hold:
            floor = None if mem.floor is None else dict(mem.floor)
            if not plan.held:
                plan = _held(plan, "the view of the cluster is incomplete: holding it as it is")
        else:
            assert cluster is not None
            floor = plan.targets()
            if self._pool is not None:
                pool_plan = self._plan_pool(now, plan, snapshot)
                floor = dict(pool_plan.floor)
            # Standby and retiring nodes are not the plan's: counting them would drain an active node.
            drains = choose_drains(
                plan,
                cluster,
                share=self.config.daemon.drain_share_per_tick,
                exclude=self._draining() | self._hidden,
            )
            drains.extend(self._retired_to_drain(cluster, now, exclude={n.node_id for n in drains}))
        actions: list[Action] = []
        floor_key = f"floor:{tick}"
        if floor is not None:
            actions.append(self._intended(floor_key, "floor", payload={"counts": floor}, now=now))
        for node in drains:
            actions.append(
                self._intended(
                    f"drain:{node.node_id}", "drain", shape=node.node_type, node_id=node.node_id, now=now
                )
            )
        pool_before = dict(mem.pool.members), mem.pool.next_serial
        if pool_plan is not None:
            actions.extend(self._pool_actions(pool_plan, now))

        # Write-ahead: the tick and the actions it is about to take, in one transaction.
        decision_state = decision.state.to_json()
        decision_state[_DAEMON_KEY] = {
            "floor": floor if floor is not None else mem.floor,
            "warm_pool": mem.pool.to_json(),
        }
        try:
            await asyncio.to_thread(
                self._store.commit_tick,
                tick=tick,
                time=now,
                models=mem.models.to_json(),
                decision_state=decision_state,
                plan=plan,
                snapshot=snapshot,
                reasons=plan.reasons,
                actions=actions,
            )
        except Exception as e:
            # Without a durable record nothing is done to the cluster: a crash now must not leave an
            # action nobody knows about.
            mem.pool.members, mem.pool.next_serial = pool_before
            errors.append(f"state store: {e}; not acting this tick")
            self.telemetry.record_actuation_error("state_store")
            return self._publish(tick, snapshot, plan, None, (), (), errors, t0, policy_s, commit=False)
        mem.tick = tick
        mem.state = decision.state
        mem.plan = plan

        claimed: list[str] = []
        if pool_plan is not None:
            # Claims first: a standby node is capacity now, everything else takes longer.
            async with self._pool_lock:
                for m in pool_plan.claims:
                    if await self._remove_placeholder(m, "claim", errors):
                        claimed.append(m.name)
                        mem.pool.last_claim[m.shape] = now
                        mem.recent_claims.append((m, time.monotonic()))
                        self.telemetry.pool_claimed(m.shape, "plan", time.monotonic() - t0)
            for shape, n in pool_plan.cold.items():
                self.telemetry.pool_missed(shape, n)
        floor_ok = False
        if floor is not None:
            floor_ok = await self._set_floor(floor_key, floor, errors)
            if floor_ok:
                mem.floor = dict(floor)
        if pool_plan is not None:
            async with self._pool_lock:
                await self._pool_changes(pool_plan, now, errors)
        drained: list[str] = []
        refused: list[str] = []
        for node in drains:
            key = f"drain:{node.node_id}"
            if not floor_ok:
                await self._finish(key, "abandoned", "the floor could not be lowered first")
                continue
            accepted = await self._drain(key, node.node_id, errors)
            if accepted:
                drained.append(node.node_id)
                mem.retiring.pop(node.node_id, None)
            elif accepted is False:
                refused.append(node.node_id)
        self._record_pool(pool_plan)
        return self._publish(
            tick,
            snapshot,
            plan,
            floor if floor_ok else None,
            drained,
            refused,
            errors,
            t0,
            policy_s,
            commit=True,
            pool=pool_plan,
            claimed=claimed,
        )

    # ------------------------------------------------------------------------------------ warm pool

    def _plan_pool(self, now: float, plan: Plan, snapshot: Snapshot) -> PoolPlan:
        wp = self.config.warm_pool
        pool = self._mem.pool
        targets = plan.targets()
        pool.remember_plan(now, targets, wp.history_seconds)
        sized: PoolTargets = pool_targets(
            self.config, pool, targets, override=self._timed_policy.last_warm_pool
        )
        current = {
            s.name: snapshot.count(s.name) + int(snapshot.pending_counts.get(s.name, 0))
            for s in snapshot.shapes
        }
        return plan_pool(
            now=now,
            config=self.config,
            memory=pool,
            plan_targets=targets,
            plan_current=current,
            targets=sized,
        )

    def _pool_actions(self, pool_plan: PoolPlan, now: float) -> list[Action]:
        """Write-ahead records of the pool changes, and the membership they lead to."""
        mem = self._mem
        actions: list[Action] = []
        for m in (*pool_plan.claims, *pool_plan.retire):
            why = "claim" if m in pool_plan.claims else "retire"
            actions.append(self._unwarm(m, why, now))
            mem.pool.members.pop(m.name, None)
        for m in pool_plan.create:
            actions.append(
                self._intended(f"warm:{m.name}", "warm", shape=m.shape, payload={"name": m.name}, now=now)
            )
            mem.pool.members[m.name] = m
            mem.pool.next_serial = max(mem.pool.next_serial, m.serial + 1)
        return actions

    def _unwarm(self, m: Standby, why: str, now: float) -> Action:
        """The write-ahead record of removing placeholder ``m`` (a claim, a retirement or an orphan)."""
        return self._intended(
            f"unwarm:{m.name}",
            "unwarm",
            shape=m.shape,
            node_id=m.node_id,
            payload={"name": m.name, "pg_id": m.pg_id, "reason": why},
            now=now,
        )

    async def _begin(self, a: Action) -> None:
        await asyncio.to_thread(
            self._store.begin_action,
            a.key,
            kind=a.kind,
            shape=a.shape,
            node_id=a.node_id,
            payload=a.payload,
            time=a.created,
        )

    async def _pool_changes(self, pool_plan: PoolPlan, now: float, errors: list[str]) -> None:
        assert self._pool is not None
        pool = self._pool
        for m in pool_plan.create:
            key = f"warm:{m.name}"
            try:
                await self._act(lambda m=m: pool.create(m.name, m.shape))  # type: ignore[misc]
            except Exception as e:
                msg = f"creating placeholder {m.name} failed: {_describe(e)}"
                errors.append(msg)
                self.telemetry.record_actuation_error("warm")
                self._mem.pool.members.pop(m.name, None)
                await self._finish(key, "failed", msg)
                continue
            self._mem.created_at[m.name] = time.monotonic()
            await self._finish(key, "confirmed", "")
        for m in pool_plan.retire:
            if await self._remove_placeholder(m, "retire", errors) and m.node_id is not None:
                self._mem.retiring[m.node_id] = (m.shape, now)

    async def _remove_placeholder(self, m: Standby, why: str, errors: list[str]) -> bool:
        """Remove one placeholder whose ``unwarm`` action is already recorded as intended."""
        assert self._pool is not None
        pool = self._pool
        key = f"unwarm:{m.name}"
        try:
            await self._act(lambda: pool.remove(m.name, m.pg_id))
        except Exception as e:
            msg = f"removing placeholder {m.name} ({why}) failed: {_describe(e)}"
            errors.append(msg)
            self.telemetry.record_actuation_error("unwarm")
            await self._finish(key, "failed", msg)
            # Still ours and still holding its node: keep it in the pool, the next tick tries again.
            self._mem.pool.members.setdefault(m.name, m)
            return False
        self._mem.created_at.pop(m.name, None)
        self._mem.removed[m.name] = time.monotonic()
        await self._finish(key, "confirmed", why)
        return True

    def _retired_to_drain(self, cluster: ClusterState, now: float, exclude: set[str]) -> list[RayNode]:
        """Nodes of retired placeholders, drained once the GCS reports them idle; given up on (left to the
        plan) when gone or not idle within ``drain_confirm_seconds``."""
        out: list[RayNode] = []
        alive = {n.node_id: n for n in cluster.workers}
        for node_id, (_, since) in list(self._mem.retiring.items()):
            node = alive.get(node_id)
            if node is None or now - since > self.config.daemon.drain_confirm_seconds:
                del self._mem.retiring[node_id]
            elif node.status == "IDLE" and node_id not in exclude and node_id not in self._draining():
                out.append(node)
        return out

    def _sync_pool(self, listing: Sequence[Placeholder]) -> list[Placeholder]:
        """Bring the pool's membership in line with the placeholders Ray has; returns the orphans (raytide
        placeholders that are not ours, e.g. left by a lost state file) to remove."""
        mem = self._mem
        listed = {p.name: p for p in listing}
        pending = {a.payload.get("name"): a for a in mem.pool_pending}
        orphans: list[Placeholder] = []
        recent = time.monotonic() - _CREATE_GRACE_S
        for name, at in list(mem.removed.items()):
            if at < recent:
                del mem.removed[name]
        for p in listing:
            if p.name in mem.removed:
                continue  # removed since this listing was read (Ray removes asynchronously)
            if p.name in pending and pending[p.name].kind == "unwarm":
                # A claim or retirement the previous process began: finish it, never hand it out again.
                mem.pool.members.pop(p.name, None)
                orphans.append(p)
            elif p.name in mem.pool.members or (p.name in pending and pending[p.name].kind == "warm"):
                mem.pool.members[p.name] = p.as_standby()
            else:
                orphans.append(p)
        fresh = time.monotonic() - _CREATE_GRACE_S
        for name in list(mem.pool.members):
            if name not in listed and mem.created_at.get(name, -math.inf) < fresh:
                del mem.pool.members[name]
                mem.created_at.pop(name, None)
        return orphans

    async def _settle_pool(self, listing: Sequence[Placeholder], now: float) -> list[str]:
        """Sync with the listing, finish the previous process's pool actions and remove orphans."""
        notes: list[str] = []
        mem = self._mem
        orphans = self._sync_pool(listing)
        listed = {p.name for p in listing}
        for a in mem.pool_pending:
            name = a.payload.get("name")
            if a.kind == "warm":
                done = name in listed
                await self._finish(
                    a.key, "confirmed" if done else "abandoned", "adopted" if done else "never created"
                )
                notes.append(f"{a.key}: {'adopted' if done else 'never created, abandoned'}")
            elif name not in listed:
                await self._finish(a.key, "confirmed", "the placeholder is gone")
                notes.append(f"{a.key}: already removed")
        unwarm_pending = {a.payload.get("name") for a in mem.pool_pending if a.kind == "unwarm"}
        mem.pool_pending = []
        for p in orphans:
            why = "removal interrupted by a restart" if p.name in unwarm_pending else "orphan"
            await self._begin(self._unwarm(p.as_standby(), why, now))
            errors: list[str] = []
            removed = await self._remove_placeholder(p.as_standby(), why, errors)
            mem.pool.members.pop(p.name, None)  # an orphan is never ours, even when its removal failed
            notes.append(f"{p.name}: {why}, " + ("removed" if removed else "; ".join(errors)))
        mem.pool_synced = True
        return notes

    async def _first_pool_sync(self) -> list[str]:
        assert self._pool is not None
        pool = self._pool
        try:
            listing = await asyncio.wait_for(
                asyncio.to_thread(pool.list), timeout=self.config.daemon.observe_timeout_seconds
            )
        except Exception as e:
            return [f"warm pool: cannot list placeholders yet ({_describe(e)}); the first good tick will"]
        async with self._pool_lock:
            return await self._settle_pool(listing, self._clock())

    def _record_pool(self, pool_plan: PoolPlan | None) -> None:
        if self._pool is None:
            return
        ready: dict[str, int] = {}
        waiting: dict[str, int] = {}
        for m in self._mem.pool.members.values():
            (ready if m.ready else waiting)[m.shape] = (ready if m.ready else waiting).get(m.shape, 0) + 1
        shapes = self.config.node_shapes()
        prices = {s.name: s.price_per_hour for s in shapes}
        cost = sum(prices.get(m.shape, 0.0) for m in self._mem.pool.members.values())
        targets = dict(pool_plan.targets.counts) if pool_plan is not None else {}
        for s in shapes:
            ready.setdefault(s.name, 0)
            waiting.setdefault(s.name, 0)
            if pool_plan is None:
                targets[s.name] = ready[s.name] + waiting[s.name]
        self.telemetry.record_pool(ready, waiting, targets, cost)

    async def run_claims(self) -> None:
        """Between ticks: hand ready standby nodes to work waiting in Ray for resources, until stopped.

        :meth:`run` starts it when the warm pool is on and ``claim_waiting``; a caller driving
        :meth:`tick` itself (the demo) runs it as a task next to its ticks."""
        wp = self.config.warm_pool
        first_seen: float | None = None
        while not self._stop.is_set():
            ready = [m for m in self._mem.pool.members.values() if m.ready]
            wait = wp.claim_poll_seconds if ready else self.interval_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_now.wait(), timeout=wait)
            self._claim_now.clear()
            nudged_at, self._nudged_at = self._nudged_at, None
            if self._stop.is_set() or not any(m.ready for m in self._mem.pool.members.values()):
                continue
            try:
                cluster = await asyncio.wait_for(
                    asyncio.to_thread(self._cluster), timeout=self.config.daemon.observe_timeout_seconds
                )
            except Exception as e:
                log.debug("warm pool: cannot read waiting work: %s", e)
                continue
            waiting = _waiting(cluster)
            if not waiting:
                first_seen = None
                continue
            if first_seen is None:
                first_seen = nudged_at if nudged_at is not None else time.monotonic()
            async with self._pool_lock:
                claimed = await self._claim_for_waiting(waiting, first_seen)
            if claimed:
                first_seen = None
                self._tick_now.set()  # let the plan see the new capacity soon

    async def _claim_for_waiting(self, waiting: Sequence[Resources], since: float) -> list[str]:
        mem = self._mem
        settle = self.config.warm_pool.refill_delay_seconds
        cutoff = time.monotonic() - settle
        mem.recent_claims = [(m, t) for m, t in mem.recent_claims if t >= cutoff]
        ready = [m for m in mem.pool.members.values() if m.ready]
        shapes = self.config.node_shapes()
        claims, _ = claims_for_waiting(waiting, ready, shapes, already=[m for m, _ in mem.recent_claims])
        if not claims:
            return []
        now = self._clock()
        done: list[str] = []
        errors: list[str] = []
        for m in claims:
            if m.name not in mem.pool.members:
                continue  # a tick claimed it meanwhile
            await self._begin(self._unwarm(m, "claim (waiting work)", now))
            mem.pool.members.pop(m.name, None)
            if await self._remove_placeholder(m, "claim", errors):
                done.append(m.name)
                mem.pool.last_claim[m.shape] = now
                mem.recent_claims.append((m, time.monotonic()))
                latency = time.monotonic() - since
                self.telemetry.pool_claimed(m.shape, "waiting", latency)
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

    # ------------------------------------------------------------------------------------ observe

    async def _observe(self, now: float) -> tuple[Snapshot, ClusterState | None]:
        timeout = self.config.daemon.observe_timeout_seconds
        metrics_task = asyncio.ensure_future(
            _within(self._source.query_templates(OBSERVE_TEMPLATES), timeout, "metrics source")
        )
        cluster_task = asyncio.ensure_future(
            _within(asyncio.to_thread(self._cluster), timeout, "Ray GCS (cluster state)")
        )
        pool_task = (
            asyncio.ensure_future(
                _within(asyncio.to_thread(self._pool.list), timeout, "warm pool (placement groups)")
            )
            if self._pool is not None
            else None
        )
        results_or_error = await metrics_task
        cluster_or_error = await cluster_task
        listing_or_error = await pool_task if pool_task is not None else None
        extra: list[str] = []
        results: dict[str, QueryResult]
        if isinstance(results_or_error, str):
            extra.append(results_or_error)
            results = {name: QueryResult.failed("", results_or_error) for name in OBSERVE_TEMPLATES}
        elif not isinstance(results_or_error, Mapping):
            msg = f"metrics source answered {type(results_or_error).__name__}, not query results"
            extra.append(msg)
            results = {name: QueryResult.failed("", msg) for name in OBSERVE_TEMPLATES}
        else:
            results = {
                k: v if isinstance(v, QueryResult) else QueryResult.failed("", f"garbage answer {v!r:.80}")
                for k, v in results_or_error.items()
            }
        listing_ok = True
        if isinstance(listing_or_error, str):
            extra.append(listing_or_error)
            listing_ok = False
        elif listing_or_error is not None:
            async with self._pool_lock:
                for note in await self._settle_pool(listing_or_error, now):
                    log.info("warm pool: %s", note)
        cluster: ClusterState | None = None
        hidden: frozenset[str] = frozenset()
        if isinstance(cluster_or_error, str):
            extra.append(cluster_or_error)
        elif not isinstance(cluster_or_error, ClusterState):
            extra.append(f"Ray GCS (cluster state): unreadable answer {type(cluster_or_error).__name__}")
        else:
            cluster = cluster_or_error
            # The GCS is authoritative for counts: the autoscaler metrics lag and may be missing.
            names = [s.name for s in self.config.shapes]
            live, pending = cluster.node_counts(), cluster.pending_counts()
            if self._pool is not None and listing_ok:
                self._mem.pool.launches.observe(
                    now,
                    pending,
                    {n: [w.node_id for w in cluster.workers if w.node_type == n] for n in names},
                )
                members = list(self._mem.pool.members.values())
                retiring: dict[str, int] = {}
                for shape, _ in self._mem.retiring.values():
                    retiring[shape] = retiring.get(shape, 0) + 1
                live, pending = active_counts(live, pending, members, retiring)
                hidden = frozenset({m.node_id for m in members if m.node_id} | set(self._mem.retiring))
            self._hidden = hidden
            results["nodes_active"] = _counts_result(_for_shapes(names, live), now)
            results["nodes_pending"] = _counts_result(_for_shapes(names, pending), now)
        try:
            snapshot = build_snapshot(self.config, now, results)
        except Exception as e:  # a bug or garbage observe could not turn into unknowns: hold, don't crash
            log.exception("observe failed")
            snapshot = build_snapshot(
                self.config,
                now,
                {n: QueryResult.failed("", f"observe failed: {e}") for n in OBSERVE_TEMPLATES},
            )
            extra.append(f"observe failed: {type(e).__name__}: {e}")
        if cluster is not None:
            snapshot = _join_cluster(snapshot, cluster, hidden)
            await self._check_sent_drains(cluster, now)
        if extra:
            snapshot = replace(snapshot, errors=(*extra, *snapshot.errors))
        return snapshot, cluster

    # ------------------------------------------------------------------------------------ act

    def _intended(
        self,
        key: str,
        kind: ActionKind,
        *,
        now: float,
        shape: str | None = None,
        node_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Action:
        return Action(
            key=key,
            kind=kind,
            shape=shape,
            node_id=node_id,
            payload=dict(payload or {}),
            status="intended",
            created=now,
            updated=now,
        )

    async def _act(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.wait_for(asyncio.to_thread(fn), timeout=self.config.daemon.act_timeout_seconds)

    async def _set_floor(self, key: str, counts: dict[str, int], errors: list[str]) -> bool:
        try:
            await self._act(lambda: self._actuator.set_target(counts))
        except Exception as e:
            msg = f"setting the floor {counts} failed: {_describe(e)}"
            errors.append(msg)
            self.telemetry.record_actuation_error("floor")
            await self._finish(key, "failed", msg)
            return False
        await self._finish(key, "confirmed", "")
        return True

    async def _drain(self, key: str, node_id: str, errors: list[str]) -> bool | None:
        """True: Ray accepted the drain; False: Ray refused it; None: no answer (failed or timed out,
        said in ``errors``)."""
        try:
            result = await self._act(lambda: self._actuator.drain(node_id))
        except TimeoutError:
            # Ray may have accepted it: check on the next ticks whether the node goes.
            errors.append(f"drain of {node_id} timed out; checking whether the node goes")
            self.telemetry.record_actuation_error("drain")
            await self._finish(key, "sent", "timed out; outcome unknown")
            self._mem.sent[key] = _SentDrain(key, node_id, self._clock())
            return None
        except Exception as e:
            msg = f"drain of {node_id} failed: {_describe(e)}"
            errors.append(msg)
            self.telemetry.record_actuation_error("drain")
            await self._finish(key, "failed", msg)
            return None
        if result.accepted:
            await self._finish(key, "sent", "accepted by the GCS")
            self._mem.sent[key] = _SentDrain(key, node_id, self._clock())
            return True
        await self._finish(key, "failed", f"refused: {result.message}")
        return False

    async def _finish(self, key: str, status: Any, detail: str) -> None:
        try:
            await asyncio.to_thread(self._store.finish_action, key, status, detail, time=self._clock())
        except Exception as e:
            log.warning("state store: could not record %s as %s: %s", key, status, e)

    def _draining(self) -> set[str]:
        return {d.node_id for d in self._mem.sent.values()}

    async def _check_sent_drains(self, cluster: ClusterState, now: float) -> None:
        """Accepted drains: confirmed once the node is gone, abandoned when it outstays its welcome."""
        alive = {n.node_id for n in cluster.nodes if n.alive}
        for key, d in list(self._mem.sent.items()):
            if d.node_id not in alive:
                await self._finish(key, "confirmed", "the node is gone")
            elif now - d.since > self.config.daemon.drain_confirm_seconds:
                await self._finish(key, "abandoned", "the node is still alive long after the drain")
            else:
                continue
            del self._mem.sent[key]

    # ------------------------------------------------------------------------------------ publish

    def _publish(
        self,
        tick: int,
        snapshot: Snapshot,
        plan: Plan,
        floor: dict[str, int] | None,
        drained: Sequence[str],
        refused: Sequence[str],
        errors: Sequence[str],
        t0: float,
        policy_s: float,
        *,
        commit: bool,
        pool: PoolPlan | None = None,
        claimed: Sequence[str] = (),
    ) -> TickOutcome:
        duration = time.monotonic() - t0
        outcome = TickOutcome(
            tick=tick,
            snapshot=snapshot,
            plan=plan,
            floor=floor,
            drained=tuple(drained),
            refused=tuple(refused),
            errors=tuple(errors),
            duration_s=duration,
            pool=pool,
            claimed=tuple(claimed),
        )
        self.last = outcome
        self.telemetry.record_tick(duration, plan, snapshot, policy_s)
        if errors:
            self.telemetry.set_health("degraded", errors)
        else:
            self.telemetry.set_health("ok")
        if self._events is not None:
            try:
                if commit:
                    self._events.publish_decision(plan)
                self._events.publish_health(self.telemetry.state, errors)
            except Exception as e:
                log.warning("mqtt: could not queue events: %s", e)
        changes = {c.shape: f"{c.current}->{c.target}" for c in plan.changes}
        log.info(
            "tick %d: %s%s",
            tick,
            "held: " if plan.held else "",
            ", ".join(f"{k} {v}" for k, v in changes.items()),
            extra={
                "tick": tick,
                "policy": plan.policy,
                "held": plan.held,
                "changes": changes,
                "floor": floor,
                "drained": list(drained),
                "refused": list(refused),
                "reasons": list(plan.reasons),
                "change_reasons": {c.shape: c.reason for c in plan.changes},
                "errors": list(errors),
                "duration_s": round(duration, 4),
                **(
                    {
                        "warm_pool": dict(pool.targets.counts),
                        "warm_pool_reasons": dict(pool.targets.reasons),
                        "claimed": list(claimed),
                        "cold": dict(pool.cold),
                    }
                    if pool is not None
                    else {}
                ),
            },
        )
        return outcome

    # ------------------------------------------------------------------------------------ restart

    async def _reconcile(self) -> list[str]:
        pending = await asyncio.to_thread(self._store.pending_actions)
        notes: list[str] = []
        floors = [a for a in pending if a.kind == "floor"]
        drains = [a for a in pending if a.kind == "drain"]
        self._mem.pool_pending = [a for a in pending if a.kind in ("warm", "unwarm")]
        others = [a for a in pending if a.kind not in ("floor", "drain", "warm", "unwarm")]
        for a in others:
            await self._finish(a.key, "abandoned", f"{a.kind} is not something this daemon does")
            notes.append(f"{a.key}: abandoned ({a.kind} unsupported)")
        floor = self._mem.floor
        if floors:
            newest = floors[-1]
            counts = newest.payload.get("counts")
            if isinstance(counts, Mapping):
                floor = {str(k): int(v) for k, v in counts.items()}
            for a in floors[:-1]:
                await self._finish(a.key, "abandoned", f"superseded by {newest.key}")
        floor_ok = False
        if floor is not None:
            errors: list[str] = []
            key = floors[-1].key if floors else f"floor:{self._mem.tick}:restart"
            if not floors:
                await asyncio.to_thread(
                    self._store.begin_action, key, kind="floor", payload={"counts": floor}, time=self._clock()
                )
            floor_ok = await self._set_floor(key, floor, errors)
            if floor_ok:
                self._mem.floor = dict(floor)
                notes.append(f"floor {floor} re-asserted (idempotent: launches nothing new)")
            else:
                notes.extend(errors)
        elif floors:
            for a in floors:
                await self._finish(a.key, "abandoned", "no counts recorded")
        if not drains:
            return notes
        try:
            cluster = await asyncio.wait_for(
                asyncio.to_thread(self._cluster), timeout=self.config.daemon.observe_timeout_seconds
            )
        except Exception as e:
            notes.append(f"cannot read the cluster ({_describe(e)}): {len(drains)} drain(s) stay pending")
            for a in drains:
                if a.node_id:
                    self._mem.sent[a.key] = _SentDrain(a.key, a.node_id, a.updated)
            return notes
        targets = self._mem.plan.targets() if self._mem.plan is not None else {}
        for a in drains:
            node = next((n for n in cluster.nodes if n.node_id == a.node_id and n.alive), None)
            if a.node_id is None or node is None:
                await self._finish(a.key, "confirmed", "the node is gone (found at restart)")
                notes.append(f"{a.key}: node gone, confirmed")
            elif node.status == "DRAINING":
                self._mem.sent[a.key] = _SentDrain(a.key, node.node_id, a.updated)
                notes.append(f"{a.key}: node draining, still sent")
            elif node.status == "IDLE" and floor_ok and self._still_wanted(node, cluster, targets):
                await asyncio.to_thread(
                    self._store.begin_action,
                    a.key,
                    kind="drain",
                    shape=node.node_type,
                    node_id=node.node_id,
                    time=self._clock(),
                )
                errors = []
                accepted = await self._drain(a.key, node.node_id, errors)
                verdict = "accepted" if accepted else "not accepted"
                notes.append(f"{a.key}: idle and still above target, drained again ({verdict})")
            else:
                why = (
                    "busy"
                    if node.status != "IDLE"
                    else "no longer above the target (or floor not re-asserted)"
                )
                await self._finish(a.key, "abandoned", f"at restart the node is alive and {why}")
                notes.append(f"{a.key}: abandoned ({why})")
        return notes

    def _still_wanted(self, node: RayNode, cluster: ClusterState, targets: Mapping[str, int]) -> bool:
        if node.node_type not in targets:
            return False
        active = [n for n in cluster.workers if n.node_type == node.node_type and n.status != "DRAINING"]
        return len(active) > targets[node.node_type]


def _for_shapes(names: Iterable[str], counts: Mapping[str, int]) -> dict[str, int]:
    return {**{n: 0 for n in names}, **counts}


def _held(plan: Plan, why: str) -> Plan:
    changes = tuple(replace(c, target=c.current, reason=f"held: {why}") for c in plan.changes)
    return replace(plan, changes=changes, held=True, reasons=(*plan.reasons, why))


async def _within(aw: Any, limit_s: float, what: str) -> Any:
    """The awaitable's result, or a string saying why there is none (timeout, exception)."""
    try:
        return await asyncio.wait_for(aw, timeout=limit_s)
    except TimeoutError:
        return f"{what}: no answer within {limit_s:g} s"
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return f"{what}: {_describe(e)}"


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
