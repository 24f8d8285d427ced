"""The own-metrics/health HTTP endpoint, served for real on a free loopback port and fetched with httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.adapters.http_endpoint import HttpEndpoint
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.testing import make_shape, make_snapshot, make_stage
from autoscaler.types import Plan, ShapeChange


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def telemetry(clock: Clock) -> Telemetry:
    return Telemetry(tick_interval_seconds=10.0, stale_ticks=3, monotonic=clock)


@pytest.fixture
async def endpoint(telemetry: Telemetry) -> AsyncIterator[HttpEndpoint]:
    ep = HttpEndpoint(registry=telemetry.registry, health=telemetry, read_timeout=0.5, max_header_bytes=1024)
    await ep.start()
    try:
        yield ep
    finally:
        await ep.aclose()


@pytest.fixture
async def client(endpoint: HttpEndpoint) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=endpoint.url, timeout=5.0) as c:
        yield c


def tick(telemetry: Telemetry, *, errors: tuple[str, ...] = ()) -> None:
    shapes = (make_shape(name="cpu4"),)
    snap = make_snapshot(
        time=1.0,
        shapes=shapes,
        node_counts={"cpu4": 1},
        stages=[make_stage(name="decode", backlog=3, throughput=2.0, slots_busy=1)],
        errors=errors,
    )
    plan = Plan(time=1.0, policy="throughput", changes=(ShapeChange("cpu4", 1, 2, "add 1"),))
    telemetry.record_tick(0.02, plan, snap, 0.004)


async def raw(endpoint: HttpEndpoint, data: bytes, *, eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        writer.write(data)
        await writer.drain()
        if eof:
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_binds_loopback_on_a_free_port(endpoint: HttpEndpoint) -> None:
    assert endpoint.host == "127.0.0.1"
    assert endpoint.port > 0
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}"


async def test_metrics_parse_and_contain_the_tick_histogram(
    client: httpx.AsyncClient, telemetry: Telemetry
) -> None:
    tick(telemetry)
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    hist = families["raytide_tick_duration_seconds"]
    assert hist.type == "histogram"
    count = [s for s in hist.samples if s.name == "raytide_tick_duration_seconds_count"]
    assert count[0].value == 1
    assert families["raytide_nodes_target"].samples[0].value == 2
    assert "raytide_decisions" in families


async def test_metrics_negotiates_openmetrics(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")


async def test_health_and_readiness_follow_set_health(
    client: httpx.AsyncClient, telemetry: Telemetry, clock: Clock
) -> None:
    # Starting, no snapshot yet: alive (within the first ticks) but not ready.
    assert (await client.get("/healthz")).status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert r.json()["state"] == "starting"

    tick(telemetry)
    telemetry.set_health("ok")
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "state": "ok"}

    telemetry.set_health("degraded", ["ray actuator unreachable"])
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert "ray actuator unreachable" in r.json()["reasons"]
    assert (await client.get("/healthz")).status_code == 200

    telemetry.set_health("ok")
    tick(telemetry, errors=("prometheus: timeout",))
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert "input unknown: prometheus: timeout" in r.json()["reasons"]

    clock.t = 31.0  # three intervals and a bit without a tick: the loop is stuck
    r = await client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "dead"
    assert (await client.get("/readyz")).status_code == 503


async def test_unknown_path_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nope")).status_code == 404
    assert (await client.get("/metrics/extra")).status_code == 404
    r = await client.post("/metrics", content=b"x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    # The query string does not change the route.
    assert (await client.get("/healthz?verbose=1")).status_code == 200


async def test_head_has_headers_but_no_body(client: httpx.AsyncClient) -> None:
    r = await client.head("/metrics")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) > 0
    assert r.content == b""


async def test_garbage_gets_400_and_the_server_keeps_serving(
    endpoint: HttpEndpoint, client: httpx.AsyncClient
) -> None:
    assert status_of(await raw(endpoint, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")) == 400
    assert status_of(await raw(endpoint, b"GET /metrics\r\n\r\n")) == 400
    assert status_of(await raw(endpoint, b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")) == 400
    assert status_of(await raw(endpoint, b"GET /metrics HTTP/1.1\r\n\r\n")) == 400  # no Host
    assert status_of(await raw(endpoint, b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n")) == 505
    assert status_of(await raw(endpoint, b"GET /met")) == 400  # closed half-way
    assert (await client.get("/healthz")).status_code == 200


async def test_slow_and_oversized_clients_are_cut_off(
    endpoint: HttpEndpoint, client: httpx.AsyncClient
) -> None:
    slow = await raw(endpoint, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", eof=False)
    assert status_of(slow) == 408
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
    assert status_of(await raw(endpoint, huge)) == 431
    assert (await client.get("/healthz")).status_code == 200


async def test_an_unread_body_does_not_destroy_the_answer(client: httpx.AsyncClient) -> None:
    r = await client.post("/metrics", content=b"x" * 200_000)
    assert r.status_code == 405


async def test_connections_beyond_the_limit_get_503(telemetry: Telemetry) -> None:
    async with HttpEndpoint(registry=telemetry.registry, health=telemetry, max_connections=1) as ep:
        _, hanging = await asyncio.open_connection(ep.host, ep.port)
        try:
            await asyncio.sleep(0.05)
            assert status_of(await raw(ep, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
        finally:
            hanging.close()
            await hanging.wait_closed()
        await asyncio.sleep(0.05)
        assert status_of(await raw(ep, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


async def test_http_1_0_without_host_is_fine(endpoint: HttpEndpoint) -> None:
    response = await raw(endpoint, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_of(response) == 200
    assert b"Connection: close" in response


async def test_aclose_ends_connections_that_hang(telemetry: Telemetry) -> None:
    ep = HttpEndpoint(registry=telemetry.registry, health=telemetry, read_timeout=30.0)
    await ep.start()
    _, writer = await asyncio.open_connection(ep.host, ep.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):
        await ep.aclose()
    writer.close()
    await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection(ep.host, ep.port)


async def test_nudge_is_a_post_that_reaches_the_daemon(telemetry: Telemetry) -> None:
    nudges: list[int] = []
    ep = HttpEndpoint(registry=telemetry.registry, health=telemetry, on_nudge=lambda: nudges.append(1))
    await ep.start()
    try:
        async with httpx.AsyncClient(base_url=ep.url, timeout=5.0) as c:
            r = await c.post("/nudge", content=b'{"stage": "infer"}')
            assert r.status_code == 202 and r.json() == {"status": "nudged"}
            r = await c.get("/nudge")
            assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert nudges == [1]
    finally:
        await ep.aclose()


async def test_without_a_nudge_handler_there_is_no_nudge_route(client: httpx.AsyncClient) -> None:
    assert (await client.post("/nudge")).status_code == 404
