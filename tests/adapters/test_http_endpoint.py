"""The own-metrics/health HTTP endpoint, served for real on a free loopback port and fetched with httpx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.adapters.http_endpoint import HttpEndpoint, TokenFileError, read_token
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.core.config import is_loopback_host, parse_config
from autoscaler.daemon.pacing import Pacing
from autoscaler.testing import make_shape, make_snapshot, make_stage
from autoscaler.types import Plan, ShapeChange
from tests.support.polling import until


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


async def test_an_idle_connection_gives_way_to_a_request(telemetry: Telemetry) -> None:
    async with HttpEndpoint(registry=telemetry.registry, health=telemetry, max_connections=1) as ep:
        idle_reader, idle = await asyncio.open_connection(ep.host, ep.port)
        try:
            await until(
                lambda: ep.open_connections == 1,
                "the idle connection",
                timeout_s=5,
                interval_s=0.01,
                in_thread=False,
            )
            assert status_of(await raw(ep, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200
            async with asyncio.timeout(5):
                assert await idle_reader.read() == b""  # closed to make room
        finally:
            idle.close()
            await idle.wait_closed()


async def test_probes_get_through_200_idle_connections(telemetry: Telemetry) -> None:
    # A read deadline far longer than the test: only making room can let the probes in.
    endpoint = HttpEndpoint(registry=telemetry.registry, health=telemetry, read_timeout=600.0)
    await endpoint.start()
    idle: list[asyncio.StreamWriter] = []
    try:
        for i in range(200):
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            if i % 2:
                writer.write(b"GET /metrics HTTP/1.1\r\n")  # a head that never ends
            idle.append(writer)
        await until(
            lambda: endpoint.open_connections == 64,
            "64 idle connections",
            timeout_s=5,
            interval_s=0.01,
            in_thread=False,
        )
        for _ in range(3):
            assert status_of(await raw(endpoint, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200
            assert status_of(await raw(endpoint, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
        assert endpoint.open_connections <= 64
    finally:
        for writer in idle:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in idle), return_exceptions=True)
        await endpoint.aclose()


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


# ------------------------------------------------------------------------------ POST /nudge: who may nudge

TOKEN = "s3cr3t-Token_0123456789abcdef"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "nudge-token"
    path.write_text(TOKEN + "\n", encoding="ascii")
    return path


def nudge_counts(telemetry: Telemetry) -> dict[str, float | None]:
    return {
        outcome: telemetry.registry.get_sample_value("raytide_nudges_total", {"outcome": outcome})
        for outcome in ("accepted", "rate_limited", "unauthorized", "refused")
    }


async def test_with_a_token_file_a_nudge_needs_the_bearer_token(
    telemetry: Telemetry, token_file: Path
) -> None:
    nudges: list[int] = []
    ep = HttpEndpoint(
        registry=telemetry.registry,
        health=telemetry,
        on_nudge=lambda: nudges.append(1),
        token_file=token_file,
    )
    async with ep, httpx.AsyncClient(base_url=ep.url, timeout=5.0) as c:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
        ):
            r = await c.post("/nudge", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.text.count("\n") == 1 and TOKEN not in r.text
        assert nudges == []
        r = await c.post("/nudge", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202 and nudges == [1]
        r = await c.post("/nudge", headers={"Authorization": f"bearer  {TOKEN}"})  # scheme in any case
        assert r.status_code == 202 and nudges == [1, 1]
        # The probes and Prometheus need no token.
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
    assert nudge_counts(telemetry) == {"accepted": 2, "rate_limited": 0, "unauthorized": 6, "refused": 0}


async def test_beyond_loopback_without_a_token_a_nudge_is_refused_and_probes_still_answer(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    nudges: list[int] = []
    ep = HttpEndpoint(
        registry=telemetry.registry, health=telemetry, host="0.0.0.0", on_nudge=lambda: nudges.append(1)
    )
    with caplog.at_level(logging.WARNING, logger="autoscaler.adapters.http_endpoint"):
        await ep.start()
    try:
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "beyond loopback" in warning and "daemon.http_token_file" in warning
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ep.port}", timeout=5.0) as c:
            r = await c.post("/nudge", headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403
            assert (
                r.text
                == "POST /nudge is refused: this endpoint listens beyond loopback and has no token file\n"
            )
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 503  # starting: not ready, but it answers
            assert (await c.get("/metrics")).status_code == 200
        assert nudges == []
        assert nudge_counts(telemetry)["refused"] == 1
    finally:
        await ep.aclose()


async def test_beyond_loopback_with_a_token_file_a_nudge_with_the_token_is_accepted(
    telemetry: Telemetry, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nudges: list[int] = []
    ep = HttpEndpoint(
        registry=telemetry.registry,
        health=telemetry,
        host="0.0.0.0",
        on_nudge=lambda: nudges.append(1),
        token_file=token_file,
    )
    with caplog.at_level(logging.WARNING, logger="autoscaler.adapters.http_endpoint"):
        await ep.start()
    try:
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ep.port}", timeout=5.0) as c:
            assert (await c.post("/nudge")).status_code == 401
            assert (await c.post("/nudge", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 202
        assert nudges == [1]
    finally:
        await ep.aclose()


async def test_a_declined_nudge_gets_429_and_is_counted(telemetry: Telemetry) -> None:
    answers = iter([True, False, False, None])  # None: a handler that says nothing accepts
    ep = HttpEndpoint(registry=telemetry.registry, health=telemetry, on_nudge=lambda: next(answers))
    async with ep, httpx.AsyncClient(base_url=ep.url, timeout=5.0) as c:
        statuses = [(await c.post("/nudge")).status_code for _ in range(4)]
        assert statuses == [202, 429, 429, 202]
    assert nudge_counts(telemetry) == {"accepted": 2, "rate_limited": 2, "unauthorized": 0, "refused": 0}


async def test_a_nudge_flood_reaches_the_daemon_once_per_gap(telemetry: Telemetry) -> None:
    # The daemon's own rate limit behind the endpoint: a burst of nudges is one tick, the rest 429.
    mono = Clock()
    pacing = Pacing(interval_s=1.0, nudge_gap_s=0.5, monotonic=mono)
    ep = HttpEndpoint(registry=telemetry.registry, health=telemetry, on_nudge=pacing.nudge)
    async with ep, httpx.AsyncClient(base_url=ep.url, timeout=5.0) as c:
        statuses = [(await c.post("/nudge")).status_code for _ in range(50)]
        assert statuses == [202] + [429] * 49
        assert (await c.post("/nudge")).headers["retry-after"] == "1"
        mono.t += 0.5
        assert (await c.post("/nudge")).status_code == 202


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it"),
        (b"", "empty"),
        (b"  \n\t\n", "empty"),
        (b"two words\n", "visible ASCII"),
        (b"caf\xc3\xa9\n", "visible ASCII"),
        (b"x" * 5000, "longer than"),
    ],
    ids=["missing", "empty", "blank", "space", "non-ascii", "huge"],
)
async def test_a_token_file_that_cannot_be_used_stops_the_start(
    telemetry: Telemetry, tmp_path: Path, content: bytes | None, says: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)
    ep = HttpEndpoint(registry=telemetry.registry, health=telemetry, on_nudge=lambda: None, token_file=path)
    with pytest.raises(TokenFileError) as caught:
        await ep.start()
    message = str(caught.value)
    assert message.startswith(f"daemon.http_token_file {path}: ") and says in message
    assert "\n" not in message
    with pytest.raises(RuntimeError):
        _ = ep.port  # nothing was bound


def test_the_token_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\n  abc.DEF-123~  \r\n")
    assert read_token(path) == "abc.DEF-123~"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("raytide.example", False),
        ("localhost.example", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


_SHAPES = "shapes: [{name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2}]\n"


def test_check_config_is_told_about_a_nudge_endpoint_beyond_loopback_without_a_token() -> None:
    assert parse_config(_SHAPES).warnings() == []
    assert parse_config(_SHAPES + "daemon: {http_host: 127.0.0.1}").warnings() == []
    assert parse_config(_SHAPES + "daemon: {http_host: 0.0.0.0}").warnings() == [
        "daemon.http_host '0.0.0.0' is not a loopback address and daemon.http_token_file is not set: "
        "POST /nudge will be refused (403); /metrics, /healthz and /readyz are served to whoever reaches "
        "the port"
    ]
    with_token = parse_config(_SHAPES + "daemon: {http_host: 0.0.0.0, http_token_file: /run/secrets/nudge}")
    assert with_token.warnings() == [] and with_token.daemon.http_token_file == Path("/run/secrets/nudge")
    assert parse_config(_SHAPES + "daemon: {http_host: 0.0.0.0, http_port: null}").warnings() == []
    assert parse_config(_SHAPES + "daemon: {http_port: null, http_token_file: /t}").warnings() == [
        "daemon.http_token_file is set but the endpoint is off (http_port: null)"
    ]


# ------------------------------------------------------------------------------ no secret in the answers


async def test_health_answers_never_show_the_token_or_a_password(
    telemetry: Telemetry, token_file: Path, clock: Clock
) -> None:
    ep = HttpEndpoint(
        registry=telemetry.registry, health=telemetry, on_nudge=lambda: None, token_file=token_file
    )
    async with ep, httpx.AsyncClient(base_url=ep.url, timeout=5.0) as c:
        tick(telemetry)
        telemetry.set_health(
            "degraded",
            [
                "prometheus: GET http://raytide:hunter2@prom.example:9090/api/v1/query failed: timed out",
                f"mqtt: connect to mqtts://bob:p%40ss@broker:8883 refused; token {TOKEN} in a message",
                "a reason without secrets",
            ],
        )
        ready = await c.get("/readyz")
        clock.t = 100.0  # and a dead loop: /healthz says why too
        alive = await c.get("/healthz")
    for r in (ready, alive):
        assert r.status_code == 503
        for secret in ("hunter2", "p%40ss", "bob:", "raytide:", TOKEN):
            assert secret not in r.text
    reasons = ready.json()["reasons"]
    assert "prometheus: GET http://<redacted>@prom.example:9090/api/v1/query failed: timed out" in reasons
    assert "mqtt: connect to mqtts://<redacted>@broker:8883 refused; token <redacted> in a message" in reasons
    assert "a reason without secrets" in reasons


# ------------------------------------------------------------------------------ fuzz: raw requests


def _mostly(*valid: str, size: int) -> st.SearchStrategy[str]:
    """One of ``valid`` about five times in six, else any text."""
    pick = st.tuples(st.sampled_from(valid), st.text(max_size=size), st.sampled_from([False] * 5 + [True]))
    return pick.map(lambda p: p[1] if p[2] else p[0])


def _request(
    method: str,
    target: str,
    version: str,
    host: bool,
    auth: str | None,
    extra: list[tuple[str, str]],
    cut: int | None,
) -> bytes:
    headers = [("Host", "x")] if host else []
    headers += [("Authorization", auth)] if auth is not None else []
    lines = [f"{method} {target} {version}", *(f"{k}: {v}" for k, v in [*headers, *extra])]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return data if cut is None else data[:cut]


_STRUCTURED = st.builds(
    _request,
    _mostly("GET", "HEAD", "POST", "POST", "PUT", size=8),
    _mostly("/metrics", "/healthz", "/readyz", "/nudge", "/nudge?now=1", "http://h/nudge", "/", "*", size=30),
    _mostly("HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", size=10),
    st.booleans(),
    st.none()
    | _mostly(f"Bearer {TOKEN}", f"bearer  {TOKEN}", f"Bearer {TOKEN}x", "Bearer wrong", "Basic x", size=40),
    st.lists(
        st.tuples(_mostly("Accept", "X-Any", "Content-Length", size=12), _mostly("*/*", "1", "", size=40)),
        max_size=3,
    ),
    st.tuples(st.integers(0, 200), st.sampled_from([False] * 5 + [True])).map(
        lambda c: c[0] if c[1] else None
    ),
)
_NUDGES = st.builds(
    _request,
    st.just("POST"),
    st.sampled_from(["/nudge", "/nudge?x=1", "http://h/nudge", "https://h:1/nudge?y"]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    st.just(True),
    st.none()
    | st.sampled_from(
        [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}{TOKEN}"]
    )
    | st.text(max_size=60).map(lambda t: f"Bearer {t}"),
    st.lists(st.tuples(st.sampled_from(["Authorization", "X-Any"]), st.text(max_size=40)), max_size=2),
    st.none() | st.integers(0, 100),
)
_REQUESTS = st.one_of(
    _STRUCTURED,
    _NUDGES,
    st.binary(max_size=400),
    st.builds(lambda n: b"GET /metrics HTTP/1.1\r\nX: " + b"a" * n, st.integers(900, 3000)),
)
_CLEAR = {200, 202, 400, 401, 404, 405, 408, 429, 431, 503, 505}


def test_fuzzed_requests_get_a_clear_answer_and_never_an_unauthorized_nudge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="ascii")
    telemetry = Telemetry(tick_interval_seconds=10.0, monotonic=Clock())
    nudges: list[int] = []
    ep = HttpEndpoint(
        registry=telemetry.registry,
        health=telemetry,
        read_timeout=5.0,
        max_header_bytes=1024,
        on_nudge=lambda: nudges.append(1),
        token_file=token_file,
    )
    with (
        asyncio.Runner() as runner,
        caplog.at_level(logging.ERROR, logger="autoscaler.adapters.http_endpoint"),
    ):
        runner.run(ep.start())
        try:

            @settings(
                max_examples=300,
                deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(_REQUESTS)
            def one(data: bytes) -> None:
                before = len(nudges)
                response = runner.run(raw(ep, data))
                assert response.startswith(b"HTTP/1.1 "), response[:80]
                status = status_of(response)
                assert status in _CLEAR, response[:200]
                assert b"\r\n\r\n" in response and b"Content-Length: " in response
                if status == 202:
                    assert TOKEN.encode() in data and b"/nudge" in data
                    assert len(nudges) == before + 1
                else:
                    assert len(nudges) == before
                assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

            one()
        finally:
            runner.run(ep.aclose())
