"""The PromQL raytide asks Prometheus, and the shape of the answers.

Pure data, so the observe step (pure) and the Prometheus adapter (httpx) can both import it. Every stage
template counts work in blocks and keeps exactly the ``dataset`` and ``operator`` labels; every node template
keeps ``instance`` and ``ip``. ``{window}`` (``PrometheusConfig.rate_window``) is the only placeholder,
substituted textually (PromQL uses braces itself). Why: docs/architecture.md, "Observing".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from autoscaler.core.config import PrometheusConfig
from autoscaler.types import Reading

WINDOW_PLACEHOLDER = "{window}"

_BY_STAGE = "sum by (dataset, operator)"
_BY_NODE = "by (instance, ip)"

TEMPLATES: Mapping[str, str] = MappingProxyType(
    {
        "stage_backlog": f"{_BY_STAGE} (ray_data_operator_queued_blocks)",
        # Cumulative gauges that Ray resets when a dataset ends; rate() treats the drop as a counter reset.
        "stage_throughput": f"{_BY_STAGE} (rate(ray_data_num_task_inputs_processed[{{window}}]))",
        # Work arriving = work done + growth of the queue. The sum can dip below 0 while a queue drains
        # faster than work arrives; observe clamps it (PromQL clamping would hide contradictory data).
        "stage_arrival": (
            f"{_BY_STAGE} (rate(ray_data_num_task_inputs_processed[{{window}}]))"
            f" + {_BY_STAGE} (deriv(ray_data_operator_queued_blocks[{{window}}]))"
        ),
        # Averaged over the same window as the throughput it is divided into: an instantaneous gauge paired
        # with a windowed rate makes per-slot rates (and the fitted scaling exponent) swing tick to tick.
        "stage_slots": f"{_BY_STAGE} (avg_over_time(ray_data_num_tasks_running[{{window}}]))",
        "stage_cpu_cores": f"{_BY_STAGE} (ray_data_cpu_usage_cores)",
        "stage_gpu_cores": f"{_BY_STAGE} (ray_data_gpu_usage_cores)",
        # An exporter that stops updating keeps its last value visible for Prometheus' 5-minute lookback;
        # this is how observe tells such a frozen value from a live one.
        "stage_freshness": (
            "time() - max by (dataset, operator) (timestamp(ray_data_operator_queued_blocks))"
        ),
        "node_cpu_utilization": f"avg {_BY_NODE} (ray_node_cpu_utilization)",
        # One series per GPU (GpuIndex); the node's figure is their mean.
        "node_gpu_utilization": f"avg {_BY_NODE} (ray_node_gpus_utilization)",
        "node_mem_used": f"sum {_BY_NODE} (ray_node_mem_used)",
        "node_gram_used": f"sum {_BY_NODE} (ray_node_gram_used)",
        # max, not sum: after a head restart the old session's series can linger beside the new one.
        "nodes_active": "max by (NodeType) (autoscaler_active_nodes)",
        "nodes_pending": "max by (NodeType) (autoscaler_pending_nodes)",
        # A scrape target that is down makes its series vanish, which would read as "no work" rather than
        # "unknown"; any answer here makes observe hold instead. Narrow it (e.g. up{job="ray"} == 0) on a
        # Prometheus shared with other jobs.
        "targets_down": "up == 0",
    }
)
"""Template name → default PromQL. ``node_gram_used`` is in MiB despite its name (Ray's unit)."""

TEMPLATE_NAMES: tuple[str, ...] = tuple(TEMPLATES)


class PrometheusConfigError(ValueError):
    """The Prometheus part of the configuration cannot be used (raised at construction, never per query)."""


def check_template_names(names: Iterable[str], *, what: str = "query template") -> tuple[str, ...]:
    """The names, in order, if all are known; otherwise an error that lists the valid ones."""
    names = tuple(names)
    unknown = sorted(set(names) - set(TEMPLATES))
    if unknown:
        raise PrometheusConfigError(
            f"unknown {what} name(s): {', '.join(unknown)}; valid names are: {', '.join(TEMPLATE_NAMES)}"
        )
    return names


def render_queries(config: PrometheusConfig) -> dict[str, str]:
    """Every template with the user's overrides applied and ``{window}`` replaced by ``rate_window``."""
    check_template_names(config.queries, what="prometheus.queries override")
    out: dict[str, str] = {}
    for name, default in TEMPLATES.items():
        text = config.queries.get(name, default)
        if not text.strip():
            raise PrometheusConfigError(f"prometheus.queries.{name} is empty")
        out[name] = text.replace(WINDOW_PLACEHOLDER, config.rate_window)
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant-query answer."""

    labels: Mapping[str, str]
    value: Reading
    """Unknown (never 0) when Prometheus answered NaN or ±Inf."""
    timestamp: float
    """Evaluation time Prometheus reported, in Unix seconds."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to one instant query: samples, or the reason the whole query is unknown.

    An empty ``samples`` with no ``error`` is a real answer: Prometheus has no such series right now.
    """

    query: str = ""
    samples: tuple[Sample, ...] = ()
    error: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @staticmethod
    def failed(query: str, error: str) -> QueryResult:
        return QueryResult(query=query, error=error)


def make_sample(labels: Mapping[str, str], value: float | Reading, timestamp: float = 0.0) -> Sample:
    """A sample with read-only labels (handy for tests and other sources that produce QueryResults)."""
    reading = value if isinstance(value, Reading) else Reading.of(value)
    return Sample(labels=MappingProxyType(dict(labels)), value=reading, timestamp=timestamp)


__all__ = [
    "TEMPLATES",
    "TEMPLATE_NAMES",
    "WINDOW_PLACEHOLDER",
    "PrometheusConfigError",
    "QueryResult",
    "Sample",
    "check_template_names",
    "make_sample",
    "render_queries",
]
