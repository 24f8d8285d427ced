"""JSON (de)serialisation of the core value types :class:`Snapshot` and :class:`Plan`, as versioned documents.

Used by the state store (the decision log keeps every tick's inputs and outcome). Round trips are exact, maps
come back read-only; non-finite numbers are written as ``"Infinity"``, ``"-Infinity"`` and ``"NaN"``, so the
output is strict JSON; :func:`encode` wraps a body in ``{"kind", "version", "data"}`` and the decoders upgrade
older versions; malformed input (unknown keys included) raises ``ValueError`` naming the path of the first
bad field, and a missing key whose field has a default takes it. Pure: no I/O beyond ``json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from autoscaler.types import (
    Node,
    NodeShape,
    Placement,
    Plan,
    Reading,
    ShapeChange,
    Snapshot,
    StageDemand,
    StageObservation,
    UnmetDemand,
)

__all__ = [
    "FORMAT_VERSION",
    "Kind",
    "decode_plan",
    "decode_snapshot",
    "encode",
    "envelope",
    "open_envelope",
    "plan_from_json",
    "plan_to_json",
    "reading_from_json",
    "reading_to_json",
    "snapshot_from_json",
    "snapshot_to_json",
]

FORMAT_VERSION = 1
"""Bumped when a field changes meaning or a required field is added; add an upgrade to ``_UPGRADES``."""

Kind = Literal["snapshot", "plan"]

_UPGRADES: dict[Kind, dict[int, Callable[[Any], Any]]] = {"snapshot": {}, "plan": {}}
"""kind → version v → function turning a version-v body into a version-(v+1) body."""

_NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}
_MISSING: Any = object()
_T = TypeVar("_T")


# Hand-written rather than msgspec: on the core dataclasses msgspec keeps neither the non-finite strings, the
# read-only maps, the version-1 bytes nor the refusal of unknown keys, and even through mirror types it names
# no map key in its errors, checks nothing when encoding and writes some numbers differently from version 1.
# bench/codec.py checks each of these and measures both.

# ------------------------------------------------------------------------------------------ envelope


def envelope(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "version": FORMAT_VERSION, "data": dict(body)}


def open_envelope(doc: Any, kind: Kind) -> Any:
    """The body of a versioned document of ``kind``, upgraded to ``FORMAT_VERSION``."""
    where = f"{kind} document"
    obj = _object(doc, where, {"kind", "version", "data"})
    got = _field(obj, "kind", where)
    if got != kind:
        raise ValueError(f"{where}.kind: expected {kind!r}, got {got!r}")
    version = _int(_field(obj, "version", where), f"{where}.version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where}.version: {version} was written by a newer raytide (this build reads up to "
            f"{FORMAT_VERSION})"
        )
    if version < 1:
        raise ValueError(f"{where}.version: must be >= 1, got {version}")
    body = _field(obj, "data", where)
    for v in range(version, FORMAT_VERSION):
        body = _UPGRADES[kind][v](body)
    return body


def encode(value: Snapshot | Plan) -> str:
    """A compact, strict-JSON, versioned document."""
    if isinstance(value, Snapshot):
        doc = envelope("snapshot", snapshot_to_json(value))
    elif isinstance(value, Plan):
        doc = envelope("plan", plan_to_json(value))
    else:
        raise TypeError(f"cannot encode {type(value).__name__}: expected a Snapshot or a Plan")
    return json.dumps(doc, allow_nan=False, separators=(",", ":"))


def decode_snapshot(text: str | bytes) -> Snapshot:
    return snapshot_from_json(open_envelope(_parse(text, "snapshot"), "snapshot"))


def decode_plan(text: str | bytes) -> Plan:
    return plan_from_json(open_envelope(_parse(text, "plan"), "plan"))


def _parse(text: str | bytes, kind: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{kind} document: not JSON: {e}") from None


# ------------------------------------------------------------------------------------------ reading


def reading_to_json(r: Reading, where: str = "reading") -> dict[str, Any]:
    """``{"value": 1.5}`` when known, ``{"value": null, "reason": "..."}`` when unknown."""
    out: dict[str, Any] = {"value": None if r.value is None else _num_out(r.value, f"{where}.value")}
    if r.reason:
        out["reason"] = _str(r.reason, f"{where}.reason")
    return out


def reading_from_json(data: Any, where: str = "reading") -> Reading:
    obj = _object(data, where, {"value", "reason"})
    raw = _field(obj, "value", where)
    value = None if raw is None else _float(raw, f"{where}.value")
    reason = _str(obj.get("reason", ""), f"{where}.reason")
    return Reading(value, reason)


# ------------------------------------------------------------------------------------------ snapshot


def snapshot_to_json(s: Snapshot) -> dict[str, Any]:
    w = "snapshot"
    return {
        "time": _num_out(s.time, f"{w}.time"),
        "shapes": [_shape_out(x, f"{w}.shapes[{i}]") for i, x in enumerate(s.shapes)],
        "nodes": [_node_out(x, f"{w}.nodes[{i}]") for i, x in enumerate(s.nodes)],
        "node_counts": _int_map_out(s.node_counts, f"{w}.node_counts"),
        "pending_counts": _int_map_out(s.pending_counts, f"{w}.pending_counts"),
        "stages": [_stage_out(x, f"{w}.stages[{i}]") for i, x in enumerate(s.stages)],
        "errors": [_str(e, f"{w}.errors[{i}]") for i, e in enumerate(s.errors)],
        "pending_demand": [
            _float_map_out(b, f"{w}.pending_demand[{i}]") for i, b in enumerate(s.pending_demand)
        ],
    }


def snapshot_from_json(data: Any) -> Snapshot:
    w = "snapshot"
    obj = _object(
        data,
        w,
        {"time", "shapes", "nodes", "node_counts", "pending_counts", "stages", "errors", "pending_demand"},
    )
    return Snapshot(
        time=_float(_field(obj, "time", w), f"{w}.time"),
        shapes=_list(_field(obj, "shapes", w), f"{w}.shapes", _shape_in),
        nodes=_list(_field(obj, "nodes", w), f"{w}.nodes", _node_in),
        node_counts=_int_map_in(_field(obj, "node_counts", w), f"{w}.node_counts"),
        pending_counts=_int_map_in(_field(obj, "pending_counts", w), f"{w}.pending_counts"),
        stages=_list(_field(obj, "stages", w), f"{w}.stages", _stage_in),
        errors=_list(obj.get("errors", []), f"{w}.errors", _str),
        pending_demand=_list(obj.get("pending_demand", []), f"{w}.pending_demand", _float_map_in),
    )


def _shape_out(s: NodeShape, w: str) -> dict[str, Any]:
    return {
        "name": _str(s.name, f"{w}.name"),
        "resources": _float_map_out(s.resources, f"{w}.resources"),
        "price_per_hour": _num_out(s.price_per_hour, f"{w}.price_per_hour"),
        "min_count": _int_out(s.min_count, f"{w}.min_count"),
        "max_count": _int_out(s.max_count, f"{w}.max_count"),
        "launch_seconds": _num_out(s.launch_seconds, f"{w}.launch_seconds"),
    }


def _shape_in(data: Any, w: str) -> NodeShape:
    obj = _object(
        data, w, {"name", "resources", "price_per_hour", "min_count", "max_count", "launch_seconds"}
    )
    d = NodeShape("", {}, 0.0)
    return NodeShape(
        name=_str(_field(obj, "name", w), f"{w}.name"),
        resources=_float_map_in(_field(obj, "resources", w), f"{w}.resources"),
        price_per_hour=_float(_field(obj, "price_per_hour", w), f"{w}.price_per_hour"),
        min_count=_int(obj.get("min_count", d.min_count), f"{w}.min_count"),
        max_count=_int(obj.get("max_count", d.max_count), f"{w}.max_count"),
        launch_seconds=_float(obj.get("launch_seconds", d.launch_seconds), f"{w}.launch_seconds"),
    )


def _node_out(n: Node, w: str) -> dict[str, Any]:
    return {
        "node_id": _str(n.node_id, f"{w}.node_id"),
        "shape": _str(n.shape, f"{w}.shape"),
        "cpu_utilization": reading_to_json(n.cpu_utilization, f"{w}.cpu_utilization"),
        "gpu_utilization": reading_to_json(n.gpu_utilization, f"{w}.gpu_utilization"),
        "idle_seconds": None if n.idle_seconds is None else _num_out(n.idle_seconds, f"{w}.idle_seconds"),
    }


def _node_in(data: Any, w: str) -> Node:
    obj = _object(data, w, {"node_id", "shape", "cpu_utilization", "gpu_utilization", "idle_seconds"})
    d = Node("", "")
    cpu = obj.get("cpu_utilization", _MISSING)
    gpu = obj.get("gpu_utilization", _MISSING)
    idle = obj.get("idle_seconds")
    return Node(
        node_id=_str(_field(obj, "node_id", w), f"{w}.node_id"),
        shape=_str(_field(obj, "shape", w), f"{w}.shape"),
        cpu_utilization=d.cpu_utilization
        if cpu is _MISSING
        else reading_from_json(cpu, f"{w}.cpu_utilization"),
        gpu_utilization=d.gpu_utilization
        if gpu is _MISSING
        else reading_from_json(gpu, f"{w}.gpu_utilization"),
        idle_seconds=None if idle is None else _float(idle, f"{w}.idle_seconds"),
    )


_READINGS = ("backlog", "throughput", "arrival_rate", "slots_busy")


def _stage_out(s: StageObservation, w: str) -> dict[str, Any]:
    return {
        "name": _str(s.name, f"{w}.name"),
        "backlog": reading_to_json(s.backlog, f"{w}.backlog"),
        "throughput": reading_to_json(s.throughput, f"{w}.throughput"),
        "arrival_rate": reading_to_json(s.arrival_rate, f"{w}.arrival_rate"),
        "slots_busy": reading_to_json(s.slots_busy, f"{w}.slots_busy"),
        "slots_by_shape": _float_map_out(s.slots_by_shape, f"{w}.slots_by_shape"),
        "upstream": None if s.upstream is None else _str(s.upstream, f"{w}.upstream"),
    }


def _stage_in(data: Any, w: str) -> StageObservation:
    obj = _object(data, w, {"name", *_READINGS, "slots_by_shape", "upstream"})
    r = {k: reading_from_json(_field(obj, k, w), f"{w}.{k}") for k in _READINGS}
    upstream = obj.get("upstream")
    return StageObservation(
        name=_str(_field(obj, "name", w), f"{w}.name"),
        backlog=r["backlog"],
        throughput=r["throughput"],
        arrival_rate=r["arrival_rate"],
        slots_busy=r["slots_busy"],
        slots_by_shape=_float_map_in(obj.get("slots_by_shape", {}), f"{w}.slots_by_shape"),
        upstream=None if upstream is None else _str(upstream, f"{w}.upstream"),
    )


# ------------------------------------------------------------------------------------------ plan


def plan_to_json(p: Plan) -> dict[str, Any]:
    w = "plan"
    return {
        "time": _num_out(p.time, f"{w}.time"),
        "policy": _str(p.policy, f"{w}.policy"),
        "changes": [_change_out(c, f"{w}.changes[{i}]") for i, c in enumerate(p.changes)],
        "placements": [_placement_out(x, f"{w}.placements[{i}]") for i, x in enumerate(p.placements)],
        "unmet": [_unmet_out(u, f"{w}.unmet[{i}]") for i, u in enumerate(p.unmet)],
        "demands": [_demand_out(d, f"{w}.demands[{i}]") for i, d in enumerate(p.demands)],
        "reasons": [_str(r, f"{w}.reasons[{i}]") for i, r in enumerate(p.reasons)],
        "held": _bool(p.held, f"{w}.held"),
    }


def plan_from_json(data: Any) -> Plan:
    w = "plan"
    obj = _object(data, w, {"time", "policy", "changes", "placements", "unmet", "demands", "reasons", "held"})
    return Plan(
        time=_float(_field(obj, "time", w), f"{w}.time"),
        policy=_str(_field(obj, "policy", w), f"{w}.policy"),
        changes=_list(_field(obj, "changes", w), f"{w}.changes", _change_in),
        placements=_list(obj.get("placements", []), f"{w}.placements", _placement_in),
        unmet=_list(obj.get("unmet", []), f"{w}.unmet", _unmet_in),
        demands=_list(obj.get("demands", []), f"{w}.demands", _demand_in),
        reasons=_list(obj.get("reasons", []), f"{w}.reasons", _str),
        held=_bool(obj.get("held", False), f"{w}.held"),
    )


def _change_out(c: ShapeChange, w: str) -> dict[str, Any]:
    return {
        "shape": _str(c.shape, f"{w}.shape"),
        "current": _int_out(c.current, f"{w}.current"),
        "target": _int_out(c.target, f"{w}.target"),
        "reason": _str(c.reason, f"{w}.reason"),
        "proposed": None if c.proposed is None else _int_out(c.proposed, f"{w}.proposed"),
    }


def _change_in(data: Any, w: str) -> ShapeChange:
    obj = _object(data, w, {"shape", "current", "target", "reason", "proposed"})
    proposed = obj.get("proposed")
    return ShapeChange(
        shape=_str(_field(obj, "shape", w), f"{w}.shape"),
        current=_int(_field(obj, "current", w), f"{w}.current"),
        target=_int(_field(obj, "target", w), f"{w}.target"),
        reason=_str(_field(obj, "reason", w), f"{w}.reason"),
        proposed=None if proposed is None else _int(proposed, f"{w}.proposed"),
    )


def _placement_out(p: Placement, w: str) -> dict[str, Any]:
    return {
        "stage": _str(p.stage, f"{w}.stage"),
        "shape": _str(p.shape, f"{w}.shape"),
        "slots": _int_out(p.slots, f"{w}.slots"),
        "rate": _num_out(p.rate, f"{w}.rate"),
    }


def _placement_in(data: Any, w: str) -> Placement:
    obj = _object(data, w, {"stage", "shape", "slots", "rate"})
    return Placement(
        stage=_str(_field(obj, "stage", w), f"{w}.stage"),
        shape=_str(_field(obj, "shape", w), f"{w}.shape"),
        slots=_int(_field(obj, "slots", w), f"{w}.slots"),
        rate=_float(_field(obj, "rate", w), f"{w}.rate"),
    )


def _unmet_out(u: UnmetDemand, w: str) -> dict[str, Any]:
    return {
        "stage": _str(u.stage, f"{w}.stage"),
        "target_rate": _num_out(u.target_rate, f"{w}.target_rate"),
        "planned_rate": _num_out(u.planned_rate, f"{w}.planned_rate"),
        "reason": _str(u.reason, f"{w}.reason"),
    }


def _unmet_in(data: Any, w: str) -> UnmetDemand:
    obj = _object(data, w, {"stage", "target_rate", "planned_rate", "reason"})
    return UnmetDemand(
        stage=_str(_field(obj, "stage", w), f"{w}.stage"),
        target_rate=_float(_field(obj, "target_rate", w), f"{w}.target_rate"),
        planned_rate=_float(_field(obj, "planned_rate", w), f"{w}.planned_rate"),
        reason=_str(_field(obj, "reason", w), f"{w}.reason"),
    )


def _demand_out(d: StageDemand, w: str) -> dict[str, Any]:
    return {
        "stage": _str(d.stage, f"{w}.stage"),
        "target_rate": _num_out(d.target_rate, f"{w}.target_rate"),
        "reason": _str(d.reason, f"{w}.reason"),
        "hold": _bool(d.hold, f"{w}.hold"),
    }


def _demand_in(data: Any, w: str) -> StageDemand:
    obj = _object(data, w, {"stage", "target_rate", "reason", "hold"})
    return StageDemand(
        stage=_str(_field(obj, "stage", w), f"{w}.stage"),
        target_rate=_float(_field(obj, "target_rate", w), f"{w}.target_rate"),
        reason=_str(_field(obj, "reason", w), f"{w}.reason"),
        hold=_bool(obj.get("hold", False), f"{w}.hold"),
    )


# ------------------------------------------------------------------------------------------ checks
# The encoders check too: a value that breaks its declared type (mypy cannot see every caller) would
# otherwise be written as something the decoder later refuses — found at restart instead of at once.


def _num_out(v: Any, where: str) -> float | str:
    x = _float(v, where)
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _int_out(v: Any, where: str) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return _int(v, where)


def _float(v: Any, where: str) -> float:
    if isinstance(v, str) and v in _NON_FINITE:
        return _NON_FINITE[v]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{where}: expected an integer, got {v!r}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{where}: expected true or false, got {v!r}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{where}: expected a string, got {v!r}")
    return v


def _object(v: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(v).__name__}")
    unknown = sorted(str(k) for k in v if k not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    return v


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"{where}.{key}: missing")
    return obj[key]


def _list(v: Any, where: str, item: Callable[[Any, str], _T]) -> tuple[_T, ...]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence):
        raise ValueError(f"{where}: expected a list, got {type(v).__name__}")
    return tuple(item(x, f"{where}[{i}]") for i, x in enumerate(v))


def _keys(m: Any, where: str) -> Mapping[Any, Any]:
    if not isinstance(m, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(m).__name__}")
    for k in m:
        if not isinstance(k, str):
            raise ValueError(f"{where}: keys must be strings, got {k!r}")
    return m


def _float_map_out(m: Mapping[str, float], where: str) -> dict[str, float | str]:
    return {k: _num_out(v, f"{where}[{k!r}]") for k, v in _keys(m, where).items()}


def _int_map_out(m: Mapping[str, int], where: str) -> dict[str, int]:
    return {k: _int_out(v, f"{where}[{k!r}]") for k, v in _keys(m, where).items()}


def _float_map_in(v: Any, where: str) -> Mapping[str, float]:
    return MappingProxyType({k: _float(x, f"{where}[{k!r}]") for k, x in _keys(v, where).items()})


def _int_map_in(v: Any, where: str) -> Mapping[str, int]:
    return MappingProxyType({k: _int(x, f"{where}[{k!r}]") for k, x in _keys(v, where).items()})
