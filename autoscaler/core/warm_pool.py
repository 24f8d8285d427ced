"""The warm pool, pure part: how many standby nodes of each shape to keep (:func:`pool_targets`), which to
claim for the plan or for work waiting in Ray (:func:`plan_pool`, :func:`claims_for_waiting`), and the
counts the plan sees without them (:func:`active_counts`). The Ray side is
:mod:`autoscaler.adapters.ray.placeholders`; the design is in docs/architecture.md ("The warm pool").
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoscaler.core.config import Config, WarmPoolConfig
from autoscaler.types import NodeShape, Resources

__all__ = [
    "STANDBY_PREFIX",
    "LaunchTimer",
    "PoolMemory",
    "PoolPlan",
    "PoolTargets",
    "Standby",
    "active_counts",
    "claims_for_waiting",
    "expected_rise",
    "parse_standby_name",
    "plan_pool",
    "pool_targets",
    "standby_name",
]

STANDBY_PREFIX = "raytide-standby"
"""Every placeholder placement group raytide creates is named ``raytide-standby:<shape>:<serial>``."""

_MAX_LAUNCH_SAMPLES = 50
_MAX_HISTORY = 4096


def standby_name(shape: str, serial: int) -> str:
    return f"{STANDBY_PREFIX}:{shape}:{serial}"


def parse_standby_name(name: str) -> tuple[str, int] | None:
    """``(shape, serial)`` of a raytide placeholder name, None for any other name."""
    prefix, sep, rest = name.partition(":")
    if prefix != STANDBY_PREFIX or not sep:
        return None
    shape, sep, serial = rest.rpartition(":")
    if not sep or not shape or not serial.isdigit():
        return None
    return shape, int(serial)


@dataclass(frozen=True, slots=True)
class Standby:
    """One placeholder: ``node_id`` is the node it holds, None while it waits for a node to launch."""

    name: str
    shape: str
    node_id: str | None = None
    pg_id: str | None = None
    """Ray's placement-group id, once known (lets a claim skip a lookup)."""

    @property
    def ready(self) -> bool:
        return self.node_id is not None

    @property
    def serial(self) -> int:
        parsed = parse_standby_name(self.name)
        return parsed[1] if parsed else 0


def _by_shape(members: Iterable[Standby]) -> dict[str, list[Standby]]:
    out: dict[str, list[Standby]] = {}
    for m in sorted(members, key=lambda m: (m.shape, m.serial, m.name)):
        out.setdefault(m.shape, []).append(m)
    return out


# ------------------------------------------------------------------------------------------ memory


@dataclass(slots=True)
class LaunchTimer:
    """Learns cold-launch times per shape from successive cluster views.

    Each rise in a shape's pending launches starts a clock; each node of the shape seen for the first time
    stops the oldest running clock. Nodes present at the first view are known, not launched.
    """

    samples: dict[str, list[float]] = field(default_factory=dict)
    started: dict[str, list[float]] = field(default_factory=dict)
    known_nodes: dict[str, list[str]] = field(default_factory=dict)
    last_pending: dict[str, int] = field(default_factory=dict)
    seeded: bool = False

    def observe(self, now: float, pending: Mapping[str, int], nodes: Mapping[str, Iterable[str]]) -> None:
        for shape in sorted(set(pending) | set(nodes) | set(self.known_nodes)):
            ids = sorted(set(nodes.get(shape, ())))
            known = set(self.known_nodes.get(shape, ()))
            new = [n for n in ids if n not in known]
            clocks = self.started.setdefault(shape, [])
            if self.seeded:
                for _ in new:
                    if clocks:
                        self._record(shape, now - clocks.pop(0))
            rise = int(pending.get(shape, 0)) - self.last_pending.get(shape, 0) + len(new)
            clocks.extend([now] * max(0, rise))
            # A launch that was given up on (pending fell with no node) must not time the next one.
            while len(clocks) > int(pending.get(shape, 0)):
                clocks.pop(0)
            self.last_pending[shape] = int(pending.get(shape, 0))
            self.known_nodes[shape] = ids
        self.seeded = True

    def _record(self, shape: str, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        s = self.samples.setdefault(shape, [])
        s.append(round(seconds, 3))
        del s[:-_MAX_LAUNCH_SAMPLES]

    def lead_time(self, shape: NodeShape, quantile: float) -> tuple[float, str]:
        s = self.samples.get(shape.name, [])
        if not s:
            return shape.launch_seconds, f"configured launch time {shape.launch_seconds:g} s"
        return _quantile(s, quantile), f"p{quantile * 100:g} of {len(s)} observed launches"


@dataclass(slots=True)
class PoolMemory:
    """What the pool remembers between ticks (JSON round trip via :meth:`to_json`/:meth:`from_json`)."""

    members: dict[str, Standby] = field(default_factory=dict)
    """Placeholders this daemon created and has not removed, by name."""
    next_serial: int = 1
    history: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    """(time, plan targets) of recent plans that were not held."""
    launches: LaunchTimer = field(default_factory=LaunchTimer)
    last_claim: dict[str, float] = field(default_factory=dict)
    """Shape → time of its last claim (a refill waits ``refill_delay_seconds`` after it)."""

    def remember_plan(self, now: float, targets: Mapping[str, int], keep_seconds: float) -> None:
        self.history.append((now, {k: int(v) for k, v in targets.items()}))
        cutoff = now - keep_seconds
        while self.history and self.history[0][0] < cutoff:
            self.history.pop(0)
        del self.history[:-_MAX_HISTORY]

    def new_name(self, shape: str) -> str:
        name = standby_name(shape, self.next_serial)
        self.next_serial += 1
        return name

    def to_json(self) -> dict[str, Any]:
        t = self.launches
        return {
            "version": 1,
            "members": [
                {"name": m.name, "shape": m.shape, "node_id": m.node_id, "pg_id": m.pg_id}
                for m in self.members.values()
            ],
            "next_serial": self.next_serial,
            "history": [[t0, dict(c)] for t0, c in self.history],
            "launches": {
                "samples": t.samples,
                "started": t.started,
                "known_nodes": t.known_nodes,
                "last_pending": t.last_pending,
                "seeded": t.seeded,
            },
            "last_claim": dict(self.last_claim),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> PoolMemory:
        """Tolerant: a missing or damaged record starts an empty pool (reconciliation adopts what exists)."""
        mem = cls()
        if not isinstance(obj, Mapping) or obj.get("version") != 1:
            return mem
        try:
            for m in obj.get("members", []):
                s = Standby(
                    str(m["name"]),
                    str(m["shape"]),
                    None if m.get("node_id") is None else str(m["node_id"]),
                    None if m.get("pg_id") is None else str(m["pg_id"]),
                )
                mem.members[s.name] = s
            mem.next_serial = max(1, int(obj.get("next_serial", 1)))
            mem.history = [(float(t0), {str(k): int(v) for k, v in c.items()}) for t0, c in obj["history"]]
            la = obj.get("launches", {})
            mem.launches = LaunchTimer(
                samples={str(k): [float(x) for x in v] for k, v in la.get("samples", {}).items()},
                started={str(k): [float(x) for x in v] for k, v in la.get("started", {}).items()},
                known_nodes={str(k): [str(x) for x in v] for k, v in la.get("known_nodes", {}).items()},
                last_pending={str(k): int(v) for k, v in la.get("last_pending", {}).items()},
                seeded=bool(la.get("seeded", False)),
            )
            mem.last_claim = {str(k): float(v) for k, v in obj.get("last_claim", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls(members=mem.members, next_serial=mem.next_serial)
        return mem


# ------------------------------------------------------------------------------------------ sizing


@dataclass(frozen=True, slots=True)
class PoolTargets:
    counts: Mapping[str, int]
    reasons: Mapping[str, str]
    """Shape → one line saying where its count came from (only shapes that have a reason)."""

    def cost_per_hour(self, shapes: Sequence[NodeShape]) -> float:
        prices = {s.name: s.price_per_hour for s in shapes}
        return sum(prices.get(k, 0.0) * v for k, v in self.counts.items())


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return 0.0
    pos = min(max(q, 0.0), 1.0) * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def expected_rise(
    history: Sequence[tuple[float, Mapping[str, int]]], shape: str, lead_s: float, q: float
) -> int:
    """The ``q`` quantile, over past plans, of how much the shape's target rose within ``lead_s`` after each
    (time-ordered history; a sliding-window maximum walked from the newest plan back)."""
    if len(history) < 2:
        return 0
    times = [t for t, _ in history]
    values = [int(c.get(shape, 0)) for _, c in history]
    rises: list[float] = []
    later: deque[int] = deque()  # indices after i within the lead time, values decreasing from the left
    for i in range(len(values) - 1, -1, -1):
        while later and times[later[0]] > times[i] + lead_s:
            later.popleft()
        rises.append(float(max(0, values[later[0]] - values[i])) if later else 0.0)
        while later and values[later[-1]] <= values[i]:
            later.pop()
        later.append(i)
    return math.ceil(_quantile(rises, q) - 1e-9)


def pool_targets(
    config: Config,
    memory: PoolMemory,
    plan_targets: Mapping[str, int],
    *,
    override: Mapping[str, int] | None = None,
) -> PoolTargets:
    """How many standby nodes of each shape to keep next to ``plan_targets`` (see docs/architecture.md)."""
    wp = config.warm_pool
    shapes = config.node_shapes()
    if not wp.enabled:
        return PoolTargets({s.name: 0 for s in shapes}, {})
    wanted: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for shape in shapes:
        if override is not None and shape.name in override:
            wanted[shape.name] = max(0, int(override[shape.name]))
            reasons[shape.name] = f"set by the policy to {wanted[shape.name]}"
            continue
        lead, lead_why = memory.launches.lead_time(shape, wp.launch_percentile)
        rise = expected_rise(memory.history, shape.name, lead, wp.percentile)
        floor = wp.min.get(shape.name, 0)
        wanted[shape.name] = max(rise, floor)
        if wanted[shape.name] > 0 or rise > 0:
            reasons[shape.name] = (
                f"p{wp.percentile * 100:g} rise of the plan within a {lead:.0f} s cold launch "
                f"({lead_why}) is {rise}" + (f"; min {floor}" if floor else "")
            )
    return _capped(config, wp, shapes, plan_targets, wanted, reasons)


def _capped(
    config: Config,
    wp: WarmPoolConfig,
    shapes: Sequence[NodeShape],
    plan_targets: Mapping[str, int],
    wanted: Mapping[str, int],
    reasons: dict[str, str],
) -> PoolTargets:
    by_name = {s.name: s for s in shapes}
    caps: dict[str, int] = {}
    for s in shapes:
        cap = max(0, s.max_count - int(plan_targets.get(s.name, 0)))
        if s.name in wp.max:
            cap = min(cap, wp.max[s.name])
        caps[s.name] = cap
    nodes_left = max(0, config.bounds.max_nodes - sum(int(v) for v in plan_targets.values()))
    plan_cost = sum(by_name[k].price_per_hour * int(v) for k, v in plan_targets.items() if k in by_name)
    money_left = min(wp.budget_per_hour, config.bounds.budget_per_hour - plan_cost)
    counts = {s.name: 0 for s in shapes}
    # One standby at a time to the shape least covered so far, so a tight budget is shared fairly and the
    # outcome does not depend on the order of the shapes.
    open_shapes = {k for k, v in wanted.items() if v > 0}
    while open_shapes and nodes_left > 0:
        name = min(open_shapes, key=lambda k: (counts[k] / wanted[k], by_name[k].price_per_hour, k))
        price = by_name[name].price_per_hour
        if counts[name] >= min(wanted[name], caps[name]) or price > money_left + 1e-9:
            open_shapes.discard(name)
            continue
        counts[name] += 1
        money_left -= price
        nodes_left -= 1
    for name, want in wanted.items():
        if counts[name] < want:
            limit = (
                "the shape's max"
                if counts[name] >= caps[name]
                else "bounds.max_nodes"
                if nodes_left <= 0
                else "the warm-pool budget"
                if wp.budget_per_hour <= config.bounds.budget_per_hour - plan_cost
                else "bounds.budget_per_hour"
            )
            reasons[name] = f"{reasons.get(name, '')}; capped at {counts[name]} by {limit}".lstrip("; ")
    return PoolTargets(counts, reasons)


# ------------------------------------------------------------------------------------------ claiming


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """What the tick does to the pool: claims first, then the floor, then new placeholders and retirements."""

    targets: PoolTargets
    claims: tuple[Standby, ...] = ()
    """Ready standby nodes handed to the plan (their placeholder is removed)."""
    cold: Mapping[str, int] = field(default_factory=dict)
    """Shape → nodes the plan adds that the pool could not give (they launch cold: pool misses)."""
    create: tuple[Standby, ...] = ()
    """New placeholders (refills); each makes the autoscaler launch a node unless an idle one takes it."""
    retire: tuple[Standby, ...] = ()
    """Placeholders over the target: removed, and their node (if any) drained."""
    floor: Mapping[str, int] = field(default_factory=dict)
    """The autoscaler floor per shape: planned nodes plus the placeholders kept or created this tick."""


def plan_pool(
    *,
    now: float,
    config: Config,
    memory: PoolMemory,
    plan_targets: Mapping[str, int],
    plan_current: Mapping[str, int],
    targets: PoolTargets,
) -> PoolPlan:
    """Claims for the plan's additions, cold launches for the rest, refills and retirements."""
    wp = config.warm_pool
    members = _by_shape(memory.members.values())
    claims: list[Standby] = []
    cold: dict[str, int] = {}
    create: list[Standby] = []
    retire: list[Standby] = []
    serial = memory.next_serial
    floor: dict[str, int] = {}
    for shape in (s.name for s in config.node_shapes()):
        mine = members.get(shape, [])
        ready = [m for m in mine if m.ready]
        waiting = [m for m in mine if not m.ready]
        add = max(0, int(plan_targets.get(shape, 0)) - int(plan_current.get(shape, 0)))
        take = ready[: min(add, len(ready))]
        claims.extend(take)
        if add > len(take) and wp.enabled:
            cold[shape] = add - len(take)
        left_ready = ready[len(take) :]
        have = len(left_ready) + len(waiting)
        want = int(targets.counts.get(shape, 0))
        if have > want:
            # Those without a node first: nothing to drain.
            order = sorted(waiting, key=lambda m: -m.serial) + sorted(left_ready, key=lambda m: -m.serial)
            retire.extend(order[: have - want])
            have = want
        elif have < want:
            recent_claim = memory.last_claim.get(shape)
            if not take and (recent_claim is None or now - recent_claim >= wp.refill_delay_seconds):
                for _ in range(want - have):
                    create.append(Standby(standby_name(shape, serial), shape))
                    serial += 1
                have = want
            # else: a refill created next to a claim could take the claimed node back before the
            # waiting work is scheduled on it; it waits ``refill_delay_seconds``.
        # The floor covers the plan and the placeholders that exist (or are created now), not the target:
        # a node launched for a placeholder not created yet would look like an idle node of the plan's.
        floor[shape] = int(plan_targets.get(shape, 0)) + have
    return PoolPlan(
        targets=targets,
        claims=tuple(claims),
        cold=cold,
        create=tuple(create),
        retire=tuple(retire),
        floor=floor,
    )


def _fits(need: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v > 0)


def claims_for_waiting(
    waiting: Sequence[Resources],
    ready: Sequence[Standby],
    shapes: Sequence[NodeShape],
    *,
    already: Sequence[Standby] = (),
) -> tuple[list[Standby], list[Resources]]:
    """Ready standby nodes to claim for work waiting in Ray for resources, and the bundles none can take.

    First fit, largest bundle first: into the nodes of ``already`` (claimed moments ago; the GCS may still
    list the work they were claimed for), then the standby nodes chosen so far, then the cheapest ready
    shape that fits — a GPU shape only for a bundle that asks for a GPU or that no CPU-only standby holds.
    Deterministic.
    """
    by_name = {s.name: s for s in shapes}
    pool = _by_shape(m for m in ready if m.ready and m.shape in by_name)
    order = sorted(
        (b for b in waiting if any(v > 0 for v in b.values())),
        key=lambda b: (-sum(b.values()), sorted(b.items())),
    )
    chosen: list[tuple[Standby, dict[str, float]]] = [
        (m, {k: float(v) for k, v in by_name[m.shape].resources.items()})
        for m in already
        if m.shape in by_name
    ]
    n_already = len(chosen)
    unserved: list[Resources] = []
    for bundle in order:
        placed = False
        for _, free in chosen:
            if _fits(bundle, free):
                for k, v in bundle.items():
                    free[k] = free.get(k, 0.0) - v
                placed = True
                break
        if placed:
            continue
        wants_gpu = bundle.get("GPU", 0.0) > 0
        candidates = [
            by_name[name]
            for name, ms in pool.items()
            if ms
            and _fits(bundle, by_name[name].resources)
            and (wants_gpu or by_name[name].capacity("GPU") == 0 or _only_gpu_fits(bundle, by_name, pool))
        ]
        if not candidates:
            unserved.append(bundle)
            continue
        shape = min(candidates, key=lambda s: (s.price_per_hour, s.name))
        member = pool[shape.name].pop(0)
        free = {k: float(v) for k, v in shape.resources.items()}
        for k, v in bundle.items():
            free[k] = free.get(k, 0.0) - v
        chosen.append((member, free))
    return [m for m, _ in chosen[n_already:]], unserved


def _only_gpu_fits(
    bundle: Resources, by_name: Mapping[str, NodeShape], pool: Mapping[str, list[Standby]]
) -> bool:
    """A CPU bundle may take a GPU standby only when no CPU-only standby can hold it."""
    return not any(
        ms and by_name[n].capacity("GPU") == 0 and _fits(bundle, by_name[n].resources)
        for n, ms in pool.items()
    )


def active_counts(
    live: Mapping[str, int],
    pending: Mapping[str, int],
    members: Iterable[Standby],
    retiring: Mapping[str, int],
) -> tuple[dict[str, int], dict[str, int]]:
    """Live and pending counts per shape as the plan should see them: standby and retiring nodes left out,
    and one pending launch per placeholder still waiting for its node (that launch is the pool's)."""
    ready: dict[str, int] = {}
    waiting: dict[str, int] = {}
    for m in members:
        (ready if m.ready else waiting)[m.shape] = (ready if m.ready else waiting).get(m.shape, 0) + 1
    shapes = set(live) | set(pending) | set(ready) | set(waiting)
    out_live = {s: max(0, int(live.get(s, 0)) - ready.get(s, 0) - retiring.get(s, 0)) for s in shapes}
    out_pending = {s: max(0, int(pending.get(s, 0)) - waiting.get(s, 0)) for s in shapes}
    return out_live, out_pending
