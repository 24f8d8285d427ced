"""A configuration that passes the check is one the daemon can run; hostile YAML gets a clear error."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.core.config import MAX_CONFIG_BYTES, ConfigError, parse_config

BASE = "shapes: [{name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2, max: 2}]\n"


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return str(e.value)


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("shapes: [{name: cpu4, resources: {CPU: 4}, price_per_hour: .inf}]", "shapes[0].price_per_hour"),
        ("prometheus: {timeout_seconds: .inf}", "prometheus.timeout_seconds"),
        ("daemon: {observe_timeout_seconds: .inf}", "daemon.observe_timeout_seconds"),
        ("daemon: {act_timeout_seconds: 1e12}", "daemon.act_timeout_seconds"),
        ("targets: {drain_seconds: .nan}", "targets.drain_seconds"),
        ("stages: [{name: a, prior_rate: {cpu4: .nan}}]", "stages[0].prior_rate"),
        ("shapes: [{name: cpu4, resources: {CPU: .inf}, price_per_hour: 1}]", "shapes[0].resources"),
        ("bounds: {max_nodes: 100000000}", "bounds.max_nodes"),
        ("bounds: {budget_per_hour: .nan}", "bounds.budget_per_hour"),
        ("warm_pool: {max: {cpu4: 10000000}}", "warm_pool.max"),
    ],
)
def test_numbers_are_finite_and_in_range(extra: str, path: str) -> None:
    text = extra + "\n" if extra.startswith("shapes") else BASE + extra + "\n"
    assert path in _problems(text)


def test_no_budget_is_still_spelt_infinity() -> None:
    assert parse_config(BASE + "bounds: {budget_per_hour: .inf}\n").bounds.budget_per_hour == float("inf")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('ignore_operators: "(("', "not a valid regular expression"),
        ('stages: [{name: a, operator: "(a+)+$"}]', "exponential time"),
        ('stages: [{name: a, dataset: "(x|y)*z"}]', "exponential time"),
        ("stages: [{name: a, operator: " + "a" * 1001 + "}]", "longer than 1000"),
    ],
)
def test_every_regex_compiles_and_cannot_backtrack_forever(extra: str, words: str) -> None:
    assert words in _problems(BASE + extra + "\n")


def test_the_default_ignore_pattern_and_usual_operator_patterns_pass() -> None:
    stages = (
        'stages: [{name: d, operator: "MapBatches\\\\(decode\\\\)"}, {name: i, operator: "(?i)infer_\\\\d+"}]'
    )
    cfg = parse_config(BASE + stages + "\n")
    assert [s.name for s in cfg.stages] == ["d", "i"]


def test_billion_laughs_is_refused_without_expanding_it() -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, 10):
        prev, cur = chr(ord("a") + n - 1), chr(ord("a") + n)
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    assert "aliases expand to more than" in _problems(BASE + "\n".join(levels) + "\n")


def test_a_self_referencing_alias_is_refused() -> None:
    text = _problems(BASE + "stages: &s [*s]\n")
    assert "aliases expand" in text or "stages" in text


def test_a_key_given_twice_is_an_error_naming_both_lines() -> None:
    text = _problems(BASE + "targets: {headroom: 0.1}\n" + BASE)
    assert "shapes (line 3): given twice (first on line 1)" in text
    assert "price_per_hour (line 1): given twice" not in text


def test_a_huge_file_is_refused_unread() -> None:
    assert "larger than" in _problems(BASE + "#" * MAX_CONFIG_BYTES + "\n")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    assert "not valid YAML" in _problems("a: " + "[" * 50_000 + "]" * 50_000 + "\n")


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_SECTIONS = ["shapes", "stages", "targets", "bounds", "prometheus", "daemon", "warm_pool", "ray", "mqtt"]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_SECTIONS), _VALUES, max_size=4))
def test_any_structure_is_a_config_or_a_config_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(BASE + yaml.safe_dump(doc) if "shapes" not in doc else yaml.safe_dump(doc))
