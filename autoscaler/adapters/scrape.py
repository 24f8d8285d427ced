"""Scrape Ray's own exporters and evaluate raytide's default templates in-process: no Prometheus needed.

The embedded default metrics source. Each ``scrape()`` round reads the exporter list from Ray's service
discovery (re-read every round, so nodes that join or leave are followed), fetches every exporter
concurrently, parses the Prometheus text format and keeps the few metric families the templates use, stamped
with the round's time. ``query_templates()`` then answers the same template names as ``PrometheusSource``
with the same labels and the same arithmetic, so ``build_snapshot`` cannot tell the two apart.

This is not a PromQL engine. ``PLANS`` spells out each default template as a small expression tree whose
``promql()`` must reproduce ``queries.TEMPLATES`` verbatim; a template whose text no longer matches (edited in
queries.py) or that the user overrode in ``prometheus.queries`` is answered with an error, never guessed at.

Prometheus semantics kept on purpose, because the Prometheus path is the reference:

- every target adds ``instance`` = its ``host:port`` and the discovery labels (``job``); a scraped label of
  the same name is kept as ``exported_<name>``; empty label values are dropped;
- a target that fails, or leaves discovery, gets staleness markers: its series vanish from instant
  selections at once (rather than lingering for the 5-minute lookback) and range functions use what is left;
- ranges are left-open ``(t - window, t]`` (Prometheus 3); ``rate()`` treats any drop as a counter reset and
  extrapolates like Prometheus' ``extrapolatedRate``; ``deriv()`` is the least-squares slope;
- instant selections look back at most ``LOOKBACK_SECONDS`` (Prometheus' default 5 minutes);
- NaN and ±Inf propagate through the arithmetic and become an unknown ``Reading`` at the end, never 0.

Differences: timestamps in the exposition are ignored (Ray sends none; its clock could be skewed against
ours), and only plain ``http://<host:port>/metrics`` targets are scraped (file_sd's ``__scheme__`` and
``__metrics_path__`` are not honoured).

Usage::

    async with RayExporterSource(config=cfg.prometheus, discovery=FileDiscovery()) as source:
        results = await source.query_templates()      # scrapes first, then evaluates
    snapshot = build_snapshot(cfg, now, results)

Rates need history: call ``query_templates()`` (or ``scrape()``) every tick; the first answer has backlogs
but no rates yet (their series are absent, so observe reports them unknown).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Protocol, Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.core.config import PrometheusConfig
from autoscaler.core.queries import (
    TEMPLATE_NAMES,
    TEMPLATES,
    WINDOW_PLACEHOLDER,
    PrometheusConfigError,
    QueryResult,
    Sample,
    check_template_names,
    make_sample,
)
from autoscaler.types import Reading

__all__ = [
    "DASHBOARD_SD_PATH",
    "DEFAULT_DISCOVERY_FILE",
    "LOOKBACK_SECONDS",
    "PLANS",
    "DashboardDiscovery",
    "Discovery",
    "DiscoveryError",
    "FileDiscovery",
    "RayExporterSource",
    "ScrapeReport",
    "SeriesStore",
    "StaticDiscovery",
    "Target",
    "TargetReport",
    "aggregate",
    "avg_over_time",
    "deriv",
    "evaluate_template",
    "labels_of",
    "parse_exposition",
    "parse_service_discovery",
    "rate",
    "select_instant",
    "select_range",
]

DEFAULT_DISCOVERY_FILE = Path("/tmp/ray/prom_metrics_service_discovery.json")
"""Where Ray (2.60) keeps its Prometheus file_sd list: the dashboard writes
``<session dir>/prom_metrics_service_discovery.json`` every 5 s and links it here (``<temp dir>``)."""

DASHBOARD_SD_PATH = "/api/prometheus/sd"
"""The dashboard's HTTP service discovery endpoint (same JSON as the file)."""

LOOKBACK_SECONDS = 300.0
"""How far back an instant selection looks for a series' newest sample (Prometheus' default)."""

_HISTORY_MARGIN_SECONDS = 15.0
_MAX_BACKOFF_SECONDS = 2.0
_EXCERPT = 200
_MAX_ERRORS_IN_MESSAGE = 5
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"

Labels = tuple[tuple[str, str], ...]
"""Sorted ``(name, value)`` pairs, without the metric name and without empty values."""
Point = tuple[float, float]
"""(Unix time, value)."""
StoredPoint = tuple[float, float | None]
"""(Unix time, value), or (time, None): a staleness marker — the series ended there."""
SeriesKey = tuple[str, Labels]
"""(metric name, labels)."""
Vector = dict[Labels, float]
"""An instant vector: labels → value."""


# --- pure evaluation ------------------------------------------------------------------------------------


def labels_of(labels: Mapping[str, str]) -> Labels:
    """Canonical labels; an empty value means "no such label" in Prometheus, so it is dropped."""
    return tuple(sorted((k, v) for k, v in labels.items() if v != ""))


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


# --- the default templates as expression trees ----------------------------------------------------------

SeriesData = Mapping[str, Mapping[Labels, Sequence[StoredPoint]]]
"""Metric name → labels → samples in time order (what ``SeriesStore.series`` holds)."""


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
_EVALUABLE = frozenset(n for n, plan in PLANS.items() if TEMPLATES.get(n) == plan.promql())
_METRICS = frozenset(m for n in _EVALUABLE for m in PLANS[n].metrics())


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
    if name not in _EVALUABLE:
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


# --- sample storage ------------------------------------------------------------------------------------


class SeriesStore:
    """Samples of the scraped series, per target, with Prometheus-style staleness and bounded history.

    Pure bookkeeping: every time is passed in. ``retention`` is how much history is kept behind the newest
    round (each series also keeps its newest sample, so freshness can still tell how old it is); series
    that ended or fell out of the lookback are forgotten, so memory follows the live series, not uptime.
    """

    def __init__(self, *, retention: float, lookback: float = LOOKBACK_SECONDS) -> None:
        if retention <= 0 or lookback <= 0:
            raise ValueError("retention and lookback must be > 0")
        self._retention = retention
        self._lookback = lookback
        self._series: dict[str, dict[Labels, deque[StoredPoint]]] = {}
        self._by_target: dict[str, set[SeriesKey]] = {}

    @property
    def series(self) -> SeriesData:
        """Metric → labels → samples (a live view: do not hold it across ``ingest``)."""
        return self._series

    @property
    def targets(self) -> frozenset[str]:
        """Targets whose series are live (answered in their latest round)."""
        return frozenset(t for t, keys in self._by_target.items() if keys)

    def sample_count(self) -> int:
        return sum(len(points) for by_labels in self._series.values() for points in by_labels.values())

    def ingest(self, target: str, at: float, samples: Mapping[SeriesKey, float]) -> None:
        """One successful scrape of ``target`` at ``at``; series it no longer exposes end here."""
        previous = self._by_target.get(target, set())
        for (metric, labels), value in samples.items():
            self._append(metric, labels, at, value)
        for metric, labels in previous - samples.keys():
            self._append(metric, labels, at, None)
        self._by_target[target] = set(samples)

    def mark_stale(self, target: str, at: float) -> None:
        """``target`` failed or left discovery: all its series end at ``at``."""
        for metric, labels in self._by_target.pop(target, set()):
            self._append(metric, labels, at, None)

    def _append(self, metric: str, labels: Labels, at: float, value: float | None) -> None:
        points = self._series.setdefault(metric, {}).setdefault(labels, deque())
        if points and at <= points[-1][0]:
            # Out of order (the clock stepped back): Prometheus refuses such samples too.
            return
        if value is None and (not points or points[-1][1] is None):
            return
        points.append((at, value))

    def prune(self, now: float) -> None:
        """Forget what no query at or after ``now - retention`` can see any more."""
        cutoff = now - self._retention
        for metric in list(self._series):
            by_labels = self._series[metric]
            for labels in list(by_labels):
                points = by_labels[labels]
                while len(points) > 1 and points[0][0] < cutoff:
                    points.popleft()
                last_t, last_v = points[-1]
                if (last_v is None and last_t < cutoff) or last_t <= now - self._lookback:
                    del by_labels[labels]
            if not by_labels:
                del self._series[metric]


def parse_exposition(
    text: str, *, wanted: Collection[str] | None = None, target_labels: Mapping[str, str] | None = None
) -> dict[SeriesKey, float]:
    """Prometheus text format → series (only ``wanted`` sample names, if given), with the target's labels.

    The whole text is parsed even when little is kept, so an answer that is not the text format is an
    error (``ValueError`` or whatever the parser raises), never an exporter with nothing to say."""
    extra = dict(target_labels or {})
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if wanted is not None and s.name not in wanted:
                continue
            labels = dict(s.labels)
            for name, value in extra.items():
                if name in labels:
                    labels[f"exported_{name}"] = labels.pop(name)
                labels[name] = value
            # A repeated series in one answer: Prometheus keeps the first and rejects the rest.
            out.setdefault((s.name, labels_of(labels)), float(s.value))
    return out


# --- discovery -----------------------------------------------------------------------------------------


class DiscoveryError(Exception):
    """The exporter list cannot be read; the message says where from and what to do."""


@dataclass(frozen=True, slots=True)
class Target:
    """One exporter: ``address`` is ``host:port``; ``labels`` are added to all its series."""

    address: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class Discovery(Protocol):
    """Where the exporter list comes from; asked once per scrape round."""

    @property
    def description(self) -> str: ...

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        """The current targets; raises ``DiscoveryError`` when they cannot be known."""
        ...


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):[0-9]{1,5}$")
_SD_FORMAT = 'a JSON list of {"labels": {...}, "targets": ["host:port", ...]} (Prometheus file_sd)'


def _check_address(address: object, where: str) -> str:
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise DiscoveryError(f"{where}: target {address!r} is not host:port")
    return address


def parse_service_discovery(data: Any, *, source: str) -> tuple[Target, ...]:
    """Prometheus file_sd / http_sd JSON (as Ray writes it) → targets, first occurrence of an address wins.

    Labels starting with ``__`` are dropped, as Prometheus drops them after relabelling."""
    if not isinstance(data, list):
        raise DiscoveryError(f"{source}: expected {_SD_FORMAT}, got {type(data).__name__}")
    seen: dict[str, Target] = {}
    for i, group in enumerate(data):
        where = f"{source}: group {i}"
        if not isinstance(group, dict) or not isinstance(group.get("targets"), list):
            raise DiscoveryError(f"{where}: expected an object with a 'targets' list; format is {_SD_FORMAT}")
        raw_labels = group.get("labels") or {}
        if not isinstance(raw_labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_labels.items()
        ):
            raise DiscoveryError(f"{where}: 'labels' must map strings to strings")
        # An ``instance`` label here would override host:port for a whole group (Prometheus allows that),
        # and merge the per-node series that only host:port tells apart on a fake cluster.
        labels = MappingProxyType(
            {k: v for k, v in raw_labels.items() if not k.startswith("__") and k != "instance" and v}
        )
        for address in group["targets"]:
            checked = _check_address(address, where)
            seen.setdefault(checked, Target(checked, labels))
    return tuple(seen.values())


class StaticDiscovery:
    """A fixed exporter list: ``["10.0.0.1:8080", ...]``, or address → extra labels."""

    def __init__(
        self,
        targets: Iterable[str] | Mapping[str, Mapping[str, str]],
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(labels or {})
        per_target = (
            {a: {**extra, **dict(ls)} for a, ls in targets.items()}
            if isinstance(targets, Mapping)
            else {a: extra for a in targets}
        )
        try:
            group = [{"labels": ls, "targets": [a]} for a, ls in per_target.items()]
            self._targets = parse_service_discovery(group, source="static targets")
        except DiscoveryError as e:
            raise PrometheusConfigError(str(e)) from e

    @property
    def description(self) -> str:
        return f"static targets ({', '.join(t.address for t in self._targets) or 'none'})"

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        return self._targets


class FileDiscovery:
    """Ray's service-discovery file, re-read every round (Ray replaces it atomically every 5 s)."""

    def __init__(self, path: Path | str = DEFAULT_DISCOVERY_FILE) -> None:
        self.path = Path(path)

    @property
    def description(self) -> str:
        return f"Ray's service-discovery file {self.path}"

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except OSError as e:
            raise DiscoveryError(
                f"cannot read Ray's service-discovery file {self.path} ({e.strerror or e}). Ray's dashboard "
                "writes it on the head node every 5 s (not when started with --include-dashboard=false); "
                "run raytide on the head node, give the file under Ray's --temp-dir (or "
                "<temp dir>/session_latest/) if Ray uses another one, use the dashboard's "
                f"{DASHBOARD_SD_PATH} or static exporter targets instead, or set prometheus.url"
            ) from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DiscoveryError(
                f"Ray's service-discovery file {self.path} is not JSON ({e}); expected {_SD_FORMAT}"
            ) from e
        return parse_service_discovery(data, source=str(self.path))


class DashboardDiscovery:
    """The Ray dashboard's ``/api/prometheus/sd`` endpoint (e.g. ``http://127.0.0.1:8265``)."""

    def __init__(self, url: str) -> None:
        base = httpx.URL(url.strip())
        if base.scheme not in ("http", "https") or not base.host:
            raise PrometheusConfigError(f"dashboard URL {url!r} is not an http(s) URL")
        self.url = base.join(DASHBOARD_SD_PATH)

    @property
    def description(self) -> str:
        return f"Ray dashboard service discovery {self.url}"

    async def discover(self, client: httpx.AsyncClient) -> tuple[Target, ...]:
        try:
            response = await client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError as e:
            raise DiscoveryError(
                f"cannot reach Ray's dashboard at {self.url} ({type(e).__name__}: {e}); is the dashboard "
                "running (ray[default]) and is the address right?"
            ) from e
        if response.status_code != 200:
            raise DiscoveryError(
                f"Ray's dashboard answered HTTP {response.status_code} at {self.url}: "
                f"{_excerpt(response.text)!r}"
            )
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DiscoveryError(f"{self.url} did not answer JSON ({e}); expected {_SD_FORMAT}") from e
        return parse_service_discovery(data, source=str(self.url))


# --- the source ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetReport:
    """What one exporter did in one round."""

    address: str
    error: str | None = None
    series: int = 0
    """Series kept from its answer (only the metric families the templates use)."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class ScrapeReport:
    """One scrape round: its time (the samples' timestamp), each target's outcome, discovery trouble."""

    time: float
    targets: tuple[TargetReport, ...] = ()
    discovery_error: str | None = None
    """Set when discovery failed this round; the targets known from the last good discovery were used."""

    @property
    def answered(self) -> int:
        return sum(1 for t in self.targets if t.ok)

    @property
    def errors(self) -> tuple[str, ...]:
        found = [f"discovery: {self.discovery_error}"] if self.discovery_error else []
        found.extend(f"{t.address}: {t.error}" for t in self.targets if t.error is not None)
        return tuple(found)


class _TargetFailed(Exception):
    pass


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…"


def _summary(errors: Sequence[str]) -> str:
    shown = "; ".join(errors[:_MAX_ERRORS_IN_MESSAGE])
    more = len(errors) - _MAX_ERRORS_IN_MESSAGE
    return shown + (f"; and {more} more" if more > 0 else "")


class RayExporterSource:
    """The default templates answered from Ray's exporters directly (see the module documentation).

    ``config`` supplies ``rate_window``, ``timeout_seconds`` (per request) and ``retries`` (per target per
    round, on connection trouble, timeouts, 5xx and 429); ``staleness_seconds`` is applied by observe to
    ``stage_freshness``. ``history_seconds`` is how much history is kept (default: the rate window plus a
    margin). ``clock`` is the only clock read (round times and the default evaluation time).
    ``scrape_on_query``: ``query_templates()`` without ``at`` runs a scrape round first, so one call is one
    fresh observation, like asking Prometheus.
    """

    def __init__(
        self,
        *,
        config: PrometheusConfig,
        discovery: Discovery,
        transport: httpx.AsyncBaseTransport | None = None,
        history_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        backoff_seconds: float = 0.2,
        scrape_on_query: bool = True,
        metrics_path: str = "/metrics",
    ) -> None:
        check_template_names(config.queries, what="prometheus.queries override")
        self._window = config.rate_window_seconds
        history = self._window + _HISTORY_MARGIN_SECONDS if history_seconds is None else history_seconds
        if not history >= self._window:
            raise PrometheusConfigError(
                f"history_seconds ({history_seconds}) must cover prometheus.rate_window "
                f"({config.rate_window})"
            )
        if backoff_seconds < 0:
            raise PrometheusConfigError("backoff_seconds must be >= 0")
        if not metrics_path.startswith("/"):
            raise PrometheusConfigError(f"metrics_path {metrics_path!r} must start with '/'")
        self._config = config
        self._discovery = discovery
        self._clock = clock
        self._backoff = backoff_seconds
        self._scrape_on_query = scrape_on_query
        self._metrics_path = metrics_path
        self._store = SeriesStore(retention=history)
        self._overridden = frozenset(
            name for name, text in config.queries.items() if text.strip() != TEMPLATES[name].strip()
        )
        self._queries = {n: t.replace(WINDOW_PLACEHOLDER, config.rate_window) for n, t in TEMPLATES.items()}
        self._targets: tuple[Target, ...] = ()
        self._last: ScrapeReport | None = None
        self._lock = asyncio.Lock()
        self._client = httpx.AsyncClient(
            timeout=config.timeout_seconds,
            transport=transport,
            headers={"Accept": _ACCEPT},
            # Exporters sit on cluster-internal addresses: a proxy from the environment only gets in the way.
            trust_env=False,
        )

    @property
    def templates(self) -> Mapping[str, str]:
        """Template name → the PromQL this source evaluates (window applied)."""
        return MappingProxyType(self._queries)

    @property
    def last_report(self) -> ScrapeReport | None:
        return self._last

    @property
    def store(self) -> SeriesStore:
        return self._store

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _now(self) -> float:
        return self._clock()

    async def scrape(self) -> ScrapeReport:
        """One round: discover, fetch every target concurrently, store what answered. Never raises for
        target or discovery trouble; the report says what went wrong."""
        async with self._lock:
            at = self._now()
            discovery_error: str | None = None
            try:
                targets = await self._discovery.discover(self._client)
            except DiscoveryError as e:
                # Prometheus keeps the last good target list when discovery breaks; so does this.
                discovery_error = str(e)
                targets = self._targets
            gone = {t.address for t in self._targets} - {t.address for t in targets}
            self._targets = targets
            outcomes = await asyncio.gather(*(self._scrape_target(t) for t in targets))
            # Applied in one synchronous step, so a concurrent query never sees half a round.
            for address in sorted(gone):
                self._store.mark_stale(address, at)
            reports = []
            for target, (samples, error) in zip(targets, outcomes, strict=True):
                if samples is None:
                    self._store.mark_stale(target.address, at)
                    reports.append(TargetReport(target.address, error=error))
                else:
                    self._store.ingest(target.address, at, samples)
                    reports.append(TargetReport(target.address, series=len(samples)))
            self._store.prune(at)
            self._last = ScrapeReport(time=at, targets=tuple(reports), discovery_error=discovery_error)
            return self._last

    async def _scrape_target(self, target: Target) -> tuple[dict[SeriesKey, float] | None, str | None]:
        try:
            text = await self._fetch(target)
        except _TargetFailed as e:
            return None, str(e)
        labels = {**target.labels, "instance": target.address}
        try:
            # A big exporter answer takes a while to parse; off the event loop, the daemon stays responsive.
            samples = await asyncio.to_thread(parse_exposition, text, wanted=_METRICS, target_labels=labels)
        except Exception as e:  # the parser raises many types for garbage; any of them means "not metrics"
            return (
                None,
                f"answer is not the Prometheus text format ({type(e).__name__}: {e}): {_excerpt(text)!r}",
            )
        return samples, None

    async def _fetch(self, target: Target) -> str:
        url = f"http://{target.address}{self._metrics_path}"
        attempts = self._config.retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS))
            try:
                response = await self._client.get(url)
            except httpx.TimeoutException as e:
                last = f"timed out after {self._config.timeout_seconds:g} s ({type(e).__name__})"
                continue
            except (httpx.NetworkError, httpx.RemoteProtocolError) as e:
                last = f"cannot reach {url}: {type(e).__name__}: {e}"
                continue
            except httpx.HTTPError as e:
                raise _TargetFailed(f"HTTP request to {url} failed: {type(e).__name__}: {e}") from e
            status = response.status_code
            if status == 429 or status >= 500:
                last = f"HTTP {status} from {url}: {_excerpt(response.text)!r}"
                continue
            if status != 200:
                raise _TargetFailed(f"HTTP {status} from {url}: {_excerpt(response.text)!r}")
            return response.text
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        raise _TargetFailed(f"{last} (gave up after {tries})")

    def _down(self) -> str | None:
        """Why nothing can be answered at all, or None."""
        report = self._last
        if report is None:
            return "no scrape round has run yet (call scrape() first)"
        if report.answered:
            return None
        if not report.targets:
            where = self._discovery.description
            reason = report.discovery_error or f"{where} lists no exporters"
            return f"no Ray exporter answered: {reason}"
        return f"no Ray exporter answered: {_summary(report.errors)}"

    async def query_templates(
        self, names: Iterable[str] | None = None, *, at: float | None = None
    ) -> dict[str, QueryResult]:
        """The named templates (all by default), one result per name; never raises for data problems (an
        unknown name is a programming error and raises). ``at`` evaluates at that Unix time over the
        history kept (no scrape then); without it, a scrape round runs first (``scrape_on_query``)."""
        chosen = TEMPLATE_NAMES if names is None else check_template_names(names)
        if at is None and self._scrape_on_query:
            await self.scrape()
        when = self._now() if at is None else at
        down = self._down()
        warnings = self._last.errors if self._last is not None else ()
        out: dict[str, QueryResult] = {}
        for name in chosen:
            query = self._queries[name]
            if name in self._overridden:
                out[name] = QueryResult.failed(
                    query,
                    f"prometheus.queries.{name} overrides this template, and only a Prometheus can evaluate "
                    "an override: set prometheus.url, or remove the override to use the embedded Ray "
                    "exporter scrape",
                )
            elif down is not None:
                out[name] = QueryResult.failed(query, down)
            elif name == "targets_down":
                # Prometheus' ``up == 0``: one series per exporter that did not answer this round.
                failed = self._last.targets if self._last is not None else ()
                out[name] = QueryResult(
                    query=query,
                    samples=tuple(
                        make_sample({"instance": t.address}, 0.0, when) for t in failed if not t.ok
                    ),
                )
            else:
                result = evaluate_template(
                    name,
                    self._store.series,
                    at=when,
                    window=self._window,
                    window_text=self._config.rate_window,
                )
                out[name] = QueryResult(
                    query=result.query, samples=result.samples, error=result.error, warnings=warnings
                )
        return out
