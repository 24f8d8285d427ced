"""Digests of every plan raytide makes on fixed inputs: the refactoring check.

Runs the decision-latency sequence (1,000 nodes, 50 stages, 12 shapes) and every scenario in
``scenarios/`` under every built-in policy, hashes every plan the decision function returns (its JSON
encoding, byte for byte), and prints one JSON object as its last line: a SHA-256 per sequence. A change
that must not alter behaviour (a move, a split, a faster data structure) leaves every digest as it was;
compare the line before and after. The baseline is the same script run on the parent commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # run as `python -P bench/plan_digest.py`: the bench package lives at the root
    sys.path.insert(0, str(_ROOT))

from autoscaler.app.plugins import load_policy  # noqa: E402
from autoscaler.core import codec  # noqa: E402
from autoscaler.core.decide import Decision, DecisionState, decide  # noqa: E402
from autoscaler.core.throughput import ThroughputModels  # noqa: E402
from autoscaler.sim import simulate  # noqa: E402
from autoscaler.sim.scenario import load_scenario  # noqa: E402
from bench.decision_latency import N_NODES, N_SHAPES, build_config, snapshot_at  # noqa: E402
from policies.throughput import ThroughputPolicy  # noqa: E402

POLICIES = ("throughput", "utilization", "backlog", "ray-default")


def latency_sequence(iterations: int) -> tuple[str, int]:
    rng = np.random.default_rng(7)
    cfg = build_config(rng)
    models = ThroughputModels()
    policy = ThroughputPolicy()
    state = DecisionState()
    counts = {s.name: N_NODES // N_SHAPES for s in cfg.shapes}
    h = hashlib.sha256()
    for t in range(iterations):
        decision = decide(snapshot_at(cfg, t, rng, counts), cfg, models, policy, state)
        h.update(codec.encode(decision.plan).encode())
        state = decision.state
        counts = decision.plan.targets()
    return h.hexdigest(), iterations


def scenario_digest(path: Path, policy_name: str) -> tuple[str, int]:
    h = hashlib.sha256()
    count = 0

    def recording(*args: Any, **kwargs: Any) -> Decision:
        nonlocal count
        d = decide(*args, **kwargs)
        h.update(codec.encode(d.plan).encode())
        count += 1
        return d

    simulate(load_scenario(path), load_policy(policy_name), decide_fn=recording)
    return h.hexdigest(), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=260)
    ap.add_argument("--scenarios", type=Path, default=Path(__file__).resolve().parent.parent / "scenarios")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "plan_digest"}
    digest, n = latency_sequence(args.iterations)
    out["decision_latency_sequence"] = {"sha256": digest, "plans": n}
    for path in sorted(args.scenarios.glob("*.yaml")):
        for name in POLICIES:
            digest, n = scenario_digest(path, name)
            out[f"{path.stem}/{name}"] = {"sha256": digest, "plans": n}
            print(f"{path.stem}/{name}: {n} plans {digest[:12]}", file=sys.stderr)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["baseline"] = "the same script on the parent commit: every digest must be equal"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
