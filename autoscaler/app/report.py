"""A recommendation as a stable JSON document and as rich tables — two views of the same data.

The JSON layout is documented in docs/recommend-json.md; ``schema`` changes whenever a field's meaning does.
The tables hold only ``Text`` cells: stage names and reasons come from the cluster's labels, and are shown as
they are (no markup) without control characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from autoscaler.core.decide import Decision
from autoscaler.core.redact import printable
from autoscaler.core.warm_pool import PoolTargets
from autoscaler.types import Reading, Snapshot

SCHEMA = "raytide.recommendation/v1"


def _num(r: Reading) -> float | None:
    return r.value


def _is_bottleneck(snapshot: Snapshot, decision: Decision, stage: str, headroom: float) -> bool:
    st = snapshot.stage(stage)
    demand = next((d for d in decision.plan.demands if d.stage == stage), None)
    if demand is None or demand.hold or not st.throughput.known or not st.backlog.known:
        return False
    return st.backlog.get() > 0 and demand.target_rate > st.throughput.get() * (1.0 + headroom) + 1e-9


def recommendation_json(
    snapshot: Snapshot, decision: Decision, *, headroom: float, warm_pool: PoolTargets | None = None
) -> dict[str, Any]:
    plan = decision.plan
    prices = {s.name: s.price_per_hour for s in snapshot.shapes}
    demands = {d.stage: d for d in plan.demands}
    stages = []
    for st in snapshot.stages:
        d = demands.get(st.name)
        rates = {
            shape: {
                "per_slot_rate": e.per_slot_rate,
                "efficiency": e.efficiency,
                "rel_uncertainty": e.rel_uncertainty,
                "confidence": e.confidence,
                "samples": e.samples,
                "source": e.source,
            }
            for shape, e in sorted(decision.estimates.get(st.name, {}).items())
        }
        stages.append(
            {
                "name": st.name,
                "backlog": _num(st.backlog),
                "throughput": _num(st.throughput),
                "arrival_rate": _num(st.arrival_rate),
                "slots_busy": _num(st.slots_busy),
                "unknown": list(st.unknown_reasons()),
                "bottleneck": _is_bottleneck(snapshot, decision, st.name, headroom),
                "target_rate": None if d is None or d.hold else d.target_rate,
                "hold": bool(d and d.hold),
                "reason": d.reason if d else "",
                "rates": rates,
            }
        )
    shapes = [
        {
            "shape": c.shape,
            "current": c.current,
            "proposed": c.proposed,
            "target": c.target,
            "change": c.delta,
            "direction": c.direction,
            "price_per_hour": prices[c.shape],
            "cost_per_hour_now": prices[c.shape] * c.current,
            "cost_per_hour_target": prices[c.shape] * c.target,
            "reason": c.reason,
        }
        for c in plan.changes
    ]
    return {
        "schema": SCHEMA,
        "time": snapshot.time,
        "policy": plan.policy,
        "held": plan.held,
        "reasons": list(plan.reasons),
        "errors": list(snapshot.errors),
        "stages": stages,
        "plan": shapes,
        "placements": [
            {"stage": p.stage, "shape": p.shape, "slots": p.slots, "rate": p.rate} for p in plan.placements
        ],
        "unmet": [
            {
                "stage": u.stage,
                "target_rate": u.target_rate,
                "planned_rate": u.planned_rate,
                "reason": u.reason,
            }
            for u in plan.unmet
        ],
        "cost_per_hour": {
            "now": sum(s["cost_per_hour_now"] for s in shapes),
            "target": sum(s["cost_per_hour_target"] for s in shapes),
        },
        "warm_pool": None
        if warm_pool is None
        else {
            "standby": dict(sorted(warm_pool.counts.items())),
            "reasons": dict(sorted(warm_pool.reasons.items())),
            "cost_per_hour": sum(prices.get(k, 0.0) * v for k, v in warm_pool.counts.items()),
        },
    }


def _fmt(v: Any, digits: int = 3) -> Text:
    if v is None:
        return Text("unknown")
    if isinstance(v, float):
        return Text(f"{v:.{digits}g}")
    return _text(str(v))


def _text(value: str, style: str = "") -> Text:
    """Outside text as one line of a table or list: never markup, no control characters."""
    return Text(printable(value, newlines=False), style=style)


def render_recommendation(doc: Mapping[str, Any], console: Console) -> None:
    shape_names = [p["shape"] for p in doc["plan"]]
    st_table = Table(title="Stages", title_justify="left", expand=False)
    for col in ("stage", "backlog", "throughput/s", "arrival/s", "busy slots", "needs/s"):
        st_table.add_column(col, justify="right" if col != "stage" else "left")
    for name in shape_names:
        st_table.add_column(_text(f"rate/slot on {name}"), justify="right")
    for st in doc["stages"]:
        label = _text(st["name"])
        if st["bottleneck"]:
            label.append(" ◀ bottleneck", style="bold red")
        if st["hold"]:
            label.append(" (hold)", style="yellow")
        row: list[Text] = [
            label,
            _fmt(st["backlog"]),
            _fmt(st["throughput"]),
            _fmt(st["arrival_rate"]),
            _fmt(st["slots_busy"]),
            _fmt(st["target_rate"]),
        ]
        for name in shape_names:
            r = st["rates"].get(name)
            row.append(
                Text("—")
                if r is None
                else _text(f"{r['per_slot_rate']:.3g} ({r['confidence']:.0%}, {r['source']})")
            )
        st_table.add_row(*row)

    plan_table = Table(title="Plan", title_justify="left")
    for col in ("shape", "now", "target", "change", "$/h now", "$/h target", "why"):
        plan_table.add_column(col, justify="left" if col in ("shape", "why") else "right")
    for p in doc["plan"]:
        change = p["change"]
        style = "green" if change > 0 else "red" if change < 0 else ""
        plan_table.add_row(
            _text(p["shape"]),
            Text(str(p["current"])),
            Text(str(p["target"])),
            Text(f"{change:+d}", style=style),
            Text(f"{p['cost_per_hour_now']:.2f}"),
            Text(f"{p['cost_per_hour_target']:.2f}"),
            _text(p["reason"]),
        )
    cost = doc["cost_per_hour"]
    plan_table.add_section()
    plan_table.add_row(
        Text("total"),
        Text(),
        Text(),
        Text(),
        Text(f"{cost['now']:.2f}"),
        Text(f"{cost['target']:.2f}"),
        Text(),
    )

    parts: list[Any] = [st_table, plan_table]
    for u in doc["unmet"]:
        parts.append(
            _text(
                f"unmet: {u['stage']} needs {u['target_rate']:.3g}/s, plan gives {u['planned_rate']:.3g}/s — "
                f"{u['reason']}",
                style="yellow",
            )
        )
    pool = doc.get("warm_pool")
    if pool:
        standby = ", ".join(f"{k} {v}" for k, v in pool["standby"].items() if v) or "none"
        parts.append(_text(f"warm pool: {standby} standby ({pool['cost_per_hour']:.2f} $/h)"))
        for shape, why in pool["reasons"].items():
            parts.append(_text(f"  {shape}: {why}", style="dim"))
    if doc["held"]:
        parts.append(_text("holding the cluster as it is: " + "; ".join(doc["reasons"]), style="yellow"))
    console.print(Group(*parts))
