"""Fuzz: whatever a server answers to a query — any status, any bytes, any JSON, Prometheus-shaped or not,
nested past the recursion limit — the source gives a result or a clear error, never raises."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.core.config import PrometheusConfig
from autoscaler.core.queries import QueryResult

FUZZ = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
numbers_as_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e400", "", " 1", "0x10", "1_000"]),
    st.text(max_size=6),
)
sample_values = st.one_of(
    st.tuples(st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=4)), numbers_as_text).map(
        list
    ),
    json_values,
)
labels = st.one_of(
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
    json_values,
)
series = st.one_of(st.fixed_dictionaries({"metric": labels, "value": sample_values}), json_values)
answers = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["success", "error", "", None]) | json_values,
        "data": st.fixed_dictionaries(
            {
                "resultType": st.sampled_from(["vector", "scalar", "matrix", "string", None]),
                "result": st.one_of(st.lists(series, max_size=5), sample_values, json_values),
            }
        )
        | json_values,
    },
    optional={"warnings": json_values, "errorType": json_values, "error": json_values},
)


def deep_body(depth: int, where: str) -> bytes:
    """An answer with one value nested ``depth`` lists deep (built as text: encoding it would recurse)."""
    deep = "[" * depth + '"x"' + "]" * depth
    if where == "value":
        series = f'{{"metric": {{}}, "value": {deep}}}'
        text = f'{{"status": "success", "data": {{"resultType": "vector", "result": [{series}]}}}}'
    elif where == "warnings":
        text = (
            f'{{"status": "success", "warnings": [{deep}], "data": {{"resultType": "vector", "result": []}}}}'
        )
    else:
        text = f'{{"status": "error", "errorType": "bad_data", "error": {deep}}}'
    return text.encode()


deep_bodies = st.builds(
    deep_body, st.integers(min_value=1, max_value=5_000), st.sampled_from(["value", "warnings", "error"])
)
bodies = st.one_of(
    answers.map(lambda doc: json.dumps(doc).encode()),
    deep_bodies,
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
# 1xx never reaches the source: httpx handles interim responses itself.
statuses = st.sampled_from([200, 200, 200, 204, 301, 400, 404, 422, 429, 500, 503]) | st.integers(200, 599)
content_types = st.sampled_from(["application/json", "text/html", "text/plain; charset=latin-1", ""])


def ask(status: int, body: bytes, content_type: str) -> QueryResult:
    headers = {"Content-Type": content_type} if content_type else {}
    transport = httpx.MockTransport(lambda r: httpx.Response(status, content=body, headers=headers))

    async def query() -> QueryResult:
        config = PrometheusConfig(url="http://prom.test:9090", retries=0)
        async with PrometheusSource(config=config, transport=transport, backoff_seconds=0) as source:
            return await source.query("up")

    return asyncio.run(query())


@FUZZ
@given(status=statuses, body=bodies, content_type=content_types)
def test_any_answer_is_a_result_or_a_clear_error(status: int, body: bytes, content_type: str) -> None:
    result = ask(status, body, content_type)
    assert result.query == "up"
    if result.error is not None:
        assert isinstance(result.error, str) and result.error
        assert result.samples == ()
        return
    assert 200 <= status < 300
    for sample in result.samples:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in sample.labels.items())
        assert isinstance(sample.timestamp, float)
        reading = sample.value
        assert reading.value is None or math.isfinite(reading.value)
