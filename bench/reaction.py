"""Reaction benchmark: a step in backlog on a GPU stage, raytide against Ray's built-in autoscaling.

One local autoscaling cluster (fake ``gpu1`` nodes, ``{CPU: 1, GPU: 1}``, one kept warm by
``min_workers: 1``, at most ``--gpus`` of them; every launch takes ``--launch-delay`` seconds to boot; the
head has 2 CPUs for the read tasks) runs the same step several times, alternating two arms:

``builtin``
    Ray Data plus the Ray autoscaler, no raytide: Ray Data's rate-based cluster autoscaler asks the
    ``AutoscalingCoordinator`` for more, the coordinator sets the autoscaler's floor, nodes boot, and Ray
    Data's actor pool grows into them.
``raytide``
    the same, with the raytide daemon running (in this process: the real embedded metrics scrape of
    Ray's exporters, the real GCS view, the real actuator registering with Ray Data's coordinator).
``raytide_pool`` (with ``--warm-pool N``, N > 0; the default is ``--gpus`` - 1)
    the same daemon with a warm pool of N standby gpu1 nodes (``warm_pool: {min: N, max: N}``), filled
    before the step starts. The job's pending actors, or raytide's own plan, claim them; the standby
    nodes cost N node-hours per hour while idle (reported). The cluster's gpu1 maximum is ``--gpus`` + N
    so the pool can refill while the plan uses ``--gpus`` nodes; the other arms never ask for more than
    ``--gpus``.

A step is one Ray Data job: ``range`` (``--blocks`` blocks) → ``map_batches(Infer, num_gpus=1,
compute=ActorPoolStrategy(min_size=1, max_size=--gpus))``, each batch a ``--infer-seconds`` sleep, far more
work than one GPU does in the time measured. The step needs ``--gpus`` GPU workers. Measured from the
moment the job's driver starts executing the dataset:

- ``request_s``: until a request for more GPU nodes reaches the autoscaler — for raytide, when its floor
  with more than the warm node returned from the coordinator (which forwards it to the autoscaler
  synchronously); for the built-in arm, when the autoscaler's floor (read from the GCS every 0.5 s)
  first asks for more GPUs than the warm node has; for ``raytide_pool``, when the first standby node was
  claimed (its placeholder removal sent).
- ``nodes_ready_s``: until ``--gpus`` gpu1 nodes are alive in the GCS (for ``raytide_pool`` at once: the
  standby nodes are alive before the step).
- ``capacity_usable_s``: until ``--gpus`` distinct Infer actors have started their first batch (each
  actor appends the time to an events file on its first call) — the capacity the step needs, in use.

Between steps the job is stopped cleanly (so Ray Data cancels its coordinator request), raytide's floor is
withdrawn, the standby placeholders are removed, and Ray's idle timeout brings the cluster back to the one
warm node; every arm starts from there. The arms take turns going first.

Before each step Ray Data's coordinator is made to re-read the cluster (see ``refresh_coordinator``), so
neither arm inherits the previous step's nodes in the coordinator's stale view.

What bounds raytide here: its one floor asks for every node at once, but the autoscaler launches at most
``ceil(upscaling_speed × running nodes of the type)`` per round (v2: ``ray/autoscaler/v2/instance_manager/
reconciler.py``; v1 allows at least 5), so with Ray's default ``upscaling_speed: 1`` and one warm node the
floor of four arrives in two launch rounds, a launch delay apart (``--upscaling-speed`` changes it for
every arm). The fake provider also starts the raylets of one request one after another
(``ray/autoscaler/_private/fake_multi_node/node_provider.py``), a second or two each on a small machine.

Progress goes to stderr; the last stdout line is one JSON object. Ray Data facts this relies on (Ray 2.60,
``ray/data/_internal``): ``cluster_autoscaler/rate_based_cluster_autoscaler.py`` (requests at most every
10 s, 2x the current throughput, only while utilization >= 50%); ``actor_autoscaler/
default_actor_autoscaler.py`` (the pool grows only within the resources Ray Data's budget has, usually by
one actor at a time); ``cluster_autoscaler/default_autoscaling_coordinator.py`` (Ray Data's budget is the
coordinator's reservation, whose view of the cluster's nodes is refreshed on a 20 s tick).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# `python bench/reaction.py` puts bench/ first on sys.path, where bench/policies.py would shadow the
# `policies` package the daemon loads its policy from; the repository root goes there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

if TYPE_CHECKING:
    from autoscaler.adapters.ray.placeholders import RayWarmPool

ROWS_PER_BLOCK = 4
HEAD_CPUS = 2  # an int: `ray start --num-cpus` rejects "2.0"
METRICS_REPORT_INTERVAL_MS = 4000
"""Ray reports metrics every 10 s by default; this cluster reports every 4 s (as ``raytide demo``; below 2.5 s
Ray Data's gauges flicker, see docs/architecture.md)."""


def log(msg: str) -> None:
    print(f"[reaction {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ the job's driver


class Infer:
    """One (fake) GPU model replica: a sleep per batch; notes its first batch in the events file."""

    def __init__(self, seconds: float, events: str) -> None:
        self.seconds = seconds
        self.events = events
        self.first = True

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.first:
            self.first = False
            with open(self.events, "a", encoding="utf-8") as f:
                f.write(f"first {time.time():.3f} {os.getpid()}\n")
        time.sleep(self.seconds)
        return batch


def driver(args: argparse.Namespace) -> int:
    """Run one step's Ray Data job until the stop file appears (or the data ends)."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    events = Path(args.events)
    stop = events.with_suffix(".stop")
    ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.range(args.blocks * ROWS_PER_BLOCK, override_num_blocks=args.blocks)
    ds = ds.map_batches(
        Infer,
        fn_constructor_args=(args.infer_seconds, str(events)),
        batch_size=ROWS_PER_BLOCK,
        num_cpus=1,
        num_gpus=1,
        compute=ActorPoolStrategy(min_size=1, max_size=args.gpus),
    )
    with events.open("a", encoding="utf-8") as f:
        f.write(f"start {time.time():.3f}\n")
    try:
        for _ in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if stop.exists():
                break  # closing the iterator shuts the executor down: Ray Data cancels its request
    finally:
        with events.open("a", encoding="utf-8") as f:
            f.write(f"end {time.time():.3f}\n")
        ray.shutdown()
    return 0


# ------------------------------------------------------------------------------------------ measuring


@dataclass(slots=True)
class Poll:
    t: float
    gpu_nodes: int
    pending: int
    floor_gpus: float
    floor_markers: int


@dataclass(slots=True)
class Poller:
    """Reads the GCS every 0.5 s in a thread: gpu1 nodes alive and pending, the autoscaler's floor."""

    address: str
    polls: list[Poll] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gcs-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        from autoscaler.adapters.ray.cluster_state import node_type_resource, read_cluster_state

        marker = node_type_resource("gpu1")
        while not self._stop.is_set():
            t = time.time()
            try:
                state = read_cluster_state(self.address)
            except Exception as e:  # a slow GCS read is just a missed poll
                log(f"poll failed: {e}")
            else:
                floor = [d for d in state.demand if d.source == "floor"]
                self.polls.append(
                    Poll(
                        t=t,
                        gpu_nodes=state.node_counts().get("gpu1", 0),
                        pending=state.pending_counts().get("gpu1", 0),
                        floor_gpus=sum(float(d.resources.get("GPU", 0.0)) * d.count for d in floor),
                        floor_markers=sum(d.count for d in floor if marker in d.resources),
                    )
                )
            self._stop.wait(0.5)


def read_events(path: Path) -> tuple[float | None, list[float]]:
    start: float | None = None
    firsts: dict[str, float] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if parts and parts[0] == "start":
                start = float(parts[1])
            elif parts and parts[0] == "first" and len(parts) == 3:
                firsts.setdefault(parts[2], float(parts[1]))
    return start, sorted(firsts.values())


# ------------------------------------------------------------------------------------------ raytide arm


def daemon_config(gpus: int, infer_s: float, interval_s: float, pool: int = 0) -> Any:
    """The daemon's configuration; with ``pool`` > 0, that many standby gpu1 nodes beside the plan (the
    stage's ``max_slots`` keeps the plan itself at ``gpus`` nodes, as the job's actor pool)."""
    from autoscaler.core.config import parse_config

    warm = f"warm_pool: {{enabled: true, min: {{gpu1: {pool}}}, max: {{gpu1: {pool}}}}}\n" if pool > 0 else ""
    text = f"""
shapes:
  - {{name: gpu1, resources: {{CPU: 1, GPU: 1}}, price_per_hour: 1.0, min: 1, max: {gpus + pool},
     launch_seconds: 10}}
stages:
  - {{name: infer, operator: "MapBatches\\\\(Infer\\\\)", resources: {{CPU: 1, GPU: 1}},
     prior_rate: {{gpu1: {1.0 / infer_s:.4f}}}, max_slots: {gpus}}}
ignore_operators: "^(Input|InputDataBuffer|ReadRange)(_\\\\d+)?$"
targets: {{drain_seconds: 20, headroom: 0.2}}
bounds: {{max_nodes: {gpus + pool}, max_step_down: 2, scale_down_window_seconds: 60}}
prometheus: {{rate_window: 20s, staleness_seconds: 30}}
daemon: {{interval_seconds: {interval_s}, observe_timeout_seconds: 8, act_timeout_seconds: 15,
         drain_share_per_tick: 0.5, drain_confirm_seconds: 60, http_port: null}}
ray: {{floor_form: resource, use_coordinator: auto}}
{warm}"""
    return parse_config(text, "<reaction bench>")


class RaytideRunner:
    """The daemon on its own event loop in a thread; records when each floor reached the autoscaler."""

    def __init__(self, address: str, cfg: Any, state_dir: Path) -> None:
        from autoscaler.adapters.ray.actuator import FloorStatus, RayActuator

        self.cfg = cfg
        self.address = address
        self.state_dir = state_dir
        self.floors: list[tuple[float, int, str]] = []
        outer = self

        class TimedActuator(RayActuator):
            def set_target(self, counts: Mapping[str, int]) -> FloorStatus:
                status = super().set_target(counts)
                outer.floors.append((time.time(), int(counts.get("gpu1", 0)), status.channel))
                return status

        self.actuator = TimedActuator.from_shapes(
            address, cfg.node_shapes(), floor_form="resource", use_coordinator="auto"
        )
        self.claims: list[float] = []
        """When each placeholder removal (a claim, or a retirement) was sent."""
        self.pool: RayWarmPool | None = None
        if cfg.warm_pool.enabled:
            from autoscaler.adapters.ray.placeholders import RayWarmPool

            class TimedWarmPool(RayWarmPool):
                def remove(self, name: str, pg_id: str | None = None) -> bool:
                    outer.claims.append(time.time())
                    return super().remove(name, pg_id)

            self.pool = TimedWarmPool(
                self.actuator.ray_driver, {s.name: s.resources for s in cfg.node_shapes()}
            )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemon: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def ticks(self) -> int:
        return 0 if self._daemon is None else int(self._daemon.tick_number)

    def start(self, run_id: str) -> None:
        self.floors.clear()
        self.claims.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, args=(run_id,), name="raytide", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=120):
            raise RuntimeError("the raytide daemon did not start")

    def _run(self, run_id: str) -> None:
        try:
            asyncio.run(self._main(run_id))
        except BaseException as e:  # reported by stop()
            self.error = e
            self._ready.set()

    async def _main(self, run_id: str) -> None:
        from autoscaler.adapters.ray.cluster_state import read_cluster_state
        from autoscaler.adapters.scrape import FileDiscovery, RayExporterSource
        from autoscaler.adapters.state_store import StateStore
        from autoscaler.app.plugins import load_policy
        from autoscaler.daemon import Daemon
        from autoscaler.ports import ClusterState

        def read() -> ClusterState:
            return read_cluster_state(self.address, timeout_s=self.cfg.ray.timeout_seconds)

        self._loop = asyncio.get_running_loop()
        # A fresh state per step: a restored floor from the previous step would pre-launch nodes.
        with StateStore(self.state_dir / f"state-{run_id}.db") as store:
            async with RayExporterSource(config=self.cfg.prometheus, discovery=FileDiscovery()) as source:
                self._daemon = Daemon(
                    config=self.cfg,
                    policy=load_policy(self.cfg.policy.name, self.cfg.policy.options),
                    source=source,
                    cluster=read,
                    actuator=self.actuator,
                    store=store,
                    warm_pool=self.pool,
                )
                await self._daemon.start()
                self._ready.set()
                await self._daemon.run(install_signal_handlers=False)

    def stop(self) -> None:
        if self._loop is not None and self._daemon is not None:
            self._loop.call_soon_threadsafe(self._daemon.request_stop)
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._daemon = None
        self._loop = None
        try:
            self.actuator.release()
        except Exception as e:
            log(f"releasing raytide's floor failed: {e}")
        if self.error is not None:
            raise RuntimeError(f"the raytide daemon failed: {self.error!r}")


# ------------------------------------------------------------------------------------------ one step


@dataclass(slots=True)
class StepResult:
    arm: str
    index: int
    request_s: float | None
    nodes_ready_s: float | None
    capacity_usable_s: float | None
    censored: bool
    workers_seen: int
    floors: list[tuple[float, int]] = field(default_factory=list)
    node_times: list[float | None] = field(default_factory=list)
    """Seconds until 2, 3, ... gpu1 nodes were alive."""
    worker_times: list[float] = field(default_factory=list)
    """Seconds until each Infer worker started its first batch."""

    def as_json(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "step": self.index,
            "request_s": _r(self.request_s),
            "nodes_ready_s": _r(self.nodes_ready_s),
            "capacity_usable_s": _r(self.capacity_usable_s),
            "censored": self.censored,
            "workers_seen": self.workers_seen,
            "raytide_floors": [[round(t, 2), n] for t, n in self.floors],
            "nodes_alive_s": [_r(t) for t in self.node_times],
            "workers_busy_s": [_r(t) for t in self.worker_times],
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def wait_for_baseline(address: str, timeout_s: float, standby: RayWarmPool | None = None, n: int = 0) -> None:
    """Until one active gpu1 node is alive and nothing is pending; with ``standby``, also ``n`` standby
    nodes held by that pool's placeholders (1 + ``n`` gpu1 nodes in all)."""
    from autoscaler.adapters.ray.cluster_state import read_cluster_state
    from autoscaler.devcluster.cluster import wait_until

    def at_baseline() -> bool:
        s = read_cluster_state(address)
        if s.node_counts().get("gpu1", 0) != 1 + n or s.pending_counts():
            return False
        return standby is None or sum(1 for p in standby.list() if p.state == "CREATED") == n

    what = f"the cluster at one gpu1 node{f' and {n} standby' if n else ''}"
    wait_until(at_baseline, timeout_s=timeout_s, interval_s=1.0, what=what)


def clear_standby(pool: RayWarmPool) -> None:
    """Remove every standby placeholder (they are detached and outlive the daemon that made them)."""
    for p in pool.list():
        pool.remove(p.name, p.pg_id)


def refresh_coordinator(actuator: Any) -> None:
    """Make Ray Data's coordinator re-read the cluster before a step, whichever arm runs it.

    It re-reads the nodes only every 20 s; right after the previous step's nodes were removed it would
    still reserve their GPUs, and Ray Data's first request (twice its current throughput, computed on
    those phantom GPUs) would launch the whole step at once — a head start neither arm has in practice.
    """
    from autoscaler.adapters.ray.actuator import COORDINATOR_NAME, COORDINATOR_NAMESPACE

    try:
        ray = actuator.ray_driver()
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=COORDINATOR_NAMESPACE)
        ray.get(coordinator.get_reserved_resources.remote("reaction-bench", recompute=True), timeout=30)
    except Exception as e:
        log(f"could not refresh Ray Data's coordinator: {e}")


def run_step(
    arm: str,
    index: int,
    *,
    address: str,
    args: argparse.Namespace,
    workdir: Path,
    raytide: RaytideRunner | None,
    running: bool = False,
) -> StepResult:
    """One step; ``running``: the daemon was started before (to fill its warm pool), not here."""
    events = workdir / f"step{index}-{arm}.events"
    if raytide is not None and not running:
        raytide.start(f"{arm}-{index}")
        # A daemon runs all the time: give it a few ticks of history before the step.
        deadline = time.monotonic() + 60
        while raytide.ticks() < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
    poller = Poller(address)
    poller.start()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--driver",
        "--address",
        address,
        "--events",
        str(events),
        "--blocks",
        str(args.blocks),
        "--gpus",
        str(args.gpus),
        "--infer-seconds",
        str(args.infer_seconds),
    ]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start: float | None = None
    firsts: list[float] = []
    deadline = time.monotonic() + args.max_wait
    try:
        while time.monotonic() < deadline and job.poll() is None:
            start, firsts = read_events(events)
            if start is not None and len(firsts) >= args.gpus:
                break
            time.sleep(0.5)
        start, firsts = read_events(events)
    finally:
        events.with_suffix(".stop").touch()
        try:
            job.wait(timeout=90)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
        poller.stop()
        if raytide is not None:
            raytide.stop()
    if job.returncode not in (0, None) and start is None:
        err = job.stderr.read().decode(errors="replace")[-2000:] if job.stderr else ""
        raise RuntimeError(f"the step's job failed (exit {job.returncode}): {err}")
    if job.stderr is not None:
        job.stderr.close()
    if start is None:
        raise RuntimeError("the step's job never started its dataset")

    capacity = firsts[args.gpus - 1] - start if len(firsts) >= args.gpus else None
    ready = next((p.t - start for p in poller.polls if p.t >= start and p.gpu_nodes >= args.gpus), None)
    floors: list[tuple[float, int]] = []
    request: float | None
    if raytide is not None:
        # Only the changes: the daemon re-asserts its floor every tick.
        floors = [
            (t - start, n)
            for i, (t, n, _) in enumerate(raytide.floors)
            if i == 0 or raytide.floors[i - 1][1] != n
        ]
        if raytide.pool is not None:
            # The floor holds plan + standby all along; the request that matters is the first claim.
            request = next((t - start for t in raytide.claims if t >= start), None)
        else:
            request = next((t - start for t, n, _ in raytide.floors if t >= start and n > 1), None)
    else:
        request = next((p.t - start for p in poller.polls if p.t >= start and p.floor_gpus > 1), None)
    result = StepResult(
        arm=arm,
        index=index,
        request_s=request,
        nodes_ready_s=ready,
        capacity_usable_s=capacity if capacity is not None else None,
        censored=capacity is None,
        workers_seen=len(firsts),
        floors=floors,
        node_times=[
            next((p.t - start for p in poller.polls if p.t >= start and p.gpu_nodes >= k), None)
            for k in range(2, args.gpus + 1)
        ],
        worker_times=[t - start for t in firsts],
    )
    log(
        f"step {index} {arm}: request {_r(request)} s, {args.gpus} nodes {_r(ready)} s, "
        f"{args.gpus} workers busy {_r(capacity)} s ({len(firsts)} workers seen)"
    )
    return result


# ------------------------------------------------------------------------------------------ main


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from autoscaler.adapters.logging_setup import configure_logging
    from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType

    configure_logging("text", "INFO")  # the daemon's one line per tick, on stderr
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scraped exporter otherwise
    # Room for the plan and the standby nodes beside it (the built-in arm's job never asks past --gpus).
    types = [
        LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, min_workers=1, max_workers=args.gpus + args.warm_pool)
    ]
    cluster = LocalAutoscalingCluster(
        types,
        autoscaler_v2=args.autoscaler == "v2",
        head_resources={"CPU": HEAD_CPUS},
        idle_timeout_minutes=args.idle_timeout_minutes,
        upscaling_speed=args.upscaling_speed,
        launch_delay_s=args.launch_delay,
        # The dashboard writes /tmp/ray/prom_metrics_service_discovery.json, where raytide's embedded
        # scrape finds Ray's exporters (ray/dashboard/modules/reporter/reporter_head.py).
        include_dashboard=True,
        extra_env={"RAY_metrics_report_interval_ms": str(METRICS_REPORT_INTERVAL_MS)},
    )
    results: list[StepResult] = []
    t_begin = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="raytide-reaction-") as tmp, cluster:
        workdir = Path(tmp)
        address = cluster.address
        log(f"cluster up at {address} (autoscaler {cluster.autoscaler_version}); waiting for the warm node")
        wait_for_baseline(address, timeout_s=180)
        cfg = daemon_config(args.gpus, args.infer_seconds, args.interval)
        raytide = RaytideRunner(address, cfg, workdir)
        # Warm-up (not measured): creates Ray Data's coordinator and warms the workers' imports.
        log("warm-up job")
        saved = args.max_wait
        args.max_wait = 20.0
        run_step("warmup", 0, address=address, args=args, workdir=workdir, raytide=None)
        args.max_wait = saved
        pooled: RaytideRunner | None = None
        arms = ["builtin", "raytide"]
        if args.warm_pool > 0:
            pooled = RaytideRunner(
                address, daemon_config(args.gpus, args.infer_seconds, args.interval, args.warm_pool), workdir
            )
            arms.append("raytide_pool")
        for i in range(1, args.steps + 1):
            k = (i - 1) % len(arms)  # each arm goes first once in every len(arms) steps
            for arm in arms[k:] + arms[:k]:
                runner = {"builtin": None, "raytide": raytide, "raytide_pool": pooled}[arm]
                if pooled is not None and pooled.pool is not None:
                    clear_standby(pooled.pool)
                log(f"step {i} {arm}: waiting for the cluster to settle at one gpu1 node")
                wait_for_baseline(address, timeout_s=300)
                if runner is not None and runner is pooled:
                    # Every arm starts from the same cluster; the pool is then filled before the step.
                    log(f"step {i} {arm}: the daemon fills its pool of {args.warm_pool} standby gpu1 nodes")
                    runner.start(f"{arm}-{i}")
                    try:
                        assert runner.pool is not None
                        wait_for_baseline(address, timeout_s=300, standby=runner.pool, n=args.warm_pool)
                    except BaseException:
                        runner.stop()
                        raise
                refresh_coordinator(raytide.actuator)
                time.sleep(args.settle)
                results.append(
                    run_step(
                        arm,
                        i,
                        address=address,
                        args=args,
                        workdir=workdir,
                        raytide=runner,
                        running=runner is pooled and runner is not None,
                    )
                )

    def usable(arm: str) -> float | None:
        # A censored step (the capacity never became usable within --max-wait) counts as --max-wait, a
        # lower bound: for the built-in arm that understates its time, for raytide it overstates it.
        return _median(
            [r.capacity_usable_s if not r.censored else args.max_wait for r in results if r.arm == arm]
        )

    mine = [r for r in results if r.arm == "raytide"]
    theirs = [r for r in results if r.arm == "builtin"]
    pool_steps = [r for r in results if r.arm == "raytide_pool"]
    rt, bi, wp = usable("raytide"), usable("builtin"), usable("raytide_pool")
    ratio = round(rt / bi, 3) if rt is not None and bi else None
    ratio_pool = round(wp / bi, 3) if wp is not None and bi else None
    return {
        "benchmark": "reaction",
        "raytide_capacity_usable_median_s": rt,
        "builtin_capacity_usable_median_s": bi,
        "ratio": ratio,
        "target_ratio_max": 0.5,
        "target_met": ratio is not None and ratio <= 0.5,
        "raytide_pool_capacity_usable_median_s": wp,
        "ratio_warm_pool": ratio_pool,
        "target_met_warm_pool": ratio_pool is not None and ratio_pool <= 0.5,
        "warm_pool_standby_nodes": args.warm_pool,
        "warm_pool_standby_cost_per_hour": args.warm_pool
        * next(s.price_per_hour for s in cfg.node_shapes() if s.name == "gpu1"),
        "raytide_request_median_s": _median([r.request_s for r in mine]),
        "builtin_request_median_s": _median([r.request_s for r in theirs]),
        "raytide_pool_first_claim_median_s": _median([r.request_s for r in pool_steps]),
        "raytide_nodes_ready_median_s": _median([r.nodes_ready_s for r in mine]),
        "builtin_nodes_ready_median_s": _median([r.nodes_ready_s for r in theirs]),
        "censored_steps": sum(1 for r in results if r.censored),
        "steps": args.steps,
        "gpu_workers_needed": args.gpus,
        "launch_delay_s": args.launch_delay,
        "infer_seconds": args.infer_seconds,
        "autoscaler": args.autoscaler,
        "upscaling_speed": args.upscaling_speed,
        "metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS,
        "daemon_interval_s": args.interval,
        "wall_s": round(time.monotonic() - t_begin, 1),
        "per_step": [r.as_json() for r in results],
        "baseline": "Ray built-in autoscaling (Ray Data + Ray autoscaler) in the same run",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=3, help="steps per arm (>= 3)")
    parser.add_argument("--gpus", type=int, default=4, help="GPU workers the step needs (gpu1 max)")
    parser.add_argument("--launch-delay", type=float, default=10.0, help="seconds each node takes to boot")
    parser.add_argument("--blocks", type=int, default=600)
    parser.add_argument("--infer-seconds", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=1.0, help="raytide's tick interval")
    parser.add_argument("--autoscaler", choices=("v1", "v2"), default="v2")
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.2)
    parser.add_argument("--upscaling-speed", type=float, default=1.0, help="the autoscaler's (Ray's default)")
    parser.add_argument(
        "--warm-pool",
        type=int,
        default=None,
        help="standby gpu1 nodes in the raytide_pool arm (default: --gpus - 1; 0: no such arm)",
    )
    parser.add_argument("--max-wait", type=float, default=150.0, help="seconds a step may take at most")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds at the baseline before a step")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        return driver(args)
    if args.gpus < 2:
        parser.error("--gpus must be >= 2 (one node is always warm)")
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.warm_pool is None:
        args.warm_pool = args.gpus - 1
    if args.warm_pool < 0:
        parser.error("--warm-pool must be >= 0")
    print(json.dumps(bench(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
