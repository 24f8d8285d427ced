"""PrometheusSource failure paths a real Prometheus cannot be made to produce on demand (httpx.MockTransport).

The happy path and Prometheus' own error answers are tested against a real server in
tests/integration/test_prometheus_source.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoscaler.adapters.prometheus import PrometheusConfigError, PrometheusSource
from autoscaler.core.config import PrometheusConfig
from autoscaler.core.queries import TEMPLATE_NAMES

URL = "http://prometheus.test:9090"

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def vector(*series: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1700000000.5, v]} for m, v in series],
        },
    }


class Recorder:
    """A MockTransport handler that answers from a script and remembers every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def source(handler: Handler, **config: Any) -> PrometheusSource:
    settings = PrometheusConfig.model_validate({"url": URL, **config})
    return PrometheusSource(config=settings, transport=httpx.MockTransport(handler), backoff_seconds=0)


# --- transient failures are retried, a bounded number of times --------------------------------------------


async def test_5xx_is_retried_then_reported() -> None:
    rec = Recorder(httpx.Response(500, text="internal error"))
    async with source(rec, retries=2) as src:
        result = await src.query("up")

    assert len(rec.requests) == 3
    assert result.samples == ()
    assert result.error is not None
    assert "HTTP 500" in result.error
    assert "3 attempts" in result.error


async def test_429_then_success_recovers() -> None:
    rec = Recorder(httpx.Response(429, text="slow down"), httpx.Response(200, json=vector(({}, "4"))))
    async with source(rec, retries=2) as src:
        result = await src.query("up")

    assert len(rec.requests) == 2
    assert result.error is None
    assert result.samples[0].value.get() == 4.0


async def test_503_carries_prometheus_error_text() -> None:
    body = {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"}
    rec = Recorder(httpx.Response(503, json=body))
    async with source(rec, retries=1) as src:
        result = await src.query("up")

    assert len(rec.requests) == 2
    assert result.error is not None
    assert "timeout: query timed out in expression evaluation" in result.error


async def test_zero_retries_means_one_attempt() -> None:
    rec = Recorder(httpx.Response(502))
    async with source(rec, retries=0) as src:
        result = await src.query("up")
    assert len(rec.requests) == 1
    assert result.error is not None and "1 attempt)" in result.error


async def test_timeout_is_retried_then_reported() -> None:
    rec = Recorder(httpx.ReadTimeout("read timed out"))
    async with source(rec, retries=2, timeout_seconds=1.5) as src:
        result = await src.query("up")

    assert len(rec.requests) == 3
    assert result.error is not None
    assert "timed out" in result.error and "1.5 s" in result.error


async def test_connection_refused_is_retried_then_reported() -> None:
    rec = Recorder(httpx.ConnectError("[Errno 111] Connection refused"))
    async with source(rec, retries=1) as src:
        result = await src.query("up")

    assert len(rec.requests) == 2
    assert result.error is not None
    assert "cannot reach Prometheus" in result.error and "Connection refused" in result.error


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_4xx_is_not_retried(status: int) -> None:
    rec = Recorder(httpx.Response(status, text="nope"))
    async with source(rec, retries=3) as src:
        result = await src.query("up")

    assert len(rec.requests) == 1
    assert result.error is not None
    assert f"HTTP {status}" in result.error


async def test_4xx_carries_error_type_and_text() -> None:
    body = {
        "status": "error",
        "errorType": "bad_data",
        "error": 'invalid parameter "query": 1:8: parse error',
    }
    rec = Recorder(httpx.Response(400, json=body))
    async with source(rec) as src:
        result = await src.query("sum by (")

    assert result.error is not None
    assert "bad_data" in result.error and "parse error" in result.error


# --- answers that are not what Prometheus promises --------------------------------------------------------


async def test_status_error_with_http_200_is_an_error() -> None:
    rec = Recorder(httpx.Response(200, json={"status": "error", "errorType": "execution", "error": "boom"}))
    async with source(rec) as src:
        result = await src.query("up")
    assert result.error is not None and "execution: boom" in result.error


async def test_garbage_is_not_json() -> None:
    page = "<html><body>Please log in</body></html>"
    rec = Recorder(httpx.Response(200, text=page, headers={"content-type": "text/html"}))
    async with source(rec, retries=3) as src:
        result = await src.query("up")

    assert len(rec.requests) == 1
    assert result.error is not None
    assert "not JSON" in result.error and "text/html" in result.error and "Please log in" in result.error


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([1, 2, 3], "status"),
        ({"status": "success"}, "'data'"),
        ({"status": "success", "data": {"resultType": "vector", "result": {}}}, "not a list"),
        ({"status": "success", "data": {"resultType": "vector", "result": [1]}}, "not an object"),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {"a": 1}, "value": [1, "2"]}]},
            },
            "labels",
        ),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, 2]}]},
            },
            "bad sample value",
        ),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]},
            },
            "bad sample value",
        ),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": ["1"]}]},
            },
            "bad sample value",
        ),
        ({"status": "success", "data": {"resultType": "scalar", "result": "7"}}, "bad scalar"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "instant vector"),
        ({"status": "success", "data": {"resultType": "string", "result": [1, "a"]}}, "instant vector"),
    ],
)
async def test_wrongly_shaped_json_is_an_error(body: Any, expected: str) -> None:
    rec = Recorder(httpx.Response(200, json=body))
    async with source(rec) as src:
        result = await src.query("up")

    assert result.samples == ()
    assert result.error is not None
    assert expected in result.error


async def test_non_finite_values_are_unknown_never_zero() -> None:
    body = vector(
        ({"operator": "a"}, "NaN"),
        ({"operator": "b"}, "+Inf"),
        ({"operator": "c"}, "-Inf"),
        ({"operator": "d"}, "0"),
    )
    async with source(Recorder(httpx.Response(200, json=body))) as src:
        result = await src.query("x")

    assert result.error is None
    values = {s.labels["operator"]: s.value for s in result.samples}
    for name, raw in (("a", "NaN"), ("b", "+Inf"), ("c", "-Inf")):
        assert values[name].value is None
        assert raw in values[name].reason
    assert values["d"].get() == 0.0


async def test_scalar_and_empty_answers() -> None:
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1700000000, "3.5"]}}
    empty = vector()
    rec = Recorder(httpx.Response(200, json=scalar), httpx.Response(200, json=empty))
    async with source(rec) as src:
        one = await src.query("scalar(up)")
        none = await src.query("missing_metric")

    assert one.samples[0].value.get() == 3.5
    assert dict(one.samples[0].labels) == {}
    assert none.error is None and none.samples == ()


async def test_warnings_are_kept() -> None:
    body = {**vector(({}, "1")), "warnings": ["PromQL info: metric might not be a counter"]}
    async with source(Recorder(httpx.Response(200, json=body))) as src:
        result = await src.query("rate(x[1m])")
    assert result.warnings == ("PromQL info: metric might not be a counter",)


# --- requests -------------------------------------------------------------------------------------------


async def test_query_is_sent_to_the_api_under_a_path_prefix() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    settings = PrometheusConfig(url="http://proxy.test/prometheus/")
    async with PrometheusSource(config=settings, transport=httpx.MockTransport(rec)) as src:
        await src.query('sum(up{job="ray"})')

    request = rec.requests[0]
    assert request.url.path == "/prometheus/api/v1/query"
    assert request.url.params["query"] == 'sum(up{job="ray"})'


async def test_evaluation_time_is_passed_on() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec) as src:
        await src.query("up", at=1700000123.25)
        await src.query_templates(["nodes_active"], at=1700000000)
        await src.query("up")

    assert [r.url.params.get("time") for r in rec.requests] == ["1700000123.250", "1700000000.000", None]


async def test_templates_run_concurrently() -> None:
    in_flight = 0
    everyone_here = asyncio.Event()
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight
        seen.append(request.url.params["query"])
        in_flight += 1
        if in_flight == len(TEMPLATE_NAMES):
            everyone_here.set()
        # Sequential queries would never get here all at once, and this wait would time out.
        await asyncio.wait_for(everyone_here.wait(), timeout=10)
        return httpx.Response(200, json=vector(({"operator": "x"}, "1")))

    async with source(handler, rate_window="30s") as src:
        results = await src.query_templates()

    assert list(results) == list(TEMPLATE_NAMES)
    assert all(r.error is None for r in results.values())
    assert sorted(seen) == sorted(src.templates.values())
    assert any("[30s]" in q for q in seen)


async def test_query_templates_subset_and_unknown_name() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec) as src:
        results = await src.query_templates(["nodes_active", "stage_backlog"])
        assert list(results) == ["nodes_active", "stage_backlog"]
        with pytest.raises(PrometheusConfigError, match="valid names"):
            await src.query_templates(["no_such_template"])


# --- authentication ---------------------------------------------------------------------------------------


async def test_bearer_token_file_is_read_per_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec, bearer_token_file=str(token)) as src:
        await src.query("up")
        token.write_text("rotated-token\n")
        await src.query("up")

    assert [r.headers["Authorization"] for r in rec.requests] == [
        "Bearer first-token",
        "Bearer rotated-token",
    ]


async def test_token_file_vanishing_later_is_a_query_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec, bearer_token_file=str(token)) as src:
        token.unlink()
        result = await src.query("up")

    assert rec.requests == []
    assert result.error is not None and "bearer_token_file" in result.error


async def test_bearer_token() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec, bearer_token="s3cret") as src:
        await src.query("up")
    assert rec.requests[0].headers["Authorization"] == "Bearer s3cret"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_basic_auth_with_password() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec, username="ray", password="p:w") as src:
        await src.query("up")
    assert rec.requests[0].headers["Authorization"] == _basic("ray", "p:w")


async def test_basic_auth_with_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec, username="ray", password_file=str(secret)) as src:
        await src.query("up")
    assert rec.requests[0].headers["Authorization"] == _basic("ray", "from-file")


async def test_credentials_in_the_url_are_sent_as_basic_auth_not_in_the_url() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    settings = PrometheusConfig(url="http://ray%40corp:p%3Aw@prom.test:9090/sub/", bearer_token="ignored")
    async with PrometheusSource(config=settings, transport=httpx.MockTransport(rec)) as src:
        assert src.url == "http://prom.test:9090/sub/"
        await src.query("up")
    request = rec.requests[0]
    # As httpx does with userinfo itself: it wins over the configured header, percent-decoded.
    assert request.headers["Authorization"] == _basic("ray@corp", "p:w")
    assert request.url.userinfo == b"" and str(request.url).startswith(
        "http://prom.test:9090/sub/api/v1/query"
    )


async def test_no_auth_sends_no_authorization_header() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec) as src:
        await src.query("up")
    assert "Authorization" not in rec.requests[0].headers


# --- configuration that cannot work raises at construction ------------------------------------------------


def test_missing_url() -> None:
    with pytest.raises(PrometheusConfigError, match="url is not set"):
        PrometheusSource(config=PrometheusConfig())


def test_not_an_http_url() -> None:
    with pytest.raises(PrometheusConfigError, match="not an http"):
        PrometheusSource(config=PrometheusConfig(url="prometheus:9090"))


def test_unreadable_token_file(tmp_path: Path) -> None:
    with pytest.raises(PrometheusConfigError, match="bearer_token_file"):
        PrometheusSource(config=PrometheusConfig(url=URL, bearer_token_file=tmp_path / "missing"))


def test_empty_password_file(tmp_path: Path) -> None:
    empty = tmp_path / "password"
    empty.write_text("")
    with pytest.raises(PrometheusConfigError, match="empty"):
        PrometheusSource(config=PrometheusConfig(url=URL, username="u", password_file=empty))


def test_unreadable_ca_file(tmp_path: Path) -> None:
    with pytest.raises(PrometheusConfigError, match="TLS"):
        PrometheusSource(config=PrometheusConfig(url=URL, ca_file=tmp_path / "ca.pem"))


def test_unknown_query_override() -> None:
    with pytest.raises(PrometheusConfigError, match="valid names are"):
        PrometheusSource(config=PrometheusConfig(url=URL, queries={"backlog": "x"}))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://prom.test:99999", "port 99999 is not in 1-65535"),
        ("http://prom.test:-1", "port -1 is not in 1-65535"),
        ("http://[::1", "is not a valid URL"),
        ("http://prom.test:abc", "is not a valid URL"),
    ],
)
def test_a_url_httpx_cannot_use_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(PrometheusConfigError, match=re.escape(says)):
        PrometheusSource(config=PrometheusConfig(url=url))


# --- answers and requests that used to escape as exceptions ------------------------------------------------


async def test_json_nested_past_the_recursion_limit_is_an_error() -> None:
    rec = Recorder(httpx.Response(200, content=b"[" * 50_000 + b"]" * 50_000))
    async with source(rec) as src:
        result = await src.query("up")
    assert result.error is not None and "nested too deeply" in result.error


async def test_deeply_nested_values_are_shown_briefly() -> None:
    deep = b"[" * 500 + b'"1"' + b"]" * 500
    body = b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": %s}]}}'
    rec = Recorder(httpx.Response(200, content=body % deep))
    async with source(rec) as src:
        result = await src.query("up")
    assert result.error is not None and "bad sample value [[[[...]]]]" in result.error


async def test_a_query_too_long_for_a_url_is_an_error() -> None:
    rec = Recorder(httpx.Response(200, json=vector()))
    async with source(rec) as src:
        result = await src.query("x" * 70_000)
    assert rec.requests == []
    assert result.error is not None and "InvalidURL" in result.error


async def test_pending_lists_the_unanswered_queries_oldest_first() -> None:
    release, both_sent = asyncio.Event(), asyncio.Event()
    sent = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal sent
        sent += 1
        if sent == 2:
            both_sent.set()
        await release.wait()
        return httpx.Response(200, json=vector())

    async with source(handler) as src:
        first = asyncio.create_task(src.query("first", at=5.0))
        await asyncio.sleep(0)
        second = asyncio.create_task(src.query("second"))
        await both_sent.wait()
        assert src.pending() == [("first", 5.0), ("second", None)]
        release.set()
        await asyncio.gather(first, second)
        assert src.pending() == []


async def test_insecure_skip_verify_builds() -> None:
    async with PrometheusSource(config=PrometheusConfig(url="https://p.test", insecure_skip_verify=True)):
        pass
