from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.core import codec as serialize
from autoscaler.core.codec import (
    decode_plan,
    decode_snapshot,
    encode,
    plan_from_json,
    plan_to_json,
    reading_from_json,
    reading_to_json,
    snapshot_from_json,
    snapshot_to_json,
)
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
    frozen_map,
)
from tests.support.state_store_writer import sample_plan, sample_snapshot

# ------------------------------------------------------------------------------------------ strategies

numbers = st.floats(allow_nan=False)  # infinities included: they must survive as strict JSON
names = st.text(max_size=10)
readings = st.one_of(
    st.builds(Reading, numbers, st.one_of(st.just(""), st.text(max_size=20))),
    st.builds(Reading.unknown, st.text(max_size=30)),
)
float_maps = st.dictionaries(names, numbers, max_size=4).map(frozen_map)
int_maps = st.dictionaries(names, st.integers(), max_size=4).map(MappingProxyType)

plans = st.builds(
    Plan,
    time=numbers,
    policy=names,
    changes=st.lists(
        st.builds(
            ShapeChange,
            shape=names,
            current=st.integers(),
            target=st.integers(),
            reason=st.text(max_size=30),
            proposed=st.none() | st.integers(),
        ),
        max_size=4,
    ).map(tuple),
    placements=st.lists(
        st.builds(Placement, stage=names, shape=names, slots=st.integers(), rate=numbers), max_size=3
    ).map(tuple),
    unmet=st.lists(
        st.builds(UnmetDemand, stage=names, target_rate=numbers, planned_rate=numbers, reason=st.text()),
        max_size=2,
    ).map(tuple),
    demands=st.lists(
        st.builds(StageDemand, stage=names, target_rate=numbers, reason=st.text(), hold=st.booleans()),
        max_size=3,
    ).map(tuple),
    reasons=st.lists(st.text(max_size=30), max_size=3).map(tuple),
    held=st.booleans(),
)

snapshots = st.builds(
    Snapshot,
    time=numbers,
    shapes=st.lists(
        st.builds(
            NodeShape,
            name=names,
            resources=float_maps,
            price_per_hour=numbers,
            min_count=st.integers(),
            max_count=st.integers(),
            launch_seconds=numbers,
        ),
        max_size=3,
    ).map(tuple),
    nodes=st.lists(
        st.builds(
            Node,
            node_id=names,
            shape=names,
            cpu_utilization=readings,
            gpu_utilization=readings,
            idle_seconds=st.none() | numbers,
        ),
        max_size=4,
    ).map(tuple),
    node_counts=int_maps,
    pending_counts=int_maps,
    stages=st.lists(
        st.builds(
            StageObservation,
            name=names,
            backlog=readings,
            throughput=readings,
            arrival_rate=readings,
            slots_busy=readings,
            slots_by_shape=float_maps,
            upstream=st.none() | names,
        ),
        max_size=3,
    ).map(tuple),
    errors=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    pending_demand=st.lists(float_maps, max_size=2).map(tuple),
)


def strict(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------------------ round trips


@given(readings)
def test_reading_round_trips(r: Reading) -> None:
    data = reading_to_json(r)
    assert reading_from_json(json.loads(json.dumps(data, allow_nan=False))) == r


def test_reading_layout_says_known_or_unknown_with_reason() -> None:
    assert reading_to_json(Reading.of(2.5)) == {"value": 2.5}
    assert reading_to_json(Reading.unknown("stale")) == {"value": None, "reason": "stale"}
    assert reading_to_json(Reading(math.inf)) == {"value": "Infinity"}
    back = reading_from_json({"value": "NaN"})
    assert back.value is not None and math.isnan(back.value)


@settings(max_examples=150)
@given(plans)
def test_plan_round_trips(plan: Plan) -> None:
    text = encode(plan)
    strict(text)
    assert decode_plan(text) == plan
    assert plan_from_json(json.loads(json.dumps(plan_to_json(plan), allow_nan=False))) == plan


@settings(max_examples=75)
@given(snapshots)
def test_snapshot_round_trips(snapshot: Snapshot) -> None:
    text = encode(snapshot)
    strict(text)
    back = decode_snapshot(text)
    assert back == snapshot
    assert all(isinstance(m, MappingProxyType) for m in (back.node_counts, back.pending_counts))
    assert all(isinstance(s.resources, MappingProxyType) for s in back.shapes)
    assert all(isinstance(s.slots_by_shape, MappingProxyType) for s in back.stages)
    assert all(isinstance(b, MappingProxyType) for b in back.pending_demand)


def test_encoding_is_deterministic_and_keeps_mapping_order() -> None:
    snap = sample_snapshot(7)
    assert encode(snap) == encode(decode_snapshot(encode(snap)))
    body = snapshot_to_json(dataclasses.replace(snap, node_counts=MappingProxyType({"z": 1, "a": 2})))
    assert list(body["node_counts"]) == ["z", "a"]


def test_integral_floats_in_int_fields_are_written_as_ints() -> None:
    snap = dataclasses.replace(sample_snapshot(1), node_counts=MappingProxyType({"cpu4": 2.0}))  # type: ignore[dict-item]
    assert snapshot_to_json(snap)["node_counts"] == {"cpu4": 2}
    assert decode_snapshot(encode(snap)) == snap


def _fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_dataclass_field_is_written() -> None:
    # Fails when someone adds a field to a core type without teaching serialize about it.
    snap = snapshot_to_json(sample_snapshot(1))
    plan = plan_to_json(sample_plan(1))
    assert set(snap) == _fields(Snapshot)
    assert set(snap["shapes"][0]) == _fields(NodeShape)
    assert set(snap["nodes"][0]) == _fields(Node)
    assert set(snap["stages"][0]) == _fields(StageObservation)
    assert set(reading_to_json(Reading.unknown("x"))) == _fields(Reading)
    assert set(plan) == _fields(Plan)
    assert set(plan["changes"][0]) == _fields(ShapeChange)
    assert set(plan["placements"][0]) == _fields(Placement)
    assert set(plan["unmet"][0]) == _fields(UnmetDemand)
    assert set(plan["demands"][0]) == _fields(StageDemand)


def test_missing_defaulted_fields_take_their_defaults() -> None:
    body = plan_to_json(sample_plan(2))
    for k in ("placements", "unmet", "demands", "reasons", "held"):
        del body[k]
    assert plan_from_json(body) == Plan(
        time=body["time"], policy="throughput", changes=sample_plan(2).changes
    )
    snap = snapshot_to_json(sample_snapshot(2))
    del snap["errors"], snap["pending_demand"], snap["nodes"][0]["cpu_utilization"]
    back = snapshot_from_json(snap)
    assert back.errors == () and back.pending_demand == ()
    assert back.nodes[0].cpu_utilization == Node("", "").cpu_utilization


# ------------------------------------------------------------------------------------------ envelope


def test_envelope_is_versioned() -> None:
    doc = json.loads(encode(sample_plan(1)))
    assert doc["kind"] == "plan" and doc["version"] == serialize.FORMAT_VERSION
    assert set(doc) == {"kind", "version", "data"}


def test_older_versions_are_upgraded(monkeypatch: pytest.MonkeyPatch) -> None:
    old = encode(sample_plan(1))
    monkeypatch.setattr(serialize, "FORMAT_VERSION", 2)

    def upgrade(body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "policy": body["policy"] + "-v2"}

    monkeypatch.setitem(serialize._UPGRADES["plan"], 1, upgrade)
    assert decode_plan(old).policy == "throughput-v2"
    assert json.loads(encode(sample_plan(1)))["version"] == 2


# ------------------------------------------------------------------------------------------ malformed input


def _plan_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(encode(sample_plan(1)))
    return doc


def _snap_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(encode(sample_snapshot(1)))
    return doc


def _edit(make: Callable[[], dict[str, Any]], change: Callable[[dict[str, Any]], None]) -> str:
    doc = copy.deepcopy(make())
    change(doc)
    return json.dumps(doc)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        obj: Any = doc
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return change


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        obj: Any = doc
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]

    return change


PLAN_CASES: list[tuple[str, str]] = [
    ("[]", "plan document: expected an object, got list"),
    ("{not json", "plan document: not JSON"),
    (encode(sample_snapshot(1)), "plan document.kind: expected 'plan', got 'snapshot'"),
    (_edit(_plan_doc, _set(("version",), 99)), "written by a newer raytide"),
    (_edit(_plan_doc, _set(("version",), 0)), "plan document.version: must be >= 1"),
    (_edit(_plan_doc, _set(("version",), "1")), "plan document.version: expected an integer"),
    (_edit(_plan_doc, _delete(("data",))), "plan document.data: missing"),
    (_edit(_plan_doc, _set(("extra",), 1)), "plan document: unknown field(s) 'extra'"),
    (
        _edit(_plan_doc, _set(("data", "changes", 0, "target"), "3")),
        "plan.changes[0].target: expected an integer",
    ),
    (
        _edit(_plan_doc, _set(("data", "changes", 0, "target"), 3.0)),
        "plan.changes[0].target: expected an integer",
    ),
    (_edit(_plan_doc, _set(("data", "held"), 1)), "plan.held: expected true or false"),
    (_edit(_plan_doc, _set(("data", "colour"), "red")), "plan: unknown field(s) 'colour'"),
    (_edit(_plan_doc, _delete(("data", "time"))), "plan.time: missing"),
    (_edit(_plan_doc, _set(("data", "time"), "soon")), "plan.time: expected a number, got 'soon'"),
    (_edit(_plan_doc, _set(("data", "reasons"), "because")), "plan.reasons: expected a list, got str"),
    (_edit(_plan_doc, _set(("data", "placements", 0), [1])), "plan.placements[0]: expected an object"),
    (_edit(_plan_doc, _set(("data", "demands", 0, "hold"), None)), "plan.demands[0].hold: expected true or"),
]

SNAPSHOT_CASES: list[tuple[str, str]] = [
    (
        _edit(_snap_doc, _set(("data", "stages", 2, "backlog", "value"), "x")),
        "snapshot.stages[2].backlog.value: expected a number, got 'x'",
    ),
    (
        _edit(_snap_doc, _set(("data", "stages", 0, "throughput", "reason"), 3)),
        "snapshot.stages[0].throughput.reason: expected a string",
    ),
    (
        _edit(_snap_doc, _delete(("data", "stages", 0, "backlog", "value"))),
        "snapshot.stages[0].backlog.value: missing",
    ),
    (
        _edit(_snap_doc, _set(("data", "node_counts"), [])),
        "snapshot.node_counts: expected an object, got list",
    ),
    (
        _edit(_snap_doc, _set(("data", "node_counts", "cpu4"), 1.5)),
        "snapshot.node_counts['cpu4']: expected an integer",
    ),
    (_edit(_snap_doc, _set(("data", "shapes"), "cpu4")), "snapshot.shapes: expected a list"),
    (
        _edit(_snap_doc, _set(("data", "shapes", 0, "resources", "CPU"), None)),
        "snapshot.shapes[0].resources['CPU']",
    ),
    (_edit(_snap_doc, _set(("data", "nodes", 1, "idle_seconds"), True)), "snapshot.nodes[1].idle_seconds"),
    (
        _edit(_snap_doc, _set(("data", "nodes", 1, "cpu_utilization"), 50)),
        "snapshot.nodes[1].cpu_utilization",
    ),
    (_edit(_snap_doc, _delete(("data", "time"))), "snapshot.time: missing"),
    (_edit(_snap_doc, _set(("data", "errors"), [None])), "snapshot.errors[0]: expected a string"),
]


@pytest.mark.parametrize(("text", "message"), PLAN_CASES)
def test_malformed_plans_are_refused_by_path(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        decode_plan(text)
    assert message in str(e.value)


@pytest.mark.parametrize(("text", "message"), SNAPSHOT_CASES)
def test_malformed_snapshots_are_refused_by_path(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        decode_snapshot(text)
    assert message in str(e.value)


def test_values_breaking_their_types_are_refused_when_encoding() -> None:
    bad_target = dataclasses.replace(sample_plan(1), changes=(ShapeChange("cpu4", 1, "2", "x"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"plan.changes\[0\].target: expected an integer"):
        encode(bad_target)
    half_node = dataclasses.replace(sample_snapshot(1), node_counts=MappingProxyType({"cpu4": 1.5}))  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"snapshot.node_counts\['cpu4'\]"):
        encode(half_node)
    with pytest.raises(TypeError, match="expected a Snapshot or a Plan"):
        encode("plan")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ stored documents

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("name", "decode", "value"),
    [
        ("snapshot_v1.json", decode_snapshot, sample_snapshot(5)),
        ("plan_v1.json", decode_plan, sample_plan(5)),
    ],
)
def test_documents_stored_by_version_1_still_load_and_are_written_the_same(
    name: str, decode: Callable[[str], Snapshot | Plan], value: Snapshot | Plan
) -> None:
    # The state store holds these documents across upgrades; round trips alone would not notice a
    # changed layout, so the bytes a version-1 build wrote are kept here.
    text = (DATA / name).read_text(encoding="utf-8").strip()
    assert decode(text) == value
    assert encode(value) == text
