"""Turn Prometheus query results into one ``Snapshot`` — a pure function, no I/O, no clock.

"No data" never looks like "no load": a failed query, a missing series, a non-finite or negative value or a
stale stage makes that reading unknown with the reason, and every problem goes to ``Snapshot.errors`` in
words a person can act on (the rules: docs/architecture.md, "Observing"). Units: backlog in blocks,
throughput and arrival in blocks per second, node utilization in percent (0–100, as Ray reports it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from types import MappingProxyType

from autoscaler.core.config import Config, StageConfig
from autoscaler.core.queries import QueryResult, Sample
from autoscaler.types import Node, NodeShape, Reading, Snapshot, StageObservation, frozen_map

__all__ = ["NODE_SHAPE_LABELS", "OBSERVE_TEMPLATES", "attribute_slots", "build_snapshot", "slots_per_node"]

STAGE_TEMPLATES = ("stage_backlog", "stage_throughput", "stage_arrival", "stage_slots")
OBSERVE_TEMPLATES = (
    *STAGE_TEMPLATES,
    "stage_freshness",
    "nodes_active",
    "nodes_pending",
    "node_cpu_utilization",
    "node_gpu_utilization",
    "targets_down",
)
"""The templates ``build_snapshot`` reads; query at least these."""

NODE_SHAPE_LABELS = ("NodeType", "node_type", "ray_io_node_group")
"""Labels that give a node's shape when their value is a configured shape: Ray's node metrics carry only
``ip`` and ``RayNodeType`` (``head`` or ``worker``), so without one ``Node.shape`` is ``""`` (not known)."""

_READING_OF = {
    "stage_backlog": "backlog",
    "stage_throughput": "throughput",
    "stage_arrival": "arrival rate",
    "stage_slots": "busy slots",
}


def slots_per_node(need: Mapping[str, float], shape: NodeShape) -> int:
    """How many slots needing ``need`` fit on one empty node of ``shape``."""
    fits = [math.floor(shape.capacity(r) / amount + 1e-9) for r, amount in need.items() if amount > 0]
    return max(0, min(fits)) if fits else 0


def attribute_slots(
    busy: float, need: Mapping[str, float], shapes: Sequence[NodeShape], node_counts: Mapping[str, int]
) -> dict[str, float]:
    """Split a stage's busy slots over node shapes in proportion to each shape's capacity for that stage.

    This is an approximation: Ray Data's metrics do not say which node a task runs on, so the busy slots are
    assumed to spread like the capacity that could host them (running nodes of a shape × slots of this stage
    that fit on one node of it). It is exact when only one shape can host the stage, and it may be wrong when
    Ray's scheduler packs a stage onto one shape. Returns ``{}`` when no running node can host the stage.
    """
    capacity = {s.name: node_counts.get(s.name, 0) * slots_per_node(need, s) for s in shapes}
    total = sum(capacity.values())
    if total <= 0:
        return {}
    return {name: busy * cap / total for name, cap in capacity.items() if cap > 0}


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)


def _result(results: Mapping[str, QueryResult], name: str) -> QueryResult:
    found = results.get(name)
    if found is None:
        return QueryResult.failed("", "not queried")
    return found


def _stage_name(config: Config, dataset: str, operator: str) -> str:
    for profile in config.stages:
        if _profile_matches(profile, dataset, operator):
            return profile.name
    return operator


def _profile_matches(profile: StageConfig, dataset: str, operator: str) -> bool:
    if not profile.operator_pattern().search(operator):
        return False
    ds = profile.dataset_pattern()
    return ds is None or ds.search(dataset) is not None


@dataclass
class _Series:
    """The samples of one template for one stage (one per dataset/operator pair)."""

    samples: list[tuple[str, Sample]] = field(default_factory=list)


def _group_by_stage(
    config: Config, name: str, result: QueryResult, problems: _Problems
) -> dict[str, _Series]:
    ignore = re.compile(config.ignore_operators)
    out: dict[str, _Series] = {}
    unlabelled = 0
    # Prometheus returns series in no particular order; sorting keeps sums and snapshots reproducible.
    ordered = sorted(
        result.samples, key=lambda s: (s.labels.get("dataset", ""), s.labels.get("operator", ""))
    )
    for sample in ordered:
        operator = sample.labels.get("operator")
        if operator is None:
            unlabelled += 1
            continue
        if ignore.search(operator):
            continue
        dataset = sample.labels.get("dataset", "")
        stage = _stage_name(config, dataset, operator)
        out.setdefault(stage, _Series()).samples.append((f"{dataset}/{operator}", sample))
    if unlabelled:
        problems.add(f"{name}: {unlabelled} series without an 'operator' label were ignored")
    return out


def _sum_reading(what: str, series: _Series) -> Reading:
    total = 0.0
    for where, sample in series.samples:
        if not sample.value.known:
            return Reading.unknown(f"{what} of {where}: {sample.value.reason}")
        total += sample.value.get()
    return Reading.of(total)


def _check_non_negative(what: str, reading: Reading) -> Reading:
    if reading.known and reading.get() < 0:
        return Reading.unknown(f"negative {what} ({reading.get():g}) contradicts itself")
    return reading


def _stage_reading(
    stage: str, name: str, results: Mapping[str, QueryResult], grouped: Mapping[str, Mapping[str, _Series]]
) -> Reading:
    what = _READING_OF[name]
    result = _result(results, name)
    if result.error is not None:
        return Reading.unknown(f"{name} query failed: {result.error}")
    series = grouped[name].get(stage)
    if series is None:
        return Reading.unknown(f"no series for stage {stage!r} in {name}")
    reading = _sum_reading(what, series)
    if name == "stage_arrival":
        # A draining queue makes throughput + deriv negative; the arrival itself is then ~0.
        return Reading(max(0.0, reading.get())) if reading.known else reading
    return _check_non_negative(what, reading)


def _staleness(
    stage: str, freshness: QueryResult, grouped: Mapping[str, _Series], limit: float, problems: _Problems
) -> str | None:
    """The reason the stage is stale, or None. Any stale part makes the whole stage stale: a sum over a
    fresh and a frozen dataset is neither."""
    if freshness.error is not None:
        return None
    series = grouped.get(stage)
    if series is None:
        problems.add(f"stage {stage!r}: freshness unknown (no series in stage_freshness)")
        return None
    oldest: float | None = None
    for where, sample in series.samples:
        if not sample.value.known:
            problems.add(f"stage {stage!r}: freshness of {where} unknown ({sample.value.reason})")
            continue
        age = sample.value.get()
        if oldest is None or age > oldest:
            oldest = age
    if oldest is not None and oldest > limit:
        return f"stale: last sample {oldest:.0f} s old (staleness_seconds {limit:g})"
    return None


_OPERATOR_INDEX = re.compile(r"_(\d+)$")


def infer_upstreams(config: Config, result: QueryResult) -> dict[str, str]:
    """Stage → the stage feeding it, from Ray Data's operator numbering (``Name_<index>``, in plan order).

    Ray Data numbers a dataset's operators in topological order, so in a straight pipeline the operator
    numbered just below a stage's is its input. Where datasets disagree (the same stage fed by different
    stages), the stage gets no upstream: a wrong edge would add phantom demand, a missing one only slows
    the cascade down to one stage per tick.
    """
    if result.error is not None:
        return {}
    ignore = re.compile(config.ignore_operators)
    per_dataset: dict[str, list[tuple[int, str]]] = {}
    for sample in result.samples:
        operator = sample.labels.get("operator")
        if operator is None or ignore.search(operator):
            continue
        m = _OPERATOR_INDEX.search(operator)
        if m is None:
            continue
        dataset = sample.labels.get("dataset", "")
        per_dataset.setdefault(dataset, []).append((int(m.group(1)), _stage_name(config, dataset, operator)))
    edges: dict[str, set[str]] = {}
    for ops in per_dataset.values():
        ops.sort()
        for (_, up), (_, down) in pairwise(ops):
            if up != down:
                edges.setdefault(down, set()).add(up)
    return {down: next(iter(ups)) for down, ups in sorted(edges.items()) if len(ups) == 1}


def _observe_stages(
    config: Config,
    results: Mapping[str, QueryResult],
    node_counts: Mapping[str, int] | None,
    problems: _Problems,
) -> tuple[StageObservation, ...]:
    grouped: dict[str, dict[str, _Series]] = {}
    names: list[str] = []
    any_failed = False
    for name in STAGE_TEMPLATES:
        result = _result(results, name)
        if result.error is not None:
            any_failed = True
            problems.add(f"{name} query failed: {result.error}")
            grouped[name] = {}
            continue
        grouped[name] = _group_by_stage(config, name, result, problems)
        for stage in grouped[name]:
            if stage not in names:
                names.append(stage)
    if any_failed:
        # Without the data we cannot tell whether a configured stage is idle or unobserved: show it unknown.
        for profile in config.stages:
            if profile.name not in names:
                names.append(profile.name)

    configured = [p.name for p in config.stages]
    names.sort(key=lambda n: (0, configured.index(n), "") if n in configured else (1, 0, n))

    freshness = _result(results, "stage_freshness")
    fresh_grouped: dict[str, _Series] = {}
    if freshness.error is None:
        fresh_grouped = _group_by_stage(config, "stage_freshness", freshness, problems)
    else:
        problems.add(f"stage_freshness query failed: {freshness.error}; stale stages cannot be detected")
    shapes = config.node_shapes()
    upstreams = infer_upstreams(config, _result(results, "stage_backlog"))
    out: list[StageObservation] = []
    for stage in names:
        stale = _staleness(stage, freshness, fresh_grouped, config.prometheus.staleness_seconds, problems)
        if stale is not None:
            problems.add(f"stage {stage!r}: {stale}")
            unknown = Reading.unknown(stale)
            out.append(StageObservation(stage, unknown, unknown, unknown, unknown))
            continue
        backlog, throughput, arrival, slots = (
            _stage_reading(stage, n, results, grouped) for n in STAGE_TEMPLATES
        )
        for n, r in zip(STAGE_TEMPLATES, (backlog, throughput, arrival, slots), strict=True):
            if not r.known and _result(results, n).error is None:
                problems.add(f"stage {stage!r} {_READING_OF[n]} unknown: {r.reason}")
        by_shape: Mapping[str, float] = frozen_map()
        if slots.known and node_counts is not None:
            by_shape = frozen_map(
                attribute_slots(slots.get(), config.stage_resources(stage), shapes, node_counts)
            )
        out.append(
            StageObservation(
                name=stage,
                backlog=backlog,
                throughput=throughput,
                arrival_rate=arrival,
                slots_busy=slots,
                slots_by_shape=by_shape,
                upstream=upstreams.get(stage),
            )
        )
    return tuple(out)


def _node_counts(
    name: str, result: QueryResult, shapes: Sequence[NodeShape], problems: _Problems
) -> dict[str, int] | None:
    """Nodes per configured shape, or None when the autoscaler's answer cannot be trusted at all."""
    if result.error is not None:
        problems.add(f"{name} query failed: {result.error}; node counts unknown")
        return None
    if not result.samples:
        problems.add(f"{name}: no series at all (are the autoscaler metrics scraped?); node counts unknown")
        return None
    wanted = {s.name for s in shapes}
    seen: dict[str, int] = {}
    bad: set[str] = set()
    for sample in sorted(result.samples, key=lambda s: s.labels.get("NodeType", "")):
        node_type = sample.labels.get("NodeType")
        if node_type is None:
            problems.add(f"{name}: a series without a 'NodeType' label was ignored")
            continue
        if node_type not in wanted:
            continue
        if node_type in seen or node_type in bad:
            problems.add(f"{name}: several series for node type {node_type!r}; its count is unknown")
            bad.add(node_type)
            seen.pop(node_type, None)
            continue
        value = sample.value
        if not value.known:
            problems.add(f"{name}: count of {node_type!r} unknown ({value.reason})")
            bad.add(node_type)
            continue
        count = value.get()
        if count < 0 or count != math.floor(count):
            problems.add(f"{name}: count of {node_type!r} is {count:g}, not a node count; unknown")
            bad.add(node_type)
            continue
        seen[node_type] = int(count)
    # The autoscaler answered about other node types, so a configured shape it did not mention has none.
    return {s.name: seen.get(s.name, 0) for s in shapes if s.name not in bad}


def _node_key(labels: Mapping[str, str]) -> str:
    instance = labels.get("instance", "")
    ip = labels.get("ip", "")
    if instance and ip:
        return f"{instance}/{ip}"
    return instance or ip


def _observe_nodes(
    config: Config, results: Mapping[str, QueryResult], problems: _Problems
) -> tuple[Node, ...]:
    shape_names = {s.name for s in config.shapes}
    readings: dict[str, dict[str, Reading]] = {}
    shapes: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in ("node_cpu_utilization", "node_gpu_utilization"):
        result = _result(results, name)
        if result.error is not None:
            problems.add(f"{name} query failed: {result.error}")
            failed[name] = f"{name} query failed: {result.error}"
            continue
        for sample in result.samples:
            key = _node_key(sample.labels)
            if not key:
                problems.add(f"{name}: a series without 'instance' or 'ip' labels was ignored")
                continue
            value = sample.value
            if value.known and not 0.0 <= value.get() <= 100.0:
                value = Reading.unknown(f"utilization {value.get():g} % is outside 0–100")
            readings.setdefault(key, {})[name] = value
            for label in NODE_SHAPE_LABELS:
                if sample.labels.get(label) in shape_names:
                    shapes[key] = sample.labels[label]
    nodes = []
    for key in sorted(readings):
        got = readings[key]

        def pick(name: str, got: Mapping[str, Reading] = got) -> Reading:
            if name in got:
                return got[name]
            return Reading.unknown(failed.get(name, f"no {name} series for this node"))

        nodes.append(
            Node(
                node_id=key,
                shape=shapes.get(key, ""),
                cpu_utilization=pick("node_cpu_utilization"),
                gpu_utilization=pick("node_gpu_utilization"),
            )
        )
    return tuple(nodes)


def build_snapshot(config: Config, now: float, results: Mapping[str, QueryResult]) -> Snapshot:
    """One tick's observation from the results of ``OBSERVE_TEMPLATES`` (template name → result)."""
    problems = _Problems()
    shapes = config.node_shapes()
    active = _node_counts("nodes_active", _result(results, "nodes_active"), shapes, problems)
    pending = _node_counts("nodes_pending", _result(results, "nodes_pending"), shapes, problems)
    stages = _observe_stages(config, results, active, problems)
    nodes = _observe_nodes(config, results, problems)
    _check_targets(results, problems)
    return Snapshot(
        time=now,
        shapes=shapes,
        nodes=nodes,
        node_counts=_int_map(active),
        pending_counts=_int_map(pending),
        stages=stages,
        errors=tuple(problems.items),
    )


def _check_targets(results: Mapping[str, QueryResult], problems: _Problems) -> None:
    """A metrics target that is down hides its series: stages and nodes would silently vanish and look like
    "no work", so any such target — or a failure to find out — makes the snapshot incomplete (hold)."""
    down = _result(results, "targets_down")
    if down.error is not None:
        problems.add(f"targets_down query failed: {down.error}; cannot tell whether metrics are missing")
    elif down.samples:
        where = ", ".join(sorted(s.labels.get("instance", "?") for s in down.samples)[:5])
        problems.add(f"{len(down.samples)} metrics target(s) down ({where}): their series are missing")
    warned = sorted({w for name in STAGE_TEMPLATES for w in _result(results, name).warnings})
    for w in warned[:5]:
        problems.add(f"metrics source warning: {w}")


def _int_map(counts: Mapping[str, int] | None) -> Mapping[str, int]:
    return MappingProxyType(dict(counts or {}))
