"""One duration parser for config, scenarios and the command line."""

from __future__ import annotations

import pytest

from autoscaler.core.config import ConfigError, parse_config
from autoscaler.core.durations import DurationError, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m", 60.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        (" 90 s ", 90.0),
        ("12", 12.0),
        (12, 12.0),
        (0.25, 0.25),
    ],
)
def test_parses_every_written_form(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["m", "-1s", "", "1x", "s1", "infh", "inf", "nan", "1e400", "-3", "400d", "1" * 100 + "s", True]
)
def test_refuses_what_is_not_a_usable_duration(text: str | float) -> None:
    with pytest.raises(DurationError, match="duration"):
        parse_duration(text)


def test_zero_is_refused_only_where_a_span_must_be_positive() -> None:
    assert parse_duration("0s") == 0.0
    with pytest.raises(DurationError, match="longer than 0"):
        parse_duration("0s", positive=True)


def test_rate_window_is_checked_and_parsed_once_in_the_config() -> None:
    base = "shapes: [{name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2, max: 2}]\n"
    assert parse_config(base + "prometheus: {rate_window: 500ms}\n").prometheus.rate_window_seconds == 0.5
    with pytest.raises(ConfigError, match="longer than 0"):
        parse_config(base + "prometheus: {rate_window: 0s}\n")
