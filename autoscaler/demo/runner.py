"""``raytide demo``: a local autoscaling Ray cluster, the demo pipeline as its own Ray Data driver and the
daemon acting on the cluster, with the live view; the report at the end; everything it started stopped again
(on success, on error and on Ctrl-C / SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.live import Live

from autoscaler.demo.live import decision_line, print_summary, render_view
from autoscaler.demo.options import DemoOptions, demo_config
from autoscaler.demo.recorder import DemoRecorder
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType

if TYPE_CHECKING:
    from autoscaler.adapters.telemetry import Telemetry
    from autoscaler.app.wiring import Wiring
    from autoscaler.daemon import Daemon

__all__ = ["NODE_TYPES", "run_demo"]

NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, min_workers=0, max_workers=3),
    LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, min_workers=0, max_workers=3),
)

METRICS_REPORT_INTERVAL_MS = 4000
"""How often the demo's cluster and pipeline report metrics: more often than Ray's default, but not so often
that Ray Data's operator gauges vanish between the executor's updates (docs/architecture.md, facts about
Ray), which makes raytide hold on those ticks."""

PENDING_GRACE_S = 20.0
"""Once no worker runs above the minimum, launches still reported pending hold the end this long at most."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (so the clean-up runs); the previous handler is restored after."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_pipeline(address: str, opts: DemoOptions, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "autoscaler.demo.pipeline",
        "--address",
        address,
        "--bursts",
        ",".join(str(b) for b in opts.bursts),
        "--gap",
        str(opts.gap_seconds),
        "--decode-seconds",
        str(opts.decode_seconds),
        "--infer-seconds",
        str(opts.infer_seconds),
        "--max-actors",
        str(opts.max_actors),
    ]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_metrics_report_interval_ms"] = str(METRICS_REPORT_INTERVAL_MS)
    with log_path.open("wb") as out:
        # Its own session: a terminal's Ctrl-C reaches the demo only, which then stops the pipeline itself.
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _pipeline_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()]


def _pipeline_status(path: Path) -> str:
    mine = [ln for ln in _pipeline_lines(path) if ln.startswith("pipeline:")]
    return mine[-1].removeprefix("pipeline: ") if mine else ""


async def _drive(
    *,
    wiring: Wiring,
    opts: DemoOptions,
    rec: DemoRecorder,
    pipeline: subprocess.Popen[bytes],
    pipeline_log: Path,
    console: Console,
    deadline: float,
) -> str:
    """The daemon's ticks with the live view, until the pipeline is done and the cluster is back at its
    minimum (or the deadline); returns why it ended."""
    cfg = wiring.config
    recent: deque[str] = deque(maxlen=7)
    live_mode = console.is_terminal if opts.live is None else opts.live
    minimum = {s.name: s.min for s in cfg.shapes}
    ended = "time limit reached"
    min_since: float | None = None
    claimer: asyncio.Task[None] | None = None
    daemon: Daemon | None = None

    def show(line: str, *, soft_wrap: bool = False) -> None:
        recent.append(line)
        if not live_mode:
            console.print(line, highlight=False, soft_wrap=soft_wrap)

    try:
        async with wiring.daemon() as daemon:
            await daemon.start()
            if wiring.warm_pool is not None:
                claimer = asyncio.create_task(daemon.run_claims())
            status = f"daemon running (autoscaler {opts.autoscaler}, tick every {opts.interval_seconds:g} s)"

            def view() -> RenderableType:
                return render_view(
                    rec, status=status, pipeline_line=_pipeline_status(pipeline_log), recent=list(recent)
                )

            live = Live(view(), console=console, refresh_per_second=4, auto_refresh=live_mode)
            with live if live_mode else contextlib.nullcontext():
                while True:
                    started = time.monotonic()
                    outcome = await daemon.tick()
                    for d in rec.record(
                        tick=outcome.tick,
                        snapshot=outcome.snapshot,
                        plan=outcome.plan,
                        drained=outcome.drained,
                        refused=outcome.refused,
                        errors=outcome.errors,
                        standby=_standby(daemon),
                    ):
                        show(decision_line(d), soft_wrap=True)
                    for node_id in outcome.drained:
                        show(f"{outcome.snapshot.time - rec.started:5.0f}s drained idle node {node_id[:12]}…")
                    done = pipeline.poll()
                    last = rec.ticks[-1]
                    running_at_min = all(last.running[s] <= minimum[s] for s in minimum)
                    stuck = sum(last.pending.values())
                    if not running_at_min:
                        min_since = None
                    elif min_since is None:
                        min_since = time.monotonic()
                    if done is not None:
                        status = (
                            "pipeline finished; waiting for the cluster to scale back down"
                            if done == 0
                            else f"pipeline FAILED (exit {done}); waiting for the cluster to scale down"
                        )
                        # A launch the autoscaler keeps reporting pending while nothing runs (seen with
                        # autoscaler v1) does not hold the demo for more than PENDING_GRACE_S.
                        settled = stuck == 0 or (
                            min_since is not None and time.monotonic() - min_since >= PENDING_GRACE_S
                        )
                        if running_at_min and settled:
                            ended = (
                                "pipeline done and cluster back at its minimum"
                                if done == 0
                                else f"pipeline failed (exit {done}); cluster back at its minimum"
                            )
                            if stuck:
                                ended += f" ({stuck} launch(es) still reported pending by Ray's autoscaler)"
                            break
                    if live_mode:
                        live.update(view())
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(max(0.0, opts.interval_seconds - (time.monotonic() - started)))
                if live_mode:
                    live.update(view())
    finally:
        if claimer is not None:
            claimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claimer
        if daemon is not None and wiring.telemetry is not None and cfg.warm_pool.enabled:
            rec.warm_pool = _pool_stats(daemon, wiring.telemetry)
    return ended


def _standby(daemon: Daemon) -> dict[str, int]:
    """Ready standby nodes per shape (placeholders that hold a node)."""
    standby: dict[str, int] = {}
    for m in daemon.pool:
        if m.node_id:
            standby[m.shape] = standby.get(m.shape, 0) + 1
    return standby


def _pool_stats(daemon: Daemon, telemetry: Telemetry) -> dict[str, Any]:
    """The warm pool's claims, misses and claim latency, read back from the daemon's own metrics."""
    reg = telemetry.registry

    def total(name: str) -> float:
        return sum(
            sample.value for metric in reg.collect() for sample in metric.samples if sample.name == name
        )

    claims = total("raytide_warm_pool_claims_total")
    latency_sum = total("raytide_warm_pool_claim_latency_seconds_sum")
    latency_n = total("raytide_warm_pool_claim_latency_seconds_count")
    return {
        "standby_at_end": [m.name for m in daemon.pool],
        "claims": int(claims),
        "misses": int(total("raytide_warm_pool_misses_total")),
        "mean_claim_latency_seconds": round(latency_sum / latency_n, 3) if latency_n else None,
    }


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """Run the whole demo; returns the exit code (0 ok, 1 failed, 130 interrupted). Always cleans up."""
    console = console or Console()
    cfg = demo_config(opts)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    png_path = opts.out_dir / "timeline.png"
    json_path = opts.out_dir / "summary.json"
    pipeline_log = opts.out_dir / "pipeline.log"
    rec = DemoRecorder(config=cfg)
    deadline = time.monotonic() + opts.time_limit_seconds
    cluster = LocalAutoscalingCluster(
        NODE_TYPES,
        autoscaler_v2=opts.autoscaler == "v2",
        include_dashboard=True,
        idle_timeout_minutes=opts.idle_timeout_minutes,
        extra_env={"RAY_metrics_report_interval_ms": str(METRICS_REPORT_INTERVAL_MS)},
    )
    pipeline: subprocess.Popen[bytes] | None = None
    ended = "not started"
    code = 1
    with tempfile.TemporaryDirectory(prefix="raytide-demo-") as scratch, _sigterm_as_interrupt():
        try:
            console.print(
                f"raytide demo: starting a local autoscaling Ray cluster (autoscaler {opts.autoscaler}; "
                "node types cpu4 {CPU: 4} and gpu1 {CPU: 1, GPU: 1}, 0–3 each)…",
                highlight=False,
            )
            cluster.start()
            console.print(f"cluster up at {cluster.address}; starting the pipeline", highlight=False)
            # The actuator needs a Ray driver (to find Ray Data's AutoscalingCoordinator). Started here, in
            # the main thread, rather than lazily in a worker thread: Ray's core worker installs a native
            # SIGTERM handler that aborts the process, so ours is put back on top of it afterwards.
            cluster.connect(namespace="raytide", configure_logging=False)
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, _raise_interrupt)
            pipeline = _start_pipeline(cluster.address, opts, pipeline_log)
            # Imported once the cluster is up: the daemon's stack takes a moment to import.
            from autoscaler.app.plugins import load_policy
            from autoscaler.app.wiring import WiringOptions, wire

            # The actuator's Ray driver starts in a worker thread, where Ray warns that it cannot set its
            # SIGTERM handler (the demo's own handler is the one that matters).
            logging.getLogger("ray").setLevel(logging.ERROR)
            options = WiringOptions(
                ray_address=cluster.address,
                interval_seconds=opts.interval_seconds,
                state_path=Path(scratch) / "state.db",
                configure_logging=False,
            )
            with wire(cfg, load_policy(cfg.policy.name, cfg.policy.options), options) as wiring:
                ended = asyncio.run(
                    _drive(
                        wiring=wiring,
                        opts=opts,
                        rec=rec,
                        pipeline=pipeline,
                        pipeline_log=pipeline_log,
                        console=console,
                        deadline=deadline,
                    )
                )
            code = 0 if ended.startswith("pipeline done") else 1
        except KeyboardInterrupt:
            ended = "interrupted (Ctrl-C / SIGTERM)"
            code = 130
        except Exception as e:
            ended = f"error: {type(e).__name__}: {e}"
            rec.error(ended)
            code = 1
        finally:
            # A second Ctrl-C must not cut the clean-up short and leave Ray processes behind.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                console.print(
                    f"raytide demo: {ended}; stopping the pipeline and the cluster…", highlight=False
                )
                _stop_process(pipeline)
                cluster.shutdown()
            finally:
                signal.signal(signal.SIGINT, previous)
    exit_code = pipeline.returncode if pipeline is not None else None
    files = {"timeline": str(png_path), "summary": str(json_path), "pipeline_log": str(pipeline_log)}
    if rec.ticks:
        try:
            rec.plot(png_path)
        except Exception as e:  # the report must not hide the summary
            rec.error(f"plot failed: {type(e).__name__}: {e}")
            files.pop("timeline")
    else:
        files.pop("timeline")
    doc = rec.summary(
        opts=opts,
        ended_because=ended,
        pipeline_exit=exit_code,
        pipeline_log=_pipeline_lines(pipeline_log),
        files=files,
    )
    json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print_summary(console, doc)
    return code
