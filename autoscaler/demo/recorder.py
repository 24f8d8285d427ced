"""What the demo saw, tick by tick, and the report made of it: ``summary.json`` and the ``timeline.png``."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoscaler.core.config import Config
from autoscaler.demo.options import DemoOptions
from autoscaler.types import Plan, Snapshot

__all__ = ["DemoRecorder", "TargetChange", "TickRecord"]


@dataclass(slots=True)
class TickRecord:
    """One tick as the demo saw it: per stage and per shape, ``t`` seconds after the demo started."""

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
class TargetChange:
    """raytide changed a shape's target: one scale decision as the demo saw it (a repeat of the same target
    while its nodes launch is not a new one)."""

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
    decisions: list[TargetChange] = field(default_factory=list)
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
    ) -> list[TargetChange]:
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
        made: list[TargetChange] = []
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
            rec = TargetChange(
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
