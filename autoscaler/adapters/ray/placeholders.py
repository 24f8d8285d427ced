"""Standby nodes on Ray: placeholder placement groups that hold a node's whole capacity.

One placeholder is one detached placement group named ``raytide-standby:<shape>:<serial>`` with a single
STRICT_PACK bundle of the shape's whole capacity, its marker resource included, so it can only land on a node
of that shape. The Ray facts it relies on: docs/architecture.md. Every call blocks; the daemon makes them off
its event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from autoscaler.adapters.ray.cluster_state import node_type_resource
from autoscaler.core.warm_pool import STANDBY_PREFIX, parse_standby_name
from autoscaler.ports import Placeholder
from autoscaler.types import Resources

__all__ = ["Placeholder", "RayWarmPool", "WarmPoolError", "placeholder_bundle"]

log = logging.getLogger(__name__)

_GONE_STATES = frozenset({"REMOVED"})


class WarmPoolError(RuntimeError):
    """A placeholder could not be listed, created or removed."""


def placeholder_bundle(shape: str, resources: Resources) -> dict[str, float]:
    """The whole capacity of a node of ``shape``, its marker resource included."""
    bundle = {k: float(v) for k, v in resources.items() if v > 0}
    bundle[node_type_resource(shape)] = 1.0
    return bundle


class RayWarmPool:
    """Lists, creates and removes placeholders. ``ray_module`` returns the connected ``ray`` module (the
    actuator's driver: :meth:`autoscaler.adapters.ray.actuator.RayActuator.ray_driver`)."""

    def __init__(self, ray_module: Callable[[], Any], shapes: Mapping[str, Resources]) -> None:
        self._ray = ray_module
        self._shapes = {k: dict(v) for k, v in shapes.items()}

    def list(self) -> list[Placeholder]:
        """Every live raytide placeholder in the cluster, whoever created it (``placement_group_table``)."""
        ray = self._ray()
        try:
            table = ray.util.placement_group_table()
        except Exception as e:
            raise WarmPoolError(f"cannot read the placement-group table: {e}") from e
        out: list[Placeholder] = []
        for pg_id, info in table.items():
            name = str(info.get("name") or "")
            parsed = parse_standby_name(name)
            if parsed is None or info.get("state") in _GONE_STATES:
                continue
            nodes = info.get("bundles_to_node_id") or {}
            node = next((str(v) for v in nodes.values() if v and set(str(v)) != {"0"}), None)
            out.append(Placeholder(name, parsed[0], str(pg_id), str(info.get("state")), node))
        out.sort(key=lambda p: (p.shape, p.name))
        return out

    def create(self, name: str, shape: str) -> bool:
        """Create the placeholder unless one of that name is alive; True when a new one was created."""
        if not name.startswith(f"{STANDBY_PREFIX}:"):
            raise ValueError(f"placeholder names start with {STANDBY_PREFIX!r}: {name!r}")
        if shape not in self._shapes:
            raise ValueError(f"unknown shape {shape!r} (known: {sorted(self._shapes)})")
        if any(p.name == name for p in self.list()):
            return False
        ray = self._ray()
        try:
            ray.util.placement_group(
                [placeholder_bundle(shape, self._shapes[shape])],
                strategy="STRICT_PACK",
                name=name,
                lifetime="detached",
            )
        except Exception as e:
            raise WarmPoolError(f"cannot create placeholder {name}: {e}") from e
        return True

    def remove(self, name: str, pg_id: str | None = None) -> bool:
        """Remove the placeholder of that name; False when there was none (already removed).

        With ``pg_id`` (from an earlier listing) no listing is needed: a claim is one GCS call. Removing a
        group that is already gone is harmless in Ray. Ray finishes the removal after this returns."""
        ray = self._ray()
        ids = [pg_id] if pg_id else [p.pg_id for p in self.list() if p.name == name]
        if not ids:
            return False
        from ray.util.placement_group import PlacementGroup

        for i in ids:
            try:
                pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(i)))
                ray.util.remove_placement_group(pg)
            except Exception as e:
                raise WarmPoolError(f"cannot remove placeholder {name}: {e}") from e
        return True
