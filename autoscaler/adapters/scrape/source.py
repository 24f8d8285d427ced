"""The embedded metrics source: scrape rounds over Ray's exporters, then the default templates answered.

``RayExporterSource.scrape()`` discovers the exporters, fetches them concurrently (with retries) and stores
what answered; ``query_templates()`` answers the same template names as ``PrometheusSource``, with the same
labels and arithmetic, from the stored series. A template overridden in ``prometheus.queries`` is answered
with an error: only a Prometheus can evaluate an override.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Self

import httpx

from autoscaler.adapters.scrape.discovery import Discovery, DiscoveryError, Target, excerpt
from autoscaler.adapters.scrape.promql import METRICS, evaluate_template
from autoscaler.adapters.scrape.store import SeriesKey, SeriesStore, parse_exposition
from autoscaler.core.config import PrometheusConfig
from autoscaler.core.queries import (
    TEMPLATE_NAMES,
    TEMPLATES,
    WINDOW_PLACEHOLDER,
    PrometheusConfigError,
    QueryResult,
    check_template_names,
    make_sample,
)

__all__ = ["RayExporterSource", "ScrapeReport", "TargetReport"]

_HISTORY_MARGIN_SECONDS = 15.0
_MAX_BACKOFF_SECONDS = 2.0
_MAX_ERRORS_IN_MESSAGE = 5
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


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


def _summary(errors: Sequence[str]) -> str:
    shown = "; ".join(errors[:_MAX_ERRORS_IN_MESSAGE])
    more = len(errors) - _MAX_ERRORS_IN_MESSAGE
    return shown + (f"; and {more} more" if more > 0 else "")


class RayExporterSource:
    """The default templates answered from Ray's exporters directly (see the package documentation).

    Each target is fetched as plain ``http://<host:port><metrics_path>`` (file_sd's ``__scheme__`` and
    ``__metrics_path__`` are not honoured), and every sample takes the round's time: timestamps in the
    exposition are ignored (Ray sends none, and its clock could be skewed against ours).

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
            samples = await asyncio.to_thread(parse_exposition, text, wanted=METRICS, target_labels=labels)
        except Exception as e:  # the parser raises many types for garbage; any of them means "not metrics"
            return (
                None,
                f"answer is not the Prometheus text format ({type(e).__name__}: {e}): {excerpt(text)!r}",
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
                last = f"HTTP {status} from {url}: {excerpt(response.text)!r}"
                continue
            if status != 200:
                raise _TargetFailed(f"HTTP {status} from {url}: {excerpt(response.text)!r}")
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
