"""How fast every stage runs on every node shape: one small robust model per (stage, shape) pair.

Each pair learns DS2's "true processing rate" — work done per busy slot-second — as

    throughput(n slots) = r · n^b

with ``r`` the per-slot rate and ``b`` in [0.5, 1] a learned scaling efficiency (b = 1: linear; lower: the
stage gains less than linearly from more slots, like Flink's learned scaling coefficient). Every estimate
carries a relative uncertainty so callers can tell a measured rate from a guess.

Pure: no I/O, no clock, no randomness. The same snapshots in the same order give the same estimates, and the
state round-trips through JSON exactly, so a restarted daemon decides as the old one would have.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import warnings
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import HuberRegressor
from threadpoolctl import ThreadpoolController

from autoscaler.types import Snapshot

__all__ = [
    "JSON_VERSION",
    "MAX_EFFICIENCY",
    "MAX_SLOTS",
    "MIN_EFFICIENCY",
    "RateEstimate",
    "Source",
    "ThroughputModels",
]

JSON_VERSION = 1

MAX_SLOTS = 2**31 - 1
"""What ``RateEstimate.slots_for`` answers for a rate no slot count reaches (e.g. a learned rate of 0)."""

Source = Literal["observed", "prior", "pooled"]

MIN_EFFICIENCY = 0.5
MAX_EFFICIENCY = 1.0

# Even many identical samples do not make a rate exact: the workload drifts, and attribution to shapes is
# only proportional. The floor keeps the planner from trusting any estimate more than ±5%.
_REL_FLOOR = 0.05
_REL_MAX = 10.0
_PRIOR_REL = 0.5
_POOLED_REL_FLOOR = 0.5
_ZERO_RATE_REL = 1.0

# A pseudo-observation of the noise level, pooled with the measured spread: with one or two identical
# samples the measured spread is 0, which says nothing about the real noise, so a few samples must stay
# uncertain. Its weight fades as samples accumulate.
_PSEUDO_SPREAD = 0.5
_PSEUDO_COUNT = 2.0

# Estimating an exponent from fewer points, or from slot counts closer together, gives noise, not b: over
# the 1.5x span of a stage growing by half after a step, 2-3 % rate noise (correlated across the window's
# samples) fitted b = 0.69 for a stage scaling at 0.97 (infer on gpu1 in the step scenario), and plans
# sized from it kept buying GPUs the stage did not need. The error of a slope falls with the log-span:
# 3x gives it 2.7 times less room than 1.5x.
_MIN_POINTS_FOR_EFFICIENCY = 5
_MIN_SPAN_FOR_EFFICIENCY = 3.0

_HUBER_EPSILON = 1.35
_HUBER_MAX_ITER = 100
_HUBER_TOL = 1e-4
_MIN_START_SCALE = 1e-3
_QUICK_SAMPLES = 16
_MAD_TO_SIGMA = 1.4826

FloatArray = npt.NDArray[np.float64]


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


@dataclass(frozen=True, slots=True)
class _Fit:
    rate: float
    efficiency: float
    rel_uncertainty: float
    samples: int
    tick: int
    """The update count at which this fit was made (orders refits: oldest first)."""


class _Pair:
    __slots__ = ("dirty", "estimate", "fit", "last_time", "quick", "samples", "shape", "stage")

    def __init__(self, stage: str, shape: str, window: int) -> None:
        self.stage = stage
        self.shape = shape
        self.samples: deque[tuple[float, float]] = deque(maxlen=window)
        """(slots on this shape, throughput attributed to this shape)."""
        self.last_time: float | None = None
        self.dirty = False
        """New samples since ``fit`` was made."""
        self.fit: _Fit | None = None
        self.quick: tuple[float, float] | None = None
        """Memo of ``quick_rate`` until the next sample."""
        self.estimate: tuple[_Fit, RateEstimate] | None = None
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
            recent = itertools.islice(self.samples, max(0, n - _QUICK_SAMPLES), n)
            self.quick = _median_ratio(recent)
        return self.quick


class ThroughputModels:
    """Per (stage, node shape) throughput models, learned from snapshots.

    ``update`` records samples and refits at most ``refit_budget`` pairs (the least recently fitted first), so
    one update stays cheap however many pairs a cluster has; ``estimate`` only reads. A refit costs about
    1 ms (one scikit-learn Huber fit, rarely two), so the budget is the update's cost in milliseconds; pairs
    waiting for a refit are read from their latest fit, or from a median until their first. The default of
    2 keeps the update within a tenth of the 20 ms a decision on a 1,000-node cluster may take, and still
    refits each of 150 (stage, shape) pairs every 75 updates (about six minutes at 5 s ticks).
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
        self._pairs: dict[str, dict[str, _Pair]] = {}
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
                    pair = stage_pairs[shape] = _Pair(st.name, shape, self._window)
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
        with _one_blas_thread():
            for _, stage, shape in heapq.nsmallest(self._refit_budget, candidates):
                pair = self._pairs[stage][shape]
                rate, eff, spread = _fit_samples(pair.samples)
                n = len(pair.samples)
                pair.fit = _Fit(rate, eff, _rel_uncertainty(rate, spread, n), n, self._tick)
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
            rel = _rel_uncertainty(rate, spread, min(n, _QUICK_SAMPLES))
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
        rel = _rel_uncertainty(rate, spread, min(n, _QUICK_SAMPLES))
        w_data = 1.0 / (rel * rel)
        w_base = 1.0 / (base.rel_uncertainty * base.rel_uncertainty)
        blended = (w_data * rate + w_base * base.per_slot_rate) / (w_data + w_base)
        blended_rel = max(_REL_FLOOR, 1.0 / math.sqrt(w_data + w_base))
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
        pairs = []
        for stage in sorted(self._pairs):
            for shape in sorted(self._pairs[stage]):
                p = self._pairs[stage][shape]
                fit = None
                if p.fit is not None:
                    fit = {
                        "rate": p.fit.rate,
                        "efficiency": p.fit.efficiency,
                        "rel_uncertainty": p.fit.rel_uncertainty,
                        "samples": p.fit.samples,
                        "tick": p.fit.tick,
                    }
                pairs.append(
                    {
                        "stage": stage,
                        "shape": shape,
                        "samples": [[s, tp] for s, tp in p.samples],
                        "last_time": p.last_time,
                        "dirty": p.dirty,
                        "fit": fit,
                    }
                )
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
                window=_int(data, "window", "throughput models"),
                min_samples=_int(data, "min_samples", "throughput models"),
                refit_budget=_int(data, "refit_budget", "throughput models"),
                min_busy_slots=_float(data, "min_busy_slots", "throughput models"),
            )
        except ValueError as e:
            raise ValueError(f"throughput models: {e}") from None
        tick = _int(data, "tick", "throughput models")
        if tick < 0:
            raise ValueError(f"throughput models.tick: must be >= 0, got {tick}")
        models._tick = tick
        pairs = data.get("pairs")
        if not isinstance(pairs, list):
            raise ValueError("throughput models.pairs: expected a list")
        for i, raw in enumerate(pairs):
            where = f"throughput models.pairs[{i}]"
            pair = _pair_from_json(raw, where, models._window, tick)
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


# -------------------------------------------------------------------- fitting


# Scanning the loaded libraries takes ~6 ms: done at import, so that no decision pays for it.
_BLAS = ThreadpoolController()


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Run the fits with a single BLAS thread.

    Their arrays have a few hundred numbers: waking BLAS worker threads costs more than the arithmetic, and
    on a busy host (other processes on every core) a 1 ms fit took 50–90 ms waiting for them.
    """
    return cast(contextlib.AbstractContextManager[Any], _BLAS.limit(limits=1, user_api="blas"))


def _rel_uncertainty(rate: float, spread: float, n: int) -> float:
    """Relative standard error of a rate from ``n`` samples whose relative spread is ``spread``."""
    if not rate > 0:
        return _ZERO_RATE_REL
    var = (n * spread * spread + _PSEUDO_COUNT * _PSEUDO_SPREAD * _PSEUDO_SPREAD) / (n + _PSEUDO_COUNT)
    rel = math.sqrt(var / max(n, 1))
    if not math.isfinite(rel):
        return _REL_MAX
    return min(_REL_MAX, max(_REL_FLOOR, rel))


def _fit_samples(samples: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """(per-slot rate, efficiency, relative spread of one sample) from (slots, throughput) samples."""
    with np.errstate(all="ignore"):
        rate, efficiency, spread = _robust_fit(samples)
    if math.isfinite(rate) and rate >= 0 and math.isfinite(spread) and spread >= 0:
        return rate, efficiency, spread
    # Only extreme magnitudes (near the float limits) get here; the plain median copes with them.
    rate, spread = _median_ratio(samples)
    return rate, 1.0, spread


def _robust_fit(samples: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    data = np.asarray(samples, dtype=np.float64)
    slots = data[:, 0]
    tp = data[:, 1]
    if not np.any(tp > 0):
        return 0.0, 1.0, 0.0
    efficiency = 1.0
    positive = tp > 0
    ps = slots[positive]
    if (
        len(ps) >= _MIN_POINTS_FOR_EFFICIENCY
        and float(ps.max()) >= _MIN_SPAN_FOR_EFFICIENCY * float(ps.min())
        and len(np.unique(ps)) >= 2
    ):
        loglog = _huber_loglog(np.log(ps), np.log(tp[positive]))
        if loglog is not None:
            slope, x_mid, y_mid, spread = loglog
            efficiency = min(MAX_EFFICIENCY, max(MIN_EFFICIENCY, slope))
            if bool(positive.all()):
                # A clipped slope pivots the fitted line about the middle of the data, which keeps the
                # rate right where the samples are and saves a second fit. Stalled (zero) samples are not in
                # the log fit, so with any of them the rate comes from the fit below, which counts them.
                return math.exp(y_mid - efficiency * x_mid), efficiency, spread
    scaled = slots**efficiency
    rate, spread = _huber_location(tp / scaled, scaled)
    return rate, efficiency, spread


def _huber(
    x: FloatArray, y: FloatArray, weights: FloatArray | None, start: tuple[float, float, float]
) -> Any | None:
    """A HuberRegressor fitted to y ≈ intercept + slope·x; None when it failed (callers fall back to medians).

    ``start`` is (slope, intercept, scale) from cheap medians: starting the solver there instead of at
    (0, 0, 1) halves the objective evaluations, and those dominate the cost of a fit.
    """
    model = HuberRegressor(
        epsilon=_HUBER_EPSILON, alpha=0.0, max_iter=_HUBER_MAX_ITER, tol=_HUBER_TOL, warm_start=True
    )
    model.coef_ = np.array([start[0]])
    model.intercept_ = start[1]
    model.scale_ = max(start[2], _MIN_START_SCALE)
    # Inputs are known finite here; sklearn's own checks would only repeat that, at a cost per fit.
    with (
        warnings.catch_warnings(),
        sklearn.config_context(assume_finite=True, skip_parameter_validation=True),
    ):
        warnings.simplefilter("ignore")
        # Raised rather than printed: a fit that did not converge is replaced, deterministically, by a median.
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("error", RuntimeWarning)
        try:
            model.fit(x.reshape(-1, 1), y, sample_weight=weights)
        except (ConvergenceWarning, RuntimeWarning, ValueError, FloatingPointError):
            return None
    params = [*np.ravel(model.coef_), model.intercept_, model.scale_]
    if not all(math.isfinite(float(v)) for v in params):
        return None
    return model


def _huber_loglog(log_slots: FloatArray, log_tp: FloatArray) -> tuple[float, float, float, float] | None:
    """Robust fit of log throughput = log r + b · log slots.

    Returns (b, x_mid, y_mid, relative spread): the fitted line has slope b and passes through
    (x_mid, y_mid), the median log slot count and the fitted log throughput there.
    """
    # Centred, so that the intercept and slope are nearly independent for the solver.
    x0 = float(np.median(log_slots))
    y0 = float(np.median(log_tp))
    x = log_slots - x0
    y = log_tp - y0
    # Start from the linear model (b = 1), which is what most stages are close to.
    offset = float(np.median(y - x))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(y - x - offset)))
    model = _huber(x, y, None, (1.0, offset, spread))
    if model is None:
        return None
    return float(model.coef_[0]), x0, y0 + float(model.intercept_), float(model.scale_)


def _huber_location(ratios: FloatArray, weights: FloatArray) -> tuple[float, float]:
    """(robust weighted centre of per-slot ratios, relative spread); bigger samples weigh more."""
    lo = float(ratios.min())
    if lo == float(ratios.max()):
        return max(0.0, lo), 0.0
    median, median_spread = _weighted_median_spread(ratios.tolist(), weights.tolist())
    # Mostly stalled samples: the median is 0 but the rate is not known to be; scale by the mean instead.
    norm = median if median > 0 else float(np.average(ratios, weights=weights))
    # A location is a regression on nothing: with x = 0 the slope has no gradient and stays 0, and the
    # intercept is the weighted Huber centre. (The intercept form, because warm starts need one.)
    if not norm > 0:
        return median, median_spread  # the mean underflowed: rates this small are 0 for any purpose
    with np.errstate(all="ignore"):
        scaled = ratios / norm
    start = median / norm
    if not (math.isfinite(start) and bool(np.isfinite(scaled).all())):
        # Rates near the smallest float: too small to rescale, too small to matter.
        return median, median_spread
    model = _huber(np.zeros_like(ratios), scaled, weights, (0.0, start, median_spread))
    if model is None:
        return median, median_spread
    rate = max(0.0, float(model.intercept_) * norm)
    if not rate > 0:
        return 0.0, 0.0
    return rate, float(model.scale_) * norm / rate


def _median_ratio(samples: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """(weighted median of throughput / slots, relative spread): cheap, for a handful of samples."""
    ratios = []
    weights = []
    for slots, tp in samples:
        ratios.append(tp / slots)
        weights.append(slots)
    return _weighted_median_spread(ratios, weights)


def _weighted_median_spread(values: list[float], weights: list[float]) -> tuple[float, float]:
    med = _weighted_median(values, weights)
    if len(values) < 2 or not med > 0:
        return med, 0.0
    mad = _weighted_median([abs(v - med) for v in values], weights)
    return med, _MAD_TO_SIGMA * mad / med


def _weighted_median(values: list[float], weights: list[float]) -> float:
    pairs = sorted(zip(values, weights, strict=True))
    half = 0.5 * sum(weights)
    acc = 0.0
    for v, w in pairs:
        acc += w
        if acc >= half:
            return v
    return pairs[-1][0]


# -------------------------------------------------------------------- JSON checks


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{where}.{key}: expected an integer, got {v!r}")
    return v


def _float(obj: Mapping[str, Any], key: str, where: str) -> float:
    return _finite(obj.get(key), f"{where}.{key}")


def _finite(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def _pair_from_json(raw: Any, where: str, window: int, tick: int) -> _Pair:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    stage = raw.get("stage")
    shape = raw.get("shape")
    if not isinstance(stage, str):
        raise ValueError(f"{where}.stage: expected a string, got {stage!r}")
    if not isinstance(shape, str):
        raise ValueError(f"{where}.shape: expected a string, got {shape!r}")
    pair = _Pair(stage, shape, window)
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
        rate = _float(fit, "rate", fw)
        eff = _float(fit, "efficiency", fw)
        rel = _float(fit, "rel_uncertainty", fw)
        n = _int(fit, "samples", fw)
        fit_tick = _int(fit, "tick", fw)
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
        pair.fit = _Fit(rate, eff, rel, n, fit_tick)
    return pair
