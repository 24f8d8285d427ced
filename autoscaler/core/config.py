"""The YAML configuration, validated by pydantic, with every problem reported at its path in the file."""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from autoscaler.core.config_yaml import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from autoscaler.core.config_yaml import MAX_YAML_NODES as MAX_YAML_NODES
from autoscaler.core.config_yaml import ConfigError as ConfigError
from autoscaler.core.config_yaml import ConfigProblem as ConfigProblem
from autoscaler.core.config_yaml import validate_yaml as validate_yaml
from autoscaler.core.durations import parse_duration
from autoscaler.core.regex_guard import check_regex
from autoscaler.types import NodeShape, frozen_map

_DAY = 86400.0
_BIG = 1e9
"""Upper bound of money and rates: past it a number is a typing mistake, not a cluster."""
_AMOUNT = 1e15
"""Upper bound of a resource amount (Ray counts ``memory`` in bytes: a PiB)."""
_MANY = 100_000
"""Upper bound of node counts."""


class _Strict(BaseModel):
    # No inf/NaN anywhere: an infinite price or timeout passes a ``ge=0`` check and then removes a bound.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ShapeConfig(_Strict):
    """A node shape: the name must match the Ray node type (``available_node_types`` key)."""

    name: str = Field(min_length=1)
    resources: dict[str, float]
    price_per_hour: float = Field(ge=0, le=_BIG)
    min: int = Field(default=0, ge=0, le=_MANY)
    max: int = Field(default=100, ge=0, le=_MANY)
    launch_seconds: float = Field(default=120.0, gt=0, le=_DAY)

    @field_validator("resources")
    @classmethod
    def _resources_positive(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("a node shape needs at least one resource")
        for name, amount in v.items():
            if not math.isfinite(amount) or not 0 <= amount <= _AMOUNT:
                raise ValueError(f"resource {name!r} must be a finite amount from 0 to 1e15, got {amount}")
        return v

    @model_validator(mode="after")
    def _min_le_max(self) -> ShapeConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self

    def to_shape(self) -> NodeShape:
        return NodeShape(
            name=self.name,
            resources=frozen_map(self.resources),
            price_per_hour=self.price_per_hour,
            min_count=self.min,
            max_count=self.max,
            launch_seconds=self.launch_seconds,
        )


class StageConfig(_Strict):
    """A pipeline stage profile: which Ray Data operator it is and what one task (slot) needs."""

    name: str = Field(min_length=1)
    operator: str | None = None
    """Regular expression matched (search) against the ``operator`` label; default: the name itself."""
    dataset: str | None = None
    """Regular expression matched against the ``dataset`` label; default: any dataset."""
    resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    prior_rate: dict[str, float] = Field(default_factory=dict)
    """Units of work per second one slot does on each shape, used until observations say otherwise."""
    max_slots: int | None = Field(default=None, ge=1, le=_MANY)

    @field_validator("operator", "dataset")
    @classmethod
    def _valid_regex(cls, v: str | None) -> str | None:
        return None if v is None else check_regex(v)

    @field_validator("resources")
    @classmethod
    def _resources_positive(cls, v: dict[str, float]) -> dict[str, float]:
        if not any(a > 0 for a in v.values()):
            raise ValueError("a stage slot must need some resource (e.g. CPU: 1)")
        for name, amount in v.items():
            if not math.isfinite(amount) or not 0 <= amount <= _AMOUNT:
                raise ValueError(f"resource {name!r} must be a finite amount from 0 to 1e15, got {amount}")
        return v

    @field_validator("prior_rate")
    @classmethod
    def _rates_positive(cls, v: dict[str, float]) -> dict[str, float]:
        for shape, rate in v.items():
            if not math.isfinite(rate) or not 0 < rate <= _BIG:
                raise ValueError(f"prior rate on {shape!r} must be a finite number in (0, 1e9], got {rate}")
        return v

    def operator_pattern(self) -> re.Pattern[str]:
        return re.compile(self.operator if self.operator is not None else re.escape(self.name))

    def dataset_pattern(self) -> re.Pattern[str] | None:
        return None if self.dataset is None else re.compile(self.dataset)


class TargetsConfig(_Strict):
    drain_seconds: float = Field(default=120.0, gt=0, le=7 * _DAY)
    """A backlog should be worked off within this time."""
    headroom: float = Field(default=0.2, ge=0, le=10)
    """Extra capacity on top of the rate the stage needs (0.2 = 20%)."""
    scale_up_deadband: float = Field(default=0.5, ge=0, le=1)
    """Scale up only once the nodes there are could not serve the demand with this share of the headroom
    used up (0.5: still add nodes while half the headroom is left; 0: react to any shortfall of headroom)."""
    scale_down_deadband: float = Field(default=0.5, ge=0, le=10)
    """Scale down only once the nodes there are could serve this much more than the demand, headroom
    included (0.5: 50% more, i.e. they would run below 1 / (1.5 × (1 + headroom)) of their capacity; 0:
    follow every drop). Keeps capacity bought for a backlog or a noisy peak instead of flapping."""


class BoundsConfig(_Strict):
    max_nodes: int = Field(default=1000, ge=0, le=_MANY)
    budget_per_hour: float = Field(default=math.inf, ge=0, allow_inf_nan=True)
    """Infinite (``.inf``, the default) for no budget."""
    max_step_up: int = Field(default=10, ge=1, le=_MANY)
    """At most this many nodes added per shape in one tick."""
    max_step_down: int = Field(default=2, ge=1, le=_MANY)
    """At most this many nodes removed per shape in one tick."""
    scale_down_window_seconds: float = Field(default=300.0, ge=0, le=_DAY)
    """Scale down only after every plan in this window asked for less."""


class PrometheusConfig(_Strict):
    url: str | None = None
    bearer_token: str | None = None
    bearer_token_file: Path | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False
    timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    retries: int = Field(default=2, ge=0, le=10)
    staleness_seconds: float = Field(default=60.0, gt=0, le=_DAY)
    """A sample older than this is unknown, not a value."""
    rate_window: str = Field(default="1m", pattern=r"^[0-9]+(ms|s|m|h)$")
    """PromQL's ``rate()`` window, substituted into the queries as written; longer than 0."""
    queries: dict[str, str] = Field(default_factory=dict)
    """Overrides of the PromQL templates, by template name (see docs/configuration.md)."""

    @model_validator(mode="after")
    def _auth_consistent(self) -> PrometheusConfig:
        if self.bearer_token and self.bearer_token_file:
            raise ValueError("give bearer_token or bearer_token_file, not both")
        if (self.bearer_token or self.bearer_token_file) and self.username:
            raise ValueError("give bearer token auth or basic auth (username), not both")
        if (self.password or self.password_file) and not self.username:
            raise ValueError("a password needs a username")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")
        return self

    @field_validator("rate_window")
    @classmethod
    def _window_positive(cls, v: str) -> str:
        parse_duration(v, positive=True)
        return v

    @property
    def rate_window_seconds(self) -> float:
        return parse_duration(self.rate_window)


class PolicyConfig(_Strict):
    name: str = "throughput"
    """An installed policy (``raytide policies``) or a ``module:attr`` reference."""
    options: dict[str, Any] = Field(default_factory=dict)


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine: ``localhost`` or a loopback address. Any other
    name, and the wildcard addresses (``0.0.0.0``, ``::``, empty), reach beyond it."""
    name = host.strip().rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class DaemonConfig(_Strict):
    """How ``raytide run`` runs: the tick, its own endpoint, its state file, its logs."""

    interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    """One tick (observe → decide → act → publish) starts this often."""
    observe_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    """A metrics query round or a GCS read slower than this counts as failed for the tick (hold)."""
    act_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """A floor or drain call slower than this counts as failed (a drain's outcome is checked later)."""
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(default=9464, ge=0, le=65535)
    """Port of ``/metrics``, ``/healthz`` and ``/readyz``; null turns the endpoint off, 0 picks a free one."""
    http_token_file: Path | None = None
    """A file holding the bearer token ``POST /nudge`` needs (``Authorization: Bearer <token>``), read at
    start. Without one, ``/nudge`` is open on a loopback ``http_host`` and refused (403) beyond it."""
    state_path: Path | None = None
    """The SQLite state file; default ``$XDG_STATE_HOME/raytide/state.db`` (``~/.local/state/...``)."""
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    drain_share_per_tick: float = Field(default=0.25, gt=0, le=1)
    """At most this share of a shape's nodes (at least one) is drained per tick."""
    drain_confirm_seconds: float = Field(default=120.0, gt=0, le=_DAY)
    """An accepted drain whose node is still alive after this long is recorded as abandoned."""
    floor_grace_seconds: float = Field(default=60.0, gt=0, le=_DAY)
    """A shape with fewer nodes than its floor and none launching this long makes the daemon degraded (Ray
    does not say when its autoscaler ignores a floor; see ``autoscaler/core/floor_watch.py``)."""

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant, one line each (``check-config`` prints them)."""
        out: list[str] = []
        if self.http_port is None:
            if self.http_token_file is not None:
                out.append("daemon.http_token_file is set but the endpoint is off (http_port: null)")
        elif not is_loopback_host(self.http_host) and self.http_token_file is None:
            out.append(
                f"daemon.http_host {self.http_host!r} is not a loopback address and daemon.http_token_file "
                "is not set: POST /nudge will be refused (403); /metrics, /healthz and /readyz are served "
                "to whoever reaches the port"
            )
        return out


class RayConfig(_Strict):
    """The Ray cluster the daemon reads and acts on."""

    address: str | None = None
    """GCS ``host:port``; default ``RAY_ADDRESS``, else the local head's ``/tmp/ray/ray_current_cluster``."""
    floor_form: Literal["auto", "resource", "label"] = "auto"
    """How the floor names node types (see ``autoscaler/adapters/ray/actuator.py``); ``resource`` needs the
    ``raytide-node-type:<type>: 1`` resource on every node type, ``label`` works on autoscaler v2 only."""
    label_key: str = "raytide.io/node-type"
    use_coordinator: bool | Literal["auto"] = "auto"
    """Register with Ray Data's ``AutoscalingCoordinator`` when it exists (``auto``), or always own the floor
    (false)."""
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class MqttConfig(_Strict):
    """Decision and health events over MQTT (off unless ``enabled``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str | None = None
    """Topic prefix; default ``raytide/<cluster>``."""
    cluster: str = Field(default="ray", min_length=1)
    """The cluster's name in topics and events."""
    username: str | None = None
    password_file: Path | None = None


class WarmPoolConfig(_Strict):
    """Standby nodes held by placeholder placement groups, claimed in well under a second (issue 5)."""

    enabled: bool = False
    budget_per_hour: float = Field(default=math.inf, ge=0, allow_inf_nan=True)
    """What standby nodes may cost together; ``bounds.budget_per_hour`` still caps plan + pool."""
    percentile: float = Field(default=0.95, ge=0, le=1)
    """The pool covers this quantile of the plan's rises within one cold-launch lead time."""
    launch_percentile: float = Field(default=0.9, ge=0, le=1)
    """The lead time is this quantile of the observed launch times (``launch_seconds`` before any)."""
    history_seconds: float = Field(default=3600.0, gt=0, le=7 * _DAY)
    """How far back the plan's rises are looked at; a quiet stretch this long empties the pool to ``min``."""
    min: dict[str, int] = Field(default_factory=dict)
    """Shape → standby nodes kept whatever the history says (still within the caps)."""
    max: dict[str, int] = Field(default_factory=dict)
    """Shape → at most this many standby nodes."""
    claim_waiting: bool = True
    """Claim standby nodes for work waiting in Ray (GCS pending demand) between ticks, not only for plans."""
    claim_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    """How often the GCS is read for waiting work while standby nodes are ready (a nudge reads it at once)."""
    refill_delay_seconds: float = Field(default=3.0, ge=0, le=3600)
    """A shape's pool is refilled this long after its last claim, so a refill cannot take the claimed node
    back before the waiting work lands on it."""

    @field_validator("min", "max")
    @classmethod
    def _non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        for name, n in v.items():
            if not 0 <= n <= _MANY:
                raise ValueError(f"{name!r}: must be from 0 to {_MANY}, got {n}")
        return v


class Config(_Strict):
    shapes: list[ShapeConfig] = Field(min_length=1)
    stages: list[StageConfig] = Field(default_factory=list)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    bounds: BoundsConfig = Field(default_factory=BoundsConfig)
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    warm_pool: WarmPoolConfig = Field(default_factory=WarmPoolConfig)
    default_stage_resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    """What one slot of a stage that has no profile needs."""
    ignore_operators: str = r"^(Input|InputDataBuffer)(_\d+)?$"
    """Operators matching this regular expression are not stages (Ray Data's internal input buffers)."""

    @field_validator("ignore_operators")
    @classmethod
    def _valid_regex(cls, v: str) -> str:
        return check_regex(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [s.name for s in self.shapes]
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        if dupes:
            raise ValueError(f"node shape names must be unique; repeated: {', '.join(dupes)}")
        stage_names = [s.name for s in self.stages]
        sdupes = sorted(n for n, k in Counter(stage_names).items() if k > 1)
        if sdupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(sdupes)}")
        known = set(names)
        for st in self.stages:
            bad = sorted(set(st.prior_rate) - known)
            if bad:
                raise ValueError(f"stage {st.name!r}: prior_rate names unknown shapes: {', '.join(bad)}")
            if not any(_fits(st.resources, sh.resources) for sh in self.shapes):
                raise ValueError(
                    f"stage {st.name!r}: one slot needs {st.resources}, which fits on no node shape"
                )
        for what, table in (("min", self.warm_pool.min), ("max", self.warm_pool.max)):
            bad = sorted(set(table) - known)
            if bad:
                raise ValueError(f"warm_pool.{what} names unknown shapes: {', '.join(bad)}")
        for name, lo in self.warm_pool.min.items():
            if lo > self.warm_pool.max.get(name, lo):
                raise ValueError(
                    f"warm_pool: min for {name!r} ({lo}) is over its max ({self.warm_pool.max[name]})"
                )
        min_nodes = sum(s.min for s in self.shapes)
        if min_nodes > self.bounds.max_nodes:
            raise ValueError(
                f"the shapes' minimum counts add up to {min_nodes} nodes, over bounds.max_nodes "
                f"({self.bounds.max_nodes})"
            )
        min_cost = sum(s.min * s.price_per_hour for s in self.shapes)
        if min_cost > self.bounds.budget_per_hour:
            raise ValueError(
                f"the shapes' minimum counts cost {min_cost:.2f} $/h, over bounds.budget_per_hour "
                f"({self.bounds.budget_per_hour})"
            )
        return self

    def node_shapes(self) -> tuple[NodeShape, ...]:
        return tuple(s.to_shape() for s in self.shapes)

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant, one line each (``check-config`` prints them)."""
        return self.daemon.warnings()

    _by_name: tuple[list[StageConfig], dict[str, StageConfig]] | None = PrivateAttr(default=None)

    def stage_profile(self, name: str) -> StageConfig | None:
        # A decision looks every stage up several times: an index instead of a scan per lookup. Keyed on
        # the stages list itself, so a copy with other stages (``model_copy(update=...)``) re-indexes.
        cached = self._by_name
        if cached is None or cached[0] is not self.stages:
            cached = self._by_name = (self.stages, {s.name: s for s in self.stages})  # names are unique
        return cached[1].get(name)

    def stage_resources(self, name: str) -> Mapping[str, float]:
        profile = self.stage_profile(name)
        return frozen_map(profile.resources if profile else self.default_stage_resources)


def _fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(k, 0.0) >= v for k, v in need.items() if v > 0)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raise ConfigError listing every problem with its path and line."""
    return validate_yaml(text, source, Config)


EXAMPLE_CONFIG = """\
# raytide configuration — see docs/configuration.md for every field.
shapes:
  - name: cpu4            # must match a Ray node type name
    resources: {CPU: 4}
    price_per_hour: 0.20
    min: 0
    max: 8
    launch_seconds: 60
  - name: gpu1
    resources: {CPU: 2, GPU: 1}
    price_per_hour: 1.00
    min: 0
    max: 4
    launch_seconds: 120
stages:
  - name: decode
    operator: "MapBatches\\\\(decode\\\\)"
    resources: {CPU: 1}
  - name: infer
    operator: "MapBatches\\\\(Infer\\\\)"
    resources: {CPU: 1, GPU: 1}
targets:
  drain_seconds: 60
  headroom: 0.2
bounds:
  max_nodes: 12
  budget_per_hour: 10
  scale_down_window_seconds: 300
"""
