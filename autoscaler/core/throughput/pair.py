"""One (stage, shape) pair's state: its window of samples, its latest fit, and the memos read from them."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from autoscaler.core.throughput.estimate import RateEstimate
from autoscaler.core.throughput.fit import median_ratio

# Samples behind a pair's quick (median) rate, read until its first fit.
QUICK_SAMPLES = 16


@dataclass(frozen=True, slots=True)
class Fit:
    """A pair's fitted model, as ``fit_samples`` made it."""

    rate: float
    efficiency: float
    rel_uncertainty: float
    samples: int
    tick: int
    """The update count at which this fit was made (orders refits: oldest first)."""


class Pair:
    """The samples of one (stage, shape) pair, its latest fit, and memos of what is read from them."""

    __slots__ = ("dirty", "estimate", "fit", "last_time", "quick", "samples", "shape", "stage")

    def __init__(self, stage: str, shape: str, window: int) -> None:
        self.stage = stage
        self.shape = shape
        self.samples: deque[tuple[float, float]] = deque(maxlen=window)
        """(slots on this shape, throughput attributed to this shape)."""
        self.last_time: float | None = None
        self.dirty = False
        """New samples since ``fit`` was made."""
        self.fit: Fit | None = None
        self.quick: tuple[float, float] | None = None
        """Memo of ``quick_rate`` until the next sample."""
        self.estimate: tuple[Fit, RateEstimate] | None = None
        """Memo of the estimate a fit makes (with that fit: a new fit makes a new one)."""

    def add(self, slots: float, throughput: float) -> None:
        self.samples.append((slots, throughput))
        self.quick = None

    def quick_rate(self) -> tuple[float, float]:
        """(rate, relative spread) from a median over the latest samples, for pairs not fitted yet.

        Only the latest few: this runs on every read of an unfitted pair, so it must stay cheap however
        long the refit queue is.
        """
        if self.quick is None:
            n = len(self.samples)
            recent = itertools.islice(self.samples, max(0, n - QUICK_SAMPLES), n)
            self.quick = median_ratio(recent)
        return self.quick
