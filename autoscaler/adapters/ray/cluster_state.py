"""Cluster state read from the Ray GCS: nodes with their node types, pending launches, pending demand.

:func:`read_cluster_state` is one blocking call (run it off the event loop) that parses the GCS
``GetClusterStatus`` reply, filling autoscaler v1's gaps from the v1 monitor's report; every failure raises
:class:`ClusterStateError`. Also the conventions the Ray adapters share: the node-type label and marker
resource. How and why: docs/architecture.md, "Observing".
"""

from __future__ import annotations

import contextlib
import importlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from autoscaler.ports import NODE_TYPE_RESOURCE_PREFIX as NODE_TYPE_RESOURCE_PREFIX  # re-exported
from autoscaler.ports import (
    AutoscalerVersion,
    ClusterState,
    DemandBundle,
    LaunchFailure,
    PendingLaunch,
    RayNode,
    frozen_labels,
)
from autoscaler.ports import node_type_resource as node_type_resource  # re-exported
from autoscaler.types import frozen_map

NODE_TYPE_LABEL = "raytide.io/node-type"
"""Node label whose value is the Ray node type name. Put it in each node type's ``labels`` (KubeRay sets
``ray.io/node-group`` itself; raytide can be pointed at that key instead)."""

HEAD_NODE_TYPE = "ray.head.default"
UNKNOWN_NODE_TYPE = "unknown"

DEFAULT_TIMEOUT_S = 10.0


_V1_STATUS_KEY = b"__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS
_V1_FLOOR_KEY = b"autoscaler_resource_request"  # ray_constants.AUTOSCALER_RESOURCE_REQUEST_CHANNEL


class ClusterStateError(RuntimeError):
    """The cluster state could not be read; nothing about the cluster is known."""


# ------------------------------------------------------------------------------------------ GCS access


def _raylet() -> Any:
    # GcsClient is a Cython class absent from ray's type stubs; importing the module dynamically keeps
    # mypy from reporting it as missing.
    return importlib.import_module("ray._raylet")


# Module-level on purpose: one GcsClient per address per process, shared by the cluster reader, the actuator,
# the placeholders and the dev cluster. Each client holds gRPC channels and threads that Ray never frees, so
# per-object caches would leak a set per daemon built (tests and the demo build many in one process); and
# ``forget_gcs_client`` gives the one owner of a cluster's lifetime (who stops it) a way to drop it.
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def gcs_client(gcs_address: str, *, connect_timeout_s: float = 3.0) -> Any:
    """A cached ``GcsClient`` for ``gcs_address``; ``ClusterStateError`` if the GCS does not answer.

    Constructing a ``GcsClient`` against a dead address blocks inside Ray for far longer than a TCP connect,
    so a plain TCP connect goes first. Clients are cached because each one holds gRPC channels and threads.
    """
    _check_reachable(gcs_address, connect_timeout_s)
    with _clients_lock:
        client = _clients.get(gcs_address)
        if client is None:
            try:
                client = _raylet().GcsClient(address=gcs_address)
            except Exception as e:
                raise ClusterStateError(f"cannot connect to the Ray GCS at {gcs_address}: {e}") from e
            _clients[gcs_address] = client
        return client


def forget_gcs_client(gcs_address: str) -> None:
    """Drop the cached client (e.g. after the cluster at that address was stopped)."""
    with _clients_lock:
        _clients.pop(gcs_address, None)


def _check_reachable(gcs_address: str, timeout_s: float) -> None:
    host, sep, port = gcs_address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterStateError(f"GCS address {gcs_address!r} is not host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        forget_gcs_client(gcs_address)
        raise ClusterStateError(f"Ray GCS at {gcs_address} is unreachable: {e}") from e


def detect_autoscaler_version(gcs_address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> AutoscalerVersion:
    """Which autoscaler the cluster runs, as the GCS says (not this process's environment)."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    client = gcs_client(gcs_address)
    try:
        # fetch_from_server: the default answer is this process's RAY_enable_autoscaler_v2 or a
        # module-level cache from whatever cluster was asked first.
        v2 = is_autoscaler_v2(fetch_from_server=True, gcs_client=client)
    except Exception as e:
        raise ClusterStateError(f"cannot tell the autoscaler version of {gcs_address}: {e}") from e
    return "v2" if v2 else "v1"


# --------------------------------------------------------------------------------------------- reading


def read_cluster_state(gcs_address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ClusterState:
    """Read nodes, pending launches and pending demand from the GCS (blocking, up to ~``timeout_s``).

    Raises:
        ClusterStateError: the GCS is unreachable, timed out, or answered something unparsable.
    """
    client = gcs_client(gcs_address)
    try:
        version = detect_autoscaler_version(gcs_address, timeout_s=timeout_s)
        now = time.time()
        status = _get_cluster_status(client, timeout_s)
        notes: list[str] = []
        v1_report: Mapping[str, Any] = {}
        if version == "v1":
            v1_report = _read_v1_report(client, timeout_s, notes)
        return _build_state(status, version, now, v1_report, client, timeout_s, notes)
    except ClusterStateError:
        # A client of a GCS that restarted (new cluster id) keeps failing; the next call starts afresh.
        forget_gcs_client(gcs_address)
        raise
    except Exception as e:
        forget_gcs_client(gcs_address)
        raise ClusterStateError(f"reading the cluster state from {gcs_address} failed: {e!r}") from e


def _get_cluster_status(client: Any, timeout_s: float) -> Any:
    """``ray.autoscaler.v2.sdk.get_cluster_status``, on the cached client instead of a new one per call."""
    from ray.autoscaler.v2.schema import Stats
    from ray.autoscaler.v2.utils import ClusterStatusParser

    start = time.time()
    try:
        raw = client.get_cluster_status(timeout_s=timeout_s)
    except Exception as e:
        raise ClusterStateError(f"get_cluster_status failed: {e}") from e
    # Generated protobuf classes have no type stubs.
    reply = importlib.import_module("ray.core.generated.autoscaler_pb2").GetClusterStatusReply()
    reply.ParseFromString(raw)
    stats = Stats(gcs_request_time_s=time.time() - start, request_ts_s=int(start))
    return ClusterStatusParser.from_get_cluster_status_reply(reply, stats=stats)


def _read_v1_report(client: Any, timeout_s: float, notes: list[str]) -> Mapping[str, Any]:
    try:
        raw = client.internal_kv_get(_V1_STATUS_KEY, None, timeout=timeout_s)
    except Exception as e:
        raise ClusterStateError(f"cannot read the v1 autoscaler report: {e}") from e
    if not raw:
        notes.append("autoscaler v1 has not reported yet: pending launches unknown")
        return {}
    try:
        report = json.loads(raw).get("autoscaler_report") or {}
    except (ValueError, AttributeError) as e:
        notes.append(f"unparsable autoscaler v1 report: {e}")
        return {}
    if not report:
        notes.append("autoscaler v1 report has no autoscaler section yet: pending launches unknown")
    return dict(report)


def _node_type_of(info: Any, labels: Mapping[str, str], v1_types: Mapping[str, str]) -> str:
    name = info.ray_node_type_name or ""
    # get_cluster_status invents "node_<id>" when the raylet was not told its node type.
    if name and not name.startswith("node_"):
        return str(name)
    if NODE_TYPE_LABEL in labels:
        return labels[NODE_TYPE_LABEL]
    for key in (info.ip_address, info.instance_id, info.node_id):
        if key and key in v1_types:
            return v1_types[key]
    return UNKNOWN_NODE_TYPE


def _build_state(
    status: Any,
    version: AutoscalerVersion,
    now: float,
    v1_report: Mapping[str, Any],
    client: Any,
    timeout_s: float,
    notes: list[str],
) -> ClusterState:
    v1_types: dict[str, str] = dict(v1_report.get("node_type_mapping") or {})
    nodes: list[RayNode] = []
    for info in [*status.active_nodes, *status.idle_nodes, *status.failed_nodes]:
        labels = frozen_labels({str(k): str(v) for k, v in (info.labels or {}).items()})
        usage = info.resource_usage
        total = info.total_resources()
        idle_s: float | None = None
        if info.node_status == "IDLE" and usage is not None:
            idle_s = usage.idle_time_ms / 1000.0
        node_type = _node_type_of(info, labels, v1_types)
        is_head = node_type == HEAD_NODE_TYPE or "node:__internal_head__" in total
        if is_head and node_type == UNKNOWN_NODE_TYPE:
            # A head started by plain `ray start` is not told its node type.
            node_type = HEAD_NODE_TYPE
        nodes.append(
            RayNode(
                node_id=str(info.node_id or ""),
                node_type=node_type,
                ip=str(info.ip_address or ""),
                status=str(info.node_status or "UNKNOWN"),
                idle_seconds=idle_s,
                total=frozen_map(total),
                available=frozen_map(info.available_resources()),
                labels=labels,
                instance_id=str(info.instance_id or ""),
                is_head=is_head,
                activity=tuple(str(a) for a in (info.node_activity or ())),
            )
        )
    nodes.sort(key=lambda n: (not n.is_head, n.node_type, n.node_id))

    pending: list[PendingLaunch] = []
    failures: list[LaunchFailure] = []
    if version == "v2":
        # A cluster has one head and the autoscaler never launches it; right after start v2 briefly lists
        # the live head as a pending instance too (seen on 2.60), which is not capacity on its way.
        live_head_type = next((n.node_type for n in nodes if n.is_head), None)
        for req in status.pending_launches:
            if req.ray_node_type_name == live_head_type:
                continue
            pending.append(
                PendingLaunch(req.ray_node_type_name, int(req.count), "requested", req.details or "")
            )
        # A node whose raylet has registered can still be listed as a pending instance until the
        # autoscaler's next reconcile: counting it twice would make a plan look over the shape's max.
        alive_instances = {n.instance_id for n in nodes if n.instance_id and n.alive}
        for info in status.pending_nodes:
            if info.ray_node_type_name == live_head_type:
                continue
            if info.instance_id and str(info.instance_id) in alive_instances:
                continue
            pending.append(PendingLaunch(info.ray_node_type_name, 1, "starting", info.details or ""))
        for req in status.failed_launches:
            failures.append(LaunchFailure(req.ray_node_type_name, int(req.count), req.details or ""))
    else:
        for node_type, count in (v1_report.get("pending_launches") or {}).items():
            if count:
                pending.append(PendingLaunch(str(node_type), int(count), "requested"))
        # The v1 report is up to one autoscaler iteration old; a node it still lists as pending may have
        # joined since. Its "ip" is the provider's, which is the node id under the fake provider.
        joined = {n.ip for n in nodes if n.alive} | {n.node_id for n in nodes if n.alive}
        # v1 lists an instance whose raylet is gone (drained, crashed) as pending while the provider still
        # has it: under the fake provider until its idle timeout, which never comes while a floor needs it
        # (seen on 2.60). A node the GCS reports dead is not on its way. Matched by node id only: a cloud
        # may give a dead node's IP to a new instance.
        dead = {n.node_id for n in nodes if not n.alive}
        for entry in v1_report.get("pending_nodes") or []:
            # (ip, node_type, status) tuples, serialized as lists.
            ip, node_type, stage = [*entry, "", "", ""][:3]
            if ip and (ip in joined or ip in dead):
                continue
            pending.append(PendingLaunch(str(node_type), 1, str(stage).lower() or "starting"))
        for entry in v1_report.get("failed_nodes") or []:
            ip, node_type = [*entry, "", ""][:2]
            failures.append(LaunchFailure(str(node_type), 1, f"node {ip} failed"))

    demand: list[DemandBundle] = []
    demands = status.resource_demands
    for d in demands.ray_task_actor_demand:
        for b in d.bundles_by_count:
            demand.append(DemandBundle(frozen_map(dict(b.bundle)), int(b.count), "task_actor"))
    for d in demands.placement_group_demand:
        for b in d.bundles_by_count:
            detail = f"{d.pg_id or ''} {d.strategy or ''} {d.state or ''}".strip()
            demand.append(DemandBundle(frozen_map(dict(b.bundle)), int(b.count), "placement_group", detail))
    for d in demands.cluster_constraint_demand:
        for b in d.bundles_by_count:
            demand.append(DemandBundle(frozen_map(dict(b.bundle)), int(b.count), "floor"))
    if version == "v1":
        demand.extend(_read_v1_floor(client, timeout_s, notes))

    return ClusterState(
        time=now,
        autoscaler_version=version,
        nodes=tuple(nodes),
        pending=tuple(pending),
        demand=tuple(demand),
        failures=tuple(failures),
        notes=tuple(notes),
    )


def _read_v1_floor(client: Any, timeout_s: float, notes: list[str]) -> list[DemandBundle]:
    # v1 keeps the request_resources floor in the KV store, not in the GCS resource state.
    try:
        raw = client.internal_kv_get(_V1_FLOOR_KEY, None, timeout=timeout_s)
    except Exception as e:
        raise ClusterStateError(f"cannot read the v1 resource floor: {e}") from e
    if not raw:
        return []
    try:
        bundles = json.loads(raw)
    except ValueError as e:
        notes.append(f"unparsable v1 resource floor: {e}")
        return []
    counts: Counter[str] = Counter(json.dumps(b, sort_keys=True) for b in bundles if b)
    out = []
    for key, count in counts.items():
        with contextlib.suppress(ValueError, TypeError):
            out.append(DemandBundle(frozen_map(json.loads(key)), count, "floor"))
    return out
