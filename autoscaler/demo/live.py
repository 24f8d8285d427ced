"""``raytide demo``: the daemon driving a real local autoscaling Ray cluster, live, with a report at the end.

What it does, in order:

1. starts a :class:`~autoscaler.devcluster.cluster.LocalAutoscalingCluster` (autoscaler v2 by default)
   with two fake node types, ``cpu4`` {CPU: 4} and ``gpu1`` {CPU: 1, GPU: 1} (0–3 each, each with its
   ``raytide-node-type:<type>`` marker resource), the dashboard on (it writes Ray's service-discovery file,
   which the embedded metrics source reads) and a short idle timeout;
2. runs :mod:`autoscaler.demo.live.pipeline` as a separate Ray Data driver: bursts of blocks through a CPU
   ``decode`` stage and a GPU ``Infer`` actor pool (sleep-based work);
3. runs the daemon in this process (embedded scrape of Ray's exporters, a tick every ~2 s, a 20 s
   scale-down window, a warm pool of one standby gpu1 node that waiting GPU work claims between ticks)
   and shows a live view: per-stage backlog and throughput, nodes per shape (running / pending / target /
   standby) and the last decisions with their reasons;
4. when the pipeline is done and the cluster is back at its minimum (or at the time limit) writes
   ``timeline.png`` and ``summary.json`` to the output directory;
5. stops everything it started — the daemon, the pipeline process, the cluster (``ray stop --force``) —
   on success, on error and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoscaler.core.config import Config, parse_config
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType
from autoscaler.types import Plan, Snapshot

if TYPE_CHECKING:
    from autoscaler.daemon import Daemon

__all__ = [
    "DemoOptions",
    "DemoRecorder",
    "demo_config",
    "run_demo",
]

NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, min_workers=0, max_workers=3),
    LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, min_workers=0, max_workers=3),
)

METRICS_REPORT_INTERVAL_MS = 4000
"""Ray reports metrics every 10 s by default; the demo's cluster and pipeline report every 4 s. Not less:
below 2.5 s Ray Data's operator gauges vanish between its 5 s updates (docs/architecture.md, facts about
Ray) and raytide holds on those ticks."""

PENDING_GRACE_S = 20.0
"""Once no worker runs above the minimum, launches still reported pending hold the end this long at most."""

_CONFIG_TEMPLATE = """\
shapes:
  - {{name: cpu4, resources: {{CPU: 4}}, price_per_hour: 0.20, min: 0, max: 3, launch_seconds: 5}}
  - {{name: gpu1, resources: {{CPU: 1, GPU: 1}}, price_per_hour: 1.00, min: 0, max: 3, launch_seconds: 5}}
stages:
  - {{name: decode, operator: "MapBatches\\\\(decode\\\\)", resources: {{CPU: 1}},
     prior_rate: {{cpu4: {decode_rate}, gpu1: {decode_rate}}}}}
  - {{name: infer, operator: "MapBatches\\\\(Infer\\\\)", resources: {{CPU: 1, GPU: 1}},
     prior_rate: {{gpu1: {infer_rate}}}, max_slots: {max_actors}}}
ignore_operators: "^(Input|InputDataBuffer|ReadRange)(_\\\\d+)?$"
targets: {{drain_seconds: 20, headroom: 0.2}}
bounds: {{max_nodes: 6, max_step_down: 2, scale_down_window_seconds: {window}}}
prometheus: {{rate_window: 20s, staleness_seconds: 30}}
daemon: {{interval_seconds: {interval}, observe_timeout_seconds: 8, act_timeout_seconds: 15,
         drain_share_per_tick: 0.5, drain_confirm_seconds: 60, http_port: null}}
ray: {{floor_form: resource, use_coordinator: auto}}
warm_pool: {{enabled: {pool_enabled}, min: {{gpu1: {standby_gpu}}}, max: {{gpu1: {standby_gpu}}},
            claim_poll_seconds: 0.5}}
"""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """How one demo runs. ``quick`` is the short version the tests use."""

    out_dir: Path = Path("raytide-report")
    autoscaler: Literal["v1", "v2"] = "v2"
    bursts: tuple[int, ...] = (40, 40)
    gap_seconds: float = 15.0
    decode_seconds: float = 0.5
    infer_seconds: float = 1.0
    max_actors: int = 3
    interval_seconds: float = 2.0
    standby_gpu: int = 1
    """Standby gpu1 nodes in the warm pool (0 turns the pool off)."""
    scale_down_window_seconds: float = 20.0
    idle_timeout_minutes: float = 0.5
    time_limit_seconds: float = 270.0
    """The whole demo (cluster start to report) ends by then, finished or not."""
    live: bool | None = None
    """Live view (rich.Live) or plain lines; None: live when the console is a terminal."""

    @classmethod
    def quick(cls, **overrides: Any) -> DemoOptions:
        base: dict[str, Any] = {"bursts": (24,), "gap_seconds": 0.0, "time_limit_seconds": 170.0}
        base.update(overrides)
        return cls(**base)


def demo_config(opts: DemoOptions) -> Config:
    """The raytide configuration the demo's daemon runs with (two shapes, two stages)."""
    text = _CONFIG_TEMPLATE.format(
        decode_rate=round(1.0 / opts.decode_seconds, 3),
        infer_rate=round(1.0 / opts.infer_seconds, 3),
        max_actors=opts.max_actors,
        window=opts.scale_down_window_seconds,
        interval=opts.interval_seconds,
        pool_enabled="true" if opts.standby_gpu > 0 else "false",
        standby_gpu=opts.standby_gpu,
    )
    return parse_config(text, "<raytide demo>")


# ------------------------------------------------------------------------------------------ recording


@dataclass(slots=True)
class TickRecord:
    t: float
    tick: int
    backlog: dict[str, float | None]
    throughput: dict[str, float | None]
    running: dict[str, int]
    pending: dict[str, int]
    target: dict[str, int]
    standby: dict[str, int]
    """Ready standby (warm-pool) nodes per shape, not counted in ``running``."""
    cpu_utilization: float | None
    gpu_utilization: float | None
    held: bool


@dataclass(slots=True)
class DecisionRecord:
    t: float
    tick: int
    shape: str
    direction: str
    current: int
    target: int
    reason: str
    stages: list[str]
    """The stages the plan places work for on this shape (what drove a scale-up)."""


def _known(value: Any) -> float | None:
    return float(value.value) if value.known and math.isfinite(value.value) else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(slots=True)
class DemoRecorder:
    """Everything the demo saw, tick by tick; turns it into the summary JSON and the PNG timeline."""

    config: Config
    started: float = field(default_factory=time.time)
    ticks: list[TickRecord] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_first_t: dict[str, float] = field(default_factory=dict)
    drains_accepted: int = 0
    drains_refused: int = 0
    _last_target: dict[str, int] = field(default_factory=dict)
    """Per shape, the target of the last plan (a decision is a change of it)."""
    warm_pool: dict[str, Any] | None = None
    """Claims, misses and claim latencies of the warm pool (None when it is off)."""

    @property
    def shapes(self) -> list[str]:
        return [s.name for s in self.config.shapes]

    @property
    def stages(self) -> list[str]:
        return [s.name for s in self.config.stages]

    def error(self, message: str, t: float | None = None) -> None:
        key = message if len(message) <= 240 else message[:237] + "..."
        self.errors[key] += 1
        self.error_first_t.setdefault(key, t if t is not None else time.time() - self.started)

    def record(
        self,
        *,
        tick: int,
        snapshot: Snapshot,
        plan: Plan,
        drained: Sequence[str] = (),
        refused: Sequence[str] = (),
        errors: Sequence[str] = (),
        standby: Mapping[str, int] | None = None,
    ) -> list[DecisionRecord]:
        """Add one tick; returns the decisions (target changes) it made."""
        t = snapshot.time - self.started
        stages = {st.name: st for st in snapshot.stages}
        cpu = [v for n in snapshot.nodes if (v := _known(n.cpu_utilization)) is not None]
        gpu = [v for n in snapshot.nodes if (v := _known(n.gpu_utilization)) is not None]
        target = plan.targets()
        self.ticks.append(
            TickRecord(
                t=t,
                tick=tick,
                # A stage with no series (no dataset running it) is a gap, not a zero.
                backlog={s: _known(stages[s].backlog) if s in stages else None for s in self.stages},
                throughput={s: _known(stages[s].throughput) if s in stages else None for s in self.stages},
                running={s: snapshot.count(s) for s in self.shapes},
                pending={s: int(snapshot.pending_counts.get(s, 0)) for s in self.shapes},
                target={s: int(target.get(s, snapshot.count(s))) for s in self.shapes},
                standby={s: int((standby or {}).get(s, 0)) for s in self.shapes},
                cpu_utilization=_mean(cpu),
                gpu_utilization=_mean(gpu),
                held=plan.held,
            )
        )
        self.drains_accepted += len(drained)
        self.drains_refused += len(refused)
        for e in errors:
            self.error(e, t)
        made: list[DecisionRecord] = []
        if plan.held:
            return made
        for change in plan.changes:
            if change.direction == "hold":
                self._last_target[change.shape] = change.target
                continue
            if self._last_target.get(change.shape) == change.target:
                continue  # the same decision again (e.g. while its nodes are still launching)
            self._last_target[change.shape] = change.target
            on_shape = sorted({p.stage for p in plan.placements if p.shape == change.shape and p.slots > 0})
            rec = DecisionRecord(
                t=t,
                tick=tick,
                shape=change.shape,
                direction=change.direction,
                current=change.current,
                target=change.target,
                reason=change.reason,
                stages=on_shape,
            )
            self.decisions.append(rec)
            made.append(rec)
        return made

    # ------------------------------------------------------------------------------------ summaries

    def peak_nodes(self) -> dict[str, int]:
        return {s: max((r.running[s] for r in self.ticks), default=0) for s in self.shapes}

    def launches(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per shape, nodes that appeared (running + pending went up), and how many of them took the count
        above the target raytide had set the tick before (launched by Ray's own autoscaling, for pending
        tasks/actors or Ray Data's requests, ahead of raytide)."""
        total = dict.fromkeys(self.shapes, 0)
        ahead = dict.fromkeys(self.shapes, 0)
        for a, b in zip(self.ticks, self.ticks[1:], strict=False):
            for s in self.shapes:
                before, after = a.running[s] + a.pending[s], b.running[s] + b.pending[s]
                if after > before:
                    total[s] += after - before
                    ahead[s] += max(0, after - max(before, a.target[s]))
        return total, ahead

    def node_seconds(self) -> dict[str, float]:
        out = dict.fromkeys(self.shapes, 0.0)
        for a, b in zip(self.ticks, self.ticks[1:], strict=False):
            for s in self.shapes:
                out[s] += a.running[s] * (b.t - a.t)
        return {s: round(v, 1) for s, v in out.items()}

    def summary(
        self,
        *,
        opts: DemoOptions,
        ended_because: str,
        pipeline_exit: int | None,
        pipeline_log: Sequence[str],
        files: Mapping[str, str],
    ) -> dict[str, Any]:
        duration = time.time() - self.started
        prices = {s.name: s.price_per_hour for s in self.config.shapes}
        minimum = {s.name: s.min for s in self.config.shapes}
        node_s = self.node_seconds()
        cost = {s: round(node_s[s] / 3600.0 * prices[s], 5) for s in self.shapes}
        actions = {s: {"up": 0, "down": 0} for s in self.shapes}
        driven: dict[str, dict[str, int]] = {s: {} for s in self.shapes}
        for d in self.decisions:
            actions[d.shape][d.direction] += 1
            if d.direction == "up":
                for st in d.stages:
                    driven[d.shape][st] = driven[d.shape].get(st, 0) + 1
        final = self.ticks[-1] if self.ticks else None
        final_nodes = {s: final.running[s] if final else 0 for s in self.shapes}
        final_pending = {s: final.pending[s] if final else 0 for s in self.shapes}
        peak = self.peak_nodes()
        launched, ahead = self.launches()
        return {
            "demo": "raytide demo (live, local fake-multinode Ray cluster)",
            "started": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "duration_seconds": round(duration, 1),
            "ended_because": ended_because,
            "autoscaler": opts.autoscaler,
            "pipeline": {
                "bursts_blocks": list(opts.bursts),
                "gap_seconds": opts.gap_seconds,
                "decode_seconds_per_block": opts.decode_seconds,
                "infer_seconds_per_block": opts.infer_seconds,
                "exit_code": pipeline_exit,
                "completed": pipeline_exit == 0,
                "log_tail": list(pipeline_log)[-8:],
            },
            "ticks": len(self.ticks),
            "decisions": [asdict(d) | {"t": round(d.t, 1)} for d in self.decisions],
            "scale_actions": actions,
            "scale_ups_driven_by": driven,
            "peak_nodes": peak,
            "nodes_launched": launched,
            "nodes_launched_ahead_of_raytide": ahead,
            "final_nodes": final_nodes,
            "final_pending": final_pending,
            "scaled_up": any(v > minimum[s] for s, v in peak.items()),
            "scaled_back_down": bool(final) and all(final_nodes[s] <= minimum[s] for s in self.shapes),
            "drains": {"accepted": self.drains_accepted, "refused": self.drains_refused},
            "warm_pool": self.warm_pool,
            "node_seconds": node_s,
            "cost_estimate": {
                "per_shape_usd": cost,
                "total_usd": round(sum(cost.values()), 5),
                "prices_per_hour": prices,
            },
            "errors": [
                {"message": m, "count": n, "first_t": round(self.error_first_t.get(m, 0.0), 1)}
                for m, n in self.errors.most_common()
            ],
            "files": dict(files),
        }

    def plot(self, path: Path) -> Path:
        """The timeline PNG: backlog and throughput per stage, nodes per shape, utilization, decisions."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = 3 + len(self.shapes)
        fig, axes = plt.subplots(rows, 1, figsize=(11, 2.1 * rows), sharex=True, squeeze=False)
        ax = [a[0] for a in axes]
        t = [r.t for r in self.ticks]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        nan = float("nan")
        for i, st in enumerate(self.stages):
            c = colors[i % len(colors)]
            back = [r.backlog[st] if r.backlog[st] is not None else nan for r in self.ticks]
            thr = [r.throughput[st] if r.throughput[st] is not None else nan for r in self.ticks]
            ax[0].plot(t, back, color=c, label=st, linewidth=1.3, marker=".", markersize=3)
            ax[1].plot(t, thr, color=c, label=st, linewidth=1.3)
        ax[0].set_ylabel("backlog\n(blocks)")
        ax[1].set_ylabel("throughput\n(blocks/s)")
        ax[0].legend(loc="upper right", fontsize="small")
        for j, shape in enumerate(self.shapes):
            a = ax[2 + j]
            run = [r.running[shape] for r in self.ticks]
            pend = [r.running[shape] + r.pending[shape] for r in self.ticks]
            tgt = [r.target[shape] for r in self.ticks]
            warm = [r.standby[shape] for r in self.ticks]
            if any(warm):
                a.plot(t, warm, drawstyle="steps-post", color=colors[3], label="standby", linewidth=1.0)
            a.plot(t, run, drawstyle="steps-post", color=colors[0], label="running", linewidth=1.5)
            a.plot(t, pend, drawstyle="steps-post", color=colors[1], label="+ pending", linestyle=":")
            a.plot(t, tgt, drawstyle="steps-post", color=colors[2], label="raytide target", linestyle="--")
            a.set_ylabel(f"{shape}\n(nodes)")
            a.set_ylim(-0.2, max([*run, *pend, *tgt, *warm, 1]) + 0.5)
            a.legend(loc="upper right", fontsize="small", ncol=4)
            for d in self.decisions:
                if d.shape == shape:
                    a.annotate(
                        "▲" if d.direction == "up" else "▼",
                        (d.t, d.target),
                        color="green" if d.direction == "up" else "red",
                        ha="center",
                        va="center",
                        fontsize=9,
                    )
        util = ax[-1]
        cpu = [r.cpu_utilization if r.cpu_utilization is not None else nan for r in self.ticks]
        gpu = [r.gpu_utilization if r.gpu_utilization is not None else nan for r in self.ticks]
        util.plot(t, cpu, label="CPU (mean over nodes)", linewidth=1.2)
        if any(not math.isnan(g) for g in gpu):
            util.plot(t, gpu, label="GPU (mean over nodes)", linewidth=1.2)
        util.set_ylabel("utilization\n(%)")
        util.set_ylim(-2, 102)
        util.legend(loc="upper right", fontsize="small")
        util.set_xlabel("seconds since start")
        for d in self.decisions:
            for a in ax:
                a.axvline(d.t, color="green" if d.direction == "up" else "red", alpha=0.25, linewidth=0.8)
        for a in ax:
            a.grid(True, alpha=0.3)
        fig.suptitle("raytide demo — live local Ray cluster (green: scale-up decision, red: scale-down)")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# ------------------------------------------------------------------------------------------ live view


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "?" if v is None else format(v, spec)


def render_view(
    rec: DemoRecorder,
    *,
    status: str,
    pipeline_line: str,
    recent: Sequence[str],
) -> RenderableType:
    """The live view: status line, stages table, nodes table, the last decisions."""
    last = rec.ticks[-1] if rec.ticks else None
    head = Text.assemble(
        ("raytide demo ", "bold"),
        f"— {time.time() - rec.started:5.0f} s — ",
        (status, "cyan"),
        "\npipeline: ",
        (pipeline_line or "starting…", "dim"),
    )
    stages = Table(title="stages", title_justify="left", expand=False)
    for col in ("stage", "backlog (blocks)", "throughput (blocks/s)"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for st in rec.stages:
        b = last.backlog.get(st) if last else None
        thr = last.throughput.get(st) if last else None
        stages.add_row(st, _fmt(b, ".0f"), _fmt(thr, ".2f"))
    nodes = Table(title="nodes per shape", title_justify="left", expand=False)
    for col in ("shape", "running", "pending", "target", "standby", "min–max", "$/h"):
        nodes.add_column(col, justify="left" if col == "shape" else "right")
    for s in rec.config.shapes:
        nodes.add_row(
            s.name,
            str(last.running[s.name]) if last else "-",
            str(last.pending[s.name]) if last else "-",
            str(last.target[s.name]) if last else "-",
            str(last.standby[s.name]) if last else "-",
            f"{s.min}–{s.max}",
            f"{s.price_per_hour:.2f}",
        )
    util = ""
    if last is not None:
        util = (
            f"CPU utilization {_fmt(last.cpu_utilization, '.0f')}%  GPU {_fmt(last.gpu_utilization, '.0f')}%"
        )
    lines = Text("\n".join(recent) if recent else "(no decision yet)")
    return Group(head, stages, nodes, Text(util, style="dim"), Text("decisions:", style="bold"), lines)


def _decision_line(d: DecisionRecord) -> str:
    why = f" [{', '.join(d.stages)}]" if d.stages else ""
    return f"{d.t:5.0f}s tick {d.tick:3d}: {d.shape} {d.current}→{d.target} ({d.direction}){why}: {d.reason}"


# ------------------------------------------------------------------------------------------ the run


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
        "autoscaler.demo.live.pipeline",
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
    cluster: LocalAutoscalingCluster,
    cfg: Config,
    opts: DemoOptions,
    rec: DemoRecorder,
    pipeline: subprocess.Popen[bytes],
    pipeline_log: Path,
    state_dir: Path,
    console: Console,
    deadline: float,
) -> str:
    """The daemon's loop with the live view; returns why it ended."""
    from autoscaler.adapters.ray.actuator import RayActuator
    from autoscaler.adapters.ray.cluster_state import read_cluster_state
    from autoscaler.adapters.ray.placeholders import RayWarmPool
    from autoscaler.adapters.scrape import FileDiscovery, RayExporterSource
    from autoscaler.adapters.state_store import StateStore
    from autoscaler.app.plugins import load_policy
    from autoscaler.daemon import Daemon
    from autoscaler.ports import ClusterState

    # The actuator's Ray driver starts in a worker thread, where Ray warns that it cannot set its SIGTERM
    # handler (the demo's own handler is the one that matters).
    logging.getLogger("ray").setLevel(logging.ERROR)
    address = cluster.address
    actuator = RayActuator.from_shapes(
        address,
        cfg.node_shapes(),
        floor_form=cfg.ray.floor_form,
        use_coordinator=cfg.ray.use_coordinator,
        timeout_s=cfg.ray.timeout_seconds,
    )

    def read_cluster() -> ClusterState:
        return read_cluster_state(address, timeout_s=cfg.ray.timeout_seconds)

    store = StateStore(state_dir / "state.db")
    recent: deque[str] = deque(maxlen=7)
    live_mode = console.is_terminal if opts.live is None else opts.live
    minimum = {s.name: s.min for s in cfg.shapes}
    ended = "time limit reached"
    min_since: float | None = None
    claimer: asyncio.Task[None] | None = None
    daemon: Daemon | None = None
    try:
        async with RayExporterSource(config=cfg.prometheus, discovery=FileDiscovery()) as source:
            pool = (
                RayWarmPool(actuator.ray_driver, {s.name: s.resources for s in cfg.node_shapes()})
                if cfg.warm_pool.enabled
                else None
            )
            daemon = Daemon(
                config=cfg,
                policy=load_policy(cfg.policy.name, cfg.policy.options),
                source=source,
                cluster=read_cluster,
                actuator=actuator,
                store=store,
                interval_seconds=opts.interval_seconds,
                warm_pool=pool,
            )
            await daemon.start()
            if pool is not None:
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
                    standby: dict[str, int] = {}
                    for m in daemon.pool:
                        if m.node_id:
                            standby[m.shape] = standby.get(m.shape, 0) + 1
                    for d in rec.record(
                        tick=outcome.tick,
                        snapshot=outcome.snapshot,
                        plan=outcome.plan,
                        drained=outcome.drained,
                        refused=outcome.refused,
                        errors=outcome.errors,
                        standby=standby,
                    ):
                        line = _decision_line(d)
                        recent.append(line)
                        if not live_mode:
                            console.print(line, highlight=False, soft_wrap=True)
                    for node_id in outcome.drained:
                        line = (
                            f"{outcome.snapshot.time - rec.started:5.0f}s drained idle node {node_id[:12]}…"
                        )
                        recent.append(line)
                        if not live_mode:
                            console.print(line, highlight=False)
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
        if daemon is not None and cfg.warm_pool.enabled:
            rec.warm_pool = _pool_stats(daemon)
        store.close()
    return ended


def _pool_stats(daemon: Daemon) -> dict[str, Any]:
    """The warm pool's claims, misses and claim latency, read back from the daemon's own metrics."""
    reg = daemon.telemetry.registry

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
            ended = asyncio.run(
                _drive(
                    cluster=cluster,
                    cfg=cfg,
                    opts=opts,
                    rec=rec,
                    pipeline=pipeline,
                    pipeline_log=pipeline_log,
                    state_dir=Path(scratch),
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
    _print_summary(console, doc)
    return code


def _print_summary(console: Console, doc: Mapping[str, Any]) -> None:
    table = Table(title=f"raytide demo: {doc['ended_because']}", title_justify="left")
    for col in ("shape", "scale-ups", "scale-downs", "peak nodes", "node-seconds", "cost $"):
        table.add_column(col, justify="left" if col == "shape" else "right")
    for shape, acts in doc["scale_actions"].items():
        table.add_row(
            shape,
            str(acts["up"]),
            str(acts["down"]),
            str(doc["peak_nodes"][shape]),
            f"{doc['node_seconds'][shape]:.0f}",
            f"{doc['cost_estimate']['per_shape_usd'][shape]:.4f}",
        )
    console.print(table)
    console.print(
        f"duration {doc['duration_seconds']:.0f} s, {doc['ticks']} ticks, {len(doc['decisions'])} decisions, "
        f"scaled back down: {'yes' if doc['scaled_back_down'] else 'no'}, errors: {len(doc['errors'])}",
        highlight=False,
    )
    pool = doc.get("warm_pool")
    if pool:
        latency = pool["mean_claim_latency_seconds"]
        console.print(
            f"warm pool: {pool['claims']} standby node(s) claimed"
            + (f" (mean {latency:.2f} s from seeing the need)" if latency is not None else "")
            + f", {pool['misses']} node(s) launched cold",
            highlight=False,
        )
    for name, path in doc["files"].items():
        console.print(f"{name}: {path}", highlight=False)
