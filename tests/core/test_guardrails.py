from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.core.guardrails import (
    GuardLimits,
    GuardState,
    StepWindow,
    apply_guardrails,
    limit_steps_in_window,
)
from autoscaler.types import NodeShape, frozen_map

SHAPES = (
    NodeShape("cpu", frozen_map({"CPU": 4}), price_per_hour=1.0, min_count=1, max_count=10),
    NodeShape("gpu", frozen_map({"CPU": 2, "GPU": 1}), price_per_hour=5.0, min_count=0, max_count=4),
)
LIMITS = GuardLimits(
    max_nodes=12, budget_per_hour=30.0, max_step_up=5, max_step_down=2, scale_down_window_seconds=300.0
)


def run(
    proposed: dict[str, int],
    current: dict[str, int],
    *,
    now: float = 1000.0,
    known: bool = True,
    state: GuardState | None = None,
    limits: GuardLimits = LIMITS,
) -> tuple[dict[str, int], GuardState, dict[str, list[str]]]:
    r = apply_guardrails(
        now=now,
        shapes=SHAPES,
        current=current,
        proposed=proposed,
        inputs_known=known,
        limits=limits,
        state=state or GuardState(),
    )
    return r.targets, r.state, r.reasons


def test_scale_up_passes_within_step() -> None:
    out, _, _ = run({"cpu": 4, "gpu": 1}, {"cpu": 1, "gpu": 0})
    assert out == {"cpu": 4, "gpu": 1}


def test_step_up_is_limited() -> None:
    out, _, reasons = run({"cpu": 10, "gpu": 0}, {"cpu": 1, "gpu": 0})
    assert out["cpu"] == 6
    assert any("+5" in r for r in reasons["cpu"])


def test_no_scale_down_until_window_watched() -> None:
    out, state, reasons = run({"cpu": 1, "gpu": 0}, {"cpu": 3, "gpu": 0}, now=0.0)
    assert out["cpu"] == 3
    assert "window" in reasons["cpu"][0]
    out, state, _ = run({"cpu": 1, "gpu": 0}, {"cpu": 3, "gpu": 0}, now=299.0, state=state)
    assert out["cpu"] == 3
    out, _, _ = run({"cpu": 1, "gpu": 0}, {"cpu": 3, "gpu": 0}, now=301.0, state=state)
    assert out["cpu"] == 1


def test_scale_down_only_to_highest_plan_in_window() -> None:
    state = GuardState(watching_since=0.0)
    _, state, _ = run({"cpu": 3, "gpu": 0}, {"cpu": 3, "gpu": 0}, now=900.0, state=state)
    out, state, _ = run({"cpu": 1, "gpu": 0}, {"cpu": 3, "gpu": 0}, now=1000.0, state=state)
    assert out["cpu"] == 3
    out, _, _ = run({"cpu": 1, "gpu": 0}, {"cpu": 3, "gpu": 0}, now=1201.0, state=state)
    assert out["cpu"] == 1


def test_step_down_is_limited() -> None:
    state = GuardState(watching_since=0.0)
    out, _, _ = run({"cpu": 1, "gpu": 0}, {"cpu": 8, "gpu": 0}, state=state)
    assert out["cpu"] == 6


def test_unknown_inputs_never_scale_down() -> None:
    state = GuardState(watching_since=0.0)
    out, _, reasons = run({"cpu": 1, "gpu": 0}, {"cpu": 5, "gpu": 2}, known=False, state=state)
    assert out == {"cpu": 5, "gpu": 2}
    assert "unknown" in reasons["cpu"][0]


def test_budget_trims_expensive_shapes_first() -> None:
    limits = GuardLimits(
        max_nodes=100, budget_per_hour=12.0, max_step_up=10, max_step_down=10, scale_down_window_seconds=0
    )
    out, _, reasons = run({"cpu": 5, "gpu": 4}, {"cpu": 1, "gpu": 0}, limits=limits)
    assert out == {"cpu": 5, "gpu": 1}
    assert any("budget" in r for r in reasons["gpu"])


def test_state_round_trips_json() -> None:
    _, state, _ = run({"cpu": 2, "gpu": 1}, {"cpu": 1, "gpu": 0})
    assert GuardState.from_json(state.to_json()) == state


counts = st.dictionaries(st.sampled_from(["cpu", "gpu", "other"]), st.integers(-5, 50))


@settings(max_examples=300, deadline=None)
@given(
    proposed=counts,
    current=counts,
    known=st.booleans(),
    max_nodes=st.integers(1, 30),
    budget=st.one_of(st.just(math.inf), st.floats(1.0, 100.0)),
    window=st.floats(0, 600),
    since=st.one_of(st.none(), st.floats(0, 2000)),
)
def test_bounds_and_budget_always_hold(
    proposed: dict[str, int],
    current: dict[str, int],
    known: bool,
    max_nodes: int,
    budget: float,
    window: float,
    since: float | None,
) -> None:
    limits = GuardLimits(
        max_nodes=max_nodes,
        budget_per_hour=budget,
        max_step_up=3,
        max_step_down=2,
        scale_down_window_seconds=window,
    )
    out, _, _ = run(proposed, current, known=known, limits=limits, state=GuardState(watching_since=since))
    for s in SHAPES:
        assert s.min_count <= out[s.name] <= s.max_count
    # min counts (1 cpu node, 1 $/h) always fit these limits, so the global bounds must hold.
    assert sum(out.values()) <= max_nodes
    assert sum(out[s.name] * s.price_per_hour for s in SHAPES) <= budget + 1e-9
    cur = {s.name: max(0, current.get(s.name, 0)) for s in SHAPES}
    within = (
        all(s.min_count <= cur[s.name] <= s.max_count for s in SHAPES)
        and sum(cur.values()) <= max_nodes
        and sum(cur[s.name] * s.price_per_hour for s in SHAPES) <= budget
    )
    if not known and within:
        # Fail-static: unknown inputs never take capacity away from a cluster that is within its bounds.
        assert all(out[s.name] >= cur[s.name] for s in SHAPES)
    again, _, _ = run(proposed, current, known=known, limits=limits, state=GuardState(watching_since=since))
    assert again == out


def test_budget_takes_back_additions_before_running_nodes() -> None:
    limits = GuardLimits(
        max_nodes=100, budget_per_hour=12.0, max_step_up=10, max_step_down=10, scale_down_window_seconds=0
    )
    out, _, _ = run({"cpu": 5, "gpu": 2}, {"cpu": 1, "gpu": 2}, known=False, limits=limits)
    assert out == {"cpu": 2, "gpu": 2}


# ------------------------------------------------------------------------------ the step window (nudges)


def in_window(
    targets: dict[str, int], current: dict[str, int], *seen: dict[str, int], limits: GuardLimits = LIMITS
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """``targets`` held to a window whose earlier ticks saw ``seen`` (this tick sees ``current``)."""
    window = StepWindow()
    for counts in (*seen, current):
        window = window.seen(counts)
    return limit_steps_in_window(
        shapes=SHAPES, current=current, targets=targets, window=window, limits=limits, window_seconds=5.0
    )


def test_a_windows_first_tick_keeps_the_per_tick_steps() -> None:
    assert in_window({"cpu": 6, "gpu": 0}, {"cpu": 1, "gpu": 2}) == (
        {"cpu": 6, "gpu": 0},
        {"cpu": [], "gpu": []},
    )


def test_an_extra_tick_in_the_window_shares_its_step_up() -> None:
    # The first tick took cpu from 1 to 6 (+5, the whole step); the nodes show up at once. A nudged tick in
    # the same window may not add another 5: it keeps what the window allows.
    out, reasons = in_window({"cpu": 10, "gpu": 0}, {"cpu": 6, "gpu": 0}, {"cpu": 1, "gpu": 0})
    assert out == {"cpu": 6, "gpu": 0}
    assert reasons["cpu"] == ["step limited to +5 per 5 s (ticks a nudge adds share it)"]
    # Part of the step left: the rest of it is allowed.
    out, _ = in_window({"cpu": 10, "gpu": 0}, {"cpu": 3, "gpu": 0}, {"cpu": 1, "gpu": 0})
    assert out["cpu"] == 6


def test_an_extra_tick_in_the_window_shares_its_step_down() -> None:
    out, reasons = in_window({"cpu": 1, "gpu": 0}, {"cpu": 6, "gpu": 0}, {"cpu": 8, "gpu": 0})
    assert out == {"cpu": 6, "gpu": 0}
    assert reasons["cpu"] == ["step limited to -2 per 5 s (ticks a nudge adds share it)"]


def test_the_window_never_turns_a_step_around_nor_breaks_a_minimum() -> None:
    # More nodes than the window's budget already: a rise becomes a keep, never a cut.
    out, _ = in_window({"cpu": 9, "gpu": 0}, {"cpu": 8, "gpu": 0}, {"cpu": 1, "gpu": 0})
    assert out["cpu"] == 8
    # Below the shape's minimum (1 cpu): raised to it whatever the window says.
    limits = GuardLimits(
        max_nodes=12, budget_per_hour=30.0, max_step_up=1, max_step_down=2, scale_down_window_seconds=0
    )
    out, _ = in_window({"cpu": 1, "gpu": 0}, {"cpu": 0, "gpu": 0}, {"cpu": 0, "gpu": 0}, limits=limits)
    assert out["cpu"] == 1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    current=counts,
    targets=counts,
    seen=st.lists(counts, max_size=3),
    max_nodes=st.integers(1, 30),
    budget=st.one_of(st.just(math.inf), st.floats(1.0, 100.0)),
    up=st.integers(1, 4),
    down=st.integers(1, 3),
)
def test_the_window_only_shrinks_steps_and_keeps_the_bounds(
    current: dict[str, int],
    targets: dict[str, int],
    seen: list[dict[str, int]],
    max_nodes: int,
    budget: float,
    up: int,
    down: int,
) -> None:
    limits = GuardLimits(
        max_nodes=max_nodes,
        budget_per_hour=budget,
        max_step_up=up,
        max_step_down=down,
        scale_down_window_seconds=0,
    )
    # What the per-tick guard hands over: a target within every bound.
    guarded = run(targets, current, state=GuardState(watching_since=0.0), limits=limits)[0]
    cur = {s.name: max(0, current.get(s.name, 0)) for s in SHAPES}
    out, _ = in_window(guarded, cur, *seen, limits=limits)
    for s in SHAPES:
        n = s.name
        assert min(cur[n], guarded[n]) <= out[n] <= max(cur[n], guarded[n])  # only ever a smaller step
        assert s.min_count <= out[n] <= s.max_count
    assert sum(out.values()) <= max_nodes
    assert sum(out[s.name] * s.price_per_hour for s in SHAPES) <= budget + 1e-9
    if not seen:
        assert out == guarded
