"""Codec speed and guarantees: the hand-written JSON codec (core/codec.py) against msgspec.

Three arms encode and decode the same 80-node snapshot: ``hand`` (core/codec.py, the baseline), ``msgspec``
(msgspec straight on the core dataclasses: its best speed, with whatever it keeps by itself) and
``msgspec_kept`` (msgspec through mirror Structs and converters, keeping what msgspec can be made to keep).
Each reports the best µs per call, its ratio to ``hand`` (below 1 is faster) and which of the codec's
guarantees it keeps, checked here rather than assumed. Prints one JSON object as its last line. msgspec is
not a raytide dependency: without it installed only ``hand`` is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
import timeit
from collections.abc import Callable, Mapping
from pathlib import Path
from types import GenericAlias, MappingProxyType
from typing import Any, Generic, Literal, TypeVar

_HERE = Path(__file__).resolve().parent
# `python bench/codec.py` puts bench/ first on sys.path, where bench/policies.py would shadow the
# `policies` package; the repository root makes the tests' sample data importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from autoscaler.core import codec  # noqa: E402
from autoscaler.types import Node, NodeShape, Reading, Snapshot, StageObservation  # noqa: E402
from tests.support.state_store_writer import sample_snapshot  # noqa: E402

GOLDEN = _HERE.parent / "tests" / "core" / "data" / "snapshot_v1.json"
GOLDEN_TICK = 5
"""The golden document is ``sample_snapshot(5)`` as version 1 wrote it."""

Encode = Callable[[Snapshot], str]
Decode = Callable[[str], Snapshot]
_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------ guarantees


def _raises(call: Callable[[], object]) -> bool:
    try:
        call()
    except Exception:
        return True
    return False


def _message(call: Callable[[], object]) -> str:
    try:
        call()
    except Exception as e:
        return str(e)
    return ""


def _maps(s: Snapshot) -> list[Mapping[str, Any]]:
    return [
        s.node_counts,
        s.pending_counts,
        *(x.resources for x in s.shapes),
        *(x.slots_by_shape for x in s.stages),
        *s.pending_demand,
    ]


def guarantees(encode: Encode, decode: Decode) -> dict[str, bool]:
    """Which of core/codec.py's promises an arm keeps, each tried on the sample snapshot."""
    sample = sample_snapshot(GOLDEN_TICK)
    golden = GOLDEN.read_text(encoding="utf-8").strip()
    doc = json.loads(golden)

    def edited(path: tuple[Any, ...], value: Any) -> str:
        copy = json.loads(golden)
        obj = copy
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
        return json.dumps(copy)

    node = dict(doc["data"]["nodes"][0], colour="red")
    infinite = dataclasses.replace(
        sample, nodes=(dataclasses.replace(sample.nodes[0], cpu_utilization=Reading(math.inf)),)
    )
    wide = dataclasses.replace(
        sample,
        shapes=(dataclasses.replace(sample.shapes[0], resources=MappingProxyType({"a": 1e16, "b": 1e-05})),),
    )
    stringly = dataclasses.replace(sample, node_counts=MappingProxyType({"cpu4": "2"}))  # type: ignore[dict-item]
    bad_count = edited(("data", "node_counts", "cpu4"), 1.5)
    bad_value = edited(("data", "stages", 2, "backlog", "value"), "x")
    return {
        "v1_bytes": decode(golden) == sample and encode(sample) == golden,
        "v1_number_text": encode(wide) == codec.encode(wide),
        "non_finite_as_strings": '"Infinity"' in encode(infinite)
        and not _raises(lambda: decode(encode(infinite)))
        and decode(encode(infinite)) == infinite,
        "read_only_maps": all(isinstance(m, MappingProxyType) for m in _maps(decode(golden))),
        "strict_types": _raises(lambda: decode(bad_count)) and _raises(lambda: decode(bad_value)),
        "refuses_unknown_fields": _raises(lambda: decode(edited(("data", "nodes", 0), node))),
        "error_names_path": "stages[2].backlog.value" in _message(lambda: decode(bad_value)),
        "error_names_map_key": "cpu4" in _message(lambda: decode(bad_count)),
        "checks_types_on_encode": _raises(lambda: encode(stringly)),
    }


# ------------------------------------------------------------------------------------------ msgspec arms


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope(Generic[_T]):
    kind: str
    version: int
    data: _T


def msgspec_direct(msgspec: Any) -> tuple[Encode, Decode]:
    """msgspec on the dataclasses themselves; read-only maps are turned into dicts to be encoded at all."""

    def as_dict(value: object) -> object:
        if isinstance(value, MappingProxyType):
            return dict(value)
        raise NotImplementedError(type(value).__name__)

    encoder = msgspec.json.Encoder(enc_hook=as_dict)
    decoder = msgspec.json.Decoder(Envelope[Snapshot])

    def encode(s: Snapshot) -> str:
        return str(encoder.encode(Envelope("snapshot", codec.FORMAT_VERSION, s)).decode())

    def decode(text: str) -> Snapshot:
        doc: Envelope[Snapshot] = decoder.decode(text)
        return doc.data

    return encode, decode


_NON_FINITE_IN = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _num_in(v: float | str) -> float:
    return _NON_FINITE_IN[v] if isinstance(v, str) else v


def _num_out(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _defaults(cls: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def msgspec_kept(msgspec: Any) -> tuple[Encode, Decode]:
    """msgspec through mirror Structs (unknown fields refused, an empty reason left out, non-finite numbers
    as strings) and converters to and from the dataclasses (read-only maps, defaults)."""
    num = float | Literal["Infinity", "-Infinity", "NaN"]
    strict = {"forbid_unknown_fields": True}
    shape_d, node_d = _defaults(NodeShape), _defaults(Node)
    reading_m = msgspec.defstruct(
        "ReadingM", [("value", num | None), ("reason", str, "")], omit_defaults=True, **strict
    )
    shape_m = msgspec.defstruct(
        "NodeShapeM",
        [
            ("name", str),
            ("resources", dict[str, num]),
            ("price_per_hour", num),
            ("min_count", int, shape_d["min_count"]),
            ("max_count", int, shape_d["max_count"]),
            ("launch_seconds", num, shape_d["launch_seconds"]),
        ],
        **strict,
    )
    node_m = msgspec.defstruct(
        "NodeM",
        [
            ("node_id", str),
            ("shape", str),
            ("cpu_utilization", reading_m | None, None),
            ("gpu_utilization", reading_m | None, None),
            ("idle_seconds", num | None, None),
        ],
        **strict,
    )
    readings = ("backlog", "throughput", "arrival_rate", "slots_busy")
    stage_m = msgspec.defstruct(
        "StageM",
        [
            ("name", str),
            *((r, reading_m) for r in readings),
            ("slots_by_shape", dict[str, num], {}),
            ("upstream", str | None, None),
        ],
        **strict,
    )
    snapshot_m = msgspec.defstruct(
        "SnapshotM",
        [
            ("time", num),
            ("shapes", GenericAlias(list, (shape_m,))),
            ("nodes", GenericAlias(list, (node_m,))),
            ("node_counts", dict[str, int]),
            ("pending_counts", dict[str, int]),
            ("stages", GenericAlias(list, (stage_m,))),
            ("errors", list[str], []),
            ("pending_demand", list[dict[str, num]], []),
        ],
        **strict,
    )
    envelope_m = msgspec.defstruct(
        "EnvelopeM", [("kind", str), ("version", int), ("data", msgspec.Raw)], **strict
    )
    envelope_out = msgspec.defstruct("EnvelopeOut", [("kind", str), ("version", int), ("data", snapshot_m)])

    def r_in(r: Any) -> Reading:
        return Reading(None if r.value is None else _num_in(r.value), r.reason)

    def r_out(r: Reading) -> Any:
        return reading_m(None if r.value is None else _num_out(r.value), r.reason)

    def fmap_in(m: dict[str, float | str]) -> Mapping[str, float]:
        return MappingProxyType({k: _num_in(v) for k, v in m.items()})

    def fmap_out(m: Mapping[str, float]) -> dict[str, float | str]:
        return {k: _num_out(v) for k, v in m.items()}

    def snapshot_in(s: Any) -> Snapshot:
        return Snapshot(
            time=_num_in(s.time),
            shapes=tuple(
                NodeShape(
                    x.name,
                    fmap_in(x.resources),
                    _num_in(x.price_per_hour),
                    x.min_count,
                    x.max_count,
                    _num_in(x.launch_seconds),
                )
                for x in s.shapes
            ),
            nodes=tuple(
                Node(
                    x.node_id,
                    x.shape,
                    node_d["cpu_utilization"] if x.cpu_utilization is None else r_in(x.cpu_utilization),
                    node_d["gpu_utilization"] if x.gpu_utilization is None else r_in(x.gpu_utilization),
                    None if x.idle_seconds is None else _num_in(x.idle_seconds),
                )
                for x in s.nodes
            ),
            node_counts=MappingProxyType(s.node_counts),
            pending_counts=MappingProxyType(s.pending_counts),
            stages=tuple(
                StageObservation(
                    x.name,
                    r_in(x.backlog),
                    r_in(x.throughput),
                    r_in(x.arrival_rate),
                    r_in(x.slots_busy),
                    fmap_in(x.slots_by_shape),
                    x.upstream,
                )
                for x in s.stages
            ),
            errors=tuple(s.errors),
            pending_demand=tuple(fmap_in(b) for b in s.pending_demand),
        )

    def snapshot_out(s: Snapshot) -> Any:
        return snapshot_m(
            _num_out(s.time),
            [
                shape_m(
                    x.name,
                    fmap_out(x.resources),
                    _num_out(x.price_per_hour),
                    x.min_count,
                    x.max_count,
                    _num_out(x.launch_seconds),
                )
                for x in s.shapes
            ],
            [
                node_m(
                    x.node_id,
                    x.shape,
                    r_out(x.cpu_utilization),
                    r_out(x.gpu_utilization),
                    None if x.idle_seconds is None else _num_out(x.idle_seconds),
                )
                for x in s.nodes
            ],
            dict(s.node_counts),
            dict(s.pending_counts),
            [
                stage_m(
                    x.name,
                    r_out(x.backlog),
                    r_out(x.throughput),
                    r_out(x.arrival_rate),
                    r_out(x.slots_busy),
                    fmap_out(x.slots_by_shape),
                    x.upstream,
                )
                for x in s.stages
            ],
            list(s.errors),
            [fmap_out(b) for b in s.pending_demand],
        )

    encoder = msgspec.json.Encoder()
    envelope_decoder = msgspec.json.Decoder(envelope_m)
    snapshot_decoder = msgspec.json.Decoder(snapshot_m)

    def encode(s: Snapshot) -> str:
        return str(encoder.encode(envelope_out("snapshot", codec.FORMAT_VERSION, snapshot_out(s))).decode())

    def decode(text: str) -> Snapshot:
        doc = envelope_decoder.decode(text)
        if doc.kind != "snapshot" or doc.version != codec.FORMAT_VERSION:
            raise ValueError(f"not a version-{codec.FORMAT_VERSION} snapshot document")
        return snapshot_in(snapshot_decoder.decode(doc.data))

    return encode, decode


# ------------------------------------------------------------------------------------------ timing


def measure(arms: Mapping[str, tuple[Encode, Decode]], number: int, repeat: int) -> dict[str, dict[str, Any]]:
    """Best µs per encode and per decode for each arm; the arms take turns, so a busy spell on a shared
    machine does not land on one arm only."""
    snapshot = sample_snapshot(GOLDEN_TICK)
    texts = {name: encode(snapshot) for name, (encode, _) in arms.items()}
    best: dict[str, dict[str, float]] = {name: {"encode": math.inf, "decode": math.inf} for name in arms}
    for _ in range(repeat):
        for name, (encode, decode) in arms.items():
            text = texts[name]
            took = timeit.timeit(lambda: encode(snapshot), number=number)  # noqa: B023
            best[name]["encode"] = min(best[name]["encode"], took / number * 1e6)
            took = timeit.timeit(lambda: decode(text), number=number)  # noqa: B023
            best[name]["decode"] = min(best[name]["decode"], took / number * 1e6)
    out: dict[str, dict[str, Any]] = {}
    for name, (encode, decode) in arms.items():
        out[name] = {
            "encode_us": round(best[name]["encode"], 1),
            "decode_us": round(best[name]["decode"], 1),
            "keeps": guarantees(encode, decode),
        }
        if name != "hand":
            out[name]["encode_ratio"] = round(best[name]["encode"] / best["hand"]["encode"], 3)
            out[name]["decode_ratio"] = round(best[name]["decode"] / best["hand"]["decode"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--number", type=int, default=200, help="calls per timing")
    ap.add_argument("--repeat", type=int, default=7, help="timings per arm; the best is kept")
    args = ap.parse_args()

    arms: dict[str, tuple[Encode, Decode]] = {"hand": (codec.encode, codec.decode_snapshot)}
    result: dict[str, Any] = {"bench": "codec", "nodes": len(sample_snapshot(GOLDEN_TICK).nodes)}
    try:
        # Loaded by name: msgspec is not a raytide dependency, and the type checker must not require it.
        msgspec = importlib.import_module("msgspec")
    except ImportError:
        result["msgspec_version"] = None
        print("msgspec is not installed: measuring the hand-written codec only", file=sys.stderr)
    else:
        result["msgspec_version"] = msgspec.__version__
        arms["msgspec"] = msgspec_direct(msgspec)
        arms["msgspec_kept"] = msgspec_kept(msgspec)
    result["document_bytes"] = len(codec.encode(sample_snapshot(GOLDEN_TICK)))
    result.update(measure(arms, args.number, args.repeat))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
