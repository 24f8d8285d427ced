"""Simulator speed: ``large_24h`` (24 h of diurnal load, ~1,000 nodes at peak) under ``throughput``.

Prints progress on stderr and one JSON object as its last line: wall seconds, the ratio to the 60 s target,
and how the time splits between the decisions (``decide()``: models, policy, shape selection, guardrails —
the daemon's own code) and the rest (the simulated cluster, snapshots, bookkeeping).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Run as a script, this file's own directory comes first on sys.path, where bench/policies.py would shadow
# the ``policies`` package the built-in policies are imported from.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not (p and Path(p).resolve() == _HERE)]

from autoscaler.app.plugins import load_policy  # noqa: E402
from autoscaler.core.config import Config  # noqa: E402
from autoscaler.core.decide import Decision, DecisionState, decide  # noqa: E402
from autoscaler.core.policy_api import Policy  # noqa: E402
from autoscaler.core.throughput import ThroughputModels  # noqa: E402
from autoscaler.sim.engine import simulate  # noqa: E402
from autoscaler.sim.results import summarize  # noqa: E402
from autoscaler.sim.scenario import resolve_scenarios  # noqa: E402
from autoscaler.types import Snapshot  # noqa: E402

TARGET_SECONDS = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scenario", nargs="?", default="large_24h")
    ap.add_argument("--policy", default="throughput")
    args = ap.parse_args()
    ((_, scenario),) = resolve_scenarios([args.scenario])
    policy = load_policy(args.policy)

    decide_seconds = 0.0
    decide_calls = 0

    def timed_decide(
        snap: Snapshot, cfg: Config, models: ThroughputModels, pol: Policy, state: DecisionState
    ) -> Decision:
        nonlocal decide_seconds, decide_calls
        t0 = time.perf_counter()
        try:
            return decide(snap, cfg, models, pol, state)
        finally:
            decide_seconds += time.perf_counter() - t0
            decide_calls += 1

    last = [0.0]

    def progress(done: float, total: float) -> None:
        if done - last[0] >= 3600 or done >= total:
            last[0] = done
            print(f"simulated {done / 3600:5.1f} h of {total / 3600:.0f} h", file=sys.stderr)

    t0 = time.perf_counter()
    run = simulate(scenario, policy, progress=progress, decide_fn=timed_decide)
    wall = time.perf_counter() - t0
    m = summarize(run).metrics
    print(
        json.dumps(
            {
                "benchmark": "sim_speed",
                "scenario": scenario.name,
                "policy": policy.name,
                "simulated_seconds": scenario.duration,
                "steps": run.steps,
                "decisions": decide_calls,
                "peak_nodes": m.peak_nodes,
                "seconds": round(wall, 2),
                "decide_seconds": round(decide_seconds, 2),
                "decide_ms_mean": round(1000 * decide_seconds / max(1, decide_calls), 2),
                "engine_seconds": round(wall - decide_seconds, 2),
                "baseline": "target: under 60 s for 24 h on a 1,000-node cluster",
                "ratio_to_target": round(wall / TARGET_SECONDS, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
