"""How fast every stage runs on every node shape: the collection of per-(stage, shape) models.

Learns from snapshots (a sample per measured pair, refits within a budget), answers estimates (the pair's
own fit, else a prior or a rate pooled from the stage's other shapes, blended with the pair's first
samples), and round-trips its whole state through JSON.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from typing import Any

from autoscaler.core.throughput.estimate import RateEstimate
from autoscaler.core.throughput.fit import REL_FLOOR, fit_samples, one_blas_thread, rel_uncertainty
from autoscaler.core.throughput.pair import QUICK_SAMPLES, Fit, Pair
from autoscaler.core.throughput.state import JSON_VERSION, pair_from_json, pair_to_json, read_float, read_int
from autoscaler.types import Snapshot

# Relative uncertainty of a prior rate, and the least of a rate pooled from other shapes.
_PRIOR_REL = 0.5
_POOLED_REL_FLOOR = 0.5


class ThroughputModels:
    """Per (stage, node shape) throughput models, learned from snapshots.

    ``update`` records samples and refits at most ``refit_budget`` pairs (the least recently fitted first), so
    one update stays cheap however many pairs a cluster has; ``estimate`` only reads. A refit is one
    scikit-learn Huber fit (rarely two), so the budget bounds the update's cost; pairs waiting for a refit
    are read from their latest fit, or from a median until their first. The default keeps the update a
    small part of a large cluster's decision and still refits every pair of such a cluster within minutes.
    """

    def __init__(
        self,
        *,
        window: int = 128,
        min_samples: int = 3,
        refit_budget: int = 2,
        min_busy_slots: float = 0.5,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        if min_samples > window:
            raise ValueError(f"min_samples ({min_samples}) cannot exceed window ({window})")
        if isinstance(refit_budget, bool) or not isinstance(refit_budget, int) or refit_budget < 0:
            raise ValueError(f"refit_budget must be an integer >= 0, got {refit_budget!r}")
        if not (
            isinstance(min_busy_slots, int | float) and math.isfinite(min_busy_slots) and min_busy_slots >= 0
        ):
            raise ValueError(f"min_busy_slots must be a finite number >= 0, got {min_busy_slots!r}")
        self._window = window
        self._min_samples = min_samples
        self._refit_budget = refit_budget
        self._min_busy_slots = float(min_busy_slots)
        self._tick = 0
        self._pairs: dict[str, dict[str, Pair]] = {}
        """stage → shape → pair."""
        self._dirty: set[tuple[str, str]] = set()
        self._pooled_memo: dict[tuple[str, str], tuple[_Pool, int, RateEstimate | None]] = {}
        """(stage, shape) → the pooled estimate last made there, with the pool and sample count behind it."""

    @property
    def window(self) -> int:
        return self._window

    @property
    def min_samples(self) -> int:
        return self._min_samples

    @property
    def refit_budget(self) -> int:
        return self._refit_budget

    @property
    def min_busy_slots(self) -> float:
        return self._min_busy_slots

    # ---------------------------------------------------------------- learning

    def update(self, snapshot: Snapshot) -> None:
        """Record one sample per (stage, shape) the snapshot measured, then refit within the budget."""
        self._tick += 1
        t = snapshot.time if math.isfinite(snapshot.time) else None
        for st in snapshot.stages:
            tp = st.throughput.value
            busy = st.slots_busy.value
            # Unknown is not zero: a missing throughput must not teach the model that the stage is slow.
            if tp is None or busy is None or not (math.isfinite(tp) and math.isfinite(busy)):
                continue
            if tp < 0 or busy < self._min_busy_slots:
                continue
            split = [(shape, v) for shape, v in st.slots_by_shape.items() if math.isfinite(v) and v > 0]
            total = sum(v for _, v in split)
            if not split or not total > 0:
                continue
            stage_pairs = self._pairs.get(st.name)
            if stage_pairs is None:
                stage_pairs = self._pairs[st.name] = {}
            for shape, slots in split:
                share = tp * (slots / total)
                if not math.isfinite(share / slots):
                    continue  # a vanishing slot count, whose per-slot rate would be infinite
                pair = stage_pairs.get(shape)
                if pair is None:
                    pair = stage_pairs[shape] = Pair(st.name, shape, self._window)
                pair.add(float(slots), share)
                pair.last_time = t
                if not pair.dirty:
                    pair.dirty = True
                    self._dirty.add((st.name, shape))
        self._refit()

    def _refit(self) -> None:
        if self._refit_budget == 0 or not self._dirty:
            return
        candidates = []
        for stage, shape in self._dirty:
            pair = self._pairs[stage][shape]
            if len(pair.samples) >= self._min_samples:
                candidates.append((-1 if pair.fit is None else pair.fit.tick, stage, shape))
        with one_blas_thread():
            for _, stage, shape in heapq.nsmallest(self._refit_budget, candidates):
                pair = self._pairs[stage][shape]
                rate, eff, spread = fit_samples(pair.samples)
                n = len(pair.samples)
                pair.fit = Fit(rate, eff, rel_uncertainty(rate, spread, n), n, self._tick)
                pair.dirty = False
                self._dirty.discard((stage, shape))

    # ---------------------------------------------------------------- reading

    def estimate(self, stage: str, shape: str, *, prior_rate: float | None = None) -> RateEstimate | None:
        """The best estimate for ``stage`` on ``shape``, or None when nothing at all is known.

        In order: the pair's own model once it has ``min_samples`` samples; else the prior (a non-positive or
        non-finite prior counts as none), else the rate pooled from the stage's other shapes — either one
        blended with the pair's first few samples, if any; else None.
        """
        return self._estimate(stage, shape, prior_rate, None)

    def estimates_for_stage(
        self, stage: str, shapes: Iterable[str], priors: Mapping[str, float]
    ) -> dict[str, RateEstimate]:
        """``estimate`` for each shape (with its prior from ``priors``), leaving out shapes with none."""
        pool: list[_Pool] = []
        out: dict[str, RateEstimate] = {}
        for shape in shapes:
            est = self._estimate(stage, shape, priors.get(shape), pool)
            if est is not None:
                out[shape] = est
        return out

    def _estimate(
        self,
        stage: str,
        shape: str,
        prior_rate: float | None,
        pool: list[_Pool] | None,
    ) -> RateEstimate | None:
        """``pool``: an empty list to keep the stage's pooled statistics in, across calls for one stage."""
        pair = self._pairs.get(stage, {}).get(shape)
        n = 0 if pair is None else len(pair.samples)
        if pair is not None and n >= self._min_samples:
            fit = pair.fit
            if fit is not None:
                memo = pair.estimate
                if memo is None or memo[0] is not fit:
                    est = RateEstimate(
                        stage, shape, fit.rate, fit.efficiency, fit.rel_uncertainty, fit.samples, "observed"
                    )
                    memo = pair.estimate = (fit, est)
                return memo[1]
            # Enough samples but still queued behind the refit budget: a cheap linear estimate until then.
            rate, spread = pair.quick_rate()
            rel = rel_uncertainty(rate, spread, min(n, QUICK_SAMPLES))
            return RateEstimate(stage, shape, rate, 1.0, rel, n, "observed")

        base: RateEstimate | None
        if prior_rate is not None and math.isfinite(prior_rate) and prior_rate > 0:
            base = RateEstimate(stage, shape, float(prior_rate), 1.0, _PRIOR_REL, n, "prior")
        else:
            if pool is None:
                stats = self._pool(stage)
            elif pool:
                stats = pool[0]
            else:
                stats = self._pool(stage)
                pool.append(stats)
            # The pool changes only when one of the stage's pairs is refitted: keep the estimate made from
            # it (a pure function of what the memo is keyed and checked by).
            made = self._pooled_memo.get((stage, shape))
            if made is not None and made[0] == stats and made[1] == n:
                base = made[2]
            else:
                base = _pooled(stage, shape, n, stats)
                self._pooled_memo[(stage, shape)] = (stats, n, base)
        if base is None or pair is None or n == 0:
            return base
        # A few samples of our own and a prior or pooled guess: weigh each by its precision.
        rate, spread = pair.quick_rate()
        rel = rel_uncertainty(rate, spread, min(n, QUICK_SAMPLES))
        w_data = 1.0 / (rel * rel)
        w_base = 1.0 / (base.rel_uncertainty * base.rel_uncertainty)
        blended = (w_data * rate + w_base * base.per_slot_rate) / (w_data + w_base)
        blended_rel = max(REL_FLOOR, 1.0 / math.sqrt(w_data + w_base))
        return RateEstimate(stage, shape, blended, 1.0, blended_rel, n, base.source)

    def _pool(self, stage: str) -> _Pool:
        """What the stage's fitted pairs say together: (samples, Σ samples · rate, worst uncertainty).

        Only for shapes without enough samples of their own, so a shape never pools with itself (its pair,
        if any, has fewer than ``min_samples``, which excludes it here): the same numbers serve every shape.
        """
        total_n = 0
        weighted = 0.0
        worst = 0.0
        stage_pairs = self._pairs.get(stage, {})
        # Sorted: float sums depend on order, and a restored state (whose dicts are rebuilt in sorted order)
        # must give the same bits as the original.
        for other in sorted(stage_pairs):
            pair = stage_pairs[other]
            fit = pair.fit
            if fit is None or len(pair.samples) < self._min_samples:
                continue
            total_n += fit.samples
            weighted += fit.samples * fit.rate
            worst = max(worst, fit.rel_uncertainty)
        return total_n, weighted, worst

    # ---------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        """The whole state as plain JSON data (dicts, lists, numbers, strings, None); see ``from_json``."""
        pairs = [
            pair_to_json(self._pairs[stage][shape])
            for stage in sorted(self._pairs)
            for shape in sorted(self._pairs[stage])
        ]
        return {
            "version": JSON_VERSION,
            "window": self._window,
            "min_samples": self._min_samples,
            "refit_budget": self._refit_budget,
            "min_busy_slots": self._min_busy_slots,
            "tick": self._tick,
            "pairs": pairs,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ThroughputModels:
        """Restore what ``to_json`` produced; raises ValueError naming the first malformed field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"throughput models: expected a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if type(version) is not int or version != JSON_VERSION:
            raise ValueError(
                f"throughput models: unsupported version {version!r} (this build reads {JSON_VERSION})"
            )
        try:
            models = cls(
                window=read_int(data, "window", "throughput models"),
                min_samples=read_int(data, "min_samples", "throughput models"),
                refit_budget=read_int(data, "refit_budget", "throughput models"),
                min_busy_slots=read_float(data, "min_busy_slots", "throughput models"),
            )
        except ValueError as e:
            raise ValueError(f"throughput models: {e}") from None
        tick = read_int(data, "tick", "throughput models")
        if tick < 0:
            raise ValueError(f"throughput models.tick: must be >= 0, got {tick}")
        models._tick = tick
        pairs = data.get("pairs")
        if not isinstance(pairs, list):
            raise ValueError("throughput models.pairs: expected a list")
        for i, raw in enumerate(pairs):
            where = f"throughput models.pairs[{i}]"
            pair = pair_from_json(raw, where, models._window, tick)
            stage_pairs = models._pairs.setdefault(pair.stage, {})
            if pair.shape in stage_pairs:
                raise ValueError(f"{where}: duplicate pair ({pair.stage!r}, {pair.shape!r})")
            stage_pairs[pair.shape] = pair
            if pair.dirty:
                models._dirty.add((pair.stage, pair.shape))
        return models


_Pool = tuple[int, float, float]


def _pooled(stage: str, shape: str, n: int, pool: _Pool) -> RateEstimate | None:
    # Assumption: one slot of a stage needs the same resources on every shape, so its speed is similar across
    # shapes (same CPU/GPU generation). Wrong for, say, a slower GPU model on another shape — hence the wide
    # uncertainty, and observations on the shape itself replace this as soon as they exist.
    total_n, weighted, worst = pool
    if total_n == 0:
        return None
    rel = max(_POOLED_REL_FLOOR, 2.0 * worst)
    return RateEstimate(stage, shape, weighted / total_n, 1.0, rel, n, "pooled")
