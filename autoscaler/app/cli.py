"""The ``raytide`` command line."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from autoscaler.app.config_file import load_config
from autoscaler.app.config_file import state_path as config_state_path
from autoscaler.app.plugins import PolicyLoadError, installed_policies, load_policy
from autoscaler.core.config import EXAMPLE_CONFIG, Config, ConfigError, parse_config
from autoscaler.core.durations import DurationError, parse_duration
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
    try:
        return parse_duration(text)
    except DurationError as e:
        raise typer.BadParameter(str(e)) from None


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


EXIT_STATE = 5


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


def _fail(code: int, message: str) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


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
    import tempfile

    from autoscaler.adapters.logging_setup import configure_logging
    from autoscaler.adapters.ray.actuator import ActuatorError, RayActuator
    from autoscaler.adapters.ray.cluster_state import ClusterStateError, read_cluster_state
    from autoscaler.adapters.ray.placeholders import RayWarmPool
    from autoscaler.adapters.state_store import StateStore, StateStoreError
    from autoscaler.adapters.telemetry import Telemetry
    from autoscaler.core.queries import PrometheusConfigError
    from autoscaler.daemon import Daemon, DryRunActuator
    from autoscaler.ports import Actuator, ClusterState, MetricsSource

    try:
        cfg = load_config(config)
        policy = load_policy(cfg.policy.name, cfg.policy.options)
    except ConfigError as e:
        raise _fail(EXIT_CONFIG, str(e)) from None
    except PolicyLoadError as e:
        raise _fail(EXIT_CONFIG, f"{config}: policy: {e}") from None
    if interval is not None and not interval > 0:
        raise typer.BadParameter("--interval must be > 0")
    address = _ray_address(ray_address or cfg.ray.address)
    if address is None:
        raise _fail(
            EXIT_SOURCE,
            "no Ray cluster address: pass --ray-address HOST:PORT (the GCS, port 6379 by default), set "
            "ray.address in the configuration or RAY_ADDRESS, or run raytide on the Ray head node.",
        )
    timeout_s = cfg.ray.timeout_seconds
    try:
        read_cluster_state(address, timeout_s=timeout_s)
    except ClusterStateError as e:
        raise _fail(
            EXIT_SOURCE,
            f"cannot read the Ray cluster at {address}: {e}\nIs the Ray head running, and is the address "
            "the GCS's host:port (--ray-address / ray.address)?",
        ) from None

    actuator: Actuator
    if dry_run:
        actuator = DryRunActuator()
    else:
        ray_actuator = RayActuator.from_shapes(
            address,
            cfg.node_shapes(),
            floor_form=cfg.ray.floor_form,
            label_key=cfg.ray.label_key,
            use_coordinator=cfg.ray.use_coordinator,
            timeout_s=timeout_s,
        )
        try:
            ray_actuator.form()
        except ActuatorError as e:
            raise _fail(EXIT_CONFIG, f"{config}: ray: {e}") from None
        actuator = ray_actuator

    warm_pool: RayWarmPool | None = None
    if cfg.warm_pool.enabled and not dry_run:
        warm_pool = RayWarmPool(ray_actuator.ray_driver, {s.name: s.resources for s in cfg.node_shapes()})

    scratch = tempfile.TemporaryDirectory(prefix="raytide-dry-run-") if dry_run else None
    state_path = Path(scratch.name) / "state.db" if scratch is not None else config_state_path(cfg.daemon)
    try:
        store = StateStore(state_path)
    except StateStoreError as e:
        raise _fail(EXIT_STATE, str(e)) from None

    def read_cluster() -> ClusterState:
        return read_cluster_state(address, timeout_s=timeout_s)

    async def main() -> int:
        from autoscaler.adapters.http_endpoint import HttpEndpoint
        from autoscaler.adapters.mqtt_events import EventPublisher

        source: MetricsSource
        closer: Any
        if cfg.prometheus.url:
            from autoscaler.adapters.prometheus import PrometheusSource

            prom = PrometheusSource(config=cfg.prometheus)
            source, closer = prom, prom
        else:
            from autoscaler.adapters.scrape import FileDiscovery, RayExporterSource

            scrape = RayExporterSource(config=cfg.prometheus, discovery=FileDiscovery())
            source, closer = scrape, scrape
        telemetry = Telemetry(tick_interval_seconds=interval or cfg.daemon.interval_seconds)
        events: EventPublisher | None = None
        if cfg.mqtt.enabled:
            password = (
                cfg.mqtt.password_file.read_text(encoding="utf-8").strip() if cfg.mqtt.password_file else None
            )
            events = EventPublisher(
                cluster=cfg.mqtt.cluster,
                host=cfg.mqtt.host,
                port=cfg.mqtt.port,
                prefix=cfg.mqtt.prefix,
                username=cfg.mqtt.username,
                password=password,
                hooks=telemetry,
            )
            await events.start()
        endpoint: HttpEndpoint | None = None
        nudge_to: list[Daemon] = []
        if cfg.daemon.http_port is not None:
            endpoint = HttpEndpoint(
                registry=telemetry.registry,
                health=telemetry,
                host=cfg.daemon.http_host,
                port=cfg.daemon.http_port,
                on_nudge=lambda: nudge_to[0].nudge() if nudge_to else None,
            )
            await endpoint.start()
            err.print(f"raytide: metrics and health on {endpoint.url}", highlight=False)
        daemon = Daemon(
            config=cfg,
            policy=policy,
            source=source,
            cluster=read_cluster,
            actuator=actuator,
            store=store,
            telemetry=telemetry,
            events=events,
            interval_seconds=interval,
            warm_pool=warm_pool,
        )
        nudge_to.append(daemon)
        try:
            await daemon.start()
            await daemon.run(max_ticks=1 if once else None)
        finally:
            if endpoint is not None:
                await endpoint.aclose()
            if events is not None:
                await events.aclose()
            await closer.aclose()
        last = daemon.last
        if once and last is not None:
            Console().print(
                f"tick {last.tick}: targets {last.plan.targets()}"
                + (" (held)" if last.plan.held else "")
                + (f"; floor {last.floor}" if last.floor is not None else "")
                + (f"; drained {', '.join(last.drained)}" if last.drained else ""),
                highlight=False,
            )
            for line in last.errors:
                err.print(f"  - {line}", highlight=False)
            return EXIT_MISSING_METRICS if last.degraded else 0
        return 0

    configure_logging(cfg.daemon.log_format, cfg.daemon.log_level)
    try:
        code = asyncio.run(main())
    except PrometheusConfigError as e:
        raise _fail(EXIT_CONFIG, f"{config}: prometheus: {e}") from None
    except OSError as e:
        raise _fail(EXIT_SOURCE, f"cannot start: {e}") from None
    finally:
        store.close()
        if scratch is not None:
            scratch.cleanup()
    if code:
        raise typer.Exit(code)


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
    from autoscaler.adapters.prometheus import PrometheusSource
    from autoscaler.app.recommend import fetch_history, recommend_from, sample_times
    from autoscaler.app.report import recommendation_json, render_recommendation
    from autoscaler.core.queries import PrometheusConfigError

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
    doc = recommendation_json(
        rec.snapshot, rec.decision, headroom=cfg.targets.headroom, warm_pool=rec.warm_pool
    )
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
    from autoscaler.demo.live import DemoOptions, run_demo

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
    import json as _json

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "summary.json"
    err.print(
        "raytide demo: simulating the 'step' scenario (CPU decode → GPU inference, load 100/s → 300/s → "
        "100/s) under the throughput policy and under ray-default (Ray's autoscaler + Ray Data)…"
    )
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
