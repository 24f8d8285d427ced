"""The small PromQL subset raytide's default templates use, evaluated over stored series.

This is not a PromQL engine. ``PLANS`` spells out each default template as a small expression tree whose
``promql()`` must reproduce ``queries.TEMPLATES`` verbatim; a template whose text no longer matches (edited in
queries.py) is answered with an error, never guessed at. Pure: data in, answer out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from autoscaler.adapters.scrape.store import (
    LOOKBACK_SECONDS,
    Labels,
    Point,
    SeriesData,
    StoredPoint,
)
from autoscaler.core.queries import TEMPLATES, WINDOW_PLACEHOLDER, QueryResult, Sample
from autoscaler.types import Reading

__all__ = [
    "EVALUABLE",
    "METRICS",
    "PLANS",
    "Expr",
    "Vector",
    "aggregate",
    "avg_over_time",
    "deriv",
    "evaluate_template",
    "rate",
    "select_instant",
    "select_range",
]

Vector = dict[Labels, float]
"""An instant vector: labels → value."""


def select_instant(
    points: Sequence[StoredPoint], at: float, lookback: float = LOOKBACK_SECONDS
) -> Point | None:
    """The newest sample at or before ``at`` and after ``at - lookback``; None if there is none or the
    series had ended (staleness marker) by then. ``points`` are in time order."""
    for t, v in reversed(points):
        if t > at:
            continue
        if t <= at - lookback or v is None:
            return None
        return (t, v)
    return None


def select_range(points: Sequence[StoredPoint], *, start: float, end: float) -> list[Point]:
    """Samples in ``(start, end]``; staleness markers are not samples."""
    return [(t, v) for t, v in points if start < t <= end and v is not None]


def _mean(values: Sequence[float]) -> float:
    # fsum raises on inf + -inf; plain sum propagates NaN/Inf the way Prometheus does.
    if all(math.isfinite(v) for v in values):
        return math.fsum(values) / len(values)
    return sum(values) / len(values)


def _total(values: Sequence[float]) -> float:
    return math.fsum(values) if all(math.isfinite(v) for v in values) else sum(values)


def rate(points: Sequence[Point], *, start: float, end: float) -> float | None:
    """Prometheus' ``rate()`` over the range ``(start, end]``: per-second increase, any drop taken as a
    counter reset, extrapolated to the range boundaries like ``extrapolatedRate`` (Prometheus 3). None
    (no series) with fewer than two samples."""
    if len(points) < 2 or end <= start:
        return None
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    sampled = last_t - first_t
    if sampled <= 0:
        return None
    increase = last_v - first_v
    previous = first_v
    for _, v in points[1:]:
        if v < previous:
            # After a reset the counter restarted from 0, so everything counted before the drop is added.
            increase += previous
        previous = v
    average_step = sampled / (len(points) - 1)
    threshold = average_step * 1.1
    to_start = first_t - start
    to_end = end - last_t
    # A gap much larger than the usual step means the series started or ended inside the range:
    # extrapolate only half a step past the outermost samples, not all the way to the boundary.
    if to_start >= threshold:
        to_start = average_step / 2
    if increase > 0 and first_v >= 0:
        # A counter cannot have been below 0: do not extrapolate back past the point where it was 0.
        to_start = min(to_start, sampled * (first_v / increase))
    if to_end >= threshold:
        to_end = average_step / 2
    return increase * ((sampled + to_start + to_end) / sampled) / (end - start)


def deriv(points: Sequence[Point]) -> float | None:
    """Prometheus' ``deriv()``: the least-squares slope per second; None with fewer than two samples."""
    if len(points) < 2:
        return None
    ys = [v for _, v in points]
    if all(y == ys[0] for y in ys):
        # Prometheus special-cases a constant series so rounding cannot invent a slope.
        return math.nan if math.isinf(ys[0]) else 0.0
    t0 = points[0][0]
    xs = [t - t0 for t, _ in points]
    mean_x = _mean(xs)
    mean_y = _mean(ys)
    var_x = math.fsum((x - mean_x) ** 2 for x in xs)
    if var_x == 0:
        return None
    return _total([(x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)]) / var_x


def avg_over_time(points: Sequence[Point]) -> float | None:
    """Mean of the samples in the range; None when there are none."""
    if not points:
        return None
    return _mean([v for _, v in points])


AggregateOp = Literal["sum", "avg", "max"]


def _max(values: Sequence[float]) -> float:
    # Like Prometheus, a NaN loses to any number and is the answer only when every value is NaN.
    numbers = [v for v in values if not math.isnan(v)]
    return max(numbers) if numbers else math.nan


def aggregate(op: AggregateOp, by: Sequence[str], vector: Mapping[Labels, float]) -> Vector:
    """``<op> by (<by>) (vector)``: one output series per distinct value of the ``by`` labels."""
    keep = set(by)
    groups: dict[Labels, list[float]] = {}
    # Sorted input: float sums do not depend on the order series happened to arrive in.
    for labels in sorted(vector):
        key = tuple(pair for pair in labels if pair[0] in keep)
        groups.setdefault(key, []).append(vector[labels])
    combine: Callable[[Sequence[float]], float] = {"sum": _total, "avg": _mean, "max": _max}[op]
    return {key: combine(values) for key, values in groups.items()}


@dataclass(frozen=True, slots=True)
class _Context:
    series: SeriesData
    at: float
    window: float
    lookback: float


@dataclass(frozen=True, slots=True)
class Instant:
    """``metric``: each series' newest sample."""

    metric: str

    def promql(self) -> str:
        return self.metric

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})

    def evaluate(self, ctx: _Context) -> Vector:
        out: Vector = {}
        for labels, points in ctx.series.get(self.metric, {}).items():
            found = select_instant(points, ctx.at, ctx.lookback)
            if found is not None:
                out[labels] = found[1]
        return out


@dataclass(frozen=True, slots=True)
class Timestamp:
    """``timestamp(metric)``: when each series' newest sample was taken."""

    metric: str

    def promql(self) -> str:
        return f"timestamp({self.metric})"

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})

    def evaluate(self, ctx: _Context) -> Vector:
        out: Vector = {}
        for labels, points in ctx.series.get(self.metric, {}).items():
            found = select_instant(points, ctx.at, ctx.lookback)
            if found is not None:
                out[labels] = found[0]
        return out


RangeFunction = Literal["rate", "deriv", "avg_over_time"]


@dataclass(frozen=True, slots=True)
class OverWindow:
    """``<function>(metric[{window}])``."""

    function: RangeFunction
    metric: str

    def promql(self) -> str:
        return f"{self.function}({self.metric}[{WINDOW_PLACEHOLDER}])"

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})

    def evaluate(self, ctx: _Context) -> Vector:
        start = ctx.at - ctx.window
        out: Vector = {}
        for labels, stored in ctx.series.get(self.metric, {}).items():
            points = select_range(stored, start=start, end=ctx.at)
            if self.function == "rate":
                value = rate(points, start=start, end=ctx.at)
            elif self.function == "deriv":
                value = deriv(points)
            else:
                value = avg_over_time(points)
            if value is not None:
                out[labels] = value
        return out


@dataclass(frozen=True, slots=True)
class Aggregate:
    """``<op> by (<labels>) (<inner>)``."""

    op: AggregateOp
    by: tuple[str, ...]
    inner: Expr

    def promql(self) -> str:
        return f"{self.op} by ({', '.join(self.by)}) ({self.inner.promql()})"

    def metrics(self) -> frozenset[str]:
        return self.inner.metrics()

    def evaluate(self, ctx: _Context) -> Vector:
        return aggregate(self.op, self.by, self.inner.evaluate(ctx))


@dataclass(frozen=True, slots=True)
class Plus:
    """``<left> + <right>``, one-to-one on identical labels (series on one side only are dropped)."""

    left: Expr
    right: Expr

    def promql(self) -> str:
        return f"{self.left.promql()} + {self.right.promql()}"

    def metrics(self) -> frozenset[str]:
        return self.left.metrics() | self.right.metrics()

    def evaluate(self, ctx: _Context) -> Vector:
        right = self.right.evaluate(ctx)
        return {k: v + right[k] for k, v in self.left.evaluate(ctx).items() if k in right}


@dataclass(frozen=True, slots=True)
class SecondsSince:
    """``time() - <inner>``."""

    inner: Expr

    def promql(self) -> str:
        return f"time() - {self.inner.promql()}"

    def metrics(self) -> frozenset[str]:
        return self.inner.metrics()

    def evaluate(self, ctx: _Context) -> Vector:
        return {k: ctx.at - v for k, v in self.inner.evaluate(ctx).items()}


Expr = Instant | Timestamp | OverWindow | Aggregate | Plus | SecondsSince

_STAGE = ("dataset", "operator")
_NODE = ("instance", "ip")


def _by_stage(inner: Expr) -> Aggregate:
    return Aggregate("sum", _STAGE, inner)


PLANS: Mapping[str, Expr] = MappingProxyType(
    {
        "stage_backlog": _by_stage(Instant("ray_data_operator_queued_blocks")),
        "stage_throughput": _by_stage(OverWindow("rate", "ray_data_num_task_inputs_processed")),
        "stage_arrival": Plus(
            _by_stage(OverWindow("rate", "ray_data_num_task_inputs_processed")),
            _by_stage(OverWindow("deriv", "ray_data_operator_queued_blocks")),
        ),
        "stage_slots": _by_stage(OverWindow("avg_over_time", "ray_data_num_tasks_running")),
        "stage_cpu_cores": _by_stage(Instant("ray_data_cpu_usage_cores")),
        "stage_gpu_cores": _by_stage(Instant("ray_data_gpu_usage_cores")),
        "stage_freshness": SecondsSince(
            Aggregate("max", _STAGE, Timestamp("ray_data_operator_queued_blocks"))
        ),
        "node_cpu_utilization": Aggregate("avg", _NODE, Instant("ray_node_cpu_utilization")),
        "node_gpu_utilization": Aggregate("avg", _NODE, Instant("ray_node_gpus_utilization")),
        "node_mem_used": Aggregate("sum", _NODE, Instant("ray_node_mem_used")),
        "node_gram_used": Aggregate("sum", _NODE, Instant("ray_node_gram_used")),
        "nodes_active": Aggregate("max", ("NodeType",), Instant("autoscaler_active_nodes")),
        "nodes_pending": Aggregate("max", ("NodeType",), Instant("autoscaler_pending_nodes")),
    }
)
"""Template name → how it is evaluated in-process; ``PLANS[n].promql() == TEMPLATES[n]`` for every name."""

# Only a plan that still spells its template exactly is trusted; queries.py may change without this file.
EVALUABLE = frozenset(n for n, plan in PLANS.items() if TEMPLATES.get(n) == plan.promql())
"""The template names ``evaluate_template`` answers."""
METRICS = frozenset(m for n in EVALUABLE for m in PLANS[n].metrics())
"""The metric families those templates read: all a scrape needs to keep."""


def _reading(name: str, value: float) -> Reading:
    if math.isfinite(value):
        return Reading(value)
    return Reading.unknown(f"{name} evaluated to {value} (an exporter reported a NaN or infinite sample)")


def evaluate_template(
    name: str,
    series: SeriesData,
    *,
    at: float,
    window: float,
    window_text: str | None = None,
    lookback: float = LOOKBACK_SECONDS,
) -> QueryResult:
    """One default template evaluated over stored samples at Unix time ``at`` — pure: data in, answer out.

    ``window`` is the rate window in seconds; ``window_text`` only labels ``QueryResult.query``."""
    text = TEMPLATES.get(name, "")
    query = text.replace(WINDOW_PLACEHOLDER, window_text or f"{window:g}s")
    if name not in EVALUABLE:
        return QueryResult.failed(
            query,
            f"the embedded Ray exporter scrape cannot evaluate template {name!r} as now written; "
            "configure prometheus.url to use a Prometheus",
        )
    vector = PLANS[name].evaluate(_Context(series, at, window, lookback))
    samples = tuple(
        Sample(labels=MappingProxyType(dict(labels)), value=_reading(name, value), timestamp=at)
        for labels, value in sorted(vector.items())
    )
    return QueryResult(query=query, samples=samples)
