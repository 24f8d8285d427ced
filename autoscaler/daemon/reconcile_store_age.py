"""Start-up: is the state store older than the cluster? A store that lost its ``-wal`` file, was restored
from a copy or replaced is behind what raytide did; started as new, it would forget the floor it set and
remove its own placeholders as orphans.

Evidence: the journal says the previous run's log is gone; raytide's floor in the cluster (its node-type
marker resources) is none the store recorded; raytide placeholders the store neither counts as members nor
has an action for. Found any, the store is older: that is logged as a warning naming what was found, shown as
a degraded reason for a while (:class:`StaleStoreNotice`), and what can be adopted safely is: the floor in the
cluster (re-asserting it changes nothing), and the unknown placeholders of shapes the warm pool keeps standby
nodes of (those of other shapes are surplus, removed as orphans as before). A label-form floor has no
markers, so it cannot be compared.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from autoscaler.core.config import Config
from autoscaler.core.warm_pool import PoolMemory, Standby, parse_standby_name, pool_targets
from autoscaler.daemon.calls import describe
from autoscaler.daemon.pool_controller import PoolController
from autoscaler.ports import (
    NODE_TYPE_RESOURCE_PREFIX,
    Action,
    ClusterReader,
    ClusterState,
    JournalHistory,
    JournalOpening,
    Placeholder,
    StateJournal,
)
from autoscaler.types import Plan

__all__ = [
    "DEGRADED_SECONDS",
    "StaleStoreNotice",
    "StoreAge",
    "cluster_floor",
    "compare_store_with_cluster",
    "log_findings",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEGRADED_SECONDS = 300.0
"""How long ``/readyz`` says the store was older than the cluster: long enough for probes and a scrape to
see it, shorter than the alert's ``for:`` so that a restart alone does not page anyone."""

_SHOWN = 5
"""Names listed in a finding before "and N more"."""


@dataclass(frozen=True, slots=True)
class StoreAge:
    """What the start-up comparison found and what the daemon should take over."""

    opening: JournalOpening | None
    """How the journal's previous run ended (None: the journal cannot say)."""
    findings: tuple[str, ...] = ()
    """Why the store is older than the cluster, one line each; empty when nothing says so."""
    floor: dict[str, int] | None = None
    """The cluster's floor, to re-assert instead of the stored one (only when the store is older)."""
    adopt: tuple[Standby, ...] = ()
    """Placeholders to take into the warm pool's membership."""
    next_serial: int = 1
    """The pool's next placeholder serial: above every raytide placeholder listed, so no name is reused."""
    notes: tuple[str, ...] = ()
    """Other things worth a log line (the cluster could not be read, nodes draining unrecorded)."""

    @property
    def older(self) -> bool:
        return bool(self.findings)

    def warning(self) -> str:
        adopted = []
        if self.floor is not None:
            adopted.append(f"the floor {self.floor}")
        if self.adopt:
            adopted.append(f"placeholders {_names(m.name for m in self.adopt)}")
        return (
            "the state store is older than the cluster: " + "; ".join(self.findings) + ". Not starting as "
            "new: " + (f"adopted {' and '.join(adopted)}" if adopted else "nothing to adopt")
        )


class StaleStoreNotice:
    """The degraded reason a start that found the store older shows for :data:`DEGRADED_SECONDS`."""

    def __init__(self, age: StoreAge | None, since: float) -> None:
        self._reason = None
        if age is not None and age.older:
            more = f" (and {len(age.findings) - 1} more: see the log)" if len(age.findings) > 1 else ""
            self._reason = f"state store older than the cluster at start-up: {age.findings[0]}{more}"
        self._until = since + DEGRADED_SECONDS

    def reasons(self, now: float) -> list[str]:
        """``now``: the daemon's monotonic clock."""
        if self._reason is None:
            return []
        if now >= self._until:
            self._reason = None
            return []
        return [self._reason]


async def compare_store_with_cluster(
    *,
    journal: StateJournal,
    cluster: ClusterReader,
    pool: PoolController | None,
    config: Config,
    floor: Mapping[str, int] | None,
    memory: PoolMemory,
    plan: Plan | None,
    timeout_s: float,
    compare: bool,
) -> StoreAge:
    """Begin the journal's run and compare what the store knows (``floor``, ``memory``, ``plan``: the last
    committed tick's) with what the cluster shows. ``compare`` False (a dry run) only begins the run."""
    history = journal if isinstance(journal, JournalHistory) else None
    opening = await asyncio.to_thread(history.begin_run) if history is not None else None
    findings: list[str] = []
    if opening is not None and opening.previous == "log_lost":
        findings.append("the previous run's write-ahead log is gone")
    if history is None or not compare:
        return StoreAge(opening, tuple(findings), next_serial=memory.next_serial)

    notes: list[str] = []
    state = await _read(asyncio.to_thread(cluster), timeout_s, "the cluster", notes)
    listing: Sequence[Placeholder] = ()
    if pool is not None:
        listing = await _read(pool.listing(), timeout_s, "the warm pool's placeholders", notes) or ()
    pending = await asyncio.to_thread(journal.pending_actions)

    in_cluster = cluster_floor(state) if state is not None else {}
    if in_cluster:
        known = await asyncio.to_thread(_known_floors, history, floor, pending)
        if frozenset(in_cluster.items()) not in known:
            last = "none" if floor is None else str(_nonzero(floor))
            findings.append(
                f"raytide's floor in the cluster, {in_cluster}, is none the store recorded (last: {last})"
            )
    unknown = await asyncio.to_thread(_unknown_placeholders, history, listing, memory, pending)
    if unknown:
        above = [p for p in unknown if _serial(p) >= memory.next_serial]
        counter = f"; {len(above)} above its counter {memory.next_serial}" if above else ""
        findings.append(f"placeholders the store does not know: {_names(p.name for p in unknown)}{counter}")
    next_serial = max([memory.next_serial, *(_serial(p) + 1 for p in listing)])
    if not findings:
        return StoreAge(opening, notes=tuple(notes), next_serial=next_serial)

    adopted_floor = None
    if in_cluster:
        adopted_floor = {s.name: in_cluster.get(s.name, 0) for s in config.node_shapes()}
        dropped = sorted(set(in_cluster) - set(adopted_floor))
        if dropped:
            notes.append(f"the cluster's floor names shapes not configured, left out: {', '.join(dropped)}")
    targets = pool_targets(config, memory, plan.targets() if plan is not None else {})
    adopt = tuple(p.as_standby() for p in unknown if targets.counts.get(p.shape, 0) > 0)
    if state is not None:
        notes.extend(await asyncio.to_thread(_unrecorded_drains, history, state, pending))
    return StoreAge(opening, tuple(findings), adopted_floor, adopt, next_serial, tuple(notes))


def cluster_floor(state: ClusterState) -> dict[str, int]:
    """raytide's floor as the cluster shows it: nodes per shape its marker-resource bundles ask for."""
    counts: dict[str, int] = {}
    for d in state.demand:
        if d.source != "floor":
            continue
        for key in d.resources:
            if key.startswith(NODE_TYPE_RESOURCE_PREFIX) and d.count > 0:
                shape = key[len(NODE_TYPE_RESOURCE_PREFIX) :]
                counts[shape] = counts.get(shape, 0) + d.count
    return counts


async def _read(aw: Awaitable[_T], timeout_s: float, what: str, notes: list[str]) -> _T | None:
    try:
        return await asyncio.wait_for(aw, timeout=timeout_s)
    except Exception as e:
        notes.append(f"cannot read {what} to compare it with the state store ({describe(e)})")
        return None


def _known_floors(
    history: JournalHistory, floor: Mapping[str, int] | None, pending: Iterable[Action]
) -> set[frozenset[tuple[str, int]]]:
    known = {frozenset(_nonzero(f).items()) for f in history.recorded_floors()}
    if floor is not None:
        known.add(frozenset(_nonzero(floor).items()))
    for a in pending:
        counts = a.payload.get("counts") if a.kind == "floor" else None
        if isinstance(counts, Mapping):
            known.add(frozenset(_nonzero(counts).items()))
    return known


def _unknown_placeholders(
    history: JournalHistory, listing: Sequence[Placeholder], memory: PoolMemory, pending: Iterable[Action]
) -> list[Placeholder]:
    named = {a.payload.get("name") for a in pending if a.kind in ("warm", "unwarm")}
    return [
        p
        for p in listing
        if p.name not in memory.members
        and p.name not in named
        and history.action(f"warm:{p.name}") is None
        and history.action(f"unwarm:{p.name}") is None
    ]


def _unrecorded_drains(history: JournalHistory, state: ClusterState, pending: Iterable[Action]) -> list[str]:
    drained = {a.node_id for a in pending if a.kind == "drain"}
    ids = [
        n.node_id
        for n in state.workers
        if n.status == "DRAINING"
        and n.node_id not in drained
        and history.action(f"drain:{n.node_id}") is None
    ]
    if not ids:
        return []
    return [
        f"nodes draining with no drain recorded (a drain of raytide's the store lost, or Ray's own idle "
        f"termination), left to finish: {_names(ids)}"
    ]


def _nonzero(counts: Mapping[str, object]) -> dict[str, int]:
    return {str(k): v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}


def _serial(p: Placeholder) -> int:
    parsed = parse_standby_name(p.name)
    return parsed[1] if parsed is not None else 0


def _names(names: Iterable[str]) -> str:
    shown = sorted(names)
    text = ", ".join(shown[:_SHOWN])
    return text + (f" and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else "")


def log_findings(age: StoreAge) -> None:
    """Log how the previous run ended and, when the store is older, the warning."""
    if age.opening is not None and age.opening.previous in ("unclean", "log_lost"):
        log.warning("state store: %s", age.opening.detail)
    if age.older:
        log.warning("%s", age.warning(), extra={"findings": list(age.findings)})
    for note in age.notes:
        log.info("state store: %s", note)
