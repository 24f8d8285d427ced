"""Time from a backlog jump to usable capacity: a claimed standby node (warm) versus a launched one (cold).

On a local autoscaling cluster (autoscaler v2 by default) whose node provider takes ``--boot-delay``
seconds to boot a node, the raytide daemon runs in this process with an idle GPU stage (the metrics are a
fake; the GCS, placeholders, floor and autoscaler are real). A *jump* is GPU work submitted while no GPU
node is free; *usable* is the moment that work starts running (its own clock, on its node).

- warm: the warm pool holds one gpu1 standby node; the data path nudges the daemon (``Daemon.nudge``, what
  ``POST /nudge`` calls) right after submitting. Between jumps the pool refills.
- cold: the same daemon with the warm pool off; Ray's own demand-driven launch is the fastest cold path
  (it reacts to the waiting task within a second; raytide's floor would only add its metrics lag). Idle
  nodes are drained by the daemon between jumps so every jump needs a new node.

Progress goes to stderr; the last stdout line is one JSON object. Target (issue 5): warm median ≤ 2 s and
at least 5× faster than cold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

_HERE = Path(__file__).resolve().parent
# `python bench/warm_pool.py` puts bench/ first on sys.path, where bench/policies.py would shadow the
# `policies` package; the repository root makes the tests' fakes importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from autoscaler.adapters.ray.actuator import RayActuator  # noqa: E402
from autoscaler.adapters.ray.cluster_state import read_cluster_state  # noqa: E402
from autoscaler.adapters.ray.placeholders import RayWarmPool  # noqa: E402
from autoscaler.adapters.state_store import StateStore  # noqa: E402
from autoscaler.adapters.telemetry import Telemetry  # noqa: E402
from autoscaler.app.plugins import load_policy  # noqa: E402
from autoscaler.core.config import Config, parse_config  # noqa: E402
from autoscaler.daemon import Daemon  # noqa: E402
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType  # noqa: E402
from tests.support.daemon_fakes import FakeSource  # noqa: E402

CONFIG = """
shapes:
  - {name: gpu1, resources: {CPU: 1, GPU: 1}, price_per_hour: 1.0, min: 0, max: 4, launch_seconds: %(boot)s}
stages:
  - {name: infer, operator: "Infer", resources: {CPU: 1, GPU: 1}, prior_rate: {gpu1: 1.0}}
bounds: {scale_down_window_seconds: 2}
daemon: {interval_seconds: 1, drain_share_per_tick: 1.0, http_port: null}
ray: {floor_form: resource, use_coordinator: false}
warm_pool: {enabled: %(enabled)s, min: {gpu1: 1}, max: {gpu1: 1}, claim_poll_seconds: 0.5}
"""


def say(msg: str) -> None:
    print(f"[warm_pool {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _gpu_work(hold_s: float) -> tuple[float, str]:
    import ray

    started = time.time()
    time.sleep(hold_s)
    return started, str(ray.get_runtime_context().get_node_id())


async def _until(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _phase(
    cluster: LocalAutoscalingCluster, cfg: Config, state_dir: Path, jumps: int, warm: bool, boot: float
) -> list[float]:
    import ray

    address = cluster.address
    actuator = RayActuator.from_shapes(
        address, cfg.node_shapes(), floor_form="resource", use_coordinator=False
    )
    pool = RayWarmPool(actuator.ray_driver, {s.name: s.resources for s in cfg.node_shapes()})
    with StateStore(state_dir / f"{'warm' if warm else 'cold'}.db") as store:
        daemon = Daemon(
            config=cfg,
            policy=load_policy(cfg.policy.name),
            source=FakeSource(backlog=0.0, rate=0.0, slots=0.0),
            cluster=lambda: read_cluster_state(address),
            actuator=actuator,
            store=store,
            telemetry=Telemetry(tick_interval_seconds=1.0),
            warm_pool=pool,
        )
        await daemon.start()
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        driver: Any = ray
        times: list[float] = []
        try:
            for i in range(jumps):
                if warm:
                    await _until(
                        lambda: any(m.node_id for m in daemon.pool), "a ready standby node", boot * 4 + 60
                    )
                else:
                    await _until(
                        lambda: not read_cluster_state(address).workers, "no worker node left", boot * 4 + 60
                    )
                await asyncio.sleep(1.0)
                t0 = time.time()
                ref = driver.remote(num_cpus=1, num_gpus=1)(_gpu_work).remote(3.0)
                daemon.nudge()
                started, node = await asyncio.to_thread(ray.get, ref, timeout=boot * 6 + 60)
                times.append(started - t0)
                mode = "warm" if warm else "cold"
                say(f"{mode} jump {i + 1}/{jumps}: usable after {times[-1]:.2f} s on node …{node[-6:]}")
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, timeout=60)
            # Placeholders are detached and outlive the daemon by design; this benchmark leaves none.
            for p in pool.list():
                pool.remove(p.name, p.pg_id)
    return times


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cluster = LocalAutoscalingCluster(
        (LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, max_workers=4),),
        autoscaler_v2=args.autoscaler == "v2",
        idle_timeout_minutes=1.0,
        launch_delay_s=args.boot_delay,
    )
    say(f"starting a local autoscaling cluster ({args.autoscaler}, boot delay {args.boot_delay:g} s)")
    with cluster, TemporaryDirectory(prefix="raytide-bench-") as tmp:
        cluster.connect()
        cold_cfg = parse_config(CONFIG % {"boot": args.boot_delay, "enabled": "false"})
        warm_cfg = parse_config(CONFIG % {"boot": args.boot_delay, "enabled": "true"})
        cold = await _phase(cluster, cold_cfg, Path(tmp), args.jumps, False, args.boot_delay)
        warm = await _phase(cluster, warm_cfg, Path(tmp), args.jumps, True, args.boot_delay)
    warm_median = statistics.median(warm)
    cold_median = statistics.median(cold)
    ratio = cold_median / warm_median if warm_median > 0 else float("inf")
    return {
        "benchmark": "warm_pool",
        "autoscaler": args.autoscaler,
        "boot_delay_s": args.boot_delay,
        "jumps": args.jumps,
        "warm_s": [round(x, 3) for x in warm],
        "cold_s": [round(x, 3) for x in cold],
        "warm_median_s": round(warm_median, 3),
        "warm_max_s": round(max(warm), 3),
        "cold_median_s": round(cold_median, 3),
        "cold_over_warm": round(ratio, 2),
        "baseline": "cold: the same jump without warm pool (Ray's demand-driven launch), same run",
        "target": "warm median <= 2 s and cold/warm >= 5",
        "met": warm_median <= 2.0 and ratio >= 5.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jumps", type=int, default=3, help="jumps per mode (at least 3)")
    parser.add_argument(
        "--boot-delay", type=float, default=15.0, help="seconds the fake provider takes to boot"
    )
    parser.add_argument("--autoscaler", choices=("v1", "v2"), default="v2")
    args = parser.parse_args()
    if args.jumps < 3:
        parser.error("--jumps must be at least 3")
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
