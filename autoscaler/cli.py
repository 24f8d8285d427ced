"""The ``raytide`` command line."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from autoscaler.config import EXAMPLE_CONFIG, Config, ConfigError, load_config, parse_config
from autoscaler.policy import PolicyLoadError, installed_policies, load_policy
from autoscaler.types import Snapshot

app = typer.Typer(
    name="raytide",
    help="Adaptive autoscaling for Ray clusters running streaming CPU+GPU data pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

EXIT_CONFIG = 2
EXIT_SOURCE = 3
EXIT_MISSING_METRICS = 4


def _parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            try:
                value = float(text[: -len(suffix)]) * units[suffix]
            except ValueError:
                break
            if value >= 0:
                return value
    raise typer.BadParameter(f"{text!r} is not a duration like 30s, 5m or 1h")


def _load(config_path: Path | None) -> tuple[Config, str]:
    if config_path is None:
        return parse_config(EXAMPLE_CONFIG, "<embedded default>"), "the embedded default configuration"
    return load_config(config_path), str(config_path)


@app.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="The raytide YAML configuration to check.")],
) -> None:
    """Validate a configuration file and report every problem with its path (and line) in the file."""
    try:
        cfg = load_config(config)
    except ConfigError as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        load_policy(cfg.policy.name, cfg.policy.options)
    except PolicyLoadError as e:
        err.print(f"[red]{config}: policy: {e}[/red]", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    Console().print(
        f"{config}: OK — {len(cfg.shapes)} node shape(s), {len(cfg.stages)} stage profile(s), "
        f"policy {cfg.policy.name!r}",
        highlight=False,
    )


@app.command("policies")
def policies() -> None:
    """List the installed policies (entry-point group ``raytide.policies``)."""
    for name, target in installed_policies().items():
        Console().print(f"{name}\t{target}", highlight=False)


@app.command("recommend")
def recommend(
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL, e.g. http://127.0.0.1:9090.")],
    config: Annotated[
        Path | None, typer.Option(help="raytide YAML configuration (default: the embedded demo config).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the documented JSON object instead.")
    ] = False,
    history: Annotated[
        str, typer.Option(help="How much recent history to learn throughput from (e.g. 5m).")
    ] = "5m",
    step: Annotated[str, typer.Option(help="Spacing of the history samples (e.g. 15s).")] = "15s",
) -> None:
    """Dry run: what should this cluster look like, and why? Reads Prometheus, changes nothing.

    Exit codes: 0 plan made; 2 bad configuration; 3 Prometheus unreachable or failing;
    4 metrics missing or unknown (the plan, if printed, holds the cluster as it is).
    """
    from autoscaler.prometheus import PrometheusSource
    from autoscaler.queries import PrometheusConfigError
    from autoscaler.recommend import fetch_history, recommend_from, sample_times
    from autoscaler.report import recommendation_json, render_recommendation

    history_s, step_s = _parse_duration(history), _parse_duration(step)
    if step_s <= 0:
        raise typer.BadParameter("--step must be > 0")
    try:
        cfg, source_name = _load(config)
        cfg = cfg.model_copy(update={"prometheus": cfg.prometheus.model_copy(update={"url": prometheus})})
        policy = load_policy(cfg.policy.name, cfg.policy.options)
    except ConfigError as e:
        err.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    except PolicyLoadError as e:
        err.print(f"[red]policy: {e}[/red]", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    if config is None and not as_json:
        err.print(f"using {source_name} (shapes {', '.join(s.name for s in cfg.shapes)}); pass --config FILE")

    times = sample_times(time.time(), history_s, step_s)

    async def gather() -> tuple[str | None, list[Snapshot]]:
        async with PrometheusSource(config=cfg.prometheus) as source:
            # One cheap probe first: an unreachable or failing server is a different fix from missing metrics.
            probe = await source.query("vector(1)")
            if probe.error is not None:
                return probe.error, []
            with Progress(
                TextColumn("reading metrics"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as bar:
                task = bar.add_task("history", total=len(times))
                snaps = await fetch_history(
                    source, cfg, times, progress=lambda done, _total: bar.update(task, completed=done)
                )
                return None, snaps

    try:
        failure, snapshots = asyncio.run(gather())
    except PrometheusConfigError as e:
        err.print(f"[red]prometheus: {e}[/red]", highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None
    if failure is not None:
        err.print(
            f"[red]Prometheus at {prometheus} is not usable: {failure}[/red]\n"
            "Check the URL (--prometheus), that the server is up, and the auth and TLS settings under "
            "'prometheus:' in the configuration.",
            highlight=False,
        )
        raise typer.Exit(EXIT_SOURCE)
    latest = snapshots[-1]
    rec = recommend_from(snapshots, cfg, policy)
    doc = recommendation_json(rec.snapshot, rec.decision, headroom=cfg.targets.headroom)
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=False))
    else:
        render_recommendation(doc, Console())
    if not latest.stages:
        err.print(
            "[red]no pipeline stages found: Prometheus has no Ray Data operator metrics "
            "(ray_data_operator_queued_blocks).[/red] Is a Ray Data job running, and does Prometheus scrape "
            "Ray's exporters (/tmp/ray/prom_metrics_service_discovery.json)? For another exporter, override "
            "the templates under prometheus.queries.",
            highlight=False,
        )
        raise typer.Exit(EXIT_MISSING_METRICS)
    if latest.errors or not latest.inputs_complete:
        err.print(
            "[yellow]some metrics are missing or unknown — the plan holds the cluster as it is:[/yellow]"
        )
        for line in latest.errors:
            err.print(f"  - {line}", highlight=False)
        for st in latest.stages:
            for why in st.unknown_reasons():
                err.print(f"  - {why}", highlight=False)
        raise typer.Exit(EXIT_MISSING_METRICS)


from autoscaler.sim.command import simulate as _simulate  # noqa: E402  (registered after the core commands)

app.command("simulate")(_simulate)


@app.command("demo")
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the report (PNG + JSON) goes.")] = Path(
        "raytide-report"
    ),
) -> None:
    """Show raytide deciding, with nothing to install: a simulated CPU→GPU pipeline under a step in load,
    the default policy against an emulation of Ray's own autoscaling, with a PNG timeline and a JSON report.

    (The live version — the daemon driving a local autoscaling Ray cluster — is not built yet.)
    """
    import json as _json

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "summary.json"
    err.print(
        "raytide demo: simulating the 'step' scenario (CPU decode → GPU inference, load 100/s → 300/s → "
        "100/s) under the throughput policy and under ray-default (Ray's autoscaler + Ray Data)…"
    )
    from autoscaler.sim.command import results_json
    from autoscaler.sim.plot import plot_scenario
    from autoscaler.sim.results import run_policy
    from autoscaler.sim.scenario import resolve_scenarios

    (path, scenario), *_ = resolve_scenarios(["step"])
    runs = {}
    for name in ("throughput", "ray-default"):
        runs[name] = run_policy(scenario, load_policy(name))
    png = plot_scenario(scenario.name, runs, out_dir / "timeline.png")
    doc = results_json([(path, scenario)], {scenario.name: runs})
    json_path.write_text(_json.dumps(doc, indent=2))
    table = Table(title=f"{scenario.name}: {scenario.description}", title_justify="left")
    for col in ("policy", "cost $", "SLO-miss s", "scale actions", "reversals"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in runs.items():
        m = r.metrics
        table.add_row(
            name, f"{m.cost:.2f}", f"{m.slo_miss_seconds:.0f}", str(m.scale_actions), str(m.reversals)
        )
    Console().print(table)
    Console().print(f"timeline: {png}\nsummary: {json_path}", highlight=False)


def main() -> None:  # pragma: no cover - console-script shim
    app()
