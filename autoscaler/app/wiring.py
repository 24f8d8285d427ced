"""Builds the daemon and its adapters from a configuration: the one wiring behind ``raytide run`` and
``raytide demo``.

:func:`wire` does the blocking part (reads the cluster once, forms the actuator, opens the state store, sets
up logging) and raises :class:`WiringError` naming the part that failed; :meth:`Wiring.daemon` starts the
metrics source, MQTT events and the HTTP endpoint, yields the :class:`~autoscaler.daemon.Daemon`, and closes
them again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from autoscaler.adapters.http_endpoint import HttpEndpoint
from autoscaler.adapters.logging_setup import configure_logging
from autoscaler.adapters.mqtt_events import EventPublisher
from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.adapters.ray.actuator import ActuatorError, RayActuator
from autoscaler.adapters.ray.cluster_state import ClusterStateError, read_cluster_state
from autoscaler.adapters.ray.placeholders import RayWarmPool
from autoscaler.adapters.scrape import FileDiscovery, RayExporterSource
from autoscaler.adapters.state_store import StateStore, StateStoreError
from autoscaler.adapters.systemd_notify import from_environment
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.app.config_file import state_path as configured_state_path
from autoscaler.core.config import Config
from autoscaler.core.policy_api import Policy
from autoscaler.daemon import Daemon, DryRunActuator
from autoscaler.ports import Actuator, ClusterState, WarmPool

__all__ = ["Wiring", "WiringError", "WiringOptions", "wire"]

Part = Literal["cluster", "actuator", "state"]


class WiringError(Exception):
    """A part of the daemon that cannot be built: ``part`` says which, the message says why."""

    def __init__(self, part: Part, message: str) -> None:
        super().__init__(message)
        self.part: Part = part


@dataclass(frozen=True, slots=True, kw_only=True)
class WiringOptions:
    """How one daemon is wired, beyond its configuration."""

    ray_address: str
    """The GCS's host:port."""
    dry_run: bool = False
    """Decide and log, change nothing: no floor, no drains, no warm pool, a scratch state file."""
    interval_seconds: float | None = None
    """Seconds between ticks; None: ``daemon.interval_seconds``."""
    state_path: Path | None = None
    """The SQLite state file; None: the configuration's (``daemon.state_path``, else under XDG_STATE_HOME)."""
    configure_logging: bool = True
    """Send log records to stderr as ``daemon.log_format`` / ``daemon.log_level`` say."""


class Wiring:
    """The adapters of one daemon. Close it (or use it as a context manager) to close the state store."""

    def __init__(
        self,
        *,
        config: Config,
        policy: Policy,
        options: WiringOptions,
        actuator: Actuator,
        warm_pool: WarmPool | None,
        store: StateStore,
        scratch: tempfile.TemporaryDirectory[str] | None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.options = options
        self.actuator = actuator
        self.warm_pool = warm_pool
        self.store = store
        self._scratch = scratch
        self.telemetry: Telemetry | None = None
        """raytide's own metrics and health for the daemon :meth:`daemon` built last."""
        self.endpoint_url: str | None = None
        """Where ``/metrics`` and the health endpoints are served while :meth:`daemon` runs (None: off)."""

    def read_cluster(self) -> ClusterState:
        return read_cluster_state(self.options.ray_address, timeout_s=self.config.ray.timeout_seconds)

    def metrics_source(self) -> PrometheusSource | RayExporterSource:
        """A Prometheus server when ``prometheus.url`` is set, else Ray's exporters scraped directly."""
        if self.config.prometheus.url:
            return PrometheusSource(config=self.config.prometheus)
        return RayExporterSource(config=self.config.prometheus, discovery=FileDiscovery())

    @asynccontextmanager
    async def daemon(self) -> AsyncIterator[Daemon]:
        """The daemon with its metrics source, MQTT events and HTTP endpoint started; all closed on exit.
        It tells systemd how it is doing when ``$NOTIFY_SOCKET`` is set.

        The daemon is constructed, not started: the caller awaits ``start()`` and ``run()`` (or ``tick()``).
        """
        cfg = self.config
        interval = self.options.interval_seconds
        async with AsyncExitStack() as stack:
            source = self.metrics_source()
            stack.push_async_callback(source.aclose)
            tick_seconds = interval or cfg.daemon.interval_seconds
            telemetry = Telemetry(tick_interval_seconds=tick_seconds)
            self.telemetry = telemetry
            events: EventPublisher | None = None
            if cfg.mqtt.enabled:
                password = (
                    cfg.mqtt.password_file.read_text(encoding="utf-8").strip()
                    if cfg.mqtt.password_file
                    else None
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
                stack.push_async_callback(events.aclose)
            nudge_to: list[Daemon] = []
            if cfg.daemon.http_port is not None:
                endpoint = HttpEndpoint(
                    registry=telemetry.registry,
                    health=telemetry,
                    host=cfg.daemon.http_host,
                    port=cfg.daemon.http_port,
                    on_nudge=lambda: nudge_to[0].nudge() if nudge_to else None,
                    token_file=cfg.daemon.http_token_file,
                )
                await endpoint.start()
                stack.push_async_callback(endpoint.aclose)
                self.endpoint_url = endpoint.url
                stack.callback(setattr, self, "endpoint_url", None)
            daemon = Daemon(
                config=cfg,
                policy=self.policy,
                source=source,
                cluster=self.read_cluster,
                actuator=self.actuator,
                store=self.store,
                telemetry=telemetry,
                events=events,
                interval_seconds=interval,
                warm_pool=self.warm_pool,
                service=from_environment(os.environ, interval_seconds=tick_seconds),
            )
            nudge_to.append(daemon)
            yield daemon

    def close(self) -> None:
        self.store.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def wire(
    config: Config,
    policy: Policy,
    options: WiringOptions,
    *,
    actuator: Actuator | None = None,
    warm_pool: WarmPool | None = None,
) -> Wiring:
    """Check the cluster is readable, build the actuator and the warm pool, open the state store.

    ``actuator`` and ``warm_pool`` replace the ones built from the configuration (a benchmark's timed
    subclasses). Raises :class:`WiringError`.
    """
    address = options.ray_address
    try:
        read_cluster_state(address, timeout_s=config.ray.timeout_seconds)
    except ClusterStateError as e:
        raise WiringError("cluster", str(e)) from None

    if actuator is None:
        if options.dry_run:
            actuator = DryRunActuator()
        else:
            ray_actuator = RayActuator.from_shapes(
                address,
                config.node_shapes(),
                floor_form=config.ray.floor_form,
                label_key=config.ray.label_key,
                use_coordinator=config.ray.use_coordinator,
                timeout_s=config.ray.timeout_seconds,
            )
            try:
                ray_actuator.form()
            except ActuatorError as e:
                raise WiringError("actuator", str(e)) from None
            actuator = ray_actuator
    if warm_pool is None and config.warm_pool.enabled and isinstance(actuator, RayActuator):
        warm_pool = RayWarmPool(actuator.ray_driver, {s.name: s.resources for s in config.node_shapes()})

    scratch = tempfile.TemporaryDirectory(prefix="raytide-dry-run-") if options.dry_run else None
    if scratch is not None:
        path = Path(scratch.name) / "state.db"
    else:
        path = options.state_path or configured_state_path(config.daemon)
    try:
        store = StateStore(path)
    except StateStoreError as e:
        if scratch is not None:
            scratch.cleanup()
        raise WiringError("state", str(e)) from None

    if options.configure_logging:
        configure_logging(config.daemon.log_format, config.daemon.log_level)
    return Wiring(
        config=config,
        policy=policy,
        options=options,
        actuator=actuator,
        warm_pool=warm_pool,
        store=store,
        scratch=scratch,
    )
