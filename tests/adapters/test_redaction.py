"""Credentials never leave as text: the redaction helpers, the log formatters, the Prometheus source's and
the dashboard discovery's error texts, and httpx's own request log line."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from autoscaler.adapters.logging_setup import configure_logging
from autoscaler.adapters.prometheus import PrometheusConfigError, PrometheusSource
from autoscaler.adapters.scrape import DashboardDiscovery, DiscoveryError
from autoscaler.core.config import PrometheusConfig
from autoscaler.core.redact import printable, redact_text, redact_url
from tests.support.net import closed_port

PASSWORD = "hunter2-secret"


pytestmark = pytest.mark.usefixtures("restore_root_logger")


# --- the helpers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://raytide:{PASSWORD}@prom:9090", "http://***@prom:9090"),
        (f"https://raytide:{PASSWORD}@prom:9090/sub/path?q=a@b", "https://***@prom:9090/sub/path?q=a@b"),
        ("http://user:p@ss@prom:9090/x@y", "http://***@prom:9090/x@y"),
        ("http://token@prom", "http://***@prom"),
        (f"http://raytide:{PASSWORD}@[::1", "http://***@[::1"),
        (f"raytide:{PASSWORD}@prom:9090", "***@prom:9090"),
        ("http://prom:9090/api?x=a@b", "http://prom:9090/api?x=a@b"),
        ("http://[::1]:9090", "http://[::1]:9090"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_every_url_and_the_given_secrets() -> None:
    text = (
        f"cannot reach http://a:{PASSWORD}@h:1/q: refused; see 'https://b:{PASSWORD}@k' and mail "
        f"ops@example.com (password {PASSWORD})"
    )
    assert redact_text(text, [PASSWORD, ""]) == (
        "cannot reach http://***@h:1/q: refused; see 'https://***@k' and mail ops@example.com (password ***)"
    )
    assert redact_text("no url here: a@b c://d") == "no url here: a@b c://d"


def test_printable_removes_escape_sequences_and_control_characters() -> None:
    hostile = "a\x1b[2Jb\x1b]0;title\x07c\x1b]8;;http://x\x1b\\d\x9b31me\x1bMf\r\x00\x7fg\th\ni"
    assert printable(hostile) == "abcdefg h\ni"
    assert printable(hostile, newlines=False) == "abcdefg h i"
    assert printable("[/] [bold]ünïcode ✓") == "[/] [bold]ünïcode ✓"
    assert printable("\x1b]unterminated\nnext line") == "\nnext line"


# --- log lines ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_lines_never_carry_url_credentials(fmt: str) -> None:
    out = io.StringIO()
    configure_logging(fmt, "INFO", stream=out)  # type: ignore[arg-type]
    log = logging.getLogger("raytide.test")
    url = f"http://raytide:{PASSWORD}@prom:9090"
    log.warning(
        "cannot reach %s", url, extra={"url": url, "errors": [f"at {url}: refused"], "nested": {"u": (url,)}}
    )
    try:
        raise RuntimeError(f"failed at {url}")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    assert PASSWORD not in text
    assert text.count("http://***@prom:9090") == 5  # message, three extras, the traceback


def test_json_lines_escape_c1_controls_and_text_lines_drop_all_controls() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    logging.getLogger("raytide.test").info("label %s", "a\x1b[2J\x9b31m\nb", extra={"op": "x\x85y"})
    line = out.getvalue()
    assert "\x1b" not in line and "\x9b" not in line
    assert json.loads(line)["message"] == "label a\x1b[2J\x9b31m\nb" and json.loads(line)["op"] == "x\x85y"

    out = io.StringIO()
    configure_logging("text", "INFO", stream=out)
    logging.getLogger("raytide.test").info("label %s", "a\x1b[2J\x9b31m\nfake line", extra={"op": "x\x85y"})
    [line] = out.getvalue().splitlines()
    assert line.endswith("raytide.test: label a fake line op=xy")


async def test_httpx_request_log_line_has_no_password() -> None:
    out = io.StringIO()
    configure_logging("json", "DEBUG", stream=out)  # httpx's request lines are logged at DEBUG only
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"status": "success", "data": {}}))
    config = PrometheusConfig(url=f"http://raytide:{PASSWORD}@prom:9090")
    async with PrometheusSource(config=config, transport=transport) as src:
        await src.query("up")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert any(d["logger"] == "httpx" and "http://prom:9090/api/v1/query" in d["message"] for d in lines)
    assert PASSWORD not in out.getvalue()


# --- the sources' texts -------------------------------------------------------------------------------------


async def test_prometheus_source_texts_carry_no_password() -> None:
    port = closed_port()
    config = PrometheusConfig(url=f"http://raytide:{PASSWORD}@127.0.0.1:{port}", retries=0)
    async with PrometheusSource(config=config, backoff_seconds=0) as src:
        assert src.url == f"http://127.0.0.1:{port}"
        result = await src.query("up")
    assert result.error is not None
    assert f"cannot reach Prometheus at http://127.0.0.1:{port}" in result.error
    assert PASSWORD not in result.error


async def test_a_server_echoing_the_password_is_masked() -> None:
    echo = httpx.MockTransport(lambda r: httpx.Response(400, text=f"bad password {PASSWORD} for raytide"))
    config = PrometheusConfig(url=f"http://raytide:{PASSWORD}@prom:9090")
    async with PrometheusSource(config=config, transport=echo) as src:
        result = await src.query("up")
    assert result.error == "Prometheus rejected the query (HTTP 400): bad password *** for raytide"


@pytest.mark.parametrize(
    "url",
    [
        f"http://raytide:{PASSWORD}@[::1",
        f"http://raytide:{PASSWORD}@prom:99999",
        f"ftp://raytide:{PASSWORD}@x",
    ],
)
def test_config_errors_about_the_url_carry_no_password(url: str) -> None:
    with pytest.raises(PrometheusConfigError) as e:
        PrometheusSource(config=PrometheusConfig(url=url))
    assert "http://***@" in str(e.value) or "ftp://***@" in str(e.value)
    assert PASSWORD not in str(e.value)


async def test_dashboard_discovery_texts_carry_no_password() -> None:
    port = closed_port()
    discovery = DashboardDiscovery(f"http://raytide:{PASSWORD}@127.0.0.1:{port}")
    assert PASSWORD not in discovery.description
    async with httpx.AsyncClient() as client:
        with pytest.raises(DiscoveryError) as e:
            await discovery.discover(client)
    assert f"http://***@127.0.0.1:{port}" in str(e.value) and PASSWORD not in str(e.value)
    with pytest.raises(PrometheusConfigError) as bad:
        DashboardDiscovery(f"http://raytide:{PASSWORD}@[::1")
    assert PASSWORD not in str(bad.value)
