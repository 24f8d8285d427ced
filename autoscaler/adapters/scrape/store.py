"""The exposition store: Prometheus text-format answers parsed into series, kept over time.

``parse_exposition`` turns one exporter's answer into samples labelled like Prometheus would label them;
``SeriesStore`` keeps them per target with Prometheus-style staleness and a bounded history. Pure: every time
is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "LOOKBACK_SECONDS",
    "Labels",
    "Point",
    "SeriesData",
    "SeriesKey",
    "SeriesStore",
    "StoredPoint",
    "labels_of",
    "parse_exposition",
]

LOOKBACK_SECONDS = 300.0
"""How far back an instant selection looks for a series' newest sample (Prometheus' default)."""

Labels = tuple[tuple[str, str], ...]
"""Sorted ``(name, value)`` pairs, without the metric name and without empty values."""
Point = tuple[float, float]
"""(Unix time, value)."""
StoredPoint = tuple[float, float | None]
"""(Unix time, value), or (time, None): a staleness marker — the series ended there."""
SeriesKey = tuple[str, Labels]
"""(metric name, labels)."""
SeriesData = Mapping[str, Mapping[Labels, Sequence[StoredPoint]]]
"""Metric name → labels → samples in time order (what ``SeriesStore.series`` holds)."""


def labels_of(labels: Mapping[str, str]) -> Labels:
    """Canonical labels; an empty value means "no such label" in Prometheus, so it is dropped."""
    return tuple(sorted((k, v) for k, v in labels.items() if v != ""))


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
    """Prometheus text format → series (only ``wanted`` sample names, if given), with the target's labels
    (``instance`` and the discovery labels); a scraped label of the same name is kept as ``exported_<name>``.

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
