"""What one ``raytide demo`` run does (bursts, timings, warm pool, time limit) and the raytide configuration
its daemon runs with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autoscaler.core.config import Config, parse_config

__all__ = ["DemoOptions", "demo_config"]

_CONFIG_TEMPLATE = """\
shapes:
  - {{name: cpu4, resources: {{CPU: 4}}, price_per_hour: 0.20, min: 0, max: 3, launch_seconds: 5}}
  - {{name: gpu1, resources: {{CPU: 1, GPU: 1}}, price_per_hour: 1.00, min: 0, max: 3, launch_seconds: 5}}
stages:
  - {{name: decode, operator: "MapBatches\\\\(decode\\\\)", resources: {{CPU: 1}},
     prior_rate: {{cpu4: {decode_rate}, gpu1: {decode_rate}}}}}
  - {{name: infer, operator: "MapBatches\\\\(Infer\\\\)", resources: {{CPU: 1, GPU: 1}},
     prior_rate: {{gpu1: {infer_rate}}}, max_slots: {max_actors}}}
ignore_operators: "^(Input|InputDataBuffer|ReadRange)(_\\\\d+)?$"
targets: {{drain_seconds: 20, headroom: 0.2}}
bounds: {{max_nodes: 6, max_step_down: 2, scale_down_window_seconds: {window}}}
prometheus: {{rate_window: 20s, staleness_seconds: 30}}
daemon: {{interval_seconds: {interval}, observe_timeout_seconds: 8, act_timeout_seconds: 15,
         drain_share_per_tick: 0.5, drain_confirm_seconds: 60, http_port: null}}
ray: {{floor_form: resource, use_coordinator: auto}}
warm_pool: {{enabled: {pool_enabled}, min: {{gpu1: {standby_gpu}}}, max: {{gpu1: {standby_gpu}}},
            claim_poll_seconds: 0.5}}
"""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """How one demo runs. ``quick`` is the short version the tests use."""

    out_dir: Path = Path("raytide-report")
    autoscaler: Literal["v1", "v2"] = "v2"
    bursts: tuple[int, ...] = (40, 40)
    gap_seconds: float = 15.0
    decode_seconds: float = 0.5
    infer_seconds: float = 1.0
    max_actors: int = 3
    interval_seconds: float = 2.0
    standby_gpu: int = 1
    """Standby gpu1 nodes in the warm pool (0 turns the pool off)."""
    scale_down_window_seconds: float = 20.0
    idle_timeout_minutes: float = 0.5
    time_limit_seconds: float = 270.0
    """The whole demo (cluster start to report) ends by then, finished or not."""
    live: bool | None = None
    """Live view (rich.Live) or plain lines; None: live when the console is a terminal."""

    @classmethod
    def quick(cls, **overrides: Any) -> DemoOptions:
        base: dict[str, Any] = {"bursts": (24,), "gap_seconds": 0.0, "time_limit_seconds": 170.0}
        base.update(overrides)
        return cls(**base)


def demo_config(opts: DemoOptions) -> Config:
    """The raytide configuration the demo's daemon runs with (two shapes, two stages)."""
    text = _CONFIG_TEMPLATE.format(
        decode_rate=round(1.0 / opts.decode_seconds, 3),
        infer_rate=round(1.0 / opts.infer_seconds, 3),
        max_actors=opts.max_actors,
        window=opts.scale_down_window_seconds,
        interval=opts.interval_seconds,
        pool_enabled="true" if opts.standby_gpu > 0 else "false",
        standby_gpu=opts.standby_gpu,
    )
    return parse_config(text, "<raytide demo>")
