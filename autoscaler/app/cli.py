"""The ``raytide`` command line.

Each command imports what it needs when it runs: ``raytide --help``, ``policies`` and ``check-config`` must
not pay for scikit-learn, SciPy or Ray. Every message goes out as plain text (no rich markup), without URL
credentials or control characters, and every failure ends in a documented exit code with one message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from autoscaler.core.config import Config
    from autoscaler.types import Snapshot

app = typer.Typer(
    name="raytide",
    help="Adaptive autoscaling for Ray clusters running streaming CPU+GPU data pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help formatter costs more start-up time than the rest of `--help` together.
    rich_markup_mode=None,
)
err = Console(stderr=True)

EXIT_CONFIG = 2
EXIT_SOURCE = 3
EXIT_MISSING_METRICS = 4
EXIT_STATE = 5


def _say(message: str, style: str = "", *, console: Console | None = None, one_line: bool = False) -> None:
    """Print ``message`` as text, never as markup: outside text (server answers, labels, configuration
    values) goes out with URL credentials masked and control characters removed."""
    from autoscaler.core.redact import printable, redact_text

    shown = printable(redact_text(message), newlines=not one_line)
    (console or err).print(Text(shown, style=style), highlight=False)


def _fail(code: int, message: str) -> typer.Exit:
    _say(message, "red")
    return typer.Exit(code)


def _parse_duration(text: str, *, positive: bool = False) -> float:
    from autoscaler.core.durations import DurationError, parse_duration

    try:
        return parse_duration(text, positive=positive)
    except DurationError as e:
        raise typer.BadParameter(str(e)) from None


def _load(config_path: Path | None) -> tuple[Config, str]:
    from autoscaler.app.config_file import load_config
    from autoscaler.core.config import EXAMPLE_CONFIG, parse_config

    if config_path is None:
        return parse_config(EXAMPLE_CONFIG, "<embedded default>"), "the embedded default configuration"
    return load_config(config_path), str(config_path)


@app.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="The raytide YAML configuration to check.")],
    load_plugins: Annotated[
        bool,
        typer.Option(
            "--load-plugins",
            help="Also import the policy plugin the file names and build it with its options (runs its "
            "code).",
        ),
    ] = False,
) -> None:
    """Validate a configuration file and report every problem with its path (and line) in the file.

    Checking runs none of the file's code: raytide's own policies are loaded to check their options, but a
    plugin (another package's installed policy, or a 'module:attr' reference) is only imported with
    --load-plugins; without it the reference is reported as not checked. Exit codes: 0 valid; 2 a problem.
    """
    from autoscaler.app.config_file import load_config
    from autoscaler.app.plugins import PolicyLoadError, check_policy
    from autoscaler.core.config import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise _fail(EXIT_CONFIG, str(e)) from None
    try:
        note = check_policy(cfg.policy.name, cfg.policy.options, load_plugins=load_plugins)
    except PolicyLoadError as e:
        raise _fail(EXIT_CONFIG, f"{config}: policy: {e}") from None
    _say(
        f"{config}: OK — {len(cfg.shapes)} node shape(s), {len(cfg.stages)} stage profile(s), "
        f"policy {cfg.policy.name!r}",
        console=Console(),
    )
    if note is not None:
        _say(f"note: {note}", "yellow")
    for warning in cfg.warnings():
        _say(f"warning: {warning}", "yellow")


def _ray_address(given: str | None) -> str | None:
    """``--ray-address``, else ``ray.address``, else ``RAY_ADDRESS``, else the local head's address file
    (what ``auto`` means, as in ``ray.init(address="auto")``)."""
    import os

    if given and given != "auto":
        return given
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto" and "://" not in env:
        return env
    current = Path("/tmp/ray/ray_current_cluster")
    try:
        text = current.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text.splitlines()[0].strip() if text else None


@app.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", help="The raytide YAML configuration.")],
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="GCS host:port, or 'auto' for the local head (default: ray.address, RAY_ADDRESS, auto).",
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option("--interval", help="Seconds between ticks (default: daemon.interval_seconds)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Run one tick, then exit.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and log what would be done; change nothing.")
    ] = False,
) -> None:
    """Run the autoscaling daemon: observe → decide → act → publish, every interval, until SIGTERM/SIGINT.

    On exit the resource floor stays in place, so a restart does not shrink the cluster. Exit codes: 0 ok;
    2 bad configuration; 3 Ray (GCS) or the metrics source unusable at start-up; 4 (--once) the tick was
    degraded; 5 the state file cannot be used.
    """
    import asyncio

    from autoscaler.adapters.http_endpoint import TokenFileError
    from autoscaler.app.config_file import load_config
    from autoscaler.app.plugins import PolicyLoadError, load_policy
    from autoscaler.app.wiring import WiringError, WiringOptions, wire
    from autoscaler.core.config import ConfigError
    from autoscaler.core.queries import PrometheusConfigError
    from autoscaler.ports import StateError

    if interval is not None and not (math.isfinite(interval) and interval > 0):
        raise typer.BadParameter("--interval must be a finite number > 0")
    try:
        cfg = load_config(config)
        policy = load_policy(cfg.policy.name, cfg.policy.options)
    except ConfigError as e:
        raise _fail(EXIT_CONFIG, str(e)) from None
    except PolicyLoadError as e:
        raise _fail(EXIT_CONFIG, f"{config}: policy: {e}") from None
    address = _ray_address(ray_address or cfg.ray.address)
    if address is None:
        raise _fail(
            EXIT_SOURCE,
            "no Ray cluster address: pass --ray-address HOST:PORT (the GCS, port 6379 by default), set "
            "ray.address in the configuration or RAY_ADDRESS, or run raytide on the Ray head node.",
        )
    try:
        wiring = wire(
            cfg, policy, WiringOptions(ray_address=address, dry_run=dry_run, interval_seconds=interval)
        )
    except WiringError as e:
        if e.part == "cluster":
            raise _fail(
                EXIT_SOURCE,
                f"cannot read the Ray cluster at {address}: {e}\nIs the Ray head running, and is the address "
                "the GCS's host:port (--ray-address / ray.address)?",
            ) from None
        if e.part == "actuator":
            raise _fail(EXIT_CONFIG, f"{config}: ray: {e}") from None
        raise _fail(EXIT_STATE, str(e)) from None

    async def main() -> int:
        async with wiring.daemon() as daemon:
            if wiring.endpoint_url is not None:
                _say(f"raytide: metrics and health on {wiring.endpoint_url}")
            await daemon.start()
            await daemon.run(max_ticks=1 if once else None)
        last = daemon.last
        if once and last is not None:
            _say(
                f"tick {last.tick}: targets {last.plan.targets()}"
                + (" (held)" if last.plan.held else "")
                + (f"; floor {last.floor}" if last.floor is not None else "")
                + (f"; drained {', '.join(last.drained)}" if last.drained else ""),
                console=Console(),
            )
            for line in last.errors:
                _say(f"  - {line}", one_line=True)
            return EXIT_MISSING_METRICS if last.degraded else 0
        return 0

    try:
        code = asyncio.run(main())
    except PrometheusConfigError as e:
        raise _fail(EXIT_CONFIG, f"{config}: prometheus: {e}") from None
    except StateError as e:
        raise _fail(EXIT_STATE, str(e)) from None
    except TokenFileError as e:
        raise _fail(EXIT_CONFIG, f"{config}: {e}") from None
    except OSError as e:
        raise _fail(EXIT_SOURCE, f"cannot start: {e}") from None
    finally:
        wiring.close()
    if code:
        raise typer.Exit(code)


@app.command("policies")
def policies() -> None:
    """List the installed policies (entry-point group ``raytide.policies``)."""
    from autoscaler.app.plugins import installed_policies
    from autoscaler.core.redact import printable

    out = Console()
    for name, target in installed_policies().items():
        out.print(
            Text(f"{printable(name, newlines=False)}\t{printable(target, newlines=False)}"), highlight=False
        )


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
    deadline: Annotated[
        str,
        typer.Option(
            metavar="SECONDS",
            help="Give up reading Prometheus after this long, retries included (seconds, or e.g. 1m); the "
            "message names the query still unanswered.",
        ),
    ] = "30s",
) -> None:
    """Dry run: what should this cluster look like, and why? Reads Prometheus, changes nothing.

    Exit codes: 0 plan made; 2 bad configuration; 3 Prometheus unreachable, failing or slower than
    --deadline; 4 metrics missing or unknown (the plan, if printed, holds the cluster as it is).
    """
    import asyncio
    import json
    import time

    from rich.progress import BarColumn, Progress, TextColumn

    from autoscaler.adapters.prometheus import PrometheusSource
    from autoscaler.app.plugins import PolicyLoadError, load_policy
    from autoscaler.app.recommend import (
        PROBE_QUERY,
        DeadlineExceeded,
        fetch_history,
        recommend_from,
        sample_times,
        within_deadline,
    )
    from autoscaler.app.report import recommendation_json, render_recommendation
    from autoscaler.core.config import ConfigError
    from autoscaler.core.queries import PrometheusConfigError
    from autoscaler.core.redact import redact_url

    history_s, step_s = _parse_duration(history), _parse_duration(step)
    deadline_s = _parse_duration(deadline, positive=True)
    if step_s <= 0:
        raise typer.BadParameter("--step must be > 0")
    try:
        times = sample_times(time.time(), history_s, step_s)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    try:
        cfg, source_name = _load(config)
        cfg = cfg.model_copy(update={"prometheus": cfg.prometheus.model_copy(update={"url": prometheus})})
        policy = load_policy(cfg.policy.name, cfg.policy.options)
    except ConfigError as e:
        raise _fail(EXIT_CONFIG, str(e)) from None
    except PolicyLoadError as e:
        raise _fail(EXIT_CONFIG, f"policy: {e}") from None
    if config is None and not as_json:
        _say(f"using {source_name} (shapes {', '.join(s.name for s in cfg.shapes)}); pass --config FILE")

    async def read(source: PrometheusSource) -> tuple[str | None, list[Snapshot]]:
        # One cheap probe first: an unreachable or failing server is a different fix from missing metrics.
        probe = await source.query(PROBE_QUERY)
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

    async def gather() -> tuple[str | None, list[Snapshot]]:
        async with PrometheusSource(config=cfg.prometheus) as source:
            return await within_deadline(read(source), deadline_s, source)

    try:
        failure, snapshots = asyncio.run(gather())
    except PrometheusConfigError as e:
        raise _fail(EXIT_CONFIG, f"prometheus: {e}") from None
    except DeadlineExceeded as e:
        raise _fail(EXIT_SOURCE, str(e)) from None
    if failure is not None:
        raise _fail(
            EXIT_SOURCE,
            f"Prometheus at {redact_url(prometheus)} is not usable: {failure}\n"
            "Check the URL (--prometheus), that the server is up, and the auth and TLS settings under "
            "'prometheus:' in the configuration.",
        )
    latest = snapshots[-1]
    rec = recommend_from(snapshots, cfg, policy)
    doc = recommendation_json(
        rec.snapshot, rec.decision, headroom=cfg.targets.headroom, warm_pool=rec.warm_pool
    )
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=False))
    else:
        render_recommendation(doc, Console())
    if not latest.stages:
        raise _fail(
            EXIT_MISSING_METRICS,
            "no pipeline stages found: Prometheus has no Ray Data operator metrics "
            "(ray_data_operator_queued_blocks). Is a Ray Data job running, and does Prometheus scrape "
            "Ray's exporters (/tmp/ray/prom_metrics_service_discovery.json)? For another exporter, override "
            "the templates under prometheus.queries.",
        )
    if latest.errors or not latest.inputs_complete:
        _say("some metrics are missing or unknown — the plan holds the cluster as it is:", "yellow")
        for line in latest.errors:
            _say(f"  - {line}", one_line=True)
        for st in latest.stages:
            for why in st.unknown_reasons():
                _say(f"  - {why}", one_line=True)
        raise typer.Exit(EXIT_MISSING_METRICS)


from autoscaler.app.simulate import simulate as _simulate  # noqa: E402  (registered after the core commands)

app.command("simulate")(_simulate)


@app.command("demo")
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the report (PNG + JSON) goes.")] = Path(
        "raytide-report"
    ),
    simulated: Annotated[
        bool,
        typer.Option("--simulated", help="No Ray: the simulated CPU→GPU pipeline under a step in load."),
    ] = False,
    autoscaler: Annotated[
        str, typer.Option("--autoscaler", help="Ray autoscaler version of the local cluster: v1 or v2.")
    ] = "v2",
    quick: Annotated[
        bool, typer.Option("--quick", help="One short burst instead of two (about 1.5 min instead of 2.5).")
    ] = False,
    time_limit: Annotated[
        float | None,
        typer.Option("--time-limit", help="Seconds the live demo may run at most (default 270; quick 170)."),
    ] = None,
) -> None:
    """Watch raytide drive a real local autoscaling Ray cluster: a bursty two-stage Ray Data pipeline (CPU
    decode → GPU inference actor pool) on fake cpu4/gpu1 nodes, a live view of backlog, nodes and decisions,
    then a PNG timeline and a JSON summary in --out. Stops every Ray process on this machine when done.

    With --simulated: no Ray, the simulator's 'step' scenario, throughput policy vs ray-default.
    """
    if simulated:
        _demo_simulated(out_dir)
        return
    if autoscaler not in ("v1", "v2"):
        raise typer.BadParameter("--autoscaler must be v1 or v2")
    if time_limit is not None and not time_limit > 0:
        raise typer.BadParameter("--time-limit must be > 0")
    from autoscaler.demo.options import DemoOptions
    from autoscaler.demo.runner import run_demo

    version: Literal["v1", "v2"] = "v1" if autoscaler == "v1" else "v2"
    extra: dict[str, Any] = {"out_dir": out_dir, "autoscaler": version}
    if time_limit is not None:
        extra["time_limit_seconds"] = time_limit
    opts = DemoOptions.quick(**extra) if quick else DemoOptions(**extra)
    code = run_demo(opts)
    if code:
        raise typer.Exit(code)


def _demo_simulated(out_dir: Path) -> None:
    """The simulated demo: a CPU→GPU pipeline under a step in load, the default policy against an emulation
    of Ray's own autoscaling, with a PNG timeline and a JSON report."""
    import json

    from rich.table import Table

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "summary.json"
    err.print(
        "raytide demo: simulating the 'step' scenario (CPU decode → GPU inference, load 100/s → 300/s → "
        "100/s) under the throughput policy and under ray-default (Ray's autoscaler + Ray Data)…"
    )
    # Imported after the message: the simulator takes a moment to import.
    from autoscaler.app.plugins import load_policy
    from autoscaler.app.simulate import results_json
    from autoscaler.sim.plot import plot_scenario
    from autoscaler.sim.results import run_policy
    from autoscaler.sim.scenario import resolve_scenarios

    (path, scenario), *_ = resolve_scenarios(["step"])
    runs = {}
    for name in ("throughput", "ray-default"):
        runs[name] = run_policy(scenario, load_policy(name))
    png = plot_scenario(scenario.name, runs, out_dir / "timeline.png")
    doc = results_json([(path, scenario)], {scenario.name: runs})
    json_path.write_text(json.dumps(doc, indent=2))
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
