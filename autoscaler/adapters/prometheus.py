"""Read metrics from a Prometheus server (instant queries over its HTTP API).

Data problems never raise: a query that cannot be answered becomes ``QueryResult(error=...)`` and a NaN
or infinite sample an unknown ``Reading``, so one bad query cannot take the whole tick down and nothing
is silently turned into 0. Only configuration that cannot work raises ``PrometheusConfigError``, in the
constructor. Credentials in the URL become the client's basic auth and never appear in any text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import reprlib
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

import httpx

from autoscaler.core.config import PrometheusConfig
from autoscaler.core.queries import (
    TEMPLATE_NAMES,
    PrometheusConfigError,
    QueryResult,
    Sample,
    check_template_names,
    render_queries,
)
from autoscaler.core.redact import redact_text, redact_url
from autoscaler.types import Reading

__all__ = ["PrometheusConfigError", "PrometheusSource", "QueryResult", "Sample"]

_QUERY_PATH = "api/v1/query"
_MAX_BACKOFF_SECONDS = 2.0
_BODY_EXCERPT = 200
_MIN_SECRET_LENGTH = 4
"""Shorter passwords are not masked inside other text: they occur in ordinary words and numbers, and the
texts here never hold a credential in the first place (the URL the client knows has none)."""

# Bounded in depth and length: an answer's bad part is shown, however deep or long the answer is.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 80, 80


class _Transient(Exception):
    """A failure worth another attempt (connection trouble, timeout, 5xx, 429)."""


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise PrometheusConfigError(
            f"prometheus.{what} {str(path)!r} cannot be read: {e.strerror or e}"
        ) from e
    if not text:
        raise PrometheusConfigError(f"prometheus.{what} {str(path)!r} is empty")
    return text


def _ssl_verify(config: PrometheusConfig) -> ssl.SSLContext | bool:
    if not (config.ca_file or config.cert_file or config.insecure_skip_verify):
        return True
    try:
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        if config.cert_file:
            ctx.load_cert_chain(str(config.cert_file), str(config.key_file) if config.key_file else None)
    except (OSError, ssl.SSLError) as e:
        raise PrometheusConfigError(f"prometheus TLS files cannot be used: {e}") from e
    if config.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "…"


class PrometheusSource:
    """Instant queries against one Prometheus (or a compatible API: Thanos, Mimir, VictoriaMetrics).

    ``transport`` replaces the network (tests); ``backoff_seconds`` is the first pause between attempts,
    doubled after each failure. ::

        async with PrometheusSource(config=cfg.prometheus) as source:
            results = await source.query_templates()
        snapshot = build_snapshot(cfg, now, results)
    """

    def __init__(
        self,
        *,
        config: PrometheusConfig,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_seconds: float = 0.2,
    ) -> None:
        raw = (config.url or "").strip()
        if not raw:
            raise PrometheusConfigError("prometheus.url is not set")
        url = _parse_url(raw)
        if backoff_seconds < 0:
            raise PrometheusConfigError("backoff_seconds must be >= 0")
        self._config = config
        self._templates = render_queries(config)
        self._backoff = backoff_seconds
        self._secrets = tuple(
            s
            for s in (url.password, _userinfo_password(url), config.password, config.bearer_token)
            if s and len(s) >= _MIN_SECRET_LENGTH
        )
        self._pending: dict[int, tuple[str, float | None]] = {}
        self._next_id = 0
        # Read once here so a wrong path fails at startup; read again per request so rotation works.
        if config.bearer_token_file:
            _read_secret(config.bearer_token_file, "bearer_token_file")
        if config.password_file:
            _read_secret(config.password_file, "password_file")
        # The URL's userinfo becomes basic auth (what httpx would do with it), so the URL the client holds,
        # logs and puts in its errors carries no password.
        auth = httpx.BasicAuth(url.username, url.password) if url.username or url.password else None
        self._client = httpx.AsyncClient(
            base_url=url.copy_with(username=None, password=None),
            auth=auth,
            timeout=config.timeout_seconds,
            verify=_ssl_verify(config),
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=True,
        )

    @property
    def templates(self) -> Mapping[str, str]:
        """Template name → the PromQL actually sent (overrides and window applied)."""
        return MappingProxyType(self._templates)

    @property
    def url(self) -> str:
        """The server's base URL, without credentials."""
        return str(self._client.base_url)

    def pending(self) -> list[tuple[str, float | None]]:
        """The queries sent and not yet answered (with their ``at``), oldest first: what a caller whose
        deadline fired was waiting for."""
        return list(self._pending.values())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def query_templates(
        self, names: Iterable[str] | None = None, *, at: float | None = None
    ) -> dict[str, QueryResult]:
        """Run the named templates (all by default) concurrently; one result per name, never raises for
        data problems (an unknown template name is a programming error and raises). ``at``: see ``query``."""
        chosen = TEMPLATE_NAMES if names is None else check_template_names(names)
        results = await asyncio.gather(*(self.query(self._templates[n], at=at) for n in chosen))
        return dict(zip(chosen, results, strict=True))

    async def query(self, promql: str, *, at: float | None = None) -> QueryResult:
        """One instant query, retried on transient failures; every failure becomes ``QueryResult.error``.

        ``at`` evaluates the query at that Unix time instead of the server's now (PromQL ``time()`` follows
        it, so ``stage_freshness`` stays meaningful for past instants)."""
        key = self._next_id
        self._next_id += 1
        self._pending[key] = (promql, at)
        try:
            result = await self._query(promql, at)
        finally:
            del self._pending[key]
        if result.error is not None:
            return QueryResult.failed(promql, redact_text(result.error, self._secrets))
        return result

    async def _query(self, promql: str, at: float | None) -> QueryResult:
        attempts = self._config.retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(min(self._backoff * 2 ** (attempt - 1), _MAX_BACKOFF_SECONDS))
            try:
                return await self._attempt(promql, at)
            except _Transient as e:
                last = str(e)
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        return QueryResult.failed(promql, f"{last} (gave up after {tries})")

    def _auth_headers(self) -> dict[str, str]:
        c = self._config
        if c.bearer_token_file:
            return {"Authorization": f"Bearer {_read_secret(c.bearer_token_file, 'bearer_token_file')}"}
        if c.bearer_token:
            return {"Authorization": f"Bearer {c.bearer_token}"}
        if c.username:
            password = c.password or ""
            if c.password_file:
                password = _read_secret(c.password_file, "password_file")
            raw = f"{c.username}:{password}".encode()
            return {"Authorization": f"Basic {base64.b64encode(raw).decode('ascii')}"}
        return {}

    async def _attempt(self, promql: str, at: float | None) -> QueryResult:
        try:
            headers = self._auth_headers()
        except PrometheusConfigError as e:
            # A rotated-away secret is a per-query failure, not a crash of the loop.
            return QueryResult.failed(promql, str(e))
        try:
            params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
            response = await self._client.get(_QUERY_PATH, params=params, headers=headers)
        except httpx.TimeoutException as e:
            raise _Transient(
                f"Prometheus timed out ({type(e).__name__}) after {self._config.timeout_seconds} s"
            ) from e
        except (httpx.NetworkError, httpx.RemoteProtocolError) as e:
            raise _Transient(
                f"cannot reach Prometheus at {self._client.base_url}: {type(e).__name__}: {e}"
            ) from e
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            # InvalidURL: a request URL httpx refuses (e.g. an overlong query); not an HTTPError subclass.
            return QueryResult.failed(promql, f"HTTP request failed: {type(e).__name__}: {e}")
        return self._interpret(promql, response)

    def _interpret(self, promql: str, response: httpx.Response) -> QueryResult:
        status = response.status_code
        try:
            body: Any = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        except RecursionError:
            return QueryResult.failed(
                promql, f"Prometheus answer (HTTP {status}) is nested too deeply to read"
            )
        api_error = _api_error(body)
        if status == 429 or status >= 500:
            raise _Transient(f"Prometheus answered HTTP {status}" + (f": {api_error}" if api_error else ""))
        if status >= 400 or (isinstance(body, dict) and body.get("status") == "error"):
            detail = api_error or _excerpt(response.text) or response.reason_phrase
            return QueryResult.failed(promql, f"Prometheus rejected the query (HTTP {status}): {detail}")
        if status >= 300:
            return QueryResult.failed(promql, f"unexpected HTTP {status} from Prometheus")
        if body is None:
            ctype = response.headers.get("content-type", "no content-type")
            return QueryResult.failed(
                promql, f"Prometheus answer is not JSON ({ctype}): {_excerpt(response.text)!r}"
            )
        try:
            return _parse_success(promql, body)
        except RecursionError:
            return _shape_error(promql, "nested too deeply to read")


def _parse_url(raw: str) -> httpx.URL:
    shown = redact_url(raw)
    try:
        url = httpx.URL(raw)
        port = url.port
    except httpx.InvalidURL as e:
        raise PrometheusConfigError(
            f"prometheus.url {shown!r} is not a valid URL: {redact_text(str(e))}"
        ) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise PrometheusConfigError(f"prometheus.url {shown!r} is not an http(s) URL")
    if port is not None and not 0 < port < 65536:
        raise PrometheusConfigError(f"prometheus.url {shown!r}: port {port} is not in 1-65535")
    return url


def _userinfo_password(url: httpx.URL) -> str:
    """The password as written in the URL (percent-encoded), which may differ from ``url.password``."""
    _, _, password = url.userinfo.decode("ascii", "replace").partition(":")
    return password


def _api_error(body: Any) -> str | None:
    if isinstance(body, dict) and body.get("status") == "error":
        kind = body.get("errorType")
        text = body.get("error")
        shown = text if isinstance(text, str) else _SHORT.repr(text)
        if kind:
            return f"{kind if isinstance(kind, str) else _SHORT.repr(kind)}: {shown}"
        return shown
    return None


def _shape_error(promql: str, what: str) -> QueryResult:
    return QueryResult.failed(promql, f"unexpected answer shape from Prometheus: {what}")


def _parse_value(pair: Any) -> tuple[float, Reading] | None:
    """``[<unix time>, "<number>"]`` → (time, reading); None if the pair is malformed."""
    if not (isinstance(pair, list) and len(pair) == 2):
        return None
    ts, raw = pair
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not isinstance(raw, str):
        return None
    try:
        number = float(raw)
    except ValueError:
        return None
    if not math.isfinite(number):
        return float(ts), Reading.unknown(f"Prometheus returned {raw}")
    return float(ts), Reading(number)


def _parse_success(promql: str, body: Any) -> QueryResult:
    if not isinstance(body, dict) or body.get("status") != "success":
        return _shape_error(promql, "no status 'success'")
    raw_warnings = body.get("warnings") or []
    warnings = tuple(str(w) for w in raw_warnings) if isinstance(raw_warnings, list) else ()
    data = body.get("data")
    if not isinstance(data, dict):
        return _shape_error(promql, "'data' is not an object")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        parsed = _parse_value(result)
        if parsed is None:
            return _shape_error(promql, f"bad scalar {_SHORT.repr(result)}")
        sample = Sample(labels=MappingProxyType({}), value=parsed[1], timestamp=parsed[0])
        return QueryResult(query=promql, samples=(sample,), warnings=warnings)
    if kind != "vector":
        return QueryResult.failed(
            promql, f"query returned a {kind!r} result; raytide needs an instant vector (or a scalar)"
        )
    if not isinstance(result, list):
        return _shape_error(promql, "'data.result' is not a list")
    samples: list[Sample] = []
    for item in result:
        if not isinstance(item, dict):
            return _shape_error(promql, f"series {_SHORT.repr(item)} is not an object")
        metric = item.get("metric", {})
        if not isinstance(metric, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metric.items()
        ):
            return _shape_error(promql, f"labels {_SHORT.repr(metric)} are not a string map")
        parsed = _parse_value(item.get("value"))
        if parsed is None:
            return _shape_error(promql, f"bad sample value {_SHORT.repr(item.get('value'))}")
        samples.append(Sample(labels=MappingProxyType(dict(metric)), value=parsed[1], timestamp=parsed[0]))
    return QueryResult(query=promql, samples=tuple(samples), warnings=warnings)
