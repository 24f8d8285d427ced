"""The GCS cluster status → ClusterState translation, on hand-made status objects (no Ray cluster)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from autoscaler.adapters.ray.cluster_state import _build_state


def _node(node_id: str, instance: str, node_type: str = "gpu1", status: str = "RUNNING") -> Any:
    usage = SimpleNamespace(idle_time_ms=0)
    return SimpleNamespace(
        node_id=node_id,
        instance_id=instance,
        ray_node_type_name=node_type,
        ip_address="10.0.0.1",
        node_status=status,
        labels={},
        resource_usage=usage,
        node_activity=[],
        total_resources=lambda: {"CPU": 1.0, "GPU": 1.0},
        available_resources=lambda: {"CPU": 1.0, "GPU": 1.0},
        details="",
    )


def _status(active: list[Any], pending: list[Any]) -> Any:
    demands = SimpleNamespace(
        ray_task_actor_demand=[], placement_group_demand=[], cluster_constraint_demand=[]
    )
    return SimpleNamespace(
        active_nodes=active,
        idle_nodes=[],
        failed_nodes=[],
        pending_launches=[],
        pending_nodes=pending,
        failed_launches=[],
        resource_demands=demands,
    )


def test_a_joined_node_still_listed_as_pending_is_counted_once() -> None:
    joined = _node("a" * 56, "i-1")
    booting = _node("", "i-2")
    status = _status([joined], [_node("", "i-1"), booting])
    state = _build_state(status, "v2", 0.0, {}, None, 1.0, [])
    assert state.node_counts() == {"gpu1": 1}
    assert state.pending_counts() == {"gpu1": 1}, "i-1 has joined; only i-2 is still on its way"


def test_v1_an_instance_whose_node_is_dead_is_not_a_pending_launch() -> None:
    """v1 lists a drained fake node as pending ("uninitialized") while its provider keeps it; its "ip" is
    its node id, which the GCS reports dead."""
    drained = "f" * 51 + "00001"
    booting = "f" * 51 + "00003"
    status = _status([_node("f" * 51 + "00002", "")], [])
    status.failed_nodes = [_node(drained, "", status="DEAD")]
    report = {
        "pending_nodes": [[drained, "gpu1", "uninitialized"], [booting, "gpu1", "uninitialized"]],
        "pending_launches": {},
    }
    no_floor = SimpleNamespace(internal_kv_get=lambda *args, **kwargs: None)
    state = _build_state(status, "v1", 0.0, report, no_floor, 1.0, [])
    assert state.node_counts() == {"gpu1": 1}
    assert state.pending_counts() == {"gpu1": 1}, "only the node that has not joined yet is on its way"
