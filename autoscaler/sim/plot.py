"""One PNG per scenario: backlog, usable nodes per shape and money spent over time, one line per policy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from autoscaler.sim.results import RunResult

__all__ = ["plot_scenario"]


def plot_scenario(scenario: str, runs: Mapping[str, RunResult], path: Path) -> Path:
    """Write ``path`` (PNG) comparing ``runs`` (policy name → result) of one scenario; returns the path."""
    import matplotlib

    # Agg: no display on servers and CI, and no GUI toolkit imported.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("nothing to plot: no runs")
    first = next(iter(runs.values()))
    shapes = list(first.series.nodes)
    rows = 2 + len(shapes)
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.3 * rows), sharex=True, squeeze=False)
    ax = [a[0] for a in axes]
    hours = first.metrics.duration_seconds > 3 * 3600
    scale = 3600.0 if hours else 60.0
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (policy, res) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        s = res.series
        t = [x / scale for x in s.time]
        total = [sum(vals) for vals in zip(*s.backlog.values(), strict=True)]
        ax[0].plot(t, total, color=color, label=policy, linewidth=1.2)
        for j, shape in enumerate(shapes):
            ax[1 + j].plot(t, s.nodes.get(shape, ()), color=color, linewidth=1.2, drawstyle="steps-post")
        ax[-1].plot(t, s.cost, color=color, linewidth=1.2)
    ax[0].set_ylabel("backlog\n(units, all stages)")
    ax[0].set_yscale("symlog", linthresh=10.0)
    ax[0].legend(loc="upper right", fontsize="small", ncol=min(4, len(runs)))
    for j, shape in enumerate(shapes):
        ax[1 + j].set_ylabel(f"{shape}\n(usable nodes)")
    ax[-1].set_ylabel("spent ($)")
    ax[-1].set_xlabel("hours" if hours else "minutes")
    for a in ax:
        a.grid(True, alpha=0.3)
    fig.suptitle(f"raytide simulate — {scenario}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
