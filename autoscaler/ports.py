"""The ports: the Protocols the daemon talks to, and the value types that cross them.

The daemon depends on these, never on an adapter; each adapter (Ray, Prometheus, SQLite, MQTT) implements
one and converts its wire types into the values here, so the loop can be driven by fakes in tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

from autoscaler.core.queries import QueryResult
from autoscaler.core.warm_pool import Standby
from autoscaler.types import Plan, Resources, Snapshot, frozen_map

# ------------------------------------------------------------------------------------------ cluster state

DemandSource = Literal["task_actor", "placement_group", "floor"]

AutoscalerVersion = Literal["v1", "v2"]


def frozen_labels(values: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True, slots=True)
class RayNode:
    """One Ray node (a raylet) as the GCS sees it."""

    node_id: str
    """Hex node id (what ``drain_node`` takes)."""
    node_type: str
    """Ray node type name (``available_node_types`` key), or ``unknown``."""
    ip: str
    status: str
    """GCS node status: ``RUNNING``, ``IDLE``, ``DRAINING`` or ``DEAD``."""
    idle_seconds: float | None
    """How long the node has had no tasks/actors/placement groups; None while it has some."""
    total: Resources = field(default_factory=frozen_map)
    available: Resources = field(default_factory=frozen_map)
    labels: Mapping[str, str] = field(default_factory=lambda: frozen_labels(None))
    instance_id: str = ""
    is_head: bool = False
    activity: tuple[str, ...] = ()
    """Why the node is busy, in Ray's words (e.g. "CPU: 1/4 in use")."""

    @property
    def alive(self) -> bool:
        return self.status != "DEAD"


@dataclass(frozen=True, slots=True)
class PendingLaunch:
    """Nodes of one type the autoscaler is launching (requested, allocating, or starting Ray)."""

    node_type: str
    count: int
    stage: str
    """``requested`` (launch asked of the cloud), ``allocating``/``starting`` and so on."""
    detail: str = ""


NODE_TYPE_RESOURCE_PREFIX = "raytide-node-type:"
"""Prefix of the per-type marker resource: a node of type ``T`` has ``{"raytide-node-type:T": 1}``;
raytide's floors and placeholders ask for it.

Ray accepts any custom resource name except ``node:__internal_head__``; ``:`` is what Ray's own
``accelerator_type:A100`` uses. Names containing ``_group_`` or starting with ``node:`` are avoided because
Ray parses those as placement-group and node-IP resources."""


def node_type_resource(node_type: str) -> str:
    """The custom resource that marks nodes of ``node_type`` (one unit per node)."""
    return f"{NODE_TYPE_RESOURCE_PREFIX}{node_type}"


@dataclass(frozen=True, slots=True)
class DemandBundle:
    """Resources someone is waiting for (or, for ``floor``, the requested minimum cluster shape)."""

    resources: Resources
    count: int
    source: DemandSource
    detail: str = ""

    @property
    def raytide_placeholder(self) -> bool:
        """Demand of raytide's own placeholders (their bundle asks for a node-type marker): not work."""
        return self.source == "placement_group" and any(
            k.startswith(NODE_TYPE_RESOURCE_PREFIX) for k in self.resources
        )


@dataclass(frozen=True, slots=True)
class LaunchFailure:
    node_type: str
    count: int
    detail: str


@dataclass(frozen=True, slots=True)
class ClusterState:
    """What the GCS said at ``time`` (unix seconds)."""

    time: float
    autoscaler_version: AutoscalerVersion
    nodes: tuple[RayNode, ...]
    pending: tuple[PendingLaunch, ...] = ()
    demand: tuple[DemandBundle, ...] = ()
    failures: tuple[LaunchFailure, ...] = ()
    notes: tuple[str, ...] = ()
    """Partial information worth logging (e.g. the v1 report was missing)."""

    @property
    def workers(self) -> tuple[RayNode, ...]:
        """Live non-head nodes."""
        return tuple(n for n in self.nodes if n.alive and not n.is_head)

    @property
    def head(self) -> RayNode | None:
        return next((n for n in self.nodes if n.is_head and n.alive), None)

    def node_counts(self) -> dict[str, int]:
        """Live worker nodes per node type (draining ones included: they still hold capacity)."""
        return dict(Counter(n.node_type for n in self.workers))

    def pending_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for p in self.pending:
            counts[p.node_type] += p.count
        return dict(counts)

    def node(self, node_id: str) -> RayNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id}")

    def idle_nodes(self, node_type: str | None = None) -> tuple[RayNode, ...]:
        return tuple(
            n for n in self.workers if n.status == "IDLE" and (node_type is None or n.node_type == node_type)
        )


# ------------------------------------------------------------------------------------------ actions

ActionStatus = Literal["intended", "sent", "confirmed", "failed", "abandoned"]

ActionKind = Literal["floor", "release", "drain", "warm", "unwarm"]
"""``floor``: set the autoscaler's resource floor; ``release``: withdraw it; ``drain``: drain an idle node;
``warm``/``unwarm``: add or remove a standby (warm-pool) placement group."""

PENDING_STATUSES: tuple[ActionStatus, ...] = ("intended", "sent")
FINISHED_STATUSES: tuple[ActionStatus, ...] = ("confirmed", "failed", "abandoned")


@dataclass(frozen=True, slots=True)
class Action:
    """One thing the daemon does to the cluster, recorded before and after it is done."""

    key: str
    """Deterministic, so a retry or a restarted daemon finds the same row: ``drain:<node id>``,
    ``floor:<tick>``."""
    kind: ActionKind
    shape: str | None
    node_id: str | None
    payload: Mapping[str, Any]
    """What was asked for (counts, bundles, ...): what a reconciler needs to check or re-assert it."""
    status: ActionStatus
    created: float
    updated: float
    detail: str = ""
    """Why it failed, Ray's refusal message, what reconciliation found."""
    attempts: int = 1
    """How often :meth:`StateStore.begin_action` started it."""

    @property
    def pending(self) -> bool:
        return self.status in PENDING_STATUSES


@dataclass(frozen=True, slots=True)
class StoredState:
    """What the last committed tick left for the next one."""

    tick: int
    time: float
    models: Mapping[str, Any]
    """``ThroughputModels.to_json()`` as committed; restore with ``ThroughputModels.from_json``."""
    decision_state: Mapping[str, Any]
    """``DecisionState.to_json()`` as committed; restore with ``DecisionState.from_json``."""
    plan: Plan
    pending_actions: tuple[Action, ...] = field(default_factory=tuple)
    """Actions intended or sent and not finished, oldest first (the same as ``pending_actions()``)."""


class StateError(RuntimeError):
    """The daemon's stored state cannot be used (unreadable, damaged, or written by a newer raytide); the
    message says what and what to do. ``StateStoreError`` is one."""


PreviousRun = Literal["none", "clean", "unclean", "log_lost"]
"""How the journal's previous run ended: ``none`` (no run recorded), ``clean`` (closed), ``unclean`` (killed
or crashed; everything it committed was found) or ``log_lost`` (killed or crashed, and what it committed
after its last checkpoint is gone: the journal is older than what that run did)."""


@dataclass(frozen=True, slots=True)
class JournalOpening:
    """What a journal found of its previous run when a daemon began one (:meth:`JournalHistory.begin_run`)."""

    previous: PreviousRun
    detail: str = ""
    """One line for the log: which run, since when, what is lost (empty for ``none`` and ``clean``)."""


HealthState = Literal["starting", "ok", "degraded", "stopping"]


@dataclass(frozen=True, slots=True)
class DrainResult:
    node_id: str
    accepted: bool
    message: str = ""
    """Ray's rejection reason (e.g. "The node to be idle terminated is no longer idle.")."""


@dataclass(frozen=True, slots=True)
class Placeholder:
    """A raytide placeholder as the GCS has it."""

    name: str
    shape: str
    pg_id: str
    state: str
    """PENDING (waiting for a node), CREATED (holding one), RESCHEDULING (its node died)."""
    node_id: str | None

    def as_standby(self) -> Standby:
        return Standby(self.name, self.shape, self.node_id if self.state == "CREATED" else None, self.pg_id)


# ------------------------------------------------------------------------------------------ protocols


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


class WarmPool(Protocol):
    """``RayWarmPool`` is one. Blocking; raises when the cluster cannot be asked."""

    def list(self) -> Sequence[Placeholder]: ...

    def create(self, name: str, shape: str) -> bool: ...

    def remove(self, name: str, pg_id: str | None = None) -> bool: ...


class StateJournal(Protocol):
    """Where the daemon keeps what a restart needs, and writes ahead every action it takes (``StateStore``
    is one). Blocking; raises when the state cannot be read or written."""

    def load(self) -> StoredState | None: ...

    def commit_tick(
        self,
        *,
        tick: int,
        time: float,
        models: Mapping[str, Any],
        decision_state: Mapping[str, Any],
        plan: Plan,
        snapshot: Snapshot,
        reasons: Sequence[str] = (),
        actions: Sequence[Action] = (),
    ) -> None:
        """The tick, its decision and the actions it is about to take (``intended``), in one transaction."""

    def begin_action(
        self,
        key: str,
        *,
        kind: ActionKind,
        shape: str | None = None,
        node_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
        time: float | None = None,
    ) -> Action:
        """Record ``key`` as ``intended`` (again, for a retry) before the actuator is called."""

    def finish_action(
        self, key: str, status: ActionStatus, detail: str = "", *, time: float | None = None
    ) -> Action: ...

    def pending_actions(self) -> tuple[Action, ...]:
        """Actions intended or sent and never finished, oldest first."""


@runtime_checkable
class JournalHistory(Protocol):
    """What a journal can tell of its own past, beyond :class:`StateJournal` (``StateStore`` can): read at
    start-up to notice a journal that is older than the cluster. Optional: a daemon whose journal lacks it
    compares nothing. Blocking; raises when the journal cannot be read."""

    def begin_run(self) -> JournalOpening:
        """Record that a daemon runs on this journal from now on (until it is closed); returns how the
        previous run ended."""

    def recorded_floors(self) -> tuple[Mapping[str, int], ...]:
        """Every distinct floor (shape → nodes) the journal still has a ``floor`` action for."""

    def action(self, key: str) -> Action | None:
        """The action recorded under ``key`` (pending or finished), None when there is none."""


class TelemetrySink(Protocol):
    """Where the daemon reports its ticks, its warm pool, actuation errors and its health (``Telemetry``
    is one). Never blocks."""

    def record_tick(
        self, duration_s: float, plan: Plan, snapshot: Snapshot, policy_seconds: float
    ) -> None: ...

    def record_pool(
        self,
        ready: Mapping[str, int],
        waiting: Mapping[str, int],
        targets: Mapping[str, int],
        cost_per_hour: float,
    ) -> None: ...

    def pool_claimed(self, shape: str, trigger: str, latency_s: float | None) -> None: ...

    def pool_missed(self, shape: str, nodes: int) -> None: ...

    def record_actuation_error(self, kind: str) -> None: ...

    def set_health(self, state: HealthState, reasons: Iterable[str] = ()) -> None: ...


class EventSink(Protocol):
    """``EventPublisher`` is one."""

    def publish_decision(self, plan: Plan) -> bool: ...

    def publish_health(self, state: str, reasons: Iterable[str] = ()) -> bool: ...


class ServiceManager(Protocol):
    """The service manager raytide runs under (systemd's notify protocol, for one); a no-op elsewhere.

    The daemon calls ``ready`` once its first tick has observed the cluster, ``status`` and ``watchdog``
    after every tick that completed (never from a timer: a stuck tick must stop the pings), and
    ``stopping`` when it shuts down. Implementations never raise and never block.
    """

    def ready(self) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def stopping(self) -> None: ...
