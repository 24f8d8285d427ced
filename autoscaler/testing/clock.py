"""Time as data for multi-tick tests: a clock that moves only when the test moves it."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FakeClock"]


@dataclass
class FakeClock:
    """Time as data for multi-tick scenarios: ``now`` only moves when the test says so."""

    now: float = 0.0

    def advance(self, seconds: float) -> float:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a clock only moves forward by a finite amount, got {seconds}")
        self.now += seconds
        return self.now

    def __call__(self) -> float:
        return self.now
