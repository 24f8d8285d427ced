"""Start-up: the daemon's memory rebuilt from the stored state, or a :class:`StateError` saying why it cannot
be (never a traceback: the file may be damaged, hand-edited or written by a newer raytide)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.core.decide import DecisionState
from autoscaler.core.throughput import ThroughputModels
from autoscaler.core.warm_pool import PoolMemory
from autoscaler.daemon.calls import describe
from autoscaler.ports import StateError, StoredState
from autoscaler.types import Plan

__all__ = ["Restored", "restore"]


@dataclass(frozen=True, slots=True)
class Restored:
    tick: int
    models: ThroughputModels
    state: DecisionState
    plan: Plan
    floor: dict[str, int] | None
    pool: PoolMemory


def restore(stored: StoredState, own_key: str) -> Restored:
    """``own_key``: where the daemon keeps its own part (floor, warm pool) in the decision state."""
    part = "the stored throughput models"
    try:
        models = ThroughputModels.from_json(stored.models)
        part = "the stored decision state"
        state = DecisionState.from_json(stored.decision_state)
        own = stored.decision_state.get(own_key, {})
        part = "the daemon's stored floor and warm pool"
        if not isinstance(own, Mapping):
            raise ValueError(f"expected a JSON object, got {type(own).__name__}")
        floor = _floor(own.get("floor"))
        pool = PoolMemory.from_json(own.get("warm_pool"))
    except Exception as e:
        raise StateError(
            f"state store: {part} cannot be restored ({describe(e)}). If a newer raytide wrote the state "
            "file, run that version; otherwise stop raytide, move the file aside (with its -wal and -shm "
            "files) and start again: raytide then starts afresh and adopts the floor and placeholders it "
            "finds in the cluster."
        ) from e
    return Restored(stored.tick, models, state, stored.plan, floor, pool)


def _floor(value: Any) -> dict[str, int] | None:
    if not isinstance(value, Mapping):
        return None
    floor: dict[str, int] = {}
    for shape, n in value.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"floor of {shape!r}: expected a node count >= 0, got {n!r}")
        floor[str(shape)] = n
    return floor
