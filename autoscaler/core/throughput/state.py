"""The throughput models' state as plain JSON data, and its checked restoration (pairs and field checks)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from autoscaler.core.throughput.estimate import MAX_EFFICIENCY, MIN_EFFICIENCY
from autoscaler.core.throughput.pair import Fit, Pair

JSON_VERSION = 1


def pair_to_json(pair: Pair) -> dict[str, Any]:
    """One pair as :func:`pair_from_json` reads it."""
    fit = None
    if pair.fit is not None:
        fit = {
            "rate": pair.fit.rate,
            "efficiency": pair.fit.efficiency,
            "rel_uncertainty": pair.fit.rel_uncertainty,
            "samples": pair.fit.samples,
            "tick": pair.fit.tick,
        }
    return {
        "stage": pair.stage,
        "shape": pair.shape,
        "samples": [[s, tp] for s, tp in pair.samples],
        "last_time": pair.last_time,
        "dirty": pair.dirty,
        "fit": fit,
    }


def read_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    """``obj[key]`` as an integer (not a bool); ValueError naming ``where.key`` otherwise."""
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{where}.{key}: expected an integer, got {v!r}")
    return v


def read_float(obj: Mapping[str, Any], key: str, where: str) -> float:
    """``obj[key]`` as a finite float; ValueError naming ``where.key`` otherwise."""
    return _finite(obj.get(key), f"{where}.{key}")


def _finite(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def pair_from_json(raw: Any, where: str, window: int, tick: int) -> Pair:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    stage = raw.get("stage")
    shape = raw.get("shape")
    if not isinstance(stage, str):
        raise ValueError(f"{where}.stage: expected a string, got {stage!r}")
    if not isinstance(shape, str):
        raise ValueError(f"{where}.shape: expected a string, got {shape!r}")
    pair = Pair(stage, shape, window)
    samples = raw.get("samples")
    if not isinstance(samples, list):
        raise ValueError(f"{where}.samples: expected a list")
    if len(samples) > window:
        raise ValueError(f"{where}.samples: {len(samples)} samples, more than the window ({window})")
    for j, s in enumerate(samples):
        if not isinstance(s, list) or len(s) != 2:
            raise ValueError(f"{where}.samples[{j}]: expected [slots, throughput], got {s!r}")
        slots = _finite(s[0], f"{where}.samples[{j}][0]")
        tp = _finite(s[1], f"{where}.samples[{j}][1]")
        if slots <= 0 or tp < 0 or not math.isfinite(tp / slots):
            raise ValueError(f"{where}.samples[{j}]: needs slots > 0 and throughput >= 0, got {s!r}")
        pair.add(slots, tp)
    last_time = raw.get("last_time")
    pair.last_time = None if last_time is None else _finite(last_time, f"{where}.last_time")
    dirty = raw.get("dirty")
    if not isinstance(dirty, bool):
        raise ValueError(f"{where}.dirty: expected true or false, got {dirty!r}")
    pair.dirty = dirty
    fit = raw.get("fit")
    if fit is not None:
        fw = f"{where}.fit"
        if not isinstance(fit, Mapping):
            raise ValueError(f"{fw}: expected an object or null, got {type(fit).__name__}")
        rate = read_float(fit, "rate", fw)
        eff = read_float(fit, "efficiency", fw)
        rel = read_float(fit, "rel_uncertainty", fw)
        n = read_int(fit, "samples", fw)
        fit_tick = read_int(fit, "tick", fw)
        if rate < 0:
            raise ValueError(f"{fw}.rate: must be >= 0, got {rate}")
        if not MIN_EFFICIENCY <= eff <= MAX_EFFICIENCY:
            raise ValueError(f"{fw}.efficiency: must be in [{MIN_EFFICIENCY}, {MAX_EFFICIENCY}], got {eff}")
        if rel <= 0:
            raise ValueError(f"{fw}.rel_uncertainty: must be > 0, got {rel}")
        if n < 1:
            raise ValueError(f"{fw}.samples: must be >= 1, got {n}")
        if not 0 <= fit_tick <= tick:
            raise ValueError(f"{fw}.tick: must be in [0, {tick}], got {fit_tick}")
        pair.fit = Fit(rate, eff, rel, n, fit_tick)
    return pair
