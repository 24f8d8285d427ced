"""Decision quality of every installed policy on every standard simulator scenario (same seeds for all).

Runs ``raytide simulate``'s engine on each scenario in ``scenarios/`` marked ``default`` (not the long speed
test), with every installed policy, and prints progress on stderr and one JSON object as its last line:
per scenario, cost and SLO-miss seconds per policy, GPU utilization while GPU work is queued (at a GPU
stage; the same over work queued upstream of one is reported beside it, see ``autoscaler.sim.results``),
decisions to converge after a step, and ``throughput``'s cost ratio against ``ray-default``.

The goals it checks (from the issue): ``throughput`` at least 30% cheaper than ``ray-default`` with no more
SLO-miss seconds on every scenario; GPU utilization of at least 80% while GPU work is queued; at most 2
decisions to converge after a step (upward steps of ``step`` traces; downward ones wait out the scale-down
window by design).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

# Run as a script, this file's own directory comes first on sys.path, and this file's name would then
# shadow the ``policies`` package the built-in policies are imported from.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not (p and Path(p).resolve() == _HERE)]

from autoscaler.app.plugins import installed_policies, load_policy  # noqa: E402
from autoscaler.sim.results import run_policy  # noqa: E402
from autoscaler.sim.scenario import SimScenario, load_scenario, resolve_scenarios  # noqa: E402

BUILTIN_POLICIES = ("throughput", "utilization", "backlog", "ray-default")

COST_RATIO_GOAL = 0.7
GPU_UTIL_GOAL = 0.8
CONVERGE_GOAL = 2
BASELINE = "ray-default"
CANDIDATE = "throughput"


def _run(path: str, policy: str, duration: float | None) -> tuple[str, str, dict[str, Any]]:
    sc = load_scenario(path)
    if duration is not None:
        sc = sc.with_duration(duration)
    result = run_policy(sc, load_policy(policy))
    return sc.name, policy, result.metrics.to_json()


def _goals(per_policy: dict[str, dict[str, Any]], trace_kind: str) -> dict[str, Any]:
    cand = per_policy.get(CANDIDATE)
    base = per_policy.get(BASELINE)
    out: dict[str, Any] = {}
    if cand is None:
        return out
    if base is not None and base["cost"] > 0:
        ratio = cand["cost"] / base["cost"]
        out["throughput_cost_ratio_vs_ray_default"] = round(ratio, 4)
        out["cost_goal_met"] = ratio <= COST_RATIO_GOAL
        out["slo_goal_met"] = cand["slo_miss_seconds"] <= base["slo_miss_seconds"]
    util = cand["gpu_utilization_while_queued"]
    out["gpu_util_goal_met"] = None if util is None else util >= GPU_UTIL_GOAL
    # Convergence is a goal for step changes; after a batch drop the count necessarily moves again (back
    # down) once the batch is done, which is not a failure to converge.
    if trace_kind == "step" and cand["convergence"]:
        conv = cand["decisions_to_converge"]
        out["converge_goal_met"] = conv is not None and conv <= CONVERGE_GOAL
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help="scenario files or names (default: the standard set)")
    ap.add_argument("--policy", action="append", help="only these policies (default: the four built-ins)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel runs (processes)")
    ap.add_argument("--duration", type=float, default=None, help="override every duration (seconds)")
    args = ap.parse_args()

    loaded: list[tuple[Path, SimScenario]] = resolve_scenarios(args.scenarios or None)
    policies = args.policy or [p for p in BUILTIN_POLICIES if p in installed_policies()]
    jobs = [(str(p), pol) for p, _ in loaded for pol in policies]
    print(f"{len(jobs)} runs: {len(loaded)} scenario(s) × {len(policies)} policies", file=sys.stderr)
    t0 = time.perf_counter()
    done: dict[tuple[str, str], dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(_run, path, pol, args.duration): (path, pol) for path, pol in jobs}
        for fut in as_completed(futures):
            path, pol = futures[fut]
            try:
                name, policy, metrics = fut.result()
            except Exception as e:  # one broken policy must not hide the others' results
                where = f"{Path(path).stem}/{pol}"
                errors[where] = f"{type(e).__name__}: {e}"
                print(f"[{time.perf_counter() - t0:6.0f} s] {where}: FAILED {e}", file=sys.stderr)
                continue
            done[(name, policy)] = metrics
            print(
                f"[{time.perf_counter() - t0:6.0f} s] {name} × {policy}: cost {metrics['cost']:.2f} $, "
                f"SLO-miss {metrics['slo_miss_seconds']:.0f} s ({metrics['wall_seconds']:.0f} s wall)",
                file=sys.stderr,
            )

    scenarios: dict[str, Any] = {}
    for _, sc in loaded:
        per = {p: done[(sc.name, p)] for p in policies if (sc.name, p) in done}
        scenarios[sc.name] = {
            "duration_seconds": sc.duration if args.duration is None else args.duration,
            "seed": sc.seed,
            "cost": {p: m["cost"] for p, m in per.items()},
            "slo_miss_seconds": {p: m["slo_miss_seconds"] for p, m in per.items()},
            "p95_backlog_age_seconds": {p: m["p95_backlog_age_seconds"] for p, m in per.items()},
            "gpu_utilization_while_queued": {p: m["gpu_utilization_while_queued"] for p, m in per.items()},
            "gpu_queued_seconds": {p: m["gpu_queued_seconds"] for p, m in per.items()},
            "gpu_utilization_while_upstream_queued": {
                p: m["gpu_utilization_while_upstream_queued"] for p, m in per.items()
            },
            "decisions_to_converge": {p: m["decisions_to_converge"] for p, m in per.items()},
            "decisions_to_converge_down": {p: m["decisions_to_converge_down"] for p, m in per.items()},
            "decisions_to_settle": {p: m["decisions_to_settle"] for p, m in per.items()},
            "scale_actions": {p: m["scale_actions"] for p, m in per.items()},
            "reversals": {p: m["reversals"] for p, m in per.items()},
            "goals": _goals(per, sc.trace.kind),
        }
    all_goals = [g for s in scenarios.values() for g in s["goals"].items() if g[0].endswith("_met")]
    print(
        json.dumps(
            {
                "benchmark": "policy_quality",
                "policies": policies,
                "scenarios": scenarios,
                "goals": {
                    "cost_ratio_max": COST_RATIO_GOAL,
                    "gpu_utilization_min": GPU_UTIL_GOAL,
                    "decisions_to_converge_max": CONVERGE_GOAL,
                    "all_met": all(v is not False for _, v in all_goals) and not errors,
                },
                "errors": errors,
                "wall_seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
