"""The warm pool's pure part: sizing, caps, claiming, counting and its memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.core.config import Config, ConfigError, parse_config
from autoscaler.core.warm_pool import (
    LaunchTimer,
    PoolMemory,
    Standby,
    active_counts,
    claims_for_waiting,
    expected_rise,
    parse_standby_name,
    plan_pool,
    pool_targets,
    standby_name,
)
from autoscaler.types import frozen_map

BASE = """
shapes:
  - {name: cpu4, resources: {CPU: 4}, price_per_hour: 0.2, max: 10, launch_seconds: 100}
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.0, max: 4, launch_seconds: 100}
bounds: {max_nodes: 20, budget_per_hour: 100}
warm_pool: {enabled: true%s}
"""


def cfg(extra: str = "") -> Config:
    return parse_config(BASE % extra)


def history(points: Sequence[tuple[float, int]], shape: str = "gpu1") -> PoolMemory:
    mem = PoolMemory()
    for t, n in points:
        mem.remember_plan(t, {shape: n}, keep_seconds=1e9)
    return mem


def test_names_round_trip_and_foreign_names_are_not_ours() -> None:
    assert parse_standby_name(standby_name("gpu1", 7)) == ("gpu1", 7)
    assert parse_standby_name("raytide-standby:a:b:3") == ("a:b", 3)
    for other in ("", "raytide-standby", "raytide-standby:gpu1", "raytide-standby:gpu1:x", "pg:gpu1:1"):
        assert parse_standby_name(other) is None


def test_rise_within_lead_time_is_what_the_pool_covers() -> None:
    # Every 60 s the target goes 1 → 3 within 20 s: a 100 s lead time sees rises of 2.
    points = [(t, 1 if t % 60 < 30 else 3) for t in range(0, 600, 10)]
    mem = history(points)
    assert expected_rise(mem.history, "gpu1", 100.0, 1.0) == 2
    # A lead time shorter than any step sees none.
    assert expected_rise(mem.history, "gpu1", 5.0, 1.0) == 0
    # Falling targets never count as rises.
    assert expected_rise(history([(t, 10 - t // 10) for t in range(0, 100, 10)]).history, "gpu1", 50, 1) == 0


def test_quiet_history_empties_the_pool_down_to_min() -> None:
    steady = history([(t, 2) for t in range(0, 3600, 30)])
    assert pool_targets(cfg(), steady, {"gpu1": 2}).counts["gpu1"] == 0
    assert pool_targets(cfg(", min: {gpu1: 1}"), steady, {"gpu1": 2}).counts["gpu1"] == 1


def test_disabled_pool_is_empty_whatever_the_override() -> None:
    c = parse_config((BASE % "").replace("enabled: true", "enabled: false"))
    assert set(pool_targets(c, PoolMemory(), {}, override={"gpu1": 3}).counts.values()) == {0}


def test_caps_shape_max_pool_max_nodes_and_money() -> None:
    mem = PoolMemory()
    # The shape's max minus what the plan uses.
    assert pool_targets(cfg(), mem, {"gpu1": 3}, override={"gpu1": 5}).counts["gpu1"] == 1
    # warm_pool.max.
    assert pool_targets(cfg(", max: {gpu1: 2}"), mem, {}, override={"gpu1": 5}).counts["gpu1"] == 2
    # The warm-pool budget: 2.5 $/h buys two gpu1 at 1 $/h.
    t = pool_targets(cfg(", budget_per_hour: 2.5"), mem, {}, override={"gpu1": 4})
    assert t.counts["gpu1"] == 2 and "budget" in t.reasons["gpu1"]
    # bounds.budget_per_hour after the plan: 100 - 99.5 leaves 0.5 $/h: no gpu1, two cpu4.
    t = pool_targets(cfg(), mem, {"cpu4": 0, "gpu1": 4}, override={"gpu1": 1, "cpu4": 2})
    assert t.counts["gpu1"] == 0
    # bounds.max_nodes after the plan.
    t = pool_targets(cfg(), mem, {"cpu4": 10, "gpu1": 4}, override={"gpu1": 0, "cpu4": 0})
    assert t.counts == {"cpu4": 0, "gpu1": 0}


@settings(max_examples=200, deadline=None)
@given(
    plan_cpu=st.integers(0, 12),
    plan_gpu=st.integers(0, 6),
    want_cpu=st.integers(0, 15),
    want_gpu=st.integers(0, 15),
    budget=st.floats(0, 20),
    pool_budget=st.floats(0, 20),
    max_nodes=st.integers(0, 25),
)
def test_pool_plus_plan_never_breaks_a_bound_or_a_budget(
    plan_cpu: int,
    plan_gpu: int,
    want_cpu: int,
    want_gpu: int,
    budget: float,
    pool_budget: float,
    max_nodes: int,
) -> None:
    c = parse_config(
        (BASE % f", budget_per_hour: {pool_budget}")
        .replace("max_nodes: 20", f"max_nodes: {max_nodes}")
        .replace("budget_per_hour: 100", f"budget_per_hour: {budget}")
    )
    plan = {"cpu4": plan_cpu, "gpu1": plan_gpu}
    t = pool_targets(c, PoolMemory(), plan, override={"cpu4": want_cpu, "gpu1": want_gpu})
    plan_cost = 0.2 * plan_cpu + 1.0 * plan_gpu
    pool_cost = 0.2 * t.counts["cpu4"] + 1.0 * t.counts["gpu1"]
    assert all(v >= 0 for v in t.counts.values())
    assert t.counts["cpu4"] <= max(0, 10 - plan_cpu) and t.counts["gpu1"] <= max(0, 4 - plan_gpu)
    assert sum(t.counts.values()) <= max(0, max_nodes - plan_cpu - plan_gpu)
    assert pool_cost <= pool_budget + 1e-9
    assert pool_cost <= max(0.0, budget - plan_cost) + 1e-9


def member(shape: str, serial: int, node: str | None = "n") -> Standby:
    return Standby(standby_name(shape, serial), shape, None if node is None else f"{node}{serial}")


def test_plan_claims_ready_standby_first_and_launches_only_the_rest_cold() -> None:
    c = cfg(", min: {gpu1: 2}")
    mem = PoolMemory(next_serial=5)
    for m in (member("gpu1", 1), member("gpu1", 2), member("gpu1", 3, node=None)):
        mem.members[m.name] = m
    targets = pool_targets(c, mem, {"gpu1": 4})
    p = plan_pool(
        now=100.0, config=c, memory=mem, plan_targets={"gpu1": 4}, plan_current={"gpu1": 1}, targets=targets
    )
    assert [m.name for m in p.claims] == [standby_name("gpu1", 1), standby_name("gpu1", 2)]
    assert p.cold == {"gpu1": 1}
    # No refill next to a claim (it could take the claimed node back); the floor still holds plan + pool.
    assert p.create == ()
    assert p.floor == {"cpu4": 0, "gpu1": 4 + targets.counts["gpu1"]}


def test_refill_waits_after_a_claim_then_creates_new_names() -> None:
    c = cfg(", min: {gpu1: 2}, refill_delay_seconds: 3")
    mem = PoolMemory(next_serial=9)
    mem.last_claim["gpu1"] = 100.0
    t = pool_targets(c, mem, {})
    early = plan_pool(now=101.0, config=c, memory=mem, plan_targets={}, plan_current={}, targets=t)
    assert early.create == ()
    later = plan_pool(now=104.0, config=c, memory=mem, plan_targets={}, plan_current={}, targets=t)
    assert [m.name for m in later.create] == [standby_name("gpu1", 9), standby_name("gpu1", 10)]


def test_retire_removes_waiting_placeholders_before_ready_ones() -> None:
    c = cfg(", min: {gpu1: 1}")
    mem = PoolMemory()
    for m in (member("gpu1", 1), member("gpu1", 2), member("gpu1", 3, node=None)):
        mem.members[m.name] = m
    p = plan_pool(
        now=0, config=c, memory=mem, plan_targets={}, plan_current={}, targets=pool_targets(c, mem, {})
    )
    assert [m.name for m in p.retire] == [standby_name("gpu1", 3), standby_name("gpu1", 2)]


def shapes() -> Any:
    return cfg().node_shapes()


def test_waiting_gpu_work_claims_gpu_standby_and_cpu_work_prefers_cpu_standby() -> None:
    ready = [member("gpu1", 1), member("cpu4", 2)]
    claims, unserved = claims_for_waiting([frozen_map({"CPU": 1, "GPU": 1})], ready, shapes())
    assert [m.shape for m in claims] == ["gpu1"] and unserved == []
    claims, _ = claims_for_waiting([frozen_map({"CPU": 1})] * 3, ready, shapes())
    assert [m.shape for m in claims] == ["cpu4"]  # three 1-CPU bundles fit one cpu4 standby
    # A CPU bundle takes a GPU standby only when no CPU standby holds it.
    claims, _ = claims_for_waiting([frozen_map({"CPU": 1})], [member("gpu1", 1)], shapes())
    assert [m.shape for m in claims] == ["gpu1"]
    # Work no ready standby fits is reported, not forced.
    claims, unserved = claims_for_waiting([frozen_map({"GPU": 2})], ready, shapes())
    assert claims == [] and unserved == [frozen_map({"GPU": 2})]
    # Waiting standby (no node yet) is never claimed.
    claims, _ = claims_for_waiting([frozen_map({"GPU": 1})], [member("gpu1", 1, node=None)], shapes())
    assert claims == []


def test_work_already_served_by_a_recent_claim_claims_nothing_more() -> None:
    recent = [member("gpu1", 1)]
    claims, _ = claims_for_waiting(
        [frozen_map({"CPU": 1, "GPU": 1})], [member("gpu1", 2)], shapes(), already=recent
    )
    assert claims == []
    claims, _ = claims_for_waiting(
        [frozen_map({"CPU": 1, "GPU": 1})] * 2, [member("gpu1", 2)], shapes(), already=recent
    )
    assert [m.name for m in claims] == [standby_name("gpu1", 2)]


def test_counts_leave_standby_nodes_and_their_launches_out() -> None:
    members = [member("gpu1", 1), member("gpu1", 2, node=None)]
    live, pending = active_counts({"gpu1": 3, "cpu4": 1}, {"gpu1": 2}, members, {"cpu4": 1})
    assert live == {"gpu1": 2, "cpu4": 0}
    assert pending == {"gpu1": 1, "cpu4": 0}


def test_launch_timer_times_launches_from_pending_rise_to_join() -> None:
    t = LaunchTimer()
    t.observe(0.0, {}, {"gpu1": ["a"]})  # "a" was there before: known, not launched
    t.observe(10.0, {"gpu1": 2}, {"gpu1": ["a"]})
    t.observe(40.0, {"gpu1": 1}, {"gpu1": ["a", "b"]})
    t.observe(55.0, {}, {"gpu1": ["a", "b", "c"]})
    assert t.samples["gpu1"] == [30.0, 45.0]
    shape = cfg().node_shapes()[1]
    assert t.lead_time(shape, 1.0)[0] == 45.0
    assert LaunchTimer().lead_time(shape, 0.9)[0] == 100.0  # configured before any was seen


def test_memory_round_trips_and_damage_starts_an_empty_pool() -> None:
    mem = history([(0.0, 1), (10.0, 2)])
    mem.members["x"] = Standby(standby_name("gpu1", 1), "gpu1", "node", "pg")
    mem.launches.observe(0.0, {"gpu1": 1}, {})
    mem.last_claim["gpu1"] = 5.0
    back = PoolMemory.from_json(mem.to_json())
    assert back.to_json() == mem.to_json()
    assert PoolMemory.from_json({"version": 1, "history": "garbage"}).history == []
    assert PoolMemory.from_json(None).members == {}


def test_config_rejects_unknown_shapes_and_min_over_max() -> None:
    with pytest.raises(ConfigError, match="unknown shapes"):
        cfg(", min: {tpu: 1}")
    with pytest.raises(ConfigError, match="over its max"):
        cfg(", min: {gpu1: 3}, max: {gpu1: 1}")


def test_recommend_shows_the_pool_the_daemon_would_keep() -> None:
    import io

    from rich.console import Console

    from autoscaler.app.recommend import recommend_from
    from autoscaler.app.report import recommendation_json, render_recommendation
    from autoscaler.core.policy_api import PolicyContext, PolicyDecision
    from autoscaler.testing import make_snapshot

    class Steps:
        """Wants one more gpu1 node every minute (the rises the pool should cover)."""

        name = "steps"

        def decide(self, ctx: PolicyContext) -> PolicyDecision:
            return PolicyDecision(target_counts={"cpu4": 0, "gpu1": 1 + int(ctx.now // 60) % 2})

    c = cfg()
    history = [make_snapshot(time=float(t), config=c, node_counts={"gpu1": 1}) for t in range(0, 300, 15)]
    rec = recommend_from(history, c, Steps())
    assert rec.warm_pool is not None and rec.warm_pool.counts["gpu1"] == 1
    doc = recommendation_json(rec.snapshot, rec.decision, headroom=0.2, warm_pool=rec.warm_pool)
    assert doc["warm_pool"]["standby"] == {"cpu4": 0, "gpu1": 1}
    assert doc["warm_pool"]["cost_per_hour"] == 1.0
    out = io.StringIO()
    render_recommendation(doc, Console(file=out, width=200))
    assert "warm pool: gpu1 1 standby" in out.getvalue()
    # With the pool off there is nothing to show.
    off = parse_config((BASE % "").replace("enabled: true", "enabled: false"))
    assert recommend_from(history, off, Steps()).warm_pool is None
