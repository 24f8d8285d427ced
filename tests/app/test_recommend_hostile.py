"""``raytide recommend`` against a hostile or careless Prometheus and command line: no password shown, no
traceback, no wait past the deadline — each failure ends in its documented exit code with one message."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscaler.app.cli import EXIT_CONFIG, EXIT_MISSING_METRICS, EXIT_SOURCE, app
from tests.app.hostile_prometheus import Answer, HostilePrometheus, vector

PASSWORD = "hunter2-secret"
USERINFO = f"raytide:{PASSWORD}"

CONFIG = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2, min: 0, max: 4}
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.0, min: 0, max: 4}
prometheus: {retries: 0}
"""

HOSTILE_LABEL = "Infer[/]\x1b[2J\x1b]0;pwned\x07[bold red]x\x9b31m\x07\x00\r\nfake line"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "raytide.yaml"
    p.write_text(CONFIG, encoding="utf-8")
    return p


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def recommend(url: str, config: Path, *flags: str) -> tuple[int, str, str]:
    return run(
        "recommend", "--prometheus", url, "--config", str(config), "--history", "2s", "--step", "1s", *flags
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert "Traceback" not in text
        assert not any(c in text for c in "\x1b\x9b\x07\x00\r")


# --- 1. no password in any output ---------------------------------------------------------------------------


def test_unreachable_prometheus_with_a_password_in_the_url_does_not_show_it(config_file: Path) -> None:
    code, out, errout = recommend(f"http://{USERINFO}@127.0.0.1:{closed_port()}", config_file)
    assert code == EXIT_SOURCE
    assert "not usable" in errout and "http://***@127.0.0.1" in errout
    assert_clean(out, errout)


def test_a_password_in_the_url_is_sent_as_basic_auth_and_never_printed(config_file: Path) -> None:
    # The probe and the backlog are answered, every other query's connection is dropped: each becomes an
    # error text in the JSON document and on stderr, the texts that used to carry the URL with its password.
    def answer(promql: str) -> Answer:
        if promql.startswith("sum by (dataset, operator) (ray_data_operator_queued_blocks"):
            return vector(({"dataset": "ds", "operator": "Infer_1"}, 5.0))
        return Answer(kind="drop")

    with HostilePrometheus(answer) as prom:
        code, out, errout = recommend(prom.url(USERINFO), config_file, "--json")
    assert code == EXIT_MISSING_METRICS
    expected = "Basic " + base64.b64encode(USERINFO.encode()).decode()
    assert prom.authorizations and set(prom.authorizations) == {expected}
    doc = json.loads(out)
    assert any(f"cannot reach Prometheus at http://127.0.0.1:{prom.port}" in e for e in doc["errors"])
    assert f"127.0.0.1:{prom.port}" in errout
    assert_clean(out, errout)


# --- 3. an overall deadline ---------------------------------------------------------------------------------


def test_a_server_that_drips_its_answer_is_given_up_on_at_the_deadline(config_file: Path) -> None:
    with HostilePrometheus(
        lambda q: Answer(kind="drip", body={"status": "success"}), scripts_probe=True
    ) as p:
        code, out, errout = recommend(p.url(), config_file, "--deadline", "1")
    assert code == EXIT_SOURCE
    assert "did not answer within the 1 s deadline (--deadline)" in errout
    assert "still waiting for the first query ('vector(1)'" in errout
    assert_clean(out, errout)


def test_the_deadline_message_names_the_history_query_that_was_slow(config_file: Path) -> None:
    def answer(promql: str) -> Answer:
        return Answer(kind="drip", body={}) if "ray_data_operator_queued_blocks" in promql else vector()

    with HostilePrometheus(answer) as prom:
        code, _, errout = recommend(prom.url(USERINFO), config_file, "--deadline", "1")
    assert code == EXIT_SOURCE
    assert "still waiting for template 'stage_backlog'" in errout
    assert f"http://127.0.0.1:{prom.port}" in errout and PASSWORD not in errout


# --- 4. untrusted text --------------------------------------------------------------------------------------


def test_markup_and_terminal_escapes_in_a_label_are_shown_as_text(config_file: Path) -> None:
    labels = {"dataset": "ds[/]", "operator": HOSTILE_LABEL}
    with HostilePrometheus(lambda q: vector((labels, 3.0))) as prom:
        code, out, errout = recommend(prom.url(), config_file)
    assert code in (0, EXIT_MISSING_METRICS), errout
    assert "Infer[/]" in out and "[bold red]x" in out and "fake line" in out
    assert_clean(out, errout)


def test_markup_and_escapes_in_an_error_page_are_shown_as_text(config_file: Path) -> None:
    page = Answer(status=400, body=b"bad [/] query \x1b[31mred\x1b[0m [link=x]", content_type="text/plain")
    with HostilePrometheus(lambda q: page, scripts_probe=True) as prom:
        code, out, errout = recommend(prom.url(), config_file)
    assert code == EXIT_SOURCE
    assert "bad [/] query red [link=x]" in errout
    assert_clean(out, errout)


def test_json_nested_past_the_recursion_limit_is_an_error_not_a_traceback(config_file: Path) -> None:
    deep = Answer(body=b"[" * 100_000 + b"]" * 100_000)
    with HostilePrometheus(lambda q: deep) as prom:
        code, out, errout = recommend(prom.url(), config_file, "--json")
    assert code == EXIT_MISSING_METRICS
    assert any("nested too deeply" in e for e in json.loads(out)["errors"])
    assert_clean(out, errout)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:99999", "port 99999 is not in 1-65535"),
        ("http://[::1", "is not a valid URL"),
        (f"http://{USERINFO}@[::1", "'http://***@[::1' is not a valid URL"),
        ("http://127.0.0.1:abc", "is not a valid URL"),
        ("ftp://127.0.0.1:21", "is not an http(s) URL"),
        (f"{USERINFO}@127.0.0.1:9090", "is not an http(s) URL"),
    ],
)
def test_a_bad_url_is_a_configuration_error(config_file: Path, url: str, says: str) -> None:
    code, out, errout = recommend(url, config_file)
    assert code == EXIT_CONFIG
    assert says in errout
    assert_clean(out, errout)


@pytest.mark.parametrize(
    "flags",
    [
        ("--history", "infh"),
        ("--history", "nan"),
        ("--step", "0"),
        ("--history", "300d", "--step", "1ms"),
        ("--deadline", "0"),
        ("--deadline", "inf"),
    ],
)
def test_bad_durations_are_usage_errors(config_file: Path, flags: tuple[str, ...]) -> None:
    code, out, errout = run(
        "recommend", "--prometheus", "http://127.0.0.1:1", "--config", str(config_file), *flags
    )
    assert code == EXIT_CONFIG
    assert "Invalid value" in errout
    assert_clean(out, errout)


def test_a_config_file_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(CONFIG.encode() + "# caf\xe9\n".encode("latin-1"))
    for args in (
        ["check-config", str(bad)],
        ["recommend", "--prometheus", "http://127.0.0.1:1", "--config", str(bad)],
    ):
        code, out, errout = run(*args)
        assert code == EXIT_CONFIG
        assert "is not UTF-8 text (byte 0xe9" in errout
        assert_clean(out, errout)
