"""What the throughput models answer: how fast one stage runs on one node shape, and how sure that is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MAX_SLOTS = 2**31 - 1
"""What ``RateEstimate.slots_for`` answers for a rate no slot count reaches (e.g. a learned rate of 0)."""

Source = Literal["observed", "prior", "pooled"]

MIN_EFFICIENCY = 0.5
MAX_EFFICIENCY = 1.0


@dataclass(frozen=True, slots=True)
class RateEstimate:
    """What one stage does on one node shape: ``rate(n) = per_slot_rate · n ** efficiency``."""

    stage: str
    shape: str
    per_slot_rate: float
    """``r``: units per second of one slot."""
    efficiency: float
    """``b`` in [0.5, 1]: 1 means n slots do n times the work of one."""
    rel_uncertainty: float
    """Relative standard error of the rate (0.1 = ±10%); 0.5 or more for priors, pooled rates, few samples."""
    samples: int
    """Samples of this (stage, shape) pair behind the estimate (0 for a pure prior or pooled rate)."""
    source: Source

    def rate(self, slots: float) -> float:
        """Units per second that ``slots`` slots deliver together."""
        if slots <= 0:
            return 0.0
        return float(self.per_slot_rate * slots**self.efficiency)

    def per_slot_at(self, slots: float) -> float:
        """The average rate of one slot when ``slots`` run together (≤ ``per_slot_rate`` when b < 1)."""
        if slots <= 1:
            return self.per_slot_rate
        return self.rate(slots) / slots

    def slots_for(self, target_rate: float) -> int:
        """The fewest whole slots whose ``rate`` reaches ``target_rate``; ``MAX_SLOTS`` if none does."""
        if not target_rate > 0:
            return 0
        if not (self.per_slot_rate > 0 and math.isfinite(target_rate)):
            return MAX_SLOTS
        try:
            x = float((target_rate / self.per_slot_rate) ** (1.0 / self.efficiency))
        except OverflowError:
            return MAX_SLOTS
        if not math.isfinite(x) or x >= MAX_SLOTS:
            return MAX_SLOTS
        # The closed form is off by one now and then through rounding; step to the exact answer.
        n = max(1, math.ceil(x))
        while n > 1 and self.rate(n - 1) >= target_rate:
            n -= 1
        while self.rate(n) < target_rate and n < MAX_SLOTS:
            n += 1
        return n

    @property
    def confidence(self) -> float:
        """In (0, 1]: 1 / (1 + rel_uncertainty)."""
        return 1.0 / (1.0 + self.rel_uncertainty)
