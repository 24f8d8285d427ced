"""Scrape Ray's own exporters and evaluate raytide's default templates in-process: no Prometheus needed.

The embedded default metrics source, in four parts: ``discovery`` (which exporters exist, re-read every
round), ``source`` (scrape rounds over them, with retries, and the template answers), ``store`` (the parsed
samples over time, with staleness) and ``promql`` (the small PromQL subset the default templates use). It
answers the same template names as ``PrometheusSource``, with the same labels and arithmetic, so
``build_snapshot`` cannot tell the two apart.

Usage::

    async with RayExporterSource(config=cfg.prometheus, discovery=FileDiscovery()) as source:
        results = await source.query_templates()      # scrapes first, then evaluates
    snapshot = build_snapshot(cfg, now, results)

Rates need history: call ``query_templates()`` (or ``scrape()``) every tick; the first answer has backlogs
but no rates yet (their series are absent, so observe reports them unknown).
"""

from autoscaler.adapters.scrape.discovery import (
    DASHBOARD_SD_PATH,
    DEFAULT_DISCOVERY_FILE,
    DashboardDiscovery,
    Discovery,
    DiscoveryError,
    FileDiscovery,
    StaticDiscovery,
    Target,
    parse_service_discovery,
)
from autoscaler.adapters.scrape.promql import (
    PLANS,
    Expr,
    Vector,
    aggregate,
    avg_over_time,
    deriv,
    evaluate_template,
    rate,
    select_instant,
    select_range,
)
from autoscaler.adapters.scrape.source import RayExporterSource, ScrapeReport, TargetReport
from autoscaler.adapters.scrape.store import (
    LOOKBACK_SECONDS,
    Labels,
    Point,
    SeriesData,
    SeriesKey,
    SeriesStore,
    StoredPoint,
    labels_of,
    parse_exposition,
)

__all__ = [
    "DASHBOARD_SD_PATH",
    "DEFAULT_DISCOVERY_FILE",
    "LOOKBACK_SECONDS",
    "PLANS",
    "DashboardDiscovery",
    "Discovery",
    "DiscoveryError",
    "Expr",
    "FileDiscovery",
    "Labels",
    "Point",
    "RayExporterSource",
    "ScrapeReport",
    "SeriesData",
    "SeriesKey",
    "SeriesStore",
    "StaticDiscovery",
    "StoredPoint",
    "Target",
    "TargetReport",
    "Vector",
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
