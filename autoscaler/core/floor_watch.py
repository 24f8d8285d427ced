"""Notice a resource floor the Ray autoscaler is not carrying out.

Ray never answers a floor, so what raytide can see is the result: a shape with fewer nodes alive than its
floor and nothing launching for it. Once that has lasted ``grace`` seconds the tick is degraded with the
shortfall, until the nodes come or the floor drops (docs/architecture.md, "Acting on Ray"). Pure: the daemon
keeps the ``since`` map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Shortfall", "watch_floor"]


@dataclass(frozen=True, slots=True)
class Shortfall:
    shape: str
    wanted: int
    alive: int
    seconds: float
    """How long the shape has been short with nothing launching."""

    def message(self) -> str:
        return (
            f"the autoscaler is not carrying out the floor for {self.shape}: {self.wanted} wanted, "
            f"{self.alive} alive, none launching for {self.seconds:.0f} s (is the node type's max_workers "
            f"below the shape's max, or the type unknown to Ray?)"
        )


def watch_floor(
    floor: Mapping[str, int],
    alive: Mapping[str, int],
    pending: Mapping[str, int],
    *,
    now: float,
    since: Mapping[str, float],
    grace: float,
) -> tuple[dict[str, float], list[Shortfall]]:
    """The updated ``since`` (shape → when it was first seen short with nothing launching) and the shapes
    short for longer than ``grace``.

    ``alive`` counts every node of the shape (standby and draining ones included: the floor covers them
    too). Any launch on its way resets the clock: a floor that arrives in rounds is being carried out.
    """
    updated: dict[str, float] = {}
    short: list[Shortfall] = []
    for shape, wanted in sorted(floor.items()):
        have = int(alive.get(shape, 0))
        if wanted <= have or int(pending.get(shape, 0)) > 0:
            continue
        start = since.get(shape, now)
        updated[shape] = start
        if now - start >= grace:
            short.append(Shortfall(shape, int(wanted), have, now - start))
    return updated, short
