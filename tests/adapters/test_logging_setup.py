"""configure_logging: JSON lines and text, extras, exceptions, levels, re-configuration."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from autoscaler.adapters.logging_setup import configure_logging

pytestmark = pytest.mark.usefixtures("restore_root_logger")


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_one_object_per_record_with_extras() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    log = logging.getLogger("raytide.test")
    log.info("scaled %s", "up", extra={"shape": "gpu1", "delta": 2, "obj": object(), "time": "clash"})
    log.debug("not shown")
    [line] = lines(out)
    doc = json.loads(line)
    assert doc["level"] == "INFO"
    assert doc["logger"] == "raytide.test"
    assert doc["message"] == "scaled up"
    assert doc["shape"] == "gpu1" and doc["delta"] == 2
    assert doc["obj"].startswith("<object object")
    assert doc["extra_time"] == "clash"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    for internal in ("args", "msg", "levelno", "pathname", "thread"):
        assert internal not in doc


def test_json_exception_stays_on_one_line() -> None:
    out = io.StringIO()
    configure_logging("json", logging.DEBUG, stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    [line] = lines(out)
    doc = json.loads(line)
    assert doc["level"] == "ERROR"
    assert "RuntimeError: boom" in doc["exc_info"]


def test_text_format_is_one_human_line() -> None:
    out = io.StringIO()
    configure_logging("text", "warning", stream=out)
    logging.getLogger("raytide.text").info("hidden")
    logging.getLogger("raytide.text").warning("held", extra={"why": "inputs unknown", "n": 3})
    [line] = lines(out)
    assert re.fullmatch(
        r"\S+Z WARNING raytide\.text: held why=\"inputs unknown\" n=3",
        line,
    ), line


def test_reconfiguring_replaces_only_its_own_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    foreign = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(foreign)
    configure_logging("text", "INFO", stream=first)
    configure_logging("json", "INFO", stream=second)
    logging.getLogger("r").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1
    assert foreign in logging.getLogger().handlers


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("json", "LOUD")
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("xml", "INFO")  # type: ignore[arg-type]


def test_httpx_request_lines_only_at_debug() -> None:
    import io

    configure_logging("text", "INFO", stream=io.StringIO())
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    configure_logging("text", "DEBUG", stream=io.StringIO())
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
