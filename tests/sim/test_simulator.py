"""Invariants of the simulator, and two known behaviours of policies seen through it.

Scenarios are built in code and kept short so the whole file runs in seconds.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from autoscaler.app.plugins import load_policy
from autoscaler.app.simulate import simulate as simulate_command
from autoscaler.core.config import ConfigError
from autoscaler.core.policy_api import PolicyContext, PolicyDecision
from autoscaler.sim import SimRun, SimScenario, parse_scenario, simulate, summarize
from autoscaler.sim.engine import Simulation
from autoscaler.sim.scenario import parse_duration

BASE: dict[str, Any] = {
    "name": "unit",
    "seed": 7,
    "duration": 900,
    "decision_interval": 15,
    "config": {
        "shapes": [
            {"name": "cpu4", "resources": {"CPU": 4}, "price_per_hour": 0.2, "max": 30, "launch_seconds": 60},
            {
                "name": "gpu1",
                "resources": {"CPU": 4, "GPU": 1},
                "price_per_hour": 1.0,
                "max": 20,
                "launch_seconds": 120,
            },
        ],
        "stages": [
            {"name": "decode", "resources": {"CPU": 1}, "prior_rate": {"cpu4": 5.0, "gpu1": 5.0}},
            {"name": "infer", "resources": {"CPU": 1, "GPU": 1}, "prior_rate": {"gpu1": 20.0}},
        ],
        "targets": {"drain_seconds": 60, "headroom": 0.2},
        "bounds": {"max_nodes": 50, "max_step_up": 20, "max_step_down": 4, "scale_down_window_seconds": 120},
    },
    "world": {
        "shapes": {
            "cpu4": {"initial": 2, "launch_mean": 60, "launch_jitter": 10},
            "gpu1": {"initial": 1, "launch_mean": 120, "launch_jitter": 20},
        },
        "stages": [
            {"name": "decode", "rate": 5.0, "skew": {"gpu1": 0.8}, "efficiency": 0.98, "noise_sigma": 0.05},
            {"name": "infer", "upstream": "decode", "rate": 20.0, "efficiency": 0.97, "noise_sigma": 0.05},
        ],
        "drain_seconds": 20,
    },
    "trace": {"kind": "step", "levels": [[0, 30], [300, 90], [600, 20]], "noise_sigma": 0.05},
}


def scenario(**changes: Any) -> SimScenario:
    """BASE with dotted-path changes, e.g. ``scenario(**{"world.drain_seconds": 0})``."""
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        node: Any = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[keys[-1]] = value
    return SimScenario.model_validate(data)


class Schedule:
    """A test policy: fixed target counts from given times on (no planner, cheap to run)."""

    name = "schedule"

    def __init__(self, plan: list[tuple[float, Mapping[str, int]]]) -> None:
        self._plan = plan

    def decide(self, ctx: PolicyContext) -> PolicyDecision:
        targets = dict(ctx.snapshot.counts_including_pending())
        for t, counts in self._plan:
            if ctx.now >= t:
                targets.update(counts)
        return PolicyDecision(target_counts=targets)


UP_AND_DOWN = Schedule([(15, {"cpu4": 5, "gpu1": 4}), (450, {"cpu4": 1, "gpu1": 1}), (700, {"gpu1": 3})])


@pytest.fixture(scope="module")
def scheduled_run() -> SimRun:
    return simulate(scenario(**{"config.bounds.scale_down_window_seconds": 0}), UP_AND_DOWN)


# ------------------------------------------------------------------------------------------ invariants


def test_work_is_conserved_per_stage(scheduled_run: SimRun) -> None:
    run = scheduled_run
    for k in range(len(run.stages)):
        arrived = run.arrived[k].sum()
        done = run.processed[k].sum()
        assert arrived == pytest.approx(done + run.queued[k, -1], rel=1e-9, abs=1e-6)
        # Step by step: queue(i) = queue(i-1) + arrived(i) - processed(i).
        prev = np.concatenate([[0.0], run.queued[k, :-1]])
        assert np.allclose(prev + run.arrived[k] - run.processed[k], run.queued[k], atol=1e-6)
        assert (run.processed[k] >= 0).all() and (run.queued[k] >= 0).all()
    # Output of one stage is the input of the next (selectivity 1 here).
    assert np.allclose(run.arrived[1], run.processed[0])
    # The first stage receives exactly the trace.
    assert run.arrived[0].sum() > 0


def _count_at(log: Any, t: float, shape: int, start: Any, end: Any) -> int:
    return int(np.sum((log.shape == shape) & (start <= t + 1e-9) & (t + 1e-9 < end)))


def test_capacity_counts_only_launched_nodes_and_cost_counts_from_request(scheduled_run: SimRun) -> None:
    run = scheduled_run
    log = run.nodes
    assert len(log) > 3, "the schedule should have launched nodes"
    launched = log.requested > 0
    assert (log.ready[launched] >= log.requested[launched] + 50).all(), "launch delay must elapse"
    # Usable: from ready until removal or the start of draining, whichever is first.
    usable_end = np.minimum(log.removed, log.drain_start)
    # Billed: from the launch request until removal (pending and draining included).
    for i in range(0, run.steps, 7):
        t = i * run.dt
        for s in range(len(run.shapes)):
            assert run.live[i, s] == _count_at(log, t, s, log.ready, usable_end), (t, s)
            assert run.billed[i, s] == _count_at(log, t, s, log.requested, log.removed), (t, s)
    # Physically: no GPU work before the first GPU node beyond the initial one is usable.
    gpu = [s.name for s in run.shapes].index("gpu1")
    first_new_gpu = log.ready[(log.shape == gpu) & launched].min()
    one_gpu = run.scenario.world.stages[1].rate * 1.5  # one slot, with generous room for noise
    before = (run.times + run.dt <= first_new_gpu) & (run.times >= 60)
    assert before.any()
    assert (run.processed[1][before] <= one_gpu * run.dt).all()


def test_costs_add_up(scheduled_run: SimRun) -> None:
    run = scheduled_run
    prices = np.array([s.price_per_hour for s in run.shapes])
    integral = float((run.billed @ prices).sum()) * run.dt / 3600.0
    assert run.total_cost() == pytest.approx(integral, rel=1e-9)
    m = summarize(run).metrics
    assert m.cost == pytest.approx(sum(h * p for h, p in zip(m.node_hours.values(), prices, strict=True)))
    # Never a removed node's cost after it went: billed counts fall right after removals.
    removed = run.nodes.removed[np.isfinite(run.nodes.removed)]
    assert len(removed) > 0


def test_scale_down_prefers_idle_nodes_and_drains_busy_ones(scheduled_run: SimRun) -> None:
    log = scheduled_run.nodes
    gone = np.isfinite(log.removed)
    drained = gone & np.isfinite(log.drain_start)
    # A drained node takes no work after draining starts, and is billed for the drain time.
    drain = scheduled_run.scenario.world.drain_seconds
    assert np.allclose(log.removed[drained] - log.drain_start[drained], drain)
    assert (log.last_busy[drained] <= log.drain_start[drained] + 1e-9).all()


def test_same_seed_same_run_and_other_seed_other_run() -> None:
    sc = scenario(duration=600)
    a = simulate(sc, UP_AND_DOWN)
    b = simulate(sc, UP_AND_DOWN)
    for field in ("arrived", "processed", "queued", "live", "billed", "slo_miss", "gpu_busy"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert [d.target for d in a.decisions] == [d.target for d in b.decisions]
    assert summarize(a).metrics.to_json() | {"wall_seconds": 0} == summarize(b).metrics.to_json() | {
        "wall_seconds": 0
    }
    c = simulate(scenario(duration=600, seed=8), UP_AND_DOWN)
    assert not np.array_equal(a.arrived, c.arrived)


def test_standby_pool_gives_instant_nodes_and_is_replenished() -> None:
    sc = scenario(**{"world.shapes.gpu1.standby": 2, "duration": 400})
    run = simulate(sc, Schedule([(15, {"gpu1": 4})]))
    log = run.nodes
    gpu = 1
    taken = (log.shape == gpu) & np.isfinite(log.joined) & (log.joined > 0) & (log.requested == 0)
    assert taken.sum() == 2, "both standby nodes join at once"
    assert (log.joined[taken] == 15).all()
    assert run.live[15, gpu] == 1 + 2
    # Replacements for the pool and the rest of the request arrive after the launch delay.
    later = (log.shape == gpu) & (log.requested == 15)
    assert later.sum() == 2 + 1
    assert (log.ready[later] >= 15 + 100).all()


def test_warm_pool_is_sized_by_the_daemons_function_billed_and_never_given_to_ray_default() -> None:
    sc = scenario(**{"config.warm_pool": {"enabled": True, "min": {"gpu1": 2}}, "duration": 600})
    run = simulate(sc, Schedule([(15, {"gpu1": 3})]))
    log = run.nodes
    gpu = 1
    pool_launches = (log.shape == gpu) & (log.requested == 15) & ~np.isfinite(log.joined)
    # At the first decision: 2 standby requested (the plan's own 2 extra gpu1 launch cold).
    assert pool_launches.sum() >= 2
    assert run.billed[20, gpu] >= run.live[20, gpu] + 2, "standby nodes are billed"
    assert run.live[20, gpu] == 1, "standby nodes are not the plan's capacity"
    # The standby nodes are ready by the time the plan asks for more: the next rise takes them at once.
    run2 = simulate(sc, Schedule([(15, {"gpu1": 1}), (300, {"gpu1": 3})]))
    assert run2.live[300, gpu] == 3
    # ray-default stands for Ray without raytide: no pool even with the configuration on.
    from autoscaler.app.plugins import load_policy

    assert Simulation(sc, Schedule([])).pool_on
    assert not Simulation(sc, load_policy("ray-default")).pool_on


def test_scenario_parsing_reports_problems_with_lines() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90
    assert parse_duration(12) == 12
    text = yaml.safe_dump(BASE, sort_keys=False).replace("rate: 20.0", "rate: -1")
    with pytest.raises(ConfigError) as e:
        parse_scenario(text, "bad.yaml")
    assert any("world.stages[1].rate" in str(p) and p.line is not None for p in e.value.problems)
    bad = copy.deepcopy(BASE)
    bad["world"]["stages"][1]["upstream"] = None
    with pytest.raises(ConfigError, match="exactly one stage"):
        parse_scenario(yaml.safe_dump(bad), "chain.yaml")


def test_trace_change_points() -> None:
    sc = scenario()
    assert sc.trace.change_points(sc.duration, sc.start_clock) == ((300.0, "up"), (600.0, "down"))
    batch = scenario(
        trace={"kind": "daily_batch", "base_rate": 1, "at": "12:00", "units": 5000},
        start_clock="11:55",
        duration=900,
    )
    assert batch.trace.change_points(900, batch.start_clock) == ((300.0, "up"),)
    rates = batch.trace.rates(900, 1.0, batch.start_clock, np.random.default_rng(0))
    assert rates.sum() == pytest.approx(900 * 1 + 5000)


# ------------------------------------------------------------------------------------------ policies


def test_throughput_converges_within_two_decisions_after_a_step_up() -> None:
    sc = scenario(duration=600, trace={"kind": "step", "levels": [[0, 30], [300, 90]]})
    result = summarize(simulate(sc, load_policy("throughput")))
    (conv,) = result.metrics.convergence
    assert conv.direction == "up"
    assert conv.decisions is not None and conv.decisions <= 2, result.metrics.to_json()


def test_convergence_after_a_step_up_counts_every_raise_and_not_the_release() -> None:
    sc = scenario(
        duration=600,
        trace={"kind": "step", "levels": [[0, 30], [300, 90]]},
        **{"config.bounds.scale_down_window_seconds": 0},
    )
    # Decisions after the step are at 315, 330, …: raise at the 1st, sell catch-up capacity at the 5th.
    release = Schedule([(315, {"cpu4": 6, "gpu1": 10}), (375, {"gpu1": 8})])
    (conv,) = summarize(simulate(sc, release)).metrics.convergence
    assert (conv.decisions, conv.settle) == (1, 5)
    # Raising again later (creeping up, or buying back what was sold) counts in full.
    creep = Schedule([(315, {"cpu4": 6, "gpu1": 10}), (375, {"gpu1": 8}), (405, {"gpu1": 9})])
    (conv,) = summarize(simulate(sc, creep)).metrics.convergence
    assert (conv.decisions, conv.settle) == (7, 7)


def test_ray_default_scales_down_only_after_the_idle_timeout() -> None:
    timeout = 300.0
    sc = scenario(
        duration=1200,
        trace={"kind": "step", "levels": [[0, 40], [300, 0]]},
        **{"config.bounds.scale_down_window_seconds": 0, "config.bounds.max_step_down": 50},
    )
    run = simulate(sc, load_policy("ray-default"))
    log = run.nodes
    gone = np.isfinite(log.removed)
    assert gone.any(), "idle nodes must go eventually"
    # Ray removes only idle nodes, never drains a busy one ...
    assert not np.isfinite(log.drain_start).any()
    # ... and only once they have been idle for the whole timeout.
    idle_for = log.removed[gone] - log.last_busy[gone]
    assert (idle_for >= timeout - 1e-9).all(), idle_for
    assert log.removed[gone].min() >= 300 + timeout
    # ... and then promptly: at the first decision after the timeout (one more if launch bookkeeping lags).
    assert (idle_for <= timeout + 2 * sc.decision_interval).all(), idle_for
    end = run.live[-1].sum()
    assert end == 0, f"{end} node(s) left after the load stopped"


# ------------------------------------------------------------------------------------------ command


def test_command_prints_json_and_writes_a_plot(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(BASE | {"name": "tiny", "duration": 240}), encoding="utf-8")
    app = typer.Typer()
    app.command("simulate")(simulate_command)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(
        app,
        ["simulate", str(path), "--policy", "utilization", "--json", "--plot-dir", str(tmp_path / "png")],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (entry,) = doc["scenarios"]
    assert entry["name"] == "tiny"
    metrics = entry["policies"]["utilization"]
    assert metrics["cost"] > 0 and math.isfinite(metrics["slo_miss_seconds"])
    assert (tmp_path / "png" / "tiny.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["simulate", str(path), "--policy", "no-such-policy"])
    assert bad.exit_code == 2


# ------------------------------------------------------------------------------ Ray Data reservation


def three_stages(ratio: float, **changes: Any) -> SimScenario:
    """decode (CPU) → infer (GPU) → postprocess (CPU) on 2 × cpu4 + 1 × gpu1 (12 CPUs, 1 GPU), with far more
    input than decode can take: decode always has a queue."""
    data = copy.deepcopy(BASE)
    data["config"]["stages"].append(
        {"name": "postprocess", "resources": {"CPU": 1}, "prior_rate": {"cpu4": 10.0}}
    )
    data["world"]["stages"].append({"name": "postprocess", "upstream": "infer", "rate": 10.0})
    data["world"]["op_reservation_ratio"] = ratio
    data["trace"] = {"kind": "steady", "rate": 200.0}
    data["duration"] = 300
    data.update(changes)
    return SimScenario.model_validate(data)


HOLD = Schedule([])


def test_reservation_follows_ray_data() -> None:
    sim = Simulation(three_stages(0.5), HOLD)
    cpu, gpu = sim.pipeline.resources.index("CPU"), sim.pipeline.resources.index("GPU")
    own, shared = sim.pipeline.reservations([2, 1])  # 12 CPUs, 1 GPU
    # 0.5 × 12 CPUs / 3 stages = 2 CPUs each, upstream first; GPU only for the stage that uses it, and at
    # least one slot (0.5 × 1 GPU / 3 is less than the one GPU an infer actor needs).
    assert [r[cpu] for r in own] == pytest.approx([2.0, 2.0, 2.0])
    assert [r[gpu] for r in own] == pytest.approx([0.0, 1.0, 0.0])
    assert shared[cpu] == pytest.approx(6.0) and shared[gpu] == pytest.approx(0.0)
    # No GPU node: infer's minimum (one GPU) does not fit, so it reserves nothing at all.
    own, shared = sim.pipeline.reservations([2, 0])
    assert [r[cpu] for r in own] == pytest.approx([8 / 6, 0.0, 8 / 6])
    assert shared[cpu] == pytest.approx(8 - 16 / 6)
    # max_slots caps a reservation; the rest goes to the shared pool.
    capped = Simulation(three_stages(0.5), HOLD)
    capped.pipeline.max_slots[2] = 1.0
    own, shared = capped.pipeline.reservations([2, 1])
    assert own[2][cpu] == pytest.approx(1.0) and shared[cpu] == pytest.approx(7.0)


def test_reservation_keeps_a_downstream_cpu_stage_running_while_upstream_is_queued() -> None:
    run = simulate(three_stages(0.5), HOLD)
    decode, post = 0, 2
    warm = run.times >= 30
    assert (run.queued[decode][warm] > 100).all(), "decode must have a queue throughout"
    # postprocess gets its reserved slots every step it has work: it keeps up with infer's output.
    has_work = warm & (run.arrived[post] + np.concatenate([[0.0], run.queued[post, :-1]]) > 1e-6)
    assert has_work.sum() > 200
    assert (run.processed[post][has_work] > 0).all()
    assert run.queued[post].max() < 30
    # decode: its 2 reserved CPUs plus the 6 shared ones (postprocess needs no more than its own 2, and
    # infer cannot use its second CPU): 8 slots of 5 units/s at most, never the old 11.
    assert run.processed[decode][warm].max() <= 8 * 5.0 * 1.2
    assert run.processed[decode][warm].mean() >= 8 * 5.0 * 0.75


def test_no_reservation_is_the_greedy_placement() -> None:
    run = simulate(three_stages(0.0), HOLD)
    decode, post = 0, 2
    warm = run.times >= 30
    # decode takes every CPU infer does not use (11 of 12): postprocess starves while its queue grows.
    assert run.processed[decode][warm].mean() >= 11 * 5.0 * 0.85
    assert run.processed[post][warm].sum() == 0.0
    assert run.queued[post, -1] > 1000


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_invariants_hold_with_and_without_reservation(ratio: float) -> None:
    sc = three_stages(ratio, duration=600, trace=BASE["trace"])
    plan = Schedule([(15, {"cpu4": 4, "gpu1": 3}), (300, {"cpu4": 1, "gpu1": 1})])
    run = simulate(sc, plan)
    for k in range(len(run.stages)):
        prev = np.concatenate([[0.0], run.queued[k, :-1]])
        assert np.allclose(prev + run.arrived[k] - run.processed[k], run.queued[k], atol=1e-6)
        assert (run.processed[k] >= 0).all() and (run.queued[k] >= 0).all()
        if k:
            assert np.allclose(run.arrived[k], run.processed[k - 1])
    assert (run.gpu_busy <= run.gpu_live + 1e-9).all()
    prices = np.array([s.price_per_hour for s in run.shapes])
    assert run.total_cost() == pytest.approx(float((run.billed @ prices).sum()) * run.dt / 3600.0, rel=1e-9)
    again = simulate(sc, plan)
    for f in ("arrived", "processed", "queued", "live", "billed", "slo_miss", "gpu_busy"):
        assert np.array_equal(getattr(run, f), getattr(again, f)), f


# ------------------------------------------------------------------------------------------ metrics


def test_gpu_work_queued_means_a_backlog_at_the_gpu_stage_itself() -> None:
    # decode is the bottleneck (12 CPUs × 5/s against 200/s in), infer (200/s on its one GPU) keeps up:
    # work waits only upstream of the GPU, which is not GPU work waiting.
    starved = summarize(
        simulate(
            scenario(duration=300, trace={"kind": "steady", "rate": 200.0}, **{"world.stages.1.rate": 200.0}),
            HOLD,
        )
    ).metrics
    assert starved.gpu_queued_seconds == 0.0
    assert starved.gpu_utilization_while_queued is None
    assert starved.gpu_upstream_queued_seconds > 250
    assert starved.gpu_utilization_while_upstream_queued is not None
    assert starved.gpu_utilization_while_upstream_queued < 0.5
    # infer (20/s on one GPU) is the bottleneck: its own queue grows and its GPU is busy throughout.
    busy = summarize(simulate(scenario(duration=300, trace={"kind": "steady", "rate": 40.0}), HOLD)).metrics
    assert busy.gpu_queued_seconds > 250
    assert busy.gpu_utilization_while_queued is not None and busy.gpu_utilization_while_queued > 0.95
