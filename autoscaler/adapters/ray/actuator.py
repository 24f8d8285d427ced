"""Make the Ray autoscaler launch exactly the node types raytide chose, and drain idle nodes.

:meth:`RayActuator.set_target` turns node counts into one resource floor, one bundle per node, each naming
its type by a marker resource or a label selector; it goes through Ray Data's ``AutoscalingCoordinator`` when
that exists. :meth:`RayActuator.drain` drains an idle node and never forces. All methods block; the daemon
calls them off its event loop. The design and the Ray facts behind it: docs/architecture.md, "Acting on Ray".
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from autoscaler.adapters.ray.cluster_state import (
    DEFAULT_TIMEOUT_S,
    NODE_TYPE_LABEL,
    ClusterStateError,
    detect_autoscaler_version,
    forget_gcs_client,
    gcs_client,
    node_type_resource,
)
from autoscaler.ports import AutoscalerVersion, DrainResult
from autoscaler.types import NodeShape, Resources

__all__ = [
    "COORDINATOR_NAME",
    "COORDINATOR_NAMESPACE",
    "ActuatorError",
    "DrainResult",
    "FloorForm",
    "FloorStatus",
    "RayActuator",
    "detect_autoscaler_version",
    "floor_bundles",
]

log = logging.getLogger(__name__)

COORDINATOR_NAME = "AutoscalingCoordinator"
COORDINATOR_NAMESPACE = "AutoscalingCoordinator"
DEFAULT_REQUESTER_ID = "raytide"
DEFAULT_EXPIRE_AFTER_S = 180.0
"""Ray Data's own default (``RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S``); the daemon refreshes far more
often."""

FloorForm = Literal["resource", "label"]
Channel = Literal["coordinator", "direct"]

_V1_FLOOR_KEY = b"autoscaler_resource_request"  # ray_constants.AUTOSCALER_RESOURCE_REQUEST_CHANNEL
_DRIVER_RETRY_S = 60.0
_GCS_NODE_ALIVE = 0  # gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE
_NODE_ID_RE = re.compile(r"[0-9a-f]{56}")
_LABEL_BUNDLE_RESOURCES = ("CPU", "GPU")


class ActuatorError(RuntimeError):
    """The floor or a drain could not be expressed or delivered; nothing is known to have changed."""


@dataclass(frozen=True, slots=True)
class FloorStatus:
    """What :meth:`RayActuator.set_target` asked of the autoscaler, and through which channel."""

    counts: Mapping[str, int]
    form: FloorForm
    channel: Channel
    autoscaler_version: AutoscalerVersion
    bundles: tuple[Resources, ...]
    label_selectors: tuple[Mapping[str, str], ...]
    changed: bool
    """False when the same floor was already in place (the call only refreshed it)."""
    notes: tuple[str, ...] = ()


def floor_bundles(
    counts: Mapping[str, int],
    shapes: Mapping[str, Resources],
    form: FloorForm,
    *,
    label_key: str = NODE_TYPE_LABEL,
) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
    """The bundles (and per-bundle label selectors) that ask for exactly ``counts`` nodes per type.

    Pure and deterministic: types in name order, one bundle per node.
    """
    bundles: list[dict[str, float]] = []
    selectors: list[dict[str, str]] = []
    for name in sorted(counts):
        n = counts[name]
        if n == 0:
            continue
        if form == "resource":
            bundle = {node_type_resource(name): 1.0}
            selector: dict[str, str] = {}
        else:
            bundle = _more_than_half(name, shapes[name])
            selector = {label_key: name}
        bundles.extend(dict(bundle) for _ in range(n))
        selectors.extend(dict(selector) for _ in range(n))
    return bundles, selectors


def _more_than_half(name: str, resources: Resources) -> dict[str, float]:
    bundle: dict[str, float] = {}
    for r in _LABEL_BUNDLE_RESOURCES:
        cap = float(resources.get(r, 0.0))
        if cap > 0:
            bundle[r] = float(math.floor(cap / 2) + 1) if cap >= 1 else cap
    if not bundle:
        raise ActuatorError(
            f"node type {name!r} has no CPU or GPU, so a label floor cannot pin one bundle per node; "
            f"give it the resource {node_type_resource(name)!r}: 1 and use the resource form"
        )
    return bundle


class RayActuator:
    """Expresses node-type targets as the autoscaler floor and drains idle nodes. Blocking.

    Args:
        gcs_address: ``host:port`` of the GCS.
        shapes: node type name → resources, as configured for raytide (``NodeShape.resources``).
        floor_form: ``"resource"``, ``"label"`` or ``"auto"``: ``resource`` when every shape lists its
            marker resource (``raytide-node-type:<name>``), else ``label`` on v2 and an error on v1
            (where labels cannot choose the type).
        label_key: node label carrying the type name for the ``label`` form.
        use_coordinator: ``"auto"`` registers with Ray Data's coordinator when it exists (needs a Ray
            driver in this process; one is started on first use); ``False`` always owns the floor.
        driver_address: what ``ray.init`` connects to when looking for the coordinator (default: the
            GCS address; a ``ray://`` client address works from outside the cluster).
    """

    def __init__(
        self,
        gcs_address: str,
        shapes: Mapping[str, Resources],
        *,
        floor_form: FloorForm | Literal["auto"] = "auto",
        label_key: str = NODE_TYPE_LABEL,
        use_coordinator: bool | Literal["auto"] = "auto",
        requester_id: str = DEFAULT_REQUESTER_ID,
        expire_after_s: float = DEFAULT_EXPIRE_AFTER_S,
        driver_address: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if expire_after_s <= 0:
            raise ValueError("expire_after_s must be > 0")
        self._gcs_address = gcs_address
        self._shapes: Mapping[str, Resources] = MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in shapes.items()}
        )
        self._floor_form = floor_form
        self._label_key = label_key
        self._use_coordinator = use_coordinator
        self._requester_id = requester_id
        self._expire_after_s = expire_after_s
        self._driver_address = driver_address or gcs_address
        self._timeout_s = timeout_s
        self._version: AutoscalerVersion | None = None
        self._last: tuple[Channel, tuple[Any, ...]] | None = None
        self._driver_failed_at = -math.inf

    @classmethod
    def from_shapes(cls, gcs_address: str, shapes: Iterable[NodeShape], **kwargs: Any) -> RayActuator:
        return cls(gcs_address, {s.name: s.resources for s in shapes}, **kwargs)

    @property
    def autoscaler_version(self) -> AutoscalerVersion:
        if self._version is None:
            try:
                self._version = detect_autoscaler_version(self._gcs_address, timeout_s=self._timeout_s)
            except ClusterStateError as e:
                raise ActuatorError(str(e)) from e
        return self._version

    def form(self) -> FloorForm:
        """The floor form this actuator uses on this cluster."""
        if self._floor_form != "auto":
            if self._floor_form == "label" and self.autoscaler_version == "v1":
                raise ActuatorError(
                    "autoscaler v1 ignores label selectors, so a label floor would not choose the node "
                    "type; give each node type its marker resource and use floor_form='resource'"
                )
            return self._floor_form
        if all(node_type_resource(n) in r for n, r in self._shapes.items()):
            return "resource"
        if self.autoscaler_version == "v2":
            return "label"
        missing = sorted(n for n, r in self._shapes.items() if node_type_resource(n) not in r)
        raise ActuatorError(
            "autoscaler v1 can only be told the node type through a marker resource, and these shapes "
            f"do not list theirs: {', '.join(f'{n} ({node_type_resource(n)}: 1)' for n in missing)}"
        )

    # ------------------------------------------------------------------------------------------- floor

    def set_target(self, counts: Mapping[str, int]) -> FloorStatus:
        """Ask the autoscaler for (at least) ``counts[T]`` nodes of each type ``T``; types left out get 0.

        Idempotent: the same counts give the same floor and launch nothing new; calling again refreshes
        the coordinator registration before it expires. Nodes above the target are not removed — the
        autoscaler's idle timeout or :meth:`drain` does that.
        """
        for name, n in counts.items():
            if name not in self._shapes:
                raise ValueError(f"unknown node type {name!r} (known: {sorted(self._shapes)})")
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"count for {name!r} must be an int >= 0, got {n!r}")
        form = self.form()
        bundles, selectors = floor_bundles(counts, self._shapes, form, label_key=self._label_key)
        notes: list[str] = []
        channel, coordinator = self._channel(notes)
        if channel == "coordinator":
            self._send_to_coordinator(coordinator, bundles, selectors)
            if form == "label":
                notes.append(
                    "label bundles through the coordinator reserve CPUs/GPUs for raytide that Ray Data "
                    "then does not count as its own; prefer marker resources"
                )
        else:
            self._send_direct(bundles, selectors)
            if self._use_coordinator is not False:
                notes.append("no Ray Data AutoscalingCoordinator: raytide owns the cluster's resource floor")
        key = (channel, (tuple(map(_freeze, bundles)), tuple(map(_freeze, selectors))))
        changed = key != self._last
        self._last = key
        status = FloorStatus(
            counts=MappingProxyType({k: v for k, v in sorted(counts.items()) if v}),
            form=form,
            channel=channel,
            autoscaler_version=self.autoscaler_version,
            bundles=tuple(MappingProxyType(b) for b in bundles),
            label_selectors=tuple(MappingProxyType(s) for s in selectors),
            changed=changed,
            notes=tuple(notes),
        )
        if changed:
            log.info("resource floor %s via %s (%s form)", dict(status.counts), channel, form)
        return status

    def release(self) -> Channel:
        """Withdraw raytide's floor: cancel the coordinator request, or clear the floor raytide owns."""
        notes: list[str] = []
        channel, coordinator = self._channel(notes)
        if channel == "coordinator":
            try:
                self._ray().get(
                    coordinator.cancel_request.remote(self._requester_id), timeout=self._timeout_s
                )
            except Exception as e:
                raise ActuatorError(f"AutoscalingCoordinator.cancel_request failed: {e}") from e
        else:
            self._send_direct([], [])
        self._last = None
        return channel

    def _channel(self, notes: list[str]) -> tuple[Channel, Any]:
        if self._use_coordinator is False:
            return "direct", None
        try:
            coordinator = self._find_coordinator()
        except ActuatorError as e:
            notes.append(f"could not look for Ray Data's AutoscalingCoordinator: {e}")
            return "direct", None
        return ("coordinator", coordinator) if coordinator is not None else ("direct", None)

    def ray_driver(self) -> Any:
        """The ``ray`` module with this actuator's driver connected (the warm pool shares it). Blocking."""
        return self._ray()

    def _ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            since_failure = time.monotonic() - self._driver_failed_at
            if since_failure < _DRIVER_RETRY_S:
                # ray.init can be slow to fail; don't pay that on every tick.
                raise ActuatorError(f"no Ray driver (last attempt failed {since_failure:.0f} s ago)")
            try:
                ray.init(
                    address=self._driver_address,
                    namespace="raytide",
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    configure_logging=False,
                )
            except Exception as e:
                self._driver_failed_at = time.monotonic()
                raise ActuatorError(f"cannot start a Ray driver at {self._driver_address}: {e}") from e
        return ray

    def _find_coordinator(self) -> Any:
        ray = self._ray()
        try:
            return ray.get_actor(COORDINATOR_NAME, namespace=COORDINATOR_NAMESPACE)
        except ValueError:
            return None

    def _send_to_coordinator(
        self, coordinator: Any, bundles: list[dict[str, float]], selectors: list[dict[str, str]]
    ) -> None:
        kwargs: dict[str, Any] = {
            "requester_id": self._requester_id,
            "resources": bundles,
            "expire_after_s": self._expire_after_s,
            "label_selectors": selectors,
        }
        priority = _low_priority()
        if priority is not None:
            # Ray Data's own requests are reserved first; raytide's floor is a minimum, not a claim.
            kwargs["priority"] = priority
        try:
            self._ray().get(coordinator.request_resources.remote(**kwargs), timeout=self._timeout_s)
        except Exception as e:
            raise ActuatorError(f"AutoscalingCoordinator.request_resources failed: {e}") from e
        self._refresh_coordinator(coordinator)

    def _refresh_coordinator(self, coordinator: Any) -> None:
        """Make the coordinator re-read the cluster's nodes now, so that Ray Data can use the nodes raytide's
        floor launched without waiting for the coordinator's own tick. Best effort: never raises."""
        try:
            self._ray().get(
                coordinator.get_reserved_resources.remote(self._requester_id, recompute=True),
                timeout=self._timeout_s,
            )
        except Exception as e:  # e.g. a Ray without `recompute`: Ray Data waits for the coordinator's tick
            log.debug("AutoscalingCoordinator refresh failed: %s", e)

    def _send_direct(self, bundles: list[dict[str, float]], selectors: list[dict[str, str]]) -> None:
        # ray.autoscaler.sdk.request_resources needs a driver and trusts a per-process cache of the
        # autoscaler version; the two calls it makes, made here against this cluster's GCS, need neither.
        try:
            if self.autoscaler_version == "v2":
                from ray.autoscaler.v2.sdk import request_cluster_resources

                request_cluster_resources(
                    self._gcs_address,
                    [{"resources": b, "label_selector": s} for b, s in zip(bundles, selectors, strict=True)],
                    timeout=max(1, round(self._timeout_s)),
                )
            else:
                import json

                gcs_client(self._gcs_address).internal_kv_put(
                    _V1_FLOOR_KEY, json.dumps(bundles).encode(), True, None, timeout=self._timeout_s
                )
        except ClusterStateError as e:
            raise ActuatorError(str(e)) from e
        except Exception as e:
            forget_gcs_client(self._gcs_address)
            raise ActuatorError(f"setting the resource floor failed: {e}") from e

    # ------------------------------------------------------------------------------------------- drain

    def drain(
        self,
        node_id: str,
        reason: Literal["IDLE_TERMINATION"] = "IDLE_TERMINATION",
        deadline_s: float | None = None,
        *,
        message: str = "raytide: idle node above target",
    ) -> DrainResult:
        """Ask the GCS to drain an idle node; Ray refuses when the node is busy. Never forces.

        ``deadline_s`` tells Ray when the caller would kill the node (informational; raytide does not).
        Raises ``ActuatorError`` when the GCS cannot be asked; a refusal is a result, not an error.
        """
        if reason != "IDLE_TERMINATION":
            raise ValueError("only IDLE_TERMINATION drains are supported: other reasons cannot be refused")
        if not _NODE_ID_RE.fullmatch(node_id):
            raise ValueError(f"not a hex Ray node id: {node_id!r}")
        # The generated protobuf module has no type stubs for its enums.
        reasons: Any = importlib.import_module("ray.core.generated.autoscaler_pb2").DrainNodeReason
        deadline_ms = 0 if deadline_s is None else int((time.time() + deadline_s) * 1000)
        try:
            client = gcs_client(self._gcs_address)
            # The GCS accepts drains of unknown or dead node ids, which would read as success.
            infos = client.get_all_node_info(timeout=self._timeout_s)
            info = next((v for k, v in infos.items() if k.hex() == node_id), None)
            if info is None or info.state != _GCS_NODE_ALIVE:
                return DrainResult(node_id=node_id, accepted=False, message="no such alive node")
            if info.is_head_node:
                return DrainResult(node_id=node_id, accepted=False, message="raytide never drains the head")
            accepted, rejection = client.drain_node(
                node_id,
                reasons.Value("DRAIN_NODE_REASON_IDLE_TERMINATION"),
                message,
                deadline_ms,
                timeout=self._timeout_s,
            )
        except ClusterStateError as e:
            raise ActuatorError(str(e)) from e
        except Exception as e:
            forget_gcs_client(self._gcs_address)
            raise ActuatorError(f"drain_node({node_id}) failed: {e}") from e
        result = DrainResult(node_id=node_id, accepted=bool(accepted), message=str(rejection or ""))
        log.info("drain %s: %s %s", node_id, "accepted" if result.accepted else "refused", result.message)
        return result


def _freeze(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


_priority_cache: list[Any] = []


def _low_priority() -> Any:
    # The coordinator's priority is an enum from Ray Data; without Ray Data installed here, fall back to
    # the actor's default (MEDIUM) rather than fail.
    if not _priority_cache:
        try:
            from ray.data._internal.cluster_autoscaler.base_autoscaling_coordinator import (
                ResourceRequestPriority,
            )

            _priority_cache.append(ResourceRequestPriority.LOW)
        except Exception:
            _priority_cache.append(None)
    return _priority_cache[0]
