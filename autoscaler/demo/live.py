"""The demo's live view: the status line, per-stage backlog and throughput, nodes per shape and the last
decisions, rendered with rich; and the summary table printed at the end."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from autoscaler.demo.recorder import DemoRecorder, TargetChange

__all__ = ["decision_line", "print_summary", "render_view"]


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


def decision_line(d: TargetChange) -> str:
    """One decision as a line of the view (and of the plain output)."""
    why = f" [{', '.join(d.stages)}]" if d.stages else ""
    return f"{d.t:5.0f}s tick {d.tick:3d}: {d.shape} {d.current}→{d.target} ({d.direction}){why}: {d.reason}"


def print_summary(console: Console, doc: Mapping[str, Any]) -> None:
    """The end of the demo: actions, peak nodes and cost per shape, the warm pool, the files written."""
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
