"""A simulation scenario: the raytide configuration, the true world behind it, and the input trace.

The scenario keeps two things apart on purpose: ``config`` is what raytide is told (shapes, prices, bounds,
stage profiles, maybe prior rates), ``world`` is how the cluster really behaves (true per-slot rates, skew
between shapes, scaling efficiency, noise, launch delays). A policy only ever sees the world through
snapshots, as it would see a real cluster through its metrics.

Times are in seconds from the start of the simulation. Durations accept a number of seconds or a string
such as ``90s``, ``15m``, ``2h``; times of day accept ``HH:MM`` (or seconds after midnight).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from autoscaler.core.config import Config, ConfigError, ConfigProblem, validate_yaml
from autoscaler.core.durations import parse_duration

__all__ = [
    "BurstyTrace",
    "DailyBatchTrace",
    "NoisyDiurnalTrace",
    "SimScenario",
    "SteadyTrace",
    "StepTrace",
    "Trace",
    "WorldConfig",
    "WorldShape",
    "WorldStage",
    "load_scenario",
    "lognormal_noise",
    "parse_duration",
    "parse_scenario",
    "resolve_scenarios",
    "scenarios_dir",
]

FloatArray = npt.NDArray[np.float64]

_DAY = 86400.0


def _parse_clock(value: Any) -> float:
    if isinstance(value, str) and ":" in value:
        parts = value.strip().split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
            raise ValueError(f"{value!r} is not a time of day like 12:00")
        h, m = int(parts[0]), int(parts[1])
        s = int(parts[2]) if len(parts) == 3 else 0
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 60):
            raise ValueError(f"{value!r} is not a time of day like 12:00")
        return float(h * 3600 + m * 60 + s)
    seconds = parse_duration(value)
    if not 0 <= seconds < _DAY:
        raise ValueError(f"a time of day must be within one day, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Clock = Annotated[float, BeforeValidator(_parse_clock)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------------ traces


def lognormal_noise(rng: np.random.Generator, n: int, dt: float, sigma: float, period: float) -> FloatArray:
    """Mean-one lognormal factors, one per step, drawn every ``period`` seconds and interpolated between.

    Interpolating keeps the noise correlated over ``period``: real load wanders, it does not jump every
    second, and uncorrelated per-step noise would average away inside any rate window.
    """
    if sigma <= 0 or n == 0:
        return np.ones(n)
    knots = math.ceil(n * dt / period) + 2
    z = rng.standard_normal(knots)
    factors = np.exp(sigma * z - 0.5 * sigma * sigma)
    t = np.arange(n) * dt / period
    return np.asarray(np.interp(t, np.arange(knots, dtype=np.float64), factors), dtype=np.float64)


class _TraceBase(_Strict):
    noise_sigma: float = Field(default=0.0, ge=0, le=3)
    """Lognormal sigma of multiplicative noise on the rate."""
    noise_seconds: Duration = Field(default=30.0, gt=0)
    """Correlation time of that noise."""

    def _shape(self, n: int, dt: float, start_clock: float) -> FloatArray:  # pragma: no cover - abstract
        raise NotImplementedError

    def rates(self, n: int, dt: float, start_clock: float, rng: np.random.Generator) -> FloatArray:
        """Units of work per second arriving at the first stage, for each of ``n`` steps of ``dt``."""
        base = self._shape(n, dt, start_clock)
        return base * lognormal_noise(rng, n, dt, self.noise_sigma, self.noise_seconds)

    def change_points(self, duration: float, start_clock: float) -> tuple[tuple[float, str], ...]:
        """Times (s from start) at which the trace steps, with the direction ("up"/"down")."""
        return ()


class SteadyTrace(_TraceBase):
    kind: Literal["steady"]
    rate: float = Field(ge=0)

    def _shape(self, n: int, dt: float, start_clock: float) -> FloatArray:
        return np.full(n, self.rate, dtype=np.float64)


class StepTrace(_TraceBase):
    """Piecewise-constant rate: ``levels`` is a list of ``[time, rate]``, the first at time 0."""

    kind: Literal["step"]
    levels: list[tuple[Duration, float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> StepTrace:
        times = [t for t, _ in self.levels]
        if times[0] != 0:
            raise ValueError("the first level must start at time 0")
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError("level times must increase")
        if any(r < 0 for _, r in self.levels):
            raise ValueError("rates must be >= 0")
        return self

    def _shape(self, n: int, dt: float, start_clock: float) -> FloatArray:
        t = np.arange(n) * dt
        times = np.array([lv[0] for lv in self.levels])
        values = np.array([lv[1] for lv in self.levels])
        return np.asarray(values[np.searchsorted(times, t, side="right") - 1], dtype=np.float64)

    def change_points(self, duration: float, start_clock: float) -> tuple[tuple[float, str], ...]:
        out = []
        for (_, before), (t, after) in zip(self.levels, self.levels[1:], strict=False):
            if t < duration and after != before:
                out.append((t, "up" if after > before else "down"))
        return tuple(out)


class BurstyTrace(_TraceBase):
    """A base rate with bursts: exponential gaps between burst starts and exponential burst lengths."""

    kind: Literal["bursty"]
    base_rate: float = Field(ge=0)
    burst_rate: float = Field(ge=0)
    """The rate during a burst (instead of ``base_rate``)."""
    burst_seconds: Duration = Field(gt=0)
    """Mean burst length."""
    gap_seconds: Duration = Field(gt=0)
    """Mean time from the end of one burst to the start of the next."""

    def rates(self, n: int, dt: float, start_clock: float, rng: np.random.Generator) -> FloatArray:
        horizon = n * dt
        out = np.full(n, self.base_rate, dtype=np.float64)
        t = float(rng.exponential(self.gap_seconds))
        while t < horizon:
            length = float(rng.exponential(self.burst_seconds))
            lo, hi = int(t / dt), min(n, math.ceil((t + length) / dt))
            out[lo:hi] = self.burst_rate
            t += length + float(rng.exponential(self.gap_seconds))
        return out * lognormal_noise(rng, n, dt, self.noise_sigma, self.noise_seconds)


class DailyBatchTrace(_TraceBase):
    """A trickle all day and a large drop of work once a day at ``at`` (an offline inference job)."""

    kind: Literal["daily_batch"]
    base_rate: float = Field(default=0.0, ge=0)
    at: Clock = 12 * 3600.0
    units: float = Field(gt=0)
    """Work dropped at ``at``."""
    spread_seconds: Duration = Field(default=60.0, gt=0)
    """The drop lands evenly over this long (an upload, a partition listing)."""

    def _starts(self, duration: float, start_clock: float) -> list[float]:
        first = (self.at - start_clock) % _DAY
        return [float(t) for t in np.arange(first, duration, _DAY)]

    def _shape(self, n: int, dt: float, start_clock: float) -> FloatArray:
        out = np.full(n, self.base_rate, dtype=np.float64)
        rate = self.units / self.spread_seconds
        for start in self._starts(n * dt, start_clock):
            lo = int(start / dt)
            hi = min(n, lo + max(1, round(self.spread_seconds / dt)))
            out[lo:hi] += rate * self.spread_seconds / ((hi - lo) * dt) if hi > lo else 0.0
        return out

    def rates(self, n: int, dt: float, start_clock: float, rng: np.random.Generator) -> FloatArray:
        # Noise applies to the trickle only: the batch is a fixed amount of work.
        base = np.full(n, self.base_rate, dtype=np.float64)
        noisy = base * lognormal_noise(rng, n, dt, self.noise_sigma, self.noise_seconds)
        return noisy + (self._shape(n, dt, start_clock) - base)

    def change_points(self, duration: float, start_clock: float) -> tuple[tuple[float, str], ...]:
        return tuple((t, "up") for t in self._starts(duration, start_clock))


class NoisyDiurnalTrace(_TraceBase):
    """A daily sine around ``mean_rate`` peaking at ``peak_at``, with correlated lognormal noise."""

    kind: Literal["noisy_diurnal"]
    mean_rate: float = Field(ge=0)
    amplitude: float = Field(default=0.5, ge=0, le=1)
    """Peak-to-mean as a fraction of the mean (0.5: from 0.5× to 1.5× the mean)."""
    peak_at: Clock = 14 * 3600.0
    period_seconds: Duration = Field(default=_DAY, gt=0)

    def _shape(self, n: int, dt: float, start_clock: float) -> FloatArray:
        clock = start_clock + np.arange(n) * dt
        phase = 2 * np.pi * (clock - self.peak_at) / self.period_seconds
        return np.asarray(self.mean_rate * (1.0 + self.amplitude * np.cos(phase)), dtype=np.float64)


Trace = Annotated[
    SteadyTrace | StepTrace | BurstyTrace | DailyBatchTrace | NoisyDiurnalTrace,
    Field(discriminator="kind"),
]


# ------------------------------------------------------------------------------------------ world


class WorldShape(_Strict):
    """How one node shape really behaves (as opposed to what ``config`` says about it)."""

    initial: int = Field(default=0, ge=0)
    """Nodes running (launched and usable) at time 0."""
    launch_mean: Duration | None = Field(default=None, ge=0)
    """Mean seconds from launch request to usable; default: the shape's ``launch_seconds`` in config."""
    launch_jitter: Duration = Field(default=0.0, ge=0)
    """Launch delays are uniform in mean ± jitter (never below 0)."""
    standby: int = Field(default=0, ge=0)
    """PRELIMINARY warm-pool hook: up to this many launched, idle nodes of this shape wait outside the
    cluster (billed like any node); a launch takes one of them with zero delay, and a replacement is
    launched at once (usable after the normal launch delay). The warm-pool issue will refine this."""


class WorldStage(_Strict):
    """The true behaviour of one pipeline stage."""

    name: str = Field(min_length=1)
    upstream: str | None = None
    """The stage whose output is this stage's input; exactly one stage (the first) has none."""
    rate: float = Field(gt=0)
    """True units per second of one slot on a shape without skew."""
    skew: dict[str, float] = Field(default_factory=dict)
    """Per shape, a factor on ``rate`` (0.8: that shape is 20% slower for this stage)."""
    efficiency: float = Field(default=1.0, ge=0.5, le=1.0)
    """Scaling exponent b: n slots of this stage together do ``rate · n^b`` (b = 1: linear)."""
    noise_sigma: float = Field(default=0.0, ge=0, le=3)
    """Lognormal sigma of the stage's speed (all slots together), correlated over ``noise_seconds``."""
    noise_seconds: Duration = Field(default=30.0, gt=0)
    selectivity: float = Field(default=1.0, gt=0)
    """Units of output per unit of input (what the next stage receives)."""

    @model_validator(mode="after")
    def _skew_positive(self) -> WorldStage:
        for shape, factor in self.skew.items():
            if not (math.isfinite(factor) and factor > 0):
                raise ValueError(f"skew on {shape!r} must be > 0, got {factor}")
        return self


class WorldConfig(_Strict):
    shapes: dict[str, WorldShape] = Field(default_factory=dict)
    stages: list[WorldStage] = Field(min_length=1)
    drain_seconds: Duration = Field(default=30.0, ge=0)
    """A busy node chosen for removal takes no new work and is gone (and unbilled) after this long."""
    attribution: Literal["proportional", "exact"] = "proportional"
    """How snapshots split a stage's busy slots over shapes: ``proportional`` to capacity, as the daemon's
    observe step does today from Ray Data metrics (which do not say which node runs a task), or ``exact``."""
    pending_demand_factor: float = Field(default=1.0, ge=0)
    """Ray Data asks for at most this many times a stage's running slots in extra bundles per request (its
    autoscaler grows a stage at most 2× per step); what Ray's autoscaler then sees as pending demand."""
    busy_slots: Literal["instant", "window_mean"] = "window_mean"
    """What snapshots report as a stage's busy slots: ``window_mean``, the mean over the rate window, as the
    daemon's ``stage_slots`` query reads ``avg_over_time(ray_data_num_tasks_running[window])``; or
    ``instant``, the gauge now (what a naive exporter query would give)."""
    queued_threshold: float = Field(default=1.0, ge=0)
    """Units of work below which a queue counts as empty for the GPU-utilization metric."""
    op_reservation_ratio: float = Field(default=0.5, ge=0, le=1)
    """Ray Data's ``DataContext.op_resource_reservation_ratio`` (default 0.5): the fraction of the CPUs and
    GPUs on usable nodes that its streaming executor reserves for the pipeline's operators. Each stage
    reserves an equal part (``ratio / number of stages``) of each resource it uses, at least one slot and at
    most ``max_slots`` slots, upstream stages first (a stage that no longer fits reserves nothing). Only that
    stage can use its reservation, even while it has no work. The rest is shared: stages with work split it
    evenly, and what one of them cannot use goes to the others, downstream stages first. 0 turns the
    reservation off (as ``op_resource_reservation_enabled = False`` does): stages are placed greedily, GPU
    stages first and then in chain order, so an upstream stage with a queue can take every free CPU."""


# ------------------------------------------------------------------------------------------ scenario


class SimScenario(_Strict):
    """One simulation scenario (a ``scenarios/*.yaml`` file): raytide's configuration, the world behind it,
    and the input trace. (``autoscaler.testing.Scenario`` is another thing: a contract check's input.)"""

    name: str = Field(min_length=1)
    description: str = ""
    default: bool = True
    """Run when no scenario is named (false for long runs such as the speed test)."""
    seed: int = 0
    duration: Duration = Field(gt=0)
    start_clock: Clock = 0.0
    """Time of day at time 0 (matters for daily and diurnal traces)."""
    step_seconds: float = Field(default=1.0, gt=0, le=60)
    decision_interval: Duration = Field(default=15.0, gt=0)
    config: Config
    world: WorldConfig
    trace: Trace

    @model_validator(mode="after")
    def _cross_checks(self) -> SimScenario:
        ratio = self.decision_interval / self.step_seconds
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                f"decision_interval ({self.decision_interval:g} s) must be a whole multiple of step_seconds "
                f"({self.step_seconds:g} s)"
            )
        shape_names = [s.name for s in self.config.shapes]
        unknown = sorted(set(self.world.shapes) - set(shape_names))
        if unknown:
            raise ValueError(f"world.shapes names unknown shapes: {', '.join(unknown)}")
        cfg_stages = [s.name for s in self.config.stages]
        world_stages = [s.name for s in self.world.stages]
        if sorted(cfg_stages) != sorted(world_stages) or len(set(world_stages)) != len(world_stages):
            raise ValueError(
                f"world.stages ({', '.join(world_stages)}) must name each stage of config.stages "
                f"({', '.join(cfg_stages)}) exactly once"
            )
        for st in self.world.stages:
            bad = sorted(set(st.skew) - set(shape_names))
            if bad:
                raise ValueError(f"world stage {st.name!r}: skew names unknown shapes: {', '.join(bad)}")
        self.chain()  # raises when the stages do not form one chain
        for s in self.config.shapes:
            w = self.world.shapes.get(s.name)
            if w is not None and not s.min <= w.initial <= s.max:
                raise ValueError(f"world.shapes.{s.name}.initial ({w.initial}) is outside [{s.min}, {s.max}]")
        return self

    @property
    def steps(self) -> int:
        return round(self.duration / self.step_seconds)

    @property
    def steps_per_decision(self) -> int:
        return round(self.decision_interval / self.step_seconds)

    def world_shape(self, name: str) -> WorldShape:
        return self.world.shapes.get(name, WorldShape())

    def launch_mean(self, name: str) -> float:
        w = self.world_shape(name)
        if w.launch_mean is not None:
            return w.launch_mean
        for s in self.config.shapes:
            if s.name == name:
                return s.launch_seconds
        raise KeyError(name)

    def chain(self) -> tuple[str, ...]:
        """Stage names from the first (fed by the trace) to the last."""
        ups = {s.name: s.upstream for s in self.world.stages}
        for name, up in ups.items():
            if up is not None and up not in ups:
                raise ValueError(f"world stage {name!r}: upstream {up!r} is not a stage")
        roots = [n for n, u in ups.items() if u is None]
        if len(roots) != 1:
            raise ValueError(f"exactly one stage must have no upstream (the first), found {len(roots)}")
        children: dict[str, list[str]] = {}
        for name, up in ups.items():
            if up is not None:
                children.setdefault(up, []).append(name)
        order = [roots[0]]
        while order[-1] in children:
            nxt = children[order[-1]]
            if len(nxt) != 1:
                raise ValueError(f"stage {order[-1]!r} feeds {len(nxt)} stages; the simulator runs one chain")
            order.append(nxt[0])
        if len(order) != len(ups):
            raise ValueError("the stages do not form one chain (a cycle or a detached stage)")
        return tuple(order)

    def with_duration(self, seconds: float) -> SimScenario:
        """The same scenario, run for ``seconds`` instead."""
        data = self.model_dump()
        data["duration"] = seconds
        return SimScenario.model_validate(data)


def parse_scenario(text: str, source: str = "<scenario>") -> SimScenario:
    """Parse and validate a scenario; raise ConfigError listing every problem with its path and line."""
    return validate_yaml(text, source, SimScenario, what="a scenario", ignore_in_path=_TRACE_KINDS)


_TRACE_KINDS = frozenset({"steady", "step", "bursty", "daily_batch", "noisy_diurnal"})


def load_scenario(path: Path | str) -> SimScenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [ConfigProblem("(file)", None, f"cannot read: {e.strerror or e}")]) from e
    return parse_scenario(text, str(p))


def scenarios_dir() -> Path | None:
    """The repository's ``scenarios/`` directory: ``$RAYTIDE_SCENARIOS``, else next to the package (a source
    checkout or editable install), else ``./scenarios``; None when none exists."""
    env = os.environ.get("RAYTIDE_SCENARIOS")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "scenarios", Path.cwd() / "scenarios"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def resolve_scenarios(refs: list[str] | None) -> list[tuple[Path, SimScenario]]:
    """Scenario files from paths, directories or names (``step`` → ``scenarios/step.yaml``), loaded.

    No refs: every scenario in ``scenarios_dir()`` marked ``default: true``; a directory likewise. A file or a
    name is taken whatever its ``default``. Raises ConfigError for a file that is missing or invalid.
    """
    out: list[tuple[Path, SimScenario]] = []
    if not refs:
        base = scenarios_dir()
        if base is None:
            raise ConfigError(
                "scenarios",
                [
                    ConfigProblem(
                        "(directory)",
                        None,
                        "no scenarios/ directory found; name scenario files or set RAYTIDE_SCENARIOS",
                    )
                ],
            )
        refs = [str(base)]
    for ref in refs:
        p = Path(ref)
        if p.is_dir():
            for f in sorted(p.glob("*.yaml")):
                sc = load_scenario(f)
                if sc.default:
                    out.append((f, sc))
            continue
        if not p.exists() and p.suffix == "" and (base := scenarios_dir()) is not None:
            named = base / f"{ref}.yaml"
            if named.exists():
                p = named
        out.append((p, load_scenario(p)))
    return out
