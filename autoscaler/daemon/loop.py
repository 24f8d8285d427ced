"""The daemon behind ``raytide run``: one tick = observe → decide → guard → act → publish, every interval.

:class:`Daemon` runs the ticks and owns what lives across them; each step is a module of its own:
observation (metrics and GCS state joined into the snapshot), acting (floor and drains), the warm-pool
controller, the action state machine, publishing, and the restart reconcile. The daemon talks to ports only
(:mod:`autoscaler.ports`); every blocking call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from autoscaler.core.config import Config
from autoscaler.core.decide import Decision, DecisionState, decide, limits_from
from autoscaler.core.floor_watch import watch_floor
from autoscaler.core.policy_api import Policy, PolicyContext, PolicyDecision
from autoscaler.core.throughput import ThroughputModels
from autoscaler.core.warm_pool import PoolMemory, PoolPlan, Standby
from autoscaler.daemon.acting import Acting, DryRunActuator, choose_drains
from autoscaler.daemon.actions import ActionLedger
from autoscaler.daemon.observation import Observer
from autoscaler.daemon.pacing import Pacing, pace
from autoscaler.daemon.pool_controller import PoolController
from autoscaler.daemon.publish import NoTelemetry, Publisher, TickOutcome
from autoscaler.daemon.reconcile import reconcile
from autoscaler.daemon.reconcile_restore import restore
from autoscaler.daemon.reconcile_store_age import StaleStoreNotice, compare_store_with_cluster, log_findings
from autoscaler.ports import (
    Action,
    Actuator,
    ClusterReader,
    ClusterState,
    EventSink,
    MetricsSource,
    RayNode,
    ServiceManager,
    StateJournal,
    TelemetrySink,
    WarmPool,
)
from autoscaler.types import Plan, Snapshot

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

_MIN_NUDGE_GAP_S = 0.5
_DAEMON_KEY = "daemon"
"""Key of the daemon's own part of the stored decision state (``DecisionState.from_json`` ignores it)."""


@dataclass(slots=True)
class _Memory:
    """What the last committed tick left for the next one."""

    tick: int = 0
    models: ThroughputModels = field(default_factory=ThroughputModels)
    state: DecisionState = field(default_factory=DecisionState)
    plan: Plan | None = None
    floor: dict[str, int] | None = None
    pool: PoolMemory = field(default_factory=PoolMemory)


class _TimedPolicy:
    """Times each call of the wrapped policy (the pure core has no clock, so timing lives out here)."""

    def __init__(self, inner: Policy, monotonic: Callable[[], float]) -> None:
        self.inner = inner
        self.name = inner.name
        self._monotonic = monotonic
        self.last_seconds = 0.0
        self.last_warm_pool: Mapping[str, int] | None = None
        """The policy's warm-pool override of its last call (None when it gave none or failed)."""

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        t0 = self._monotonic()
        self.last_warm_pool = None
        try:
            result = self.inner.decide(ctx)
            if isinstance(result, PolicyDecision):
                self.last_warm_pool = result.warm_pool
            return result
        finally:
            self.last_seconds = self._monotonic() - t0


@dataclass(slots=True)
class _Intent:
    """What a tick that acts means to do, before it is written ahead."""

    floor: dict[str, int] | None
    drains: list[RayNode]
    pool: PoolPlan | None
    paced_drains: frozenset[str] = frozenset()
    """The drains the plan asked for (not the warm pool's): they use the step window's drain share."""


class Daemon:
    """The autoscaling loop. Construct, ``await start()`` (load + reconcile), then ``await run()``.

    ``clock`` is wall-clock seconds (snapshot and action times), ``monotonic`` measures durations and
    waits; ``interval_seconds`` and the timeouts default to the configuration's ``daemon:`` section.
    ``dry_run`` (default: whether ``actuator`` is a :class:`DryRunActuator`) means nothing is really acted
    on. ``service`` hears when the daemon is ready, of every completed tick, and when it stops.
    """

    def __init__(
        self,
        *,
        config: Config,
        policy: Policy,
        source: MetricsSource,
        cluster: ClusterReader,
        actuator: Actuator,
        store: StateJournal,
        telemetry: TelemetrySink | None = None,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        interval_seconds: float | None = None,
        warm_pool: WarmPool | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        dry_run: bool | None = None,
        service: ServiceManager | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.interval_seconds = (
            interval_seconds if interval_seconds is not None else config.daemon.interval_seconds
        )
        if not (math.isfinite(self.interval_seconds) and self.interval_seconds > 0):
            raise ValueError(f"interval_seconds must be > 0, got {self.interval_seconds}")
        self.telemetry: TelemetrySink = telemetry if telemetry is not None else NoTelemetry()
        self.dry_run = isinstance(actuator, DryRunActuator) if dry_run is None else dry_run
        self._clock = clock
        self._monotonic = monotonic
        self._timed_policy = _TimedPolicy(policy, monotonic)
        self._store = store
        self._mem = _Memory()
        self._ledger = ActionLedger(store, clock)
        self._acting = Acting(
            actuator=actuator,
            ledger=self._ledger,
            telemetry=self.telemetry,
            act_timeout_s=config.daemon.act_timeout_seconds,
        )
        self._pool = (
            PoolController(
                config=config,
                pool=warm_pool,
                cluster=cluster,
                ledger=self._ledger,
                telemetry=self.telemetry,
                clock=clock,
                monotonic=monotonic,
            )
            if warm_pool is not None and config.warm_pool.enabled
            else None
        )
        if self._pool is not None:
            self._pool.load(self._mem.pool, ())
        self._cluster = cluster
        self._observer = Observer(config=config, source=source, cluster=cluster, pool=self._pool)
        self._publisher = Publisher(telemetry=self.telemetry, events=events, service=service)
        self._started = False
        self._stop = asyncio.Event()
        self._tick_now = asyncio.Event()
        self._pacing = Pacing(
            interval_s=self.interval_seconds,
            nudge_gap_s=min(self.interval_seconds, _MIN_NUDGE_GAP_S),
            monotonic=monotonic,
        )
        self._floor_since: dict[str, float] = {}
        """Shape → since when it has had fewer nodes than the floor and none launching (floor_watch)."""
        self._stale_store = StaleStoreNotice(None, 0.0)
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

    def nudge(self) -> bool:
        """A push from the data path (``POST /nudge``): check for waiting work and tick now, not at the next
        interval. False (nothing done) when it comes within ``_MIN_NUDGE_GAP_S`` of the last one accepted;
        the tick it adds shares the interval's step limits and drain share. Call on the event loop."""
        if not self._pacing.nudge():
            return False
        if self._pool is not None:
            self._pool.nudged()
        self._tick_now.set()
        return True

    async def start(self) -> list[str]:
        """Load the stored state, compare it with the cluster (a store older than the cluster is said so,
        and what can be adopted is) and reconcile unfinished actions; returns what reconciliation did.
        Raises ``StateError`` when the stored state cannot be used."""
        mem = self._mem
        stored = await asyncio.to_thread(self._store.load)
        if stored is not None:
            r = restore(stored, _DAEMON_KEY)
            mem.tick, mem.models, mem.state, mem.plan, mem.pool = r.tick, r.models, r.state, r.plan, r.pool
            if r.floor is not None:
                mem.floor = r.floor
        age = await compare_store_with_cluster(
            journal=self._store,
            cluster=self._cluster,
            pool=self._pool,
            config=self.config,
            floor=mem.floor,
            memory=mem.pool,
            plan=mem.plan,
            timeout_s=self.config.daemon.observe_timeout_seconds,
            compare=not self.dry_run,
        )
        log_findings(age)
        self._stale_store = StaleStoreNotice(age, self._monotonic())
        mem.pool.members.update((m.name, m) for m in age.adopt)
        mem.pool.next_serial = age.next_serial
        done = await reconcile(
            ledger=self._ledger,
            acting=self._acting,
            cluster=self._cluster,
            floor=mem.floor,
            tick=mem.tick,
            plan=mem.plan,
            observe_timeout_s=self.config.daemon.observe_timeout_seconds,
            clock=self._clock,
            found_floor=age.floor,
        )
        if done.floor is not None:
            mem.floor = done.floor
        notes = list(done.notes)
        if self._pool is not None:
            self._pool.load(mem.pool, done.pending)
            notes.extend(await self._pool.first_sync())
        self._started = True
        for note in notes:
            log.info("reconcile: %s", note)
        return notes

    async def run(self, *, max_ticks: int | None = None, install_signal_handlers: bool = True) -> None:
        """Tick every ``interval_seconds`` until stopped (SIGTERM/SIGINT or :meth:`request_stop`).

        A stop lets the current tick finish and releases nothing: the floor stays in place, so that a restart
        (or a crash) does not shrink the cluster."""
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
                started = self._monotonic()
                self._tick_now.clear()
                await self.tick()
                done += 1
                if max_ticks is not None and done >= max_ticks:
                    break
                if await self._sleep_until_tick(started):
                    self._pacing.timer_fired()
        finally:
            if claimer is not None:
                claimer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await claimer
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._publisher.stopping()
            gc.unfreeze()

    async def run_claims(self) -> None:
        """Between ticks: hand ready standby nodes to work waiting in Ray for resources, until stopped.

        :meth:`run` starts it when the warm pool is on and ``claim_waiting``; a caller driving
        :meth:`tick` itself (the demo) runs it as a task next to its ticks."""
        if self._pool is None:
            await self._stop.wait()
            return
        await self._pool.run_claims(
            stop=self._stop, tick_now=self._tick_now, idle_wait_s=self.interval_seconds
        )

    async def _sleep_until_tick(self, started: float) -> bool:
        """Sleep until the next interval, or until stopped or nudged — but a nudged tick starts no sooner
        than ``_MIN_NUDGE_GAP_S`` after the previous one (the GCS needs a moment to show what changed).
        True when the interval's timer, not a nudge, ended the sleep."""
        wait = max(0.0, self.interval_seconds - (self._monotonic() - started))
        stop = asyncio.ensure_future(self._stop.wait())
        early = asyncio.ensure_future(self._tick_now.wait())
        try:
            done, _ = await asyncio.wait({stop, early}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (stop, early):
                f.cancel()
        gap = min(self.interval_seconds, _MIN_NUDGE_GAP_S) - (self._monotonic() - started)
        if gap > 0 and not self._stop.is_set():
            await asyncio.sleep(gap)
        return early not in done

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s: finishing the current tick, then exiting (the floor stays in place)", sig.name)
        self._stop.set()

    # ------------------------------------------------------------------------------------ one tick

    async def tick(self) -> TickOutcome:
        """One observe → decide → guard → act → publish round. Never raises for cluster or metrics trouble."""
        t0 = self._monotonic()
        self._pacing.begin_tick()
        mem = self._mem
        now = self._clock()
        seen = await self._observer.observe(now)
        snapshot, cluster = seen.snapshot, seen.cluster
        if cluster is not None:
            await self._ledger.sync_from(
                cluster, now, confirm_within_s=self.config.daemon.drain_confirm_seconds
            )
        errors: list[str] = list(snapshot.errors)
        errors.extend(self._stale_store.reasons(t0))
        if cluster is not None and mem.floor is not None and not self.dry_run:
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
        tick = mem.tick + 1

        # Extra ticks (nudges) share the interval's step limits.
        window = self._pacing.see({c.shape: c.current for c in decision.plan.changes})
        plan = pace(decision.plan, snapshot.shapes, window, limits_from(self.config), self._pacing.interval_s)

        # Guard: act only on a plan made from a complete view of the cluster.
        if plan.held or cluster is None or snapshot.errors:
            intent = _Intent(floor=None if mem.floor is None else dict(mem.floor), drains=[], pool=None)
            if not plan.held:
                plan = _held(plan, "the view of the cluster is incomplete: holding it as it is")
        else:
            intent = self._intend(now, plan, snapshot, cluster, seen.hidden)
        floor_key = f"floor:{tick}"
        actions = self._write_ahead_records(intent, floor_key, now)

        # Write-ahead: the tick and the actions it is about to take, in one transaction.
        pool_before = self._pool.checkpoint() if self._pool is not None else None
        if self._pool is not None and intent.pool is not None:
            actions.extend(self._pool.intended(intent.pool, now))
        decision_state = decision.state.to_json()
        decision_state[_DAEMON_KEY] = {
            "floor": intent.floor if intent.floor is not None else mem.floor,
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
            if self._pool is not None and pool_before is not None:
                self._pool.restore(pool_before)
            errors.append(f"state store: {e}; not acting this tick")
            self.telemetry.record_actuation_error("state_store")
            outcome = TickOutcome(tick, snapshot, plan, None, errors=tuple(errors))
            return self._publish(outcome, t0, policy_s, committed=False, observed=cluster is not None)
        self._ledger.committed(actions)
        mem.tick = tick
        mem.state = decision.state
        mem.plan = plan
        outcome = await self._act(tick, snapshot, plan, intent, floor_key, now, errors, t0)
        return self._publish(outcome, t0, policy_s, committed=True, observed=cluster is not None)

    def _intend(
        self, now: float, plan: Plan, snapshot: Snapshot, cluster: ClusterState, hidden: frozenset[str]
    ) -> _Intent:
        floor = plan.targets()
        pool_plan: PoolPlan | None = None
        if self._pool is not None:
            pool_plan = self._pool.plan(now, plan, snapshot, self._timed_policy.last_warm_pool)
            floor = dict(pool_plan.floor)
        # Standby and retiring nodes are not the plan's: counting them would drain an active node.
        draining = self._ledger.draining()
        drains = choose_drains(
            plan,
            cluster,
            share=self.config.daemon.drain_share_per_tick,
            exclude=draining | hidden,
            already=self._pacing.drained,
        )
        paced = frozenset(n.node_id for n in drains)
        if self._pool is not None:
            drains.extend(
                self._pool.retired_to_drain(
                    cluster, now, exclude={n.node_id for n in drains}, draining=draining
                )
            )
        return _Intent(floor=floor, drains=drains, pool=pool_plan, paced_drains=paced)

    @staticmethod
    def _write_ahead_records(intent: _Intent, floor_key: str, now: float) -> list[Action]:
        actions: list[Action] = []
        if intent.floor is not None:
            actions.append(
                ActionLedger.intended(floor_key, "floor", payload={"counts": intent.floor}, now=now)
            )
        for node in intent.drains:
            actions.append(
                ActionLedger.intended(
                    f"drain:{node.node_id}", "drain", shape=node.node_type, node_id=node.node_id, now=now
                )
            )
        return actions

    async def _act(
        self,
        tick: int,
        snapshot: Snapshot,
        plan: Plan,
        intent: _Intent,
        floor_key: str,
        now: float,
        errors: list[str],
        t0: float,
    ) -> TickOutcome:
        """Claims first (a standby node is capacity now), then the floor, the pool's own changes, and the
        drains — only once the floor was lowered."""
        mem = self._mem
        claimed: list[str] = []
        if self._pool is not None and intent.pool is not None:
            claimed = await self._pool.claim(intent.pool, now, errors, t0)
        floor_ok = False
        if intent.floor is not None:
            floor_ok = await self._acting.set_floor(floor_key, intent.floor, errors)
            if floor_ok:
                mem.floor = dict(intent.floor)
        if self._pool is not None and intent.pool is not None:
            await self._pool.apply(intent.pool, now, errors)
        drained: list[str] = []
        refused: list[str] = []
        for node in intent.drains:
            key = f"drain:{node.node_id}"
            if not floor_ok:
                await self._ledger.move(key, "abandoned", "the floor could not be lowered first")
                continue
            answer = await self._acting.drain(key, node.node_id, errors)
            if answer != "refused" and node.node_id in intent.paced_drains:
                self._pacing.record_drain(node.node_type)
            if answer == "accepted":
                drained.append(node.node_id)
                if self._pool is not None:
                    self._pool.drained(node.node_id)
            elif answer == "refused":
                refused.append(node.node_id)
        if self._pool is not None:
            self._pool.record(intent.pool)
        return TickOutcome(
            tick=tick,
            snapshot=snapshot,
            plan=plan,
            floor=intent.floor if floor_ok else None,
            drained=tuple(drained),
            refused=tuple(refused),
            errors=tuple(errors),
            pool=intent.pool,
            claimed=tuple(claimed),
        )

    def _publish(
        self, outcome: TickOutcome, t0: float, policy_s: float, *, committed: bool, observed: bool
    ) -> TickOutcome:
        outcome = replace(outcome, duration_s=self._monotonic() - t0)
        self.last = outcome
        self._publisher.publish(outcome, policy_s=policy_s, committed=committed, observed_cluster=observed)
        return outcome


def _held(plan: Plan, why: str) -> Plan:
    changes = tuple(replace(c, target=c.current, reason=f"held: {why}") for c in plan.changes)
    return replace(plan, changes=changes, held=True, reasons=(*plan.reasons, why))
