"""The daemon behind ``raytide run``: one tick = observe → decide → guard → act → publish, every interval.

**Observe.** The metrics source (Prometheus, or the embedded scrape of Ray's exporters) answers the observe
templates and :func:`autoscaler.observe.build_snapshot` turns them into a ``Snapshot``; the cluster state
from the GCS is joined in and is authoritative for node counts, pending launches, which nodes exist and how
long each has been idle. A failure of either (unreachable, slower than ``observe_timeout_seconds``, garbage)
becomes ``Snapshot.errors``: the decision then holds.

**Decide.** :func:`autoscaler.decision.decide` with the models and decision state the store kept.

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
from typing import Any, Protocol, TypeVar

from autoscaler.config import Config
from autoscaler.decision import Decision, DecisionState, decide
from autoscaler.observe import OBSERVE_TEMPLATES, build_snapshot
from autoscaler.policy import Policy, PolicyContext, PolicyDecision
from autoscaler.queries import QueryResult, make_sample
from autoscaler.ray_actuator import DrainResult
from autoscaler.ray_state import ClusterState, RayNode
from autoscaler.state_store import Action, ActionKind, StateStore
from autoscaler.telemetry import Telemetry
from autoscaler.throughput import ThroughputModels
from autoscaler.types import Node, Plan, Snapshot, frozen_map

__all__ = [
    "Actuator",
    "ClusterReader",
    "Daemon",
    "DryRunActuator",
    "EventSink",
    "MetricsSource",
    "TickOutcome",
    "choose_drains",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_DAEMON_KEY = "daemon"
"""Key of the daemon's own part of the stored decision state (``DecisionState.from_json`` ignores it)."""


# ------------------------------------------------------------------------------------------ adapters


class MetricsSource(Protocol):
    """``PrometheusSource`` and ``RayExporterSource`` are metrics sources."""

    async def query_templates(
        self, names: Iterable[str] | None = None, *, at: float | None = None
    ) -> dict[str, QueryResult]: ...


class ClusterReader(Protocol):
    """Reads the cluster state from the GCS. Blocking; raises on any failure."""

    def __call__(self) -> ClusterState: ...


class Actuator(Protocol):
    """``RayActuator`` is one. Blocking; raises when the cluster cannot be asked."""

    def set_target(self, counts: Mapping[str, int]) -> object: ...

    def drain(self, node_id: str) -> DrainResult: ...


class EventSink(Protocol):
    """``EventPublisher`` is one."""

    def publish_decision(self, plan: Plan) -> bool: ...

    def publish_health(self, state: str, reasons: Iterable[str] = ()) -> bool: ...


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


def _join_cluster(snapshot: Snapshot, cluster: ClusterState) -> Snapshot:
    """Nodes from the GCS (ids, types, idle times) with utilization from the metrics, matched by IP."""
    by_ip: dict[str, Node] = {}
    for n in snapshot.nodes:
        by_ip[n.node_id.rsplit("/", 1)[-1].rsplit(":", 1)[0]] = n
    nodes = []
    for rn in cluster.workers:
        metric = by_ip.get(rn.ip)
        node = Node(node_id=rn.node_id, shape=rn.node_type, idle_seconds=rn.idle_seconds)
        if metric is not None:
            node = replace(
                node, cpu_utilization=metric.cpu_utilization, gpu_utilization=metric.gpu_utilization
            )
        nodes.append(node)
    demand = tuple(
        frozen_map(d.resources) for d in cluster.demand if d.source != "floor" for _ in range(max(0, d.count))
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
    errors: tuple[str, ...] = ()
    """Everything that went wrong: observation errors and actuation failures."""
    duration_s: float = 0.0

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


class _TimedPolicy:
    """Times each call of the wrapped policy (the pure core has no clock, so timing lives out here)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.last_seconds = 0.0

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        t0 = time.perf_counter()
        try:
            return self.inner.decide(ctx)
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
        self.last: TickOutcome | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    @property
    def tick_number(self) -> int:
        return self._mem.tick

    @property
    def floor(self) -> dict[str, int] | None:
        return None if self._mem.floor is None else dict(self._mem.floor)

    def request_stop(self) -> None:
        """Finish the current tick (if any) and return from :meth:`run`."""
        self._stop.set()

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
        notes = await self._reconcile()
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
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                await self.tick()
                done += 1
                if max_ticks is not None and done >= max_ticks:
                    break
                wait = max(0.0, self.interval_seconds - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=wait)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.telemetry.set_health("stopping", ["the daemon is stopping"])
            if self._events is not None:
                self._events.publish_health("stopping", ["the daemon is stopping"])
            gc.unfreeze()

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

        decision: Decision = decide(snapshot, self.config, mem.models, self._timed_policy, mem.state)
        policy_s = self._timed_policy.last_seconds
        plan = decision.plan
        tick = mem.tick + 1

        # Guard: act only on a plan made from a complete view of the cluster.
        hold = plan.held or cluster is None or bool(snapshot.errors)
        floor: dict[str, int] | None
        drains: list[RayNode] = []
        if hold:
            floor = None if mem.floor is None else dict(mem.floor)
            if not plan.held:
                plan = _held(plan, "the view of the cluster is incomplete: holding it as it is")
        else:
            floor = plan.targets()
            assert cluster is not None
            drains = choose_drains(
                plan, cluster, share=self.config.daemon.drain_share_per_tick, exclude=self._draining()
            )
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

        # Write-ahead: the tick and the actions it is about to take, in one transaction.
        decision_state = decision.state.to_json()
        decision_state[_DAEMON_KEY] = {"floor": floor if floor is not None else mem.floor}
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
            errors.append(f"state store: {e}; not acting this tick")
            self.telemetry.record_actuation_error("state_store")
            return self._publish(tick, snapshot, plan, None, (), (), errors, t0, policy_s, commit=False)
        mem.tick = tick
        mem.state = decision.state
        mem.plan = plan

        floor_ok = False
        if floor is not None:
            floor_ok = await self._set_floor(floor_key, floor, errors)
            if floor_ok:
                mem.floor = dict(floor)
        drained: list[str] = []
        refused: list[str] = []
        for node in drains:
            key = f"drain:{node.node_id}"
            if not floor_ok:
                await self._finish(key, "abandoned", "the floor could not be lowered first")
                continue
            accepted = await self._drain(key, node.node_id, errors)
            (drained if accepted else refused).append(node.node_id)
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
        )

    # ------------------------------------------------------------------------------------ observe

    async def _observe(self, now: float) -> tuple[Snapshot, ClusterState | None]:
        timeout = self.config.daemon.observe_timeout_seconds
        metrics_task = asyncio.ensure_future(
            _within(self._source.query_templates(OBSERVE_TEMPLATES), timeout, "metrics source")
        )
        cluster_task = asyncio.ensure_future(
            _within(asyncio.to_thread(self._cluster), timeout, "Ray GCS (cluster state)")
        )
        results_or_error = await metrics_task
        cluster_or_error = await cluster_task
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
        cluster: ClusterState | None = None
        if isinstance(cluster_or_error, str):
            extra.append(cluster_or_error)
        elif not isinstance(cluster_or_error, ClusterState):
            extra.append(f"Ray GCS (cluster state): unreadable answer {type(cluster_or_error).__name__}")
        else:
            cluster = cluster_or_error
            # The GCS is authoritative for counts: the autoscaler metrics lag and may be missing.
            names = [s.name for s in self.config.shapes]
            results["nodes_active"] = _counts_result(_for_shapes(names, cluster.node_counts()), now)
            results["nodes_pending"] = _counts_result(_for_shapes(names, cluster.pending_counts()), now)
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
            snapshot = _join_cluster(snapshot, cluster)
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

    async def _drain(self, key: str, node_id: str, errors: list[str]) -> bool:
        try:
            result = await self._act(lambda: self._actuator.drain(node_id))
        except TimeoutError:
            # Ray may have accepted it: check on the next ticks whether the node goes.
            errors.append(f"drain of {node_id} timed out; checking whether the node goes")
            self.telemetry.record_actuation_error("drain")
            await self._finish(key, "sent", "timed out; outcome unknown")
            self._mem.sent[key] = _SentDrain(key, node_id, self._clock())
            return False
        except Exception as e:
            msg = f"drain of {node_id} failed: {_describe(e)}"
            errors.append(msg)
            self.telemetry.record_actuation_error("drain")
            await self._finish(key, "failed", msg)
            return False
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
            },
        )
        return outcome

    # ------------------------------------------------------------------------------------ restart

    async def _reconcile(self) -> list[str]:
        pending = await asyncio.to_thread(self._store.pending_actions)
        notes: list[str] = []
        floors = [a for a in pending if a.kind == "floor"]
        drains = [a for a in pending if a.kind == "drain"]
        others = [a for a in pending if a.kind not in ("floor", "drain")]
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
