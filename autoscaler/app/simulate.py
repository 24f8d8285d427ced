"""``raytide simulate``: run policies on simulated clusters and compare how well they decide.

Register with ``app.command("simulate")(simulate)``. Exit codes: 0 done; 2 a scenario or a policy named on
the command line cannot be used.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from autoscaler.core.redact import printable

if TYPE_CHECKING:
    # The CLI registers this command at start-up: the simulator (numpy, the decision stack) is imported
    # when a simulation runs, not for every command's --help.
    from autoscaler.core.policy_api import Policy
    from autoscaler.sim.results import RunResult
    from autoscaler.sim.scenario import SimScenario

__all__ = ["EXIT_USAGE", "load_policies", "results_json", "simulate"]

EXIT_USAGE = 2

_err = Console(stderr=True)


def load_policies(names: list[str] | None, *, warn: Console | None = None) -> list[tuple[str, Policy]]:
    """(reference, policy) for the named policies, or for every installed one that loads (the others are
    reported on ``warn``). Raises PolicyLoadError for a named policy that cannot be loaded."""
    from autoscaler.app.plugins import PolicyLoadError, installed_policies, load_policy

    if names:
        return [(n, load_policy(n)) for n in dict.fromkeys(names)]
    out = []
    for name in installed_policies():
        try:
            out.append((name, load_policy(name)))
        except PolicyLoadError as e:
            if warn is not None:
                warn.print(f"[yellow]skipping policy {name!r}: {e}[/yellow]", highlight=False)
    return out


def results_json(
    scenarios: list[tuple[Path, SimScenario]],
    results: dict[str, dict[str, RunResult]],
    *,
    series: bool = False,
) -> dict[str, Any]:
    """The stable JSON document: scenarios in the order run, policies in the order given."""
    return {
        "scenarios": [
            {
                "name": sc.name,
                "file": str(path),
                "description": sc.description,
                "duration_seconds": sc.duration,
                "seed": sc.seed,
                "policies": {p: r.to_json(series=series) for p, r in results[sc.name].items()},
            }
            for path, sc in scenarios
        ]
    }


def _fmt_opt(v: float | int | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _table(sc: SimScenario, runs: dict[str, RunResult]) -> Table:
    hours = sc.duration / 3600.0
    table = Table(title=f"{sc.name} — {sc.description} ({hours:.3g} h, seed {sc.seed})", title_justify="left")
    for col in (
        "policy",
        "cost $",
        "$/h",
        "SLO-miss s",
        "p95 backlog age s",
        "GPU util while queued",
        "actions",
        "reversals",
        "converge ↑/↓ (decisions)",
    ):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for policy, r in runs.items():
        m = r.metrics
        gpu = "—" if m.gpu_utilization_while_queued is None else f"{m.gpu_utilization_while_queued:.0%}"
        conv = "—"
        if m.convergence:
            conv = f"{_fmt_opt(m.decisions_to_converge, 'd')}/{_fmt_opt(m.decisions_to_converge_down, 'd')}"
        name = (
            policy
            if not m.policy_errors
            else f"{escape(policy)} [red]({m.policy_errors} policy errors)[/red]"
        )
        table.add_row(
            name,
            f"{m.cost:.2f}",
            f"{m.cost_per_hour:.2f}",
            f"{m.slo_miss_seconds:.0f}",
            f"{m.p95_backlog_age_seconds:.1f}",
            gpu,
            str(m.scale_actions),
            str(m.reversals),
            conv,
        )
    return table


def simulate(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenario YAML files, directories of them, or names in the repository's scenarios/ "
            "(e.g. 'step'). Default: every scenario there marked default."
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            "-p",
            help="A policy to run (installed name or module:attr); repeat for several. "
            "Default: every installed policy.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    series: Annotated[bool, typer.Option("--series", help="With --json: include the time series.")] = False,
    plot_dir: Annotated[
        Path | None, typer.Option("--plot-dir", help="Write one PNG per scenario into this directory.")
    ] = None,
    hours: Annotated[
        float | None, typer.Option("--hours", help="Override every scenario's duration.")
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--duration", help="Override every scenario's duration (e.g. 30m, 2h).")
    ] = None,
) -> None:
    """Simulate a Ray cluster running a pipeline under each policy, and compare cost, SLO misses, backlog
    age, GPU use, churn and convergence. Every decision goes through the daemon's own decide()."""
    from autoscaler.app.plugins import PolicyLoadError, load_policy
    from autoscaler.core.config import ConfigError
    from autoscaler.core.durations import parse_duration

    if hours is not None and duration is not None:
        raise typer.BadParameter("give --hours or --duration, not both")
    override: float | None = None
    try:
        if hours is not None:
            override = hours * 3600.0
        elif duration is not None:
            override = parse_duration(duration)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if override is not None and override <= 0:
        raise typer.BadParameter("the duration must be > 0")
    from autoscaler.sim.results import run_policy
    from autoscaler.sim.scenario import resolve_scenarios

    try:
        loaded = resolve_scenarios(scenarios)
        if override is not None:
            loaded = [(p, sc.with_duration(override)) for p, sc in loaded]
    except ConfigError as e:
        _err.print(Text(printable(str(e)), style="red"), highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except ValueError as e:
        _err.print(Text(printable(str(e)), style="red"), highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    if not loaded:
        _err.print("[red]no scenarios to run[/red]")
        raise typer.Exit(EXIT_USAGE)
    try:
        policies = load_policies(policy, warn=_err)
    except PolicyLoadError as e:
        _err.print(Text("policy: " + printable(str(e)), style="red"), highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    if not policies:
        _err.print("[red]no policy could be loaded[/red]")
        raise typer.Exit(EXIT_USAGE)

    results: dict[str, dict[str, RunResult]] = {}
    # Piped output keeps the table readable instead of wrapping it at 80 columns.
    out = Console() if sys.stdout.isatty() else Console(width=160)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as bar:
        for _path, sc in loaded:
            runs: dict[str, RunResult] = {}
            for ref, pol in policies:
                task = bar.add_task(f"{sc.name} × {pol.name}", total=sc.duration)

                def tick(done: float, _total: float, task: Any = task) -> None:
                    bar.update(task, completed=done)

                # A fresh instance per run: a policy object may keep state between decisions.
                runs[pol.name] = run_policy(sc, load_policy(ref), progress=tick)
                bar.remove_task(task)
            results[sc.name] = runs
            if plot_dir is not None:
                from autoscaler.sim.plot import plot_scenario

                png = plot_scenario(sc.name, runs, plot_dir / f"{sc.name}.png")
                if not as_json:
                    _err.print(f"wrote {png}", highlight=False)
            if not as_json:
                out.print(_table(sc, runs))
    if as_json:
        print(json.dumps(results_json(loaded, results, series=series), indent=2))
