"""Observing: the metrics, the GCS's cluster state and the warm pool's placeholders, read side by side within
the observe timeout and joined into one ``Snapshot``.

The GCS is authoritative for node counts, pending launches, which nodes exist and how long each has been
idle (the autoscaler metrics lag and may be missing); utilization comes from the metrics, matched by IP.
Whatever could not be read becomes ``Snapshot.errors``, and the decision then holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from autoscaler.core.config import Config
from autoscaler.core.observe import OBSERVE_TEMPLATES, build_snapshot
from autoscaler.core.queries import QueryResult, make_sample
from autoscaler.daemon.calls import Answered, NoAnswer, within
from autoscaler.daemon.pool_controller import PoolController
from autoscaler.ports import ClusterReader, ClusterState, MetricsSource
from autoscaler.types import Node, Snapshot, frozen_map

__all__ = ["Observation", "Observer", "join_cluster"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Observation:
    snapshot: Snapshot
    cluster: ClusterState | None
    """None when the GCS could not be read (the snapshot's errors say why)."""
    hidden: frozenset[str] = frozenset()
    """Standby and retiring nodes of the warm pool: not the plan's capacity."""


class Observer:
    """Reads the metrics source, the GCS and (when there is one) the warm pool for one tick."""

    def __init__(
        self,
        *,
        config: Config,
        source: MetricsSource,
        cluster: ClusterReader,
        pool: PoolController | None,
    ) -> None:
        self.config = config
        self._source = source
        self._cluster = cluster
        self._pool = pool

    async def observe(self, now: float) -> Observation:
        timeout = self.config.daemon.observe_timeout_seconds
        metrics_task = asyncio.ensure_future(
            within(self._source.query_templates(OBSERVE_TEMPLATES), timeout, "metrics source")
        )
        cluster_task = asyncio.ensure_future(
            within(asyncio.to_thread(self._cluster), timeout, "Ray GCS (cluster state)")
        )
        pool_task = (
            asyncio.ensure_future(within(self._pool.listing(), timeout, "warm pool (placement groups)"))
            if self._pool is not None
            else None
        )
        metrics = await metrics_task
        cluster_answer = await cluster_task
        listing = await pool_task if pool_task is not None else None

        errors: list[str] = []
        results = _query_results(metrics, errors)
        listing_ok = True
        if isinstance(listing, NoAnswer):
            errors.append(listing.reason)
            listing_ok = False
        elif listing is not None and self._pool is not None:
            for note in await self._pool.settle(listing.value, now):
                log.info("warm pool: %s", note)

        cluster: ClusterState | None = None
        hidden: frozenset[str] = frozenset()
        if isinstance(cluster_answer, NoAnswer):
            errors.append(cluster_answer.reason)
        elif not isinstance(cluster_answer.value, ClusterState):
            errors.append(f"Ray GCS (cluster state): unreadable answer {type(cluster_answer.value).__name__}")
        else:
            cluster = cluster_answer.value
            names = [s.name for s in self.config.shapes]
            live, pending = cluster.node_counts(), cluster.pending_counts()
            if self._pool is not None and listing_ok:
                view = self._pool.view(now, cluster, names)
                live, pending, hidden = view.live, view.pending, view.hidden
            results["nodes_active"] = _counts_result(_for_shapes(names, live), now)
            results["nodes_pending"] = _counts_result(_for_shapes(names, pending), now)

        snapshot = self._snapshot(now, results, errors)
        if cluster is not None:
            snapshot = join_cluster(snapshot, cluster, hidden)
        if errors:
            snapshot = replace(snapshot, errors=(*errors, *snapshot.errors))
        return Observation(snapshot, cluster, hidden)

    def _snapshot(self, now: float, results: dict[str, QueryResult], errors: list[str]) -> Snapshot:
        try:
            return build_snapshot(self.config, now, results)
        except Exception as e:  # a bug or garbage observe could not turn into unknowns: hold, don't crash
            log.exception("observe failed")
            errors.append(f"observe failed: {type(e).__name__}: {e}")
            return build_snapshot(
                self.config,
                now,
                {n: QueryResult.failed("", f"observe failed: {e}") for n in OBSERVE_TEMPLATES},
            )


def join_cluster(snapshot: Snapshot, cluster: ClusterState, hidden: frozenset[str] = frozenset()) -> Snapshot:
    """Nodes from the GCS (ids, types, idle times) with utilization from the metrics, matched by IP, and the
    demand waiting in Ray. ``hidden`` nodes (standby and retiring ones) are left out."""
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
        if d.source != "floor" and not d.raytide_placeholder
        for _ in range(max(0, d.count))
    )
    return replace(snapshot, nodes=tuple(nodes), pending_demand=demand)


def _query_results(answer: Answered[object] | NoAnswer, errors: list[str]) -> dict[str, QueryResult]:
    """The observe templates' answers; a failed or garbled source makes every one of them failed."""
    if isinstance(answer, NoAnswer):
        errors.append(answer.reason)
        return {name: QueryResult.failed("", answer.reason) for name in OBSERVE_TEMPLATES}
    if not isinstance(answer.value, Mapping):
        msg = f"metrics source answered {type(answer.value).__name__}, not query results"
        errors.append(msg)
        return {name: QueryResult.failed("", msg) for name in OBSERVE_TEMPLATES}
    return {
        k: v if isinstance(v, QueryResult) else QueryResult.failed("", f"garbage answer {v!r:.80}")
        for k, v in answer.value.items()
    }


def _counts_result(counts: Mapping[str, int], now: float) -> QueryResult:
    """GCS counts in the shape of the ``nodes_active``/``nodes_pending`` answers observe reads."""
    return QueryResult(
        query="(GCS cluster state)",
        samples=tuple(make_sample({"NodeType": k}, float(v), now) for k, v in sorted(counts.items())),
    )


def _for_shapes(names: Iterable[str], counts: Mapping[str, int]) -> dict[str, int]:
    return {**{n: 0 for n in names}, **counts}
