from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.core.throughput import MAX_SLOTS, RateEstimate, ThroughputModels
from autoscaler.types import NodeShape, Reading, Snapshot, StageObservation, frozen_map

SHAPES = (
    NodeShape("cpu4", frozen_map({"CPU": 4}), 0.2),
    NodeShape("cpu8", frozen_map({"CPU": 8}), 0.4),
    NodeShape("gpu1", frozen_map({"CPU": 2, "GPU": 1}), 1.0),
)


def obs(
    name: str,
    throughput: Reading | float | None,
    busy: Reading | float | None,
    split: Mapping[str, float],
) -> StageObservation:
    def r(v: Reading | float | None) -> Reading:
        if isinstance(v, Reading):
            return v
        return Reading.unknown("missing") if v is None else Reading.of(v)

    return StageObservation(
        name=name,
        backlog=Reading.of(0.0),
        throughput=r(throughput),
        arrival_rate=r(throughput),
        slots_busy=r(busy),
        slots_by_shape=frozen_map(split),
    )


def snap(t: float, *stages: StageObservation) -> Snapshot:
    return Snapshot(time=t, shapes=SHAPES, nodes=(), node_counts={}, pending_counts={}, stages=stages)


def feed(models: ThroughputModels, stage: str, shape: str, samples: Iterable[tuple[float, float]]) -> None:
    """One snapshot per (slots, throughput) sample, all of the stage's slots on one shape."""
    for i, (slots, tp) in enumerate(samples):
        models.update(snap(float(i), obs(stage, tp, slots, {shape: slots})))


def linear(rate: float, slots: float, n: int, noise: float, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(slots, rate * slots * float(f)) for f in rng.lognormal(0.0, noise, n)]


def observed(models: ThroughputModels, stage: str, shape: str) -> RateEstimate:
    est = models.estimate(stage, shape)
    assert est is not None
    assert est.source == "observed"
    return est


def fitted_pairs(models: ThroughputModels) -> list[tuple[str, str, int]]:
    return [
        (p["stage"], p["shape"], p["fit"]["tick"]) for p in models.to_json()["pairs"] if p["fit"] is not None
    ]


# ------------------------------------------------------------------ RateEstimate


def test_rate_estimate_arithmetic() -> None:
    est = RateEstimate("s", "cpu4", 2.0, 0.5, 0.25, 10, "observed")
    assert est.rate(0) == 0.0
    assert est.rate(-3) == 0.0
    assert est.rate(4) == pytest.approx(4.0)
    assert est.per_slot_at(0.5) == 2.0
    assert est.per_slot_at(4) == pytest.approx(1.0)
    assert est.slots_for(0) == 0
    assert est.slots_for(-1) == 0
    assert est.slots_for(4.0) == 4
    assert est.slots_for(4.01) == 5
    assert est.confidence == pytest.approx(0.8)


def test_slots_for_unreachable_rate() -> None:
    assert RateEstimate("s", "x", 0.0, 1.0, 1.0, 5, "observed").slots_for(1.0) == MAX_SLOTS
    assert RateEstimate("s", "x", 1.0, 0.5, 1.0, 5, "observed").slots_for(1e300) == MAX_SLOTS


@given(
    rate=st.floats(0.01, 1000.0),
    efficiency=st.floats(0.5, 1.0),
    target=st.floats(0.001, 1e6),
)
def test_slots_for_is_the_smallest_sufficient_count(rate: float, efficiency: float, target: float) -> None:
    est = RateEstimate("s", "x", rate, efficiency, 0.1, 3, "observed")
    n = est.slots_for(target)
    assert 1 <= n <= MAX_SLOTS
    if n == MAX_SLOTS:
        assert (target / rate) ** (1 / efficiency) >= MAX_SLOTS - 1
        return
    assert est.rate(n) >= target
    assert n == 1 or est.rate(n - 1) < target


# ------------------------------------------------------------------ learning


def test_recovers_rate_from_noisy_linear_data() -> None:
    m = ThroughputModels(min_samples=60)  # one fit, at the end: keeps the test fast
    feed(m, "decode", "cpu4", linear(2.5, 4.0, 60, noise=0.05, seed=1))
    est = observed(m, "decode", "cpu4")
    assert est.per_slot_rate == pytest.approx(2.5, rel=0.03)
    assert est.efficiency == 1.0
    assert est.samples == 60
    assert est.stage == "decode"
    assert est.shape == "cpu4"


def test_recovers_sublinear_efficiency_when_slot_counts_vary() -> None:
    rng = np.random.default_rng(2)
    slots = rng.integers(1, 33, 100).astype(float)
    tp = 3.0 * slots**0.7 * rng.lognormal(0.0, 0.05, 100)
    m = ThroughputModels(min_samples=100)
    feed(m, "infer", "gpu1", zip(slots.tolist(), tp.tolist(), strict=True))
    est = observed(m, "infer", "gpu1")
    assert est.efficiency == pytest.approx(0.7, abs=0.05)
    assert est.per_slot_rate == pytest.approx(3.0, rel=0.1)
    assert est.rate(16) == pytest.approx(3.0 * 16**0.7, rel=0.05)


@pytest.mark.parametrize(("true_b", "expected"), [(1.4, 1.0), (0.2, 0.5)])
def test_efficiency_is_clipped(true_b: float, expected: float) -> None:
    rng = np.random.default_rng(3)
    slots = rng.integers(1, 17, 40).astype(float)
    m = ThroughputModels(min_samples=40)
    feed(m, "s", "cpu8", [(s, 2.0 * s**true_b) for s in slots.tolist()])
    est = observed(m, "s", "cpu8")
    assert est.efficiency == expected
    assert math.isfinite(est.per_slot_rate) and est.per_slot_rate > 0


def test_efficiency_stays_linear_when_slot_counts_barely_vary() -> None:
    # 4 and 5 slots span less than 1.5x: no basis for an exponent, whatever the data.
    m = ThroughputModels(min_samples=30)
    feed(m, "s", "cpu4", [(4.0 + (i % 2), 10.0) for i in range(30)])
    assert observed(m, "s", "cpu4").efficiency == 1.0


@pytest.mark.parametrize("vary", [False, True])
def test_robust_to_a_few_outliers(vary: bool) -> None:
    rng = np.random.default_rng(4)
    slots = rng.integers(2, 17, 60).astype(float) if vary else np.full(60, 4.0)
    tp = 2.0 * slots * rng.lognormal(0.0, 0.05, 60)
    tp[[5, 17, 29]] *= 20.0  # metric glitches
    tp[[11, 40]] = 0.0  # stalled windows
    m = ThroughputModels(min_samples=60)
    feed(m, "s", "cpu4", zip(slots.tolist(), tp.tolist(), strict=True))
    est = observed(m, "s", "cpu4")
    assert est.per_slot_rate == pytest.approx(2.0, rel=0.08)
    naive = float(np.mean(tp / slots))
    assert abs(naive / 2.0 - 1) > 0.5  # the outliers do matter to a plain mean


def test_unknown_and_invalid_readings_are_ignored_not_zero() -> None:
    m = ThroughputModels()
    feed(m, "s", "cpu4", linear(3.0, 4.0, 10, noise=0.02, seed=5))
    before = m.to_json()
    est_before = m.estimate("s", "cpu4")
    bad = [
        obs("s", None, 4.0, {"cpu4": 4.0}),
        obs("s", 12.0, None, {"cpu4": 4.0}),
        obs("s", Reading(math.nan), 4.0, {"cpu4": 4.0}),
        obs("s", 12.0, Reading(math.inf), {"cpu4": 4.0}),
        obs("s", -1.0, 4.0, {"cpu4": 4.0}),
        obs("s", 12.0, 0.2, {"cpu4": 4.0}),  # below min_busy_slots
        obs("s", 12.0, 4.0, {}),
        obs("s", 12.0, 4.0, {"cpu4": 0.0, "cpu8": -2.0, "gpu1": math.nan}),
    ]
    for i, o in enumerate(bad):
        m.update(snap(100.0 + i, o))
    after = m.to_json()
    assert after["pairs"] == before["pairs"]
    assert after["tick"] == before["tick"] + len(bad)
    assert m.estimate("s", "cpu4") == est_before
    cpu8 = m.estimate("s", "cpu8")
    assert cpu8 is not None and cpu8.source == "pooled"


def test_vanishing_slot_share_is_skipped() -> None:
    m = ThroughputModels(min_samples=1)
    # 1e300 units/s over 1e-300 slots would be an infinite per-slot rate.
    m.update(snap(0.0, obs("s", 1e300, 4.0, {"cpu8": 1e-300})))
    assert m.to_json()["pairs"] == []


def test_stalled_stage_gives_zero_rate_without_warnings() -> None:
    m = ThroughputModels()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(m, "s", "cpu4", [(4.0, 0.0)] * 5)
        feed(m, "t", "cpu4", [(4.0, 8.0)] * 5)  # identical samples
        feed(m, "u", "cpu4", [(float(s), 0.0 if s % 3 else 5.0) for s in range(1, 20)])  # mostly stalled
        stalled = observed(m, "s", "cpu4")
        same = observed(m, "t", "cpu4")
        mostly = observed(m, "u", "cpu4")
    assert stalled.per_slot_rate == 0.0
    assert math.isfinite(stalled.rel_uncertainty)
    assert stalled.slots_for(1.0) == MAX_SLOTS
    assert same.per_slot_rate == 2.0
    assert same.rel_uncertainty >= 0.05
    assert math.isfinite(mostly.per_slot_rate) and mostly.per_slot_rate >= 0


def test_throughput_is_attributed_by_slot_share() -> None:
    m = ThroughputModels(min_samples=1)
    m.update(snap(7.0, obs("s", 40.0, 4.0, {"cpu4": 3.0, "gpu1": 1.0})))
    pairs = {(p["stage"], p["shape"]): p for p in m.to_json()["pairs"]}
    assert pairs["s", "cpu4"]["samples"] == [[3.0, 30.0]]
    assert pairs["s", "gpu1"]["samples"] == [[1.0, 10.0]]
    assert pairs["s", "cpu4"]["last_time"] == 7.0
    assert observed(m, "s", "cpu4").per_slot_rate == pytest.approx(10.0)


def test_window_keeps_only_recent_samples() -> None:
    m = ThroughputModels(window=8)
    feed(m, "s", "cpu4", [(2.0, 2.0)] * 20 + [(2.0, 10.0)] * 8)
    est = observed(m, "s", "cpu4")
    assert est.samples == 8
    assert est.per_slot_rate == pytest.approx(5.0)


# ------------------------------------------------------------------ fallbacks


def test_prior_is_used_without_data() -> None:
    m = ThroughputModels()
    est = m.estimate("s", "gpu1", prior_rate=2.0)
    assert est == RateEstimate("s", "gpu1", 2.0, 1.0, 0.5, 0, "prior")


def test_pooled_from_the_stages_other_shapes() -> None:
    m = ThroughputModels()
    feed(m, "s", "cpu4", linear(2.0, 4.0, 10, noise=0.0, seed=0))
    feed(m, "s", "cpu8", linear(4.0, 8.0, 30, noise=0.2, seed=6))
    a = observed(m, "s", "cpu4")
    b = observed(m, "s", "cpu8")
    est = m.estimate("s", "gpu1")
    assert est is not None
    assert est.source == "pooled"
    assert est.samples == 0
    assert est.efficiency == 1.0
    expected = (a.per_slot_rate * a.samples + b.per_slot_rate * b.samples) / (a.samples + b.samples)
    assert est.per_slot_rate == pytest.approx(expected)
    assert est.rel_uncertainty == max(0.5, 2 * max(a.rel_uncertainty, b.rel_uncertainty))
    # A prior, when given, is more specific than other shapes' data.
    prior = m.estimate("s", "gpu1", prior_rate=9.0)
    assert prior is not None and prior.source == "prior" and prior.per_slot_rate == 9.0


def test_none_when_nothing_is_known() -> None:
    m = ThroughputModels()
    assert m.estimate("s", "cpu4") is None
    feed(m, "other", "cpu4", linear(2.0, 4.0, 5, noise=0.0, seed=0))
    assert m.estimate("s", "cpu4") is None
    # Too few samples of its own and nothing to lean on: still not enough to plan with.
    feed(m, "s", "cpu4", [(4.0, 8.0)])
    assert m.estimate("s", "cpu4") is None


def test_few_samples_are_blended_with_the_prior() -> None:
    m = ThroughputModels(min_samples=5)
    feed(m, "s", "cpu4", [(4.0, 16.0), (4.0, 16.0)])  # 4 per slot
    est = m.estimate("s", "cpu4", prior_rate=2.0)
    assert est is not None
    assert est.source == "prior"
    assert est.samples == 2
    assert 2.0 < est.per_slot_rate < 4.0
    assert est.rel_uncertainty < 0.5
    # One sample more per estimate pulls it further towards the data.
    feed(m, "s", "cpu4", [(4.0, 16.0)])
    later = m.estimate("s", "cpu4", prior_rate=2.0)
    assert later is not None and est.per_slot_rate < later.per_slot_rate < 4.0


def test_few_samples_are_blended_with_the_pooled_rate() -> None:
    m = ThroughputModels()
    feed(m, "s", "cpu8", linear(2.0, 8.0, 10, noise=0.0, seed=0))
    feed(m, "s", "cpu4", [(4.0, 16.0)])
    est = m.estimate("s", "cpu4")
    assert est is not None
    assert est.source == "pooled"
    assert 2.0 < est.per_slot_rate < 4.0


def test_estimates_for_stage() -> None:
    m = ThroughputModels()
    feed(m, "s", "cpu4", linear(2.0, 4.0, 5, noise=0.0, seed=0))
    ests = m.estimates_for_stage("s", ["cpu4", "cpu8", "gpu1"], {"gpu1": 7.0})
    assert {k: v.source for k, v in ests.items()} == {"cpu4": "observed", "cpu8": "pooled", "gpu1": "prior"}
    assert ests["gpu1"].per_slot_rate == 7.0
    assert m.estimates_for_stage("nobody", ["cpu4"], {}) == {}


def test_uncertainty_shrinks_with_more_samples() -> None:
    data = linear(2.0, 4.0, 200, noise=0.3, seed=7)
    rels = []
    for n in (3, 10, 40, 200):
        m = ThroughputModels(window=256, min_samples=n)
        feed(m, "s", "cpu4", data[:n])
        rels.append(observed(m, "s", "cpu4").rel_uncertainty)
    assert rels == sorted(rels, reverse=True)
    assert rels[0] > 0.15
    assert rels[-1] < 0.06
    assert all(r >= 0.05 for r in rels)
    prior = ThroughputModels().estimate("s", "cpu4", prior_rate=2.0)
    assert prior is not None and prior.rel_uncertainty > rels[0]
    assert prior.confidence < 1 / (1 + rels[0])


def test_estimates_for_stage_agree_with_estimate_and_follow_refits() -> None:
    m = ThroughputModels(min_samples=3, refit_budget=1)
    feed(m, "s", "cpu4", linear(2.0, 4.0, 6, noise=0.1, seed=1))
    m.update(snap(10.0, obs("s", 20.0, 4.0, {"cpu8": 4.0})))  # one sample of its own: blended with the pool
    shapes = ["cpu4", "cpu8", "gpu1"]
    ests = m.estimates_for_stage("s", shapes, {})
    # The pooled statistics are worked out once per stage; every shape still gets its own answer.
    assert ests == {shape: m.estimate("s", shape) for shape in shapes}
    assert ests["cpu8"].source == "pooled" and ests["gpu1"].source == "pooled"
    assert ests["cpu8"].samples == 1 and ests["gpu1"].samples == 0
    # A new fit replaces the remembered estimate.
    before = observed(m, "s", "cpu4")
    feed(m, "s", "cpu4", linear(6.0, 4.0, 20, noise=0.0, seed=2))
    after = observed(m, "s", "cpu4")
    assert after.per_slot_rate > before.per_slot_rate
    assert m.estimates_for_stage("s", ["cpu4"], {})["cpu4"] == after


def test_default_refit_budget() -> None:
    # About 1 ms per fit: the update's share of a decision's 20 ms on a large cluster.
    assert ThroughputModels().refit_budget == 2


# ------------------------------------------------------------------ refit budget


def test_refit_budget_is_respected_oldest_fit_first() -> None:
    stages = [f"s{i:02d}" for i in range(10)]

    def tick(t: float) -> Snapshot:
        return snap(t, *(obs(name, 8.0, 4.0, {"cpu4": 4.0}) for name in reversed(stages)))

    m = ThroughputModels(min_samples=1, refit_budget=3)
    m.update(tick(0.0))
    assert fitted_pairs(m) == [(s, "cpu4", 1) for s in stages[:3]]
    # Pairs never fitted come first, then the ones fitted longest ago; names break ties.
    for t in (1.0, 2.0, 3.0):
        m.update(tick(t))
    ticks = {stage: t for stage, _, t in fitted_pairs(m)}
    assert ticks == {
        "s00": 4,
        "s01": 4,
        "s02": 1,
        **dict.fromkeys(stages[3:6], 2),
        **dict.fromkeys(stages[6:9], 3),
        "s09": 4,
    }
    # Every pair answers, whether its fit is fresh or waiting in the queue.
    assert all(observed(m, s, "cpu4").per_slot_rate == 2.0 for s in stages)


def test_budget_zero_never_fits_but_still_estimates() -> None:
    m = ThroughputModels(refit_budget=0)
    feed(m, "s", "cpu4", linear(2.0, 4.0, 10, noise=0.0, seed=0))
    assert fitted_pairs(m) == []
    assert observed(m, "s", "cpu4").per_slot_rate == pytest.approx(2.0)


# ------------------------------------------------------------------ JSON


def history(seed: int, n: int = 30) -> list[Snapshot]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        a = float(rng.integers(1, 9))
        b = float(rng.integers(1, 5))
        out.append(
            snap(
                float(t),
                obs("decode", 3.0 * (a + b) * float(rng.lognormal(0, 0.1)), a + b, {"cpu4": a, "cpu8": b}),
                obs("infer", 5.0 * b**0.8 * float(rng.lognormal(0, 0.1)), b, {"gpu1": b}),
                obs("late", None if t % 2 else 4.0, 1.0, {"cpu4": 1.0}),
            )
        )
    return out


def all_estimates(m: ThroughputModels) -> dict[tuple[str, str], RateEstimate | None]:
    return {
        (stage, shape.name): m.estimate(stage, shape.name, prior_rate=1.5 if shape.name == "gpu1" else None)
        for stage in ("decode", "infer", "late", "unknown")
        for shape in SHAPES
    }


def test_json_round_trip() -> None:
    snaps = history(8)
    m = ThroughputModels(window=16, refit_budget=2)
    for s in snaps[:20]:
        m.update(s)
    text = json.dumps(m.to_json(), allow_nan=False)
    restored = ThroughputModels.from_json(json.loads(text))
    assert restored.to_json() == m.to_json()
    assert all_estimates(restored) == all_estimates(m)
    assert (restored.window, restored.min_samples, restored.refit_budget, restored.min_busy_slots) == (
        16,
        3,
        2,
        0.5,
    )
    # And it carries on exactly as the original would have.
    for s in snaps[20:]:
        m.update(s)
        restored.update(s)
    assert restored.to_json() == m.to_json()
    assert all_estimates(restored) == all_estimates(m)


def test_deterministic() -> None:
    a = ThroughputModels(refit_budget=1)
    b = ThroughputModels(refit_budget=1)
    for s in history(9):
        a.update(s)
    for s in history(9):
        b.update(s)
    assert a.to_json() == b.to_json()
    assert all_estimates(a) == all_estimates(b)


def _valid_state() -> dict[str, Any]:
    m = ThroughputModels(min_samples=1)
    feed(m, "s", "cpu4", [(4.0, 8.0), (2.0, 4.0)])
    return m.to_json()


def _set(path: Sequence[str | int], value: Any) -> Callable[[dict[str, Any]], Any]:
    def mutate(d: dict[str, Any]) -> Any:
        target: Any = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return d

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], Any]:
    def mutate(d: dict[str, Any]) -> Any:
        del d[key]
        return d

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: [], "expected a JSON object"),
        (lambda d: "garbage", "expected a JSON object"),
        (_set(["version"], 2), "unsupported version 2"),
        (_set(["version"], True), "unsupported version"),
        (_delete("version"), "unsupported version None"),
        (_set(["window"], "128"), "window: expected an integer"),
        (_set(["window"], 0), "window must be"),
        (_set(["min_busy_slots"], math.nan), "min_busy_slots: expected a finite number"),
        (_set(["tick"], -1), "tick: must be >= 0"),
        (_set(["pairs"], {}), "pairs: expected a list"),
        (_set(["pairs", 0], None), r"pairs\[0\]: expected an object"),
        (_set(["pairs", 0, "stage"], 3), r"pairs\[0\]\.stage: expected a string"),
        (_set(["pairs", 0, "samples", 0], [1.0]), r"samples\[0\]: expected \[slots, throughput\]"),
        (_set(["pairs", 0, "samples", 0], [0.0, 1.0]), r"samples\[0\]: needs slots > 0"),
        (_set(["pairs", 0, "samples", 1, 1], "x"), r"samples\[1\]\[1\]: expected a finite number"),
        (_set(["pairs", 0, "samples"], [[1.0, 1.0]] * 200), "more than the window"),
        (_set(["pairs", 0, "dirty"], 1), "dirty: expected true or false"),
        (_set(["pairs", 0, "last_time"], "now"), "last_time: expected a finite number"),
        (_set(["pairs", 0, "fit"], [1, 2]), "fit: expected an object or null"),
        (_set(["pairs", 0, "fit", "efficiency"], 1.5), r"fit\.efficiency: must be in"),
        (_set(["pairs", 0, "fit", "rate"], -1.0), r"fit\.rate: must be >= 0"),
        (_set(["pairs", 0, "fit", "rel_uncertainty"], 0.0), r"fit\.rel_uncertainty: must be > 0"),
        (_set(["pairs", 0, "fit", "tick"], 99), r"fit\.tick: must be in"),
        (lambda d: _set(["pairs"], d["pairs"] * 2)(d), "duplicate pair"),
    ],
)
def test_from_json_rejects_malformed_data(mutate: Callable[[dict[str, Any]], Any], message: str) -> None:
    data = mutate(copy.deepcopy(_valid_state()))
    with pytest.raises(ValueError, match=message):
        ThroughputModels.from_json(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0},
        {"min_samples": 0},
        {"window": 2, "min_samples": 3},
        {"refit_budget": -1},
        {"min_busy_slots": -0.1},
        {"min_busy_slots": math.inf},
    ],
)
def test_constructor_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ThroughputModels(**kwargs)


# ------------------------------------------------------------------ properties

sample = st.tuples(
    st.floats(0.5, 64.0, allow_nan=False),
    # Mostly everyday magnitudes, some near the float limits (subnormal and huge), and stalls.
    st.one_of(st.just(0.0), st.floats(0.0, 1e6), st.floats(0.0, 1e250)),
)


@settings(max_examples=40, deadline=None)
@given(samples=st.lists(sample, max_size=30), prior=st.one_of(st.none(), st.floats(0.001, 1e4)))
def test_any_finite_samples_give_sane_estimates(
    samples: list[tuple[float, float]], prior: float | None
) -> None:
    m = ThroughputModels()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(m, "s", "cpu4", samples)
        feed(m, "s", "cpu8", samples[::2])
        ests = [m.estimate("s", shape, prior_rate=prior) for shape in ("cpu4", "cpu8", "gpu1")]
    for est in ests:
        if est is None:
            assert prior is None
            continue
        assert math.isfinite(est.per_slot_rate) and est.per_slot_rate >= 0
        assert 0.5 <= est.efficiency <= 1.0
        assert math.isfinite(est.rel_uncertainty) and est.rel_uncertainty > 0
        assert 0 < est.confidence <= 1
        assert est.slots_for(10.0) >= 1
        restored = ThroughputModels.from_json(json.loads(json.dumps(m.to_json(), allow_nan=False)))
        assert restored.estimate(est.stage, est.shape, prior_rate=prior) == est


@settings(max_examples=25, deadline=None)
@given(samples=st.lists(sample, min_size=3, max_size=20))
def test_scaling_throughput_scales_the_rate(samples: list[tuple[float, float]]) -> None:
    # Units are arbitrary: doubling every throughput must double the rate and change nothing else.
    a = ThroughputModels()
    b = ThroughputModels()
    feed(a, "s", "cpu4", samples)
    feed(b, "s", "cpu4", [(s, 2.0 * tp) for s, tp in samples])
    ea = observed(a, "s", "cpu4")
    eb = observed(b, "s", "cpu4")
    assert eb.per_slot_rate == pytest.approx(2.0 * ea.per_slot_rate, rel=1e-3, abs=1e-9)
    assert eb.efficiency == pytest.approx(ea.efficiency, abs=1e-3)
