"""The live demo's recorder, report and view, without a cluster: ticks in, decisions, summary.json, the
timeline PNG and the rendered view out."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from autoscaler.demo.live import decision_line, print_summary, render_view
from autoscaler.demo.options import DemoOptions, demo_config
from autoscaler.demo.recorder import DemoRecorder
from autoscaler.testing import make_nodes, make_snapshot, make_stage
from autoscaler.types import Placement, Plan, ShapeChange

OPTS = DemoOptions.quick(out_dir=Path("unused"))
CFG = demo_config(OPTS)
T0 = 1_000.0


def _tick(
    rec: DemoRecorder, tick: int, *, gpu: int, target: int, backlog: float, held: bool = False
) -> list[str]:
    snap = make_snapshot(
        time=T0 + 2.0 * tick,
        config=CFG,
        nodes=make_nodes(shape="gpu1", count=gpu, gpu_utilization=90.0),
        stages=[make_stage(name="infer", backlog=backlog, throughput=1.0)],
    )
    plan = Plan(
        time=snap.time,
        policy="throughput",
        changes=(
            ShapeChange(shape="cpu4", current=0, target=0, reason="enough"),
            ShapeChange(shape="gpu1", current=gpu, target=target, reason=f"infer wants {target}"),
        ),
        placements=(Placement(stage="infer", shape="gpu1", slots=target, rate=float(target)),),
        held=held,
    )
    made = rec.record(tick=tick, snapshot=snap, plan=plan, drained=["n" * 56] if target < gpu else ())
    return [decision_line(d) for d in made]


def _recorded() -> DemoRecorder:
    rec = DemoRecorder(config=CFG, started=T0)
    assert _tick(rec, 1, gpu=0, target=2, backlog=20) == [
        "    2s tick   1: gpu1 0→2 (up) [infer]: infer wants 2"
    ]
    assert _tick(rec, 2, gpu=1, target=2, backlog=15) == []  # the same target while its nodes launch
    assert _tick(rec, 3, gpu=2, target=2, backlog=4, held=True) == []
    assert _tick(rec, 4, gpu=2, target=0, backlog=0) == ["    8s tick   4: gpu1 2→0 (down): infer wants 0"]
    _tick(rec, 5, gpu=0, target=0, backlog=0)
    return rec


def test_the_demo_config_has_the_fake_clusters_shapes_and_one_standby_gpu_node() -> None:
    assert [s.name for s in CFG.shapes] == ["cpu4", "gpu1"]
    assert [s.name for s in CFG.stages] == ["decode", "infer"]
    assert CFG.warm_pool.enabled
    assert dict(CFG.warm_pool.min) == {"gpu1": 1}
    assert CFG.daemon.interval_seconds == OPTS.interval_seconds
    assert CFG.daemon.http_port is None


def test_the_summary_counts_decisions_nodes_and_cost() -> None:
    rec = _recorded()
    doc = rec.summary(
        opts=OPTS, ended_because="pipeline done", pipeline_exit=0, pipeline_log=["a", "b"], files={}
    )
    json.dumps(doc)
    assert doc["ticks"] == 5
    assert [(d["shape"], d["direction"], d["target"]) for d in doc["decisions"]] == [
        ("gpu1", "up", 2),
        ("gpu1", "down", 0),
    ]
    assert doc["scale_actions"]["gpu1"] == {"up": 1, "down": 1}
    assert doc["scale_ups_driven_by"]["gpu1"] == {"infer": 1}
    assert doc["peak_nodes"] == {"cpu4": 0, "gpu1": 2}
    assert doc["final_nodes"] == {"cpu4": 0, "gpu1": 0}
    assert doc["scaled_up"] is True and doc["scaled_back_down"] is True
    assert doc["drains"] == {"accepted": 1, "refused": 0}
    assert doc["node_seconds"] == {"cpu4": 0.0, "gpu1": 10.0}  # 1 node × 2 s, then 2 nodes × 4 s
    assert doc["cost_estimate"]["total_usd"] > 0
    assert doc["pipeline"]["completed"] is True


def test_the_timeline_is_a_png(tmp_path: Path) -> None:
    path = _recorded().plot(tmp_path / "timeline.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_view_and_the_summary_render() -> None:
    rec = _recorded()
    out = io.StringIO()
    console = Console(file=out, width=140, color_system=None)
    console.print(
        render_view(rec, status="daemon running", pipeline_line="burst 1 done", recent=["line one"])
    )
    doc = rec.summary(opts=OPTS, ended_because="pipeline done", pipeline_exit=0, pipeline_log=[], files={})
    print_summary(console, doc)
    text = out.getvalue()
    for expected in (
        "daemon running",
        "burst 1 done",
        "infer",
        "gpu1",
        "line one",
        "raytide demo: pipeline done",
    ):
        assert expected in text
