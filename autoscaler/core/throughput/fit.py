"""The robust fit of one (stage, shape) pair: per-slot rate, scaling efficiency and relative uncertainty.

``throughput(n slots) = r · n^b`` from (slots, throughput) samples: a Huber regression in log-log space for
``b`` when the slot counts span enough, a weighted Huber location for ``r``, medians as the fallback.
Deterministic: the same samples give the same fit.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import HuberRegressor
from threadpoolctl import ThreadpoolController

from autoscaler.core.throughput.estimate import MAX_EFFICIENCY, MIN_EFFICIENCY

# Even many identical samples do not make a rate exact: the workload drifts, and attribution to shapes is
# only proportional. The floor keeps the planner from trusting any estimate more than ±5%.
REL_FLOOR = 0.05
_REL_MAX = 10.0
_ZERO_RATE_REL = 1.0

# A pseudo-observation of the noise level, pooled with the measured spread: with one or two identical
# samples the measured spread is 0, which says nothing about the real noise, so a few samples must stay
# uncertain. Its weight fades as samples accumulate.
_PSEUDO_SPREAD = 0.5
_PSEUDO_COUNT = 2.0

# Estimating an exponent from fewer points, or from slot counts closer together, gives noise, not b: a few
# per cent of rate noise, correlated across the window's samples, over a narrow span of slot counts fits an
# efficiency far below the real one, and plans sized from it buy capacity the stage does not need. The
# error of a slope falls with the log-span of the slot counts.
_MIN_POINTS_FOR_EFFICIENCY = 5
_MIN_SPAN_FOR_EFFICIENCY = 3.0

_HUBER_EPSILON = 1.35
_HUBER_MAX_ITER = 100
_HUBER_TOL = 1e-4
_MIN_START_SCALE = 1e-3
_MAD_TO_SIGMA = 1.4826

FloatArray = npt.NDArray[np.float64]


# Module-level on purpose: it describes the BLAS libraries loaded in this process, whose thread pools are
# process-wide, so one controller serves every ThroughputModels. Scanning the libraries is slow next to a
# decision: done once, at import, so that no decision (and no new models object) pays for it.
_BLAS = ThreadpoolController()


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Run the fits with a single BLAS thread.

    Their arrays have a few hundred numbers: waking BLAS worker threads costs more than the arithmetic, and
    on a busy host (other processes on every core) a fit waits for them far longer than it computes.
    """
    return cast(contextlib.AbstractContextManager[Any], _BLAS.limit(limits=1, user_api="blas"))


def rel_uncertainty(rate: float, spread: float, n: int) -> float:
    """Relative standard error of a rate from ``n`` samples whose relative spread is ``spread``."""
    if not rate > 0:
        return _ZERO_RATE_REL
    var = (n * spread * spread + _PSEUDO_COUNT * _PSEUDO_SPREAD * _PSEUDO_SPREAD) / (n + _PSEUDO_COUNT)
    rel = math.sqrt(var / max(n, 1))
    if not math.isfinite(rel):
        return _REL_MAX
    return min(_REL_MAX, max(REL_FLOOR, rel))


def fit_samples(samples: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """(per-slot rate, efficiency, relative spread of one sample) from (slots, throughput) samples."""
    with np.errstate(all="ignore"):
        rate, efficiency, spread = _robust_fit(samples)
    if math.isfinite(rate) and rate >= 0 and math.isfinite(spread) and spread >= 0:
        return rate, efficiency, spread
    # Only extreme magnitudes (near the float limits) get here; the plain median copes with them.
    rate, spread = median_ratio(samples)
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


def median_ratio(samples: Iterable[tuple[float, float]]) -> tuple[float, float]:
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
