"""``ray-default``: what users have today — Ray's own autoscaler (v1) driven by Ray Data, emulated.

It is the baseline raytide is measured against, so it copies Ray 2.60's rules instead of improving on them
(facts read from Ray's source; no Ray code is copied or imported). Each function that emulates a rule names
its source file, under ``ray/``: Ray Data's cluster autoscaler in ``data/_internal/cluster_autoscaler/``
(the default, ``RATE_BASED`` per its ``__init__.py``), Ray's autoscaler in ``autoscaler/_private/``. Ray's
v2 autoscaler (KubeRay, ``ray up``) scores node types differently; this emulates v1, the default for a bare
``ray start``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoscaler.core.config import Config
from autoscaler.core.policy_api import PolicyContext, PolicyDecision
from autoscaler.types import Node, NodeShape, Snapshot, StageObservation

Bundle = tuple[tuple[str, float], ...]
"""A resource bundle as sorted (resource, amount) pairs: hashable, and equal bundles compare equal."""
Demand = list[tuple[Bundle, int]]
"""Distinct bundles with their number of copies, in Ray's packing order (see ``_demand``)."""

# autoscaler/_private/constants.py
UPSCALING_INITIAL_NUM_NODES = 5
# data/_internal/cluster_autoscaler/rate_based_cluster_autoscaler.py
RAY_DATA_UTIL_THRESHOLD = 0.5
RAY_DATA_SCALING_UP_FACTOR = 2.0
RAY_DATA_MAX_DELTA: Mapping[str, float] = {"CPU": 256.0, "GPU": 32.0, "memory": math.inf}
RAY_DATA_MIN_GAP_SECONDS = 10.0
# data/_internal/cluster_autoscaler/throughput_solver.py: the resources Ray Data plans and requests.
RAY_DATA_RESOURCES = ("CPU", "GPU", "memory")

_TOL = 1e-9


# ------------------------------------------------------------------------------------------- bundles


def _bundle(resources: Mapping[str, float]) -> Bundle | None:
    """A bundle from raw amounts; None when an amount is not a finite number >= 0 (malformed input)."""
    items = []
    for name, amount in resources.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            return None
        if not (math.isfinite(amount) and amount >= 0):
            return None
        items.append((str(name), float(amount)))
    return tuple(sorted(items))


def _order_key(b: Bundle) -> tuple[int, float, Bundle]:
    return (len(b), sum(a for _, a in b), b)


def _demand(bundles: Iterable[tuple[Bundle, int]]) -> Demand:
    """Merge copies and sort as ``get_bin_pack_residual`` does: more resources, then heavier, then items —
    descending. Identical bundles end up adjacent, which is what lets copies be packed in bulk."""
    merged: dict[Bundle, int] = {}
    for b, n in bundles:
        if n > 0:
            merged[b] = merged.get(b, 0) + n
    return sorted(merged.items(), key=lambda bn: _order_key(bn[0]), reverse=True)


def _copies(demand: Demand) -> int:
    return sum(n for _, n in demand)


def _text(b: Bundle) -> str:
    return "{" + ", ".join(f"{r}: {a:g}" for r, a in b) + "}"


def _demand_text(demand: Demand, limit: int = 3) -> str:
    parts = [f"{n} × {_text(b)}" for b, n in demand[:limit]]
    if len(demand) > limit:
        parts.append(f"{len(demand) - limit} more kind(s)")
    return ", ".join(parts)


def _fit_count(node: Mapping[str, float], b: Bundle, cap: int) -> int:
    """Copies of ``b`` (at most ``cap``) that fit in ``node``; zero amounts always fit, as in Ray's _fits."""
    k = cap
    for res, amount in b:
        if amount <= 0:
            continue
        # Compared before flooring: a tiny amount makes the quotient infinite, which floor() cannot take.
        q = node.get(res, 0.0) / amount + _TOL
        if q < k:
            k = max(0, math.floor(q))
            if k == 0:
                return 0
    return k


def _take(node: dict[str, float], b: Bundle, k: int) -> None:
    for res, amount in b:
        if amount > 0:
            node[res] = node.get(res, 0.0) - k * amount


def _pack(nodes: Sequence[dict[str, float]], demand: Demand) -> tuple[Demand, list[int]]:
    """``get_bin_pack_residual`` (``resource_demand_scheduler.py``): bundles in decreasing (number of
    resources, sum of amounts, items) order, each into the first node it fits; mutates ``nodes``.

    A node that cannot take one more copy of a bundle never can later (its free resources only shrink), so
    filling node by node is exactly Ray's copy-by-copy first fit. Returns (residual, nodes used: indexes).
    """
    residual: Demand = []
    used: set[int] = set()
    for b, n in demand:
        left = n
        for i, node in enumerate(nodes):
            if left == 0:
                break
            k = _fit_count(node, b, left)
            if k:
                _take(node, b, k)
                left -= k
                used.add(i)
        if left:
            residual.append((b, left))
    return residual, sorted(used)


# ------------------------------------------------------------------------------------- node choice


Score = tuple[bool, int, float, float]


def _fill(capacity: Mapping[str, float], demand: Demand) -> tuple[list[int], dict[str, float]]:
    """Copies of each bundle one empty node takes when packed greedily, and what is left on it."""
    remaining = dict(capacity)
    taken = []
    for b, n in demand:
        k = _fit_count(remaining, b, n)
        _take(remaining, b, k)
        taken.append(k)
    return taken, remaining


def _score(
    capacity: Mapping[str, float], demand: Demand, taken: list[int], remaining: Mapping[str, float]
) -> Score | None:
    """``_resource_based_utilization_scorer`` for one empty node of a type, after greedily packing the
    demand onto it; None when nothing fits (the type is not a candidate). The score is (no GPU node for a
    demand that asks for no GPU — ``AUTOSCALER_CONSERVE_GPU_NODES``, on by default, judged on the whole
    demand, not per bundle; number of the node's resources (amount ≥ 1) the demand uses; min over the node's
    resources (amount ≥ 1) of amount × utilization³; their mean)."""
    if not any(taken):
        return None
    wanted = {r for b, _ in demand for r, a in b if a > 0}
    utils = []
    matching = 0
    for res, amount in capacity.items():
        if amount < 1:
            continue
        if res in wanted:
            matching += 1
        utils.append(amount * ((amount - remaining.get(res, 0.0)) / amount) ** 3)
    if not utils:
        return None
    gpu_node = capacity.get("GPU", 0.0) > 0
    gpu_asked = any(r == "GPU" for b, _ in demand for r, _ in b)
    return (not (gpu_node and not gpu_asked), matching, min(utils), sum(utils) / len(utils))


def _nodes_for(
    shapes: Sequence[NodeShape], existing: Mapping[str, int], max_to_add: int, demand: Demand
) -> tuple[dict[str, int], Demand]:
    """``get_nodes_for`` (``resource_demand_scheduler.py``): one node at a time, the type with the highest
    ``_score`` among types below their ``max_workers``, until the demand fits or ``max_to_add`` (the
    cluster's ``max_workers``) is reached; ties go to the type name sorting last.

    Exact shortcut for huge demands: while every bundle has at least as many copies left as one node of any
    type could hold, each type's score is unchanged, so the same type wins again — those steps are taken
    at once instead of one by one.
    """
    to_add: dict[str, int] = {}
    per_node = {s.name: [_fit_count(s.resources, b, 2**62) for b, _ in demand] for s in shapes}
    while demand and sum(to_add.values()) < max_to_add:
        best: tuple[Score, str] | None = None
        best_taken: list[int] = []
        for s in shapes:
            if existing.get(s.name, 0) + to_add.get(s.name, 0) >= s.max_count:
                continue
            taken, remaining = _fill(s.resources, demand)
            score = _score(s.resources, demand, taken, remaining)
            if score is not None and (best is None or (score, s.name) > best):
                best = (score, s.name)
                best_taken = taken
        if best is None:
            break
        name = best[1]
        shape = next(s for s in shapes if s.name == name)
        room = shape.max_count - existing.get(name, 0) - to_add.get(name, 0)
        steps = min(room, max_to_add - sum(to_add.values()))
        for i, (k, (_, n)) in enumerate(zip(best_taken, demand, strict=True)):
            if k == 0:
                continue
            most = max(per_node[s.name][i] for s in shapes)
            if most >= 2**62:
                steps = 1
                break
            # Step j repeats step 0 while every count stays >= what one node of any type can take.
            steps = min(steps, max(1, 1 + (n - most) // k))
        steps = max(1, steps)
        to_add[name] = to_add.get(name, 0) + steps
        demand = [
            (b, n - steps * k) for (b, n), k in zip(demand, best_taken, strict=True) if n - steps * k > 0
        ]
        per_node = {s.name: [_fit_count(s.resources, b, 2**62) for b, _ in demand] for s in shapes}
    return to_add, demand


# ------------------------------------------------------------------------------------------ Ray Data


@dataclass(frozen=True, slots=True)
class _Request:
    demand: Demand
    time: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "bundles": [{"resources": dict(b), "count": n} for b, n in self.demand],
            "time": self.time if self.time is not None and math.isfinite(self.time) else None,
        }

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> _Request:
        raw = state.get("ray_data_request")
        if not isinstance(raw, Mapping):
            return _Request([], None)
        try:
            bundles = []
            for item in raw.get("bundles", []):
                b = _bundle(dict(item["resources"]))
                n = int(item["count"])
                if b is not None and n > 0:
                    bundles.append((b, n))
            t = raw.get("time")
            return _Request(_demand(bundles), None if t is None else float(t))
        except (TypeError, ValueError, KeyError, OverflowError):
            # Unreadable state is a first tick, not a crash: Ray Data itself starts with an empty request.
            return _Request([], None)


def _known(st: StageObservation) -> bool:
    return st.backlog.known and st.throughput.known and st.slots_busy.known


def _source_factors(stages: Sequence[StageObservation]) -> dict[str, float]:
    """Per stage, its units per unit entering the chain: the product of the selectivities above it.

    Ray Data normalises rates along the chain (``_get_normalization_factor`` in ``throughput_solver.py``);
    here by each edge's selectivity (downstream arrival / upstream throughput), with 1 where unknown, as Ray
    skips unknown ratios.
    """
    by_name = {s.name: s for s in stages}
    out: dict[str, float] = {}

    def factor(st: StageObservation, seen: frozenset[str]) -> float:
        if st.name in out:
            return out[st.name]
        up = by_name.get(st.upstream) if st.upstream else None
        f = 1.0
        if up is not None and up.name not in seen:
            f = factor(up, seen | {st.name})
            arrival, up_tp = st.arrival_rate.value, up.throughput.value
            if arrival is not None and up_tp is not None and arrival > 0 and up_tp > 0:
                f *= arrival / up_tp
        out[st.name] = f
        return f

    for st in stages:
        factor(st, frozenset())
    return out


def _max_throughput(
    rates: Mapping[str, float],
    needs: Mapping[str, Mapping[str, float]],
    limits: Mapping[str, float],
    concurrency: Mapping[str, int | None],
) -> float:
    """``compute_optimal_throughput`` (``throughput_solver.py``): every operator must sustain the same
    pipeline throughput T; operator i with per-task rate r_i needs T / r_i tasks; the optimal T is the
    largest that fits the CPU, GPU and memory totals and each operator's concurrency limit."""
    best = math.inf
    for res in RAY_DATA_RESOURCES:
        cost = sum(needs[k].get(res, 0.0) / r for k, r in rates.items())
        if cost > 0:
            best = min(best, limits.get(res, 0.0) / cost)
    for k, r in rates.items():
        limit = concurrency.get(k)
        if limit is not None:
            best = min(best, r * limit)
    return best


def _ray_data_request(
    snap: Snapshot, config: Config, running: Mapping[str, int], previous: _Request
) -> tuple[_Request, str]:
    """Ray Data's resource request (``rate_based_cluster_autoscaler.py``), scale-up only.

    At most one request per 10 s (``MIN_GAP_BETWEEN_AUTOSCALING_REQUESTS_S``). If CPU, GPU and memory
    logical utilization (resources held by running tasks / cluster resources,
    ``resource_utilization_gauge.py``) are all below 0.5, it re-sends its previous request unchanged.
    Otherwise it asks for enough task bundles to run the pipeline at twice its current optimal throughput
    (``DEFAULT_CLUSTER_SCALING_UP_FACTOR = 2``), growth capped at +256 CPUs and +32 GPUs per step
    (``DEFAULT_CLUSTER_SCALING_UP_MAX_RESOURCE_DELTA``); every operator not finished gets at least one
    bundle; a bundle is the operator's CPU/GPU/memory per task. The request is a cluster-wide floor
    (``request_resources``, merged by the ``AutoscalingCoordinator``), cancelled when the dataset ends
    (``on_executor_shutdown``) — here, when no stage has any work. It is carried from tick to tick in the
    policy state, as Ray Data's executor carries its last request.
    """
    stages = snap.stages
    if not stages:
        return _Request([], snap.time), "Ray Data: no pipeline running, no resource request"
    if not all(_known(st) for st in stages):
        return previous, "Ray Data: stage metrics unknown, assuming its last request stands"
    if not any(st.backlog.get() > 0 or st.slots_busy.get() > 0 for st in stages):
        return _Request([], snap.time), "Ray Data: no stage has work, request cancelled (dataset done)"
    # A clock that went backwards (a replay, a restored state) counts as the gap having passed.
    if previous.time is not None and 0 <= snap.time - previous.time < RAY_DATA_MIN_GAP_SECONDS:
        return previous, f"Ray Data: last request {snap.time - previous.time:.0f} s ago, under its 10 s gap"

    needs = {
        st.name: {
            r: a for r, a in config.stage_resources(st.name).items() if r in RAY_DATA_RESOURCES and a > 0
        }
        for st in stages
    }
    totals: dict[str, float] = {}
    for s in snap.shapes:
        for res in RAY_DATA_RESOURCES:
            totals[res] = totals.get(res, 0.0) + running.get(s.name, 0) * s.capacity(res)
    util = {}
    for res in RAY_DATA_RESOURCES:
        used = sum(max(0.0, st.slots_busy.get()) * needs[st.name].get(res, 0.0) for st in stages)
        util[res] = used / totals[res] if totals[res] > 0 else 0.0
    util_text = ", ".join(f"{r} {u:.0%}" for r, u in util.items())
    if all(u < RAY_DATA_UTIL_THRESHOLD for u in util.values()):
        return (
            _Request(previous.demand, snap.time),
            f"Ray Data: utilization below 50% ({util_text}), re-sending its last request",
        )

    factors = _source_factors(stages)
    rates = {
        st.name: st.throughput.get() / st.slots_busy.get() / factors[st.name]
        for st in stages
        if st.slots_busy.get() > 0 and st.throughput.get() > 0
    }
    counts: dict[str, int] = {}
    detail = "no rates yet: one bundle per stage"
    if rates:
        concurrency: dict[str, int | None] = {}
        for k in rates:
            profile = config.stage_profile(k)
            concurrency[k] = profile.max_slots if profile else None
        current = _max_throughput(rates, needs, totals, concurrency)
        grown = {r: totals.get(r, 0.0) + RAY_DATA_MAX_DELTA[r] for r in RAY_DATA_RESOURCES}
        desired = min(current * RAY_DATA_SCALING_UP_FACTOR, _max_throughput(rates, needs, grown, concurrency))
        detail = f"2× its current optimal throughput, capped by +256 CPU/+32 GPU ({util_text})"
        for k, r in rates.items():
            tasks = desired / r
            counts[k] = 0 if not math.isfinite(tasks) else max(math.ceil(tasks), 1)
    bundles: list[tuple[Bundle, int]] = []
    for st in stages:
        if not needs[st.name]:
            continue
        b = _bundle(needs[st.name])
        if b is not None:
            bundles.append((b, counts.get(st.name, 1)))
    req = _Request(_demand(bundles), snap.time)
    return req, f"Ray Data requests {_copies(req.demand)} bundle(s) for {detail}"


def _liveness_bundle(snap: Snapshot, config: Config) -> Demand:
    """One task of the most upstream stage with a backlog, when nothing runs at all.

    ``execution/streaming_executor_state.py``: when the whole pipeline is idle, one operator may submit a
    task regardless of resource limits (liveness); emulated as one pending bundle, used when no stage has a
    busy slot and the snapshot carries no pending demand.
    """
    if not snap.stages or not all(st.slots_busy.known for st in snap.stages):
        return []
    if any(st.slots_busy.get() > 0 for st in snap.stages):
        return []
    by_name = {s.name: s for s in snap.stages}

    def depth(st: StageObservation) -> int:
        d, seen = 0, {st.name}
        while st.upstream and st.upstream in by_name and st.upstream not in seen:
            st = by_name[st.upstream]
            seen.add(st.name)
            d += 1
        return d

    waiting = [st for st in snap.stages if st.backlog.known and st.backlog.get() > 0]
    if not waiting:
        return []
    first = min(waiting, key=depth)
    b = _bundle({r: a for r, a in config.stage_resources(first.name).items() if a > 0})
    return [] if b is None or not b else [(b, 1)]


# ------------------------------------------------------------------------------------------- nodes


@dataclass(slots=True)
class _Worker:
    node_id: str
    shape: NodeShape
    idle_seconds: float | None


def _workers(snap: Snapshot, running: Mapping[str, int]) -> list[_Worker]:
    """Running workers, most recently used first (as Ray sorts them); unlisted ones count as busy."""
    out: list[_Worker] = []
    for shape in snap.shapes:
        listed: list[Node] = sorted((n for n in snap.nodes if n.shape == shape.name), key=lambda n: n.node_id)
        count = running.get(shape.name, 0)
        nodes = [_Worker(n.node_id, shape, n.idle_seconds) for n in listed[:count]]
        nodes += [_Worker(f"{shape.name}#{i}", shape, None) for i in range(len(nodes), count)]
        out.extend(nodes)

    def key(w: _Worker) -> tuple[int, float, str]:
        idle = w.idle_seconds
        if idle is None or not math.isfinite(idle):
            return (0, 0.0, w.node_id)
        return (1, idle, w.node_id)

    return sorted(out, key=key)


def _is_idle(w: _Worker) -> bool:
    return w.idle_seconds is not None and math.isfinite(w.idle_seconds)


def _free_capacity(
    snap: Snapshot, config: Config, workers: Sequence[_Worker]
) -> tuple[list[dict[str, float]], str]:
    """Estimated free resources per running worker (same order), from the stages' busy slots.

    Ray knows each node's free resources; a snapshot does not, so they are estimated from the stages' busy
    slots (on the shapes they are attributed to, else first-fit), and a running node is taken as full when
    some stage's busy slots are unknown (pending demand means the scheduler found no room).
    """
    free = [dict(w.shape.resources) for w in workers]
    if not all(st.slots_busy.known for st in snap.stages):
        return [
            {r: 0.0 for r in w.shape.resources} for w in workers
        ], "busy slots unknown: running nodes taken as full"
    busy_idx = [i for i, w in enumerate(workers) if not _is_idle(w)]
    for st in snap.stages:
        b = _bundle({r: a for r, a in config.stage_resources(st.name).items() if a > 0})
        if not b:
            continue
        total = max(0.0, st.slots_busy.get())
        attributed = 0
        for shape_name, v in sorted(st.slots_by_shape.items()):
            if not (math.isfinite(v) and v > 0):
                continue
            n = int(min(v, 2.0**62) + 0.5)
            attributed += n
            _pack([free[i] for i in busy_idx if workers[i].shape.name == shape_name], [(b, n)])
        rest = int(min(total, 2.0**62) + 0.5) - attributed
        if rest > 0:
            _pack([free[i] for i in busy_idx], [(b, rest)])
    return free, "free resources estimated from busy slots"


# ------------------------------------------------------------------------------------------- policy


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


class RayDefaultPolicy:
    """Ray's demand vector is ``snapshot.pending_demand`` (bundles waiting for a node); Ray Data's floor is
    recomputed from the stages. Worker types are raytide's node shapes (``max_count`` is ``max_workers``,
    ``min_count`` is ``min_workers``, ``bounds.max_nodes`` is the cluster's ``max_workers``); the head node is
    not modelled. Where the snapshot cannot say what Ray would see, the reasons say how it was decided."""

    name = "ray-default"

    def __init__(self, *, upscaling_speed: float = 1.0, idle_timeout_seconds: float = 300.0) -> None:
        """The two knobs of Ray's cluster config: ``upscaling_speed`` and ``idle_timeout_minutes`` × 60."""
        speed = _number("upscaling_speed", upscaling_speed)
        timeout = _number("idle_timeout_seconds", idle_timeout_seconds)
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"upscaling_speed must be a finite number > 0, got {speed}")
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f"idle_timeout_seconds must be a finite number >= 0, got {timeout}")
        self._speed = speed
        self._timeout = timeout

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        snap, config = ctx.snapshot, ctx.config
        shapes = snap.shapes
        running = {s.name: max(0, snap.count(s.name)) for s in shapes}
        pending = {s.name: max(0, int(snap.pending_counts.get(s.name, 0))) for s in shapes}
        reasons: list[str] = []

        request, why = _ray_data_request(snap, config, running, _Request.from_state(ctx.state))
        reasons.append(why)

        workers = _workers(snap, running)
        removed = self._terminate(workers, request.demand, config, reasons)
        workers = [w for w in workers if w.node_id not in removed]
        alive = {
            s.name: running[s.name] - sum(1 for w in removed.values() if w.shape.name == s.name)
            for s in shapes
        }

        launch = self._launch(snap, config, workers, alive, pending, request.demand, reasons)

        targets = {s.name: alive[s.name] + pending[s.name] + launch.get(s.name, 0) for s in shapes}
        return PolicyDecision(
            target_counts=targets,
            reasons=tuple(reasons),
            state={"ray_data_request": request.to_json()},
        )

    def _idle_past(self, w: _Worker) -> bool:
        return w.idle_seconds is not None and _is_idle(w) and w.idle_seconds >= self._timeout

    def _terminate(
        self, workers: Sequence[_Worker], floor: Demand, config: Config, reasons: list[str]
    ) -> dict[str, _Worker]:
        """``terminate_nodes_to_enforce_config_constraints`` (``autoscaler.py``), run before launching.

        Workers are visited most recently used first; one is kept while its type is at or below
        ``min_workers``, removed when its type is over ``max_workers``, kept when the floor
        (``request_resources``) bin-packs onto it (``_get_nodes_needed_for_request_resources``), removed when
        idle past ``idle_timeout_minutes`` (default 5 min in ``ray-schema.json``), and otherwise kept; then,
        if workers still exceed the cluster's ``max_workers``, the least recently used removable ones go.
        Nothing else ever scales down: no node with work on it is removed, however little it does. An idle
        node is one whose ``idle_seconds`` is at least the timeout (Ray compares last-used time strictly;
        the difference is one instant).
        """
        totals = [dict(w.shape.resources) for w in workers]
        _, needed_idx = _pack(totals, floor)
        needed = {workers[i].node_id for i in needed_idx}
        kept: dict[str, int] = {}
        removed: dict[str, _Worker] = {}
        removable: list[_Worker] = []
        for w in workers:
            s = w.shape
            after = kept.get(s.name, 0) + 1
            if after <= min(s.min_count, s.max_count):
                kept[s.name] = after
            elif after > s.max_count:
                removed[w.node_id] = w
                reasons.append(f"remove {w.node_id} ({s.name}): over the type's max_workers {s.max_count}")
            elif w.node_id in needed:
                kept[s.name] = after
                if self._idle_past(w):
                    reasons.append(
                        f"keep {w.node_id} ({s.name}), idle {w.idle_seconds:.0f} s: "
                        "Ray Data's request needs it"
                    )
            elif self._idle_past(w):
                removed[w.node_id] = w
                reasons.append(
                    f"remove {w.node_id} ({s.name}): idle {w.idle_seconds:.0f} s "
                    f"≥ idle timeout {self._timeout:.0f} s"
                )
            else:
                kept[s.name] = after
                removable.append(w)
        extra = len(workers) - len(removed) - config.bounds.max_nodes
        if extra > 0:
            for w in removable[-extra:]:
                removed[w.node_id] = w
                reasons.append(
                    f"remove {w.node_id} ({w.shape.name}): workers over max_workers {config.bounds.max_nodes}"
                )
        return removed

    def _launch(
        self,
        snap: Snapshot,
        config: Config,
        workers: Sequence[_Worker],
        alive: Mapping[str, int],
        pending: Mapping[str, int],
        floor: Demand,
        reasons: list[str],
    ) -> dict[str, int]:
        """``get_nodes_to_launch`` (``resource_demand_scheduler.py``).

        (1) Add nodes up to each type's ``min_workers``; (2) bin-pack the floor onto the *total* resources
        of all nodes (running and launching), and launch for what does not fit; (3) bin-pack pending demand
        onto the *free* resources of running nodes plus whole launching/just-added nodes, and launch for
        what does not fit; (4) cap launches per type at ``max(5, int(upscaling_speed × max(running of that
        type, 1)))`` minus nodes of that type already launching — nodes for ``min_workers`` and the floor
        are exempt (``_get_concurrent_resource_demand_to_launch``; 5 is
        ``AUTOSCALER_UPSCALING_INITIAL_NUM_NODES`` in ``constants.py``).
        """
        shapes = snap.shapes
        counts = {s.name: alive[s.name] + pending[s.name] for s in shapes}
        added: list[dict[str, float]] = [dict(s.resources) for s in shapes for _ in range(pending[s.name])]

        exempt: dict[str, int] = {}
        for s in shapes:
            want = min(s.min_count, s.max_count)
            if counts[s.name] < want:
                exempt[s.name] = want - counts[s.name]
                counts[s.name] = want
                added += [dict(s.resources) for _ in range(exempt[s.name])]
        for name, n in sorted(exempt.items()):
            reasons.append(f"{name}: {n} node(s) to reach min_workers")

        if floor:
            totals = [dict(s.resources) for s in shapes for _ in range(counts[s.name])]
            residual, _ = _pack(totals, floor)
            if residual:
                max_to_add = config.bounds.max_nodes - sum(counts.values())
                for_floor, left = _nodes_for(shapes, counts, max_to_add, residual)
                for name, n in sorted(for_floor.items()):
                    exempt[name] = exempt.get(name, 0) + n
                    counts[name] += n
                    added += [dict(snap.shape(name).resources) for _ in range(n)]
                    reasons.append(f"{name}: {n} node(s) for Ray Data's resource request")
                if left:
                    reasons.append(
                        f"Ray Data's request: {_copies(left)} bundle(s) cannot be placed "
                        f"({_demand_text(left)})"
                    )

        demand, source = self._pending_demand(snap, config, reasons)
        for_demand: dict[str, int] = {}
        if demand:
            free, how = _free_capacity(snap, config, workers)
            residual, _ = _pack([*free, *added], demand)
            max_to_add = config.bounds.max_nodes - sum(counts.values())
            for_demand, left = _nodes_for(shapes, counts, max_to_add, residual)
            reasons.append(
                f"{source}: {_copies(demand)} bundle(s), "
                f"{_copies(residual)} not fitting existing capacity ({how})"
            )
            if left:
                reasons.append(
                    f"{_copies(left)} bundle(s) infeasible or over max_workers: {_demand_text(left)}"
                )

        launch: dict[str, int] = {}
        for s in shapes:
            want = exempt.get(s.name, 0) + for_demand.get(s.name, 0)
            if want <= 0:
                continue
            allowed = max(UPSCALING_INITIAL_NUM_NODES, int(self._speed * max(alive[s.name], 1)))
            upper = max(allowed - pending[s.name], exempt.get(s.name, 0))
            n = min(upper, want) if upper > 0 else 0
            if n < want:
                reasons.append(
                    f"{s.name}: launch capped at {n} of {want} by upscaling_speed {self._speed:g} "
                    f"(at most {allowed} launching, {pending[s.name]} already are)"
                )
            if n > 0:
                launch[s.name] = n
                reasons.append(f"launch {n} {s.name}")
        return launch

    @staticmethod
    def _pending_demand(snap: Snapshot, config: Config, reasons: list[str]) -> tuple[Demand, str]:
        if snap.pending_demand:
            bundles: list[tuple[Bundle, int]] = []
            bad = 0
            for raw in snap.pending_demand:
                b = _bundle(raw)
                if b is None or not b:
                    bad += 1
                else:
                    bundles.append((b, 1))
            if bad:
                reasons.append(f"ignored {bad} pending bundle(s) with no or malformed resources")
            return _demand(bundles), "pending demand"
        live = _liveness_bundle(snap, config)
        return live, "nothing runs: Ray Data submits one task (liveness)"
