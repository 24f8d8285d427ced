"""The raytide config of the daemon tests on real local clusters, written once: each test names only what
it changes.

Two shapes named like the test clusters' node types (``tests/ray/conftest.py``), one GPU stage, a
one-second tick, the floor in resource form and owned directly (no coordinator), no HTTP endpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

GPU_STAGE: Mapping[str, Any] = {
    "name": "infer",
    "operator": "Infer",
    "resources": {"CPU": 1, "GPU": 1},
    "prior_rate": {"gpu1": 1.0},
}
"""The stage the fake metrics sources report (``tests.support.daemon_fakes``, ``fake_prometheus``)."""

_SHAPES: dict[str, dict[str, Any]] = {
    "cpu4": {"name": "cpu4", "resources": {"CPU": 4}, "price_per_hour": 0.2, "min": 0, "max": 2},
    "gpu1": {"name": "gpu1", "resources": {"CPU": 1, "GPU": 1}, "price_per_hour": 1.0, "min": 0, "max": 2},
}
_SECTIONS: dict[str, dict[str, Any]] = {
    "targets": {"drain_seconds": 60, "headroom": 0.2},
    "bounds": {"max_step_down": 2, "scale_down_window_seconds": 3},
    "daemon": {
        "interval_seconds": 1,
        "drain_share_per_tick": 0.5,
        "observe_timeout_seconds": 10,
        "act_timeout_seconds": 15,
        "http_port": None,
    },
    "ray": {"floor_form": "resource", "use_coordinator": False},
}


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def config_text(
    *,
    stages: Sequence[Mapping[str, Any]] = (GPU_STAGE,),
    launch_seconds: float = 5,
    shapes: Mapping[str, Mapping[str, Any]] | None = None,
    **sections: Mapping[str, Any] | None,
) -> str:
    """The YAML. ``shapes`` (by name) and each section are merged key by key over the base, so a test
    names only the fields it changes; ``None`` for a key or a whole section leaves it to raytide's
    default. A section the base lacks (``prometheus``, ``warm_pool``, ...) is added as given."""
    shape_changes = shapes or {}
    doc: dict[str, Any] = {
        "shapes": [
            _merge({**shape, "launch_seconds": launch_seconds}, shape_changes.get(name, {}))
            for name, shape in _SHAPES.items()
        ],
        "stages": [dict(s) for s in stages],
    }
    for name in {**_SECTIONS, **sections}:
        changes = sections.get(name, {})
        if changes is not None:
            doc[name] = _merge(_SECTIONS.get(name, {}), changes)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)
