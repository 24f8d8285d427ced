"""The Ray adapters against a real local autoscaling cluster, on autoscaler v1 and v2.

The cluster tests share one cluster per autoscaler version and run in definition order, each starting
from where the previous one left the cluster (which the docstrings say) — starting a cluster per test
would multiply the runtime on a small machine. Waits are bounded polls for a condition; nothing asserts
how long Ray took.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import ray

from autoscaler.adapters.ray.actuator import (
    COORDINATOR_NAME,
    COORDINATOR_NAMESPACE,
    ActuatorError,
    RayActuator,
    floor_bundles,
)
from autoscaler.adapters.ray.cluster_state import (
    NODE_TYPE_LABEL,
    ClusterStateError,
    detect_autoscaler_version,
    node_type_resource,
    read_cluster_state,
)
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType, free_port, wait_until
from autoscaler.ports import ClusterState

# The node types of the `ray_cluster` fixture (conftest.py).
SHAPES = {
    "cpu4": {"CPU": 4.0, node_type_resource("cpu4"): 1.0},
    "cpu8": {"CPU": 8.0, node_type_resource("cpu8"): 1.0},
    "gpu1": {"CPU": 2.0, "GPU": 1.0, node_type_resource("gpu1"): 1.0},
}
GENEROUS_TIMEOUT_S = 120.0
"""Bound for waiting on the cluster; conditions usually hold within seconds, CI machines are slow."""
CPU4 = node_type_resource("cpu4")

# --------------------------------------------------------------------------------- without a cluster


def test_resource_floor_is_one_marker_per_node_in_name_order() -> None:
    bundles, selectors = floor_bundles({"gpu1": 1, "cpu4": 2, "cpu8": 0}, SHAPES, "resource")
    assert bundles == [{CPU4: 1.0}, {CPU4: 1.0}, {node_type_resource("gpu1"): 1.0}]
    assert selectors == [{}, {}, {}]


def test_label_floor_asks_more_than_half_a_node_so_two_never_share_one() -> None:
    bundles, selectors = floor_bundles({"cpu4": 2, "gpu1": 1}, SHAPES, "label")
    assert bundles == [{"CPU": 3.0}, {"CPU": 3.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert selectors == [{NODE_TYPE_LABEL: "cpu4"}] * 2 + [{NODE_TYPE_LABEL: "gpu1"}]


def test_label_floor_needs_cpu_or_gpu() -> None:
    with pytest.raises(ActuatorError, match="resource form"):
        floor_bundles({"odd": 1}, {"odd": {"TPU": 4}}, "label")


def test_set_target_rejects_unknown_types_and_negative_counts_before_touching_ray() -> None:
    actuator = RayActuator("127.0.0.1:1", SHAPES)
    with pytest.raises(ValueError, match="unknown node type"):
        actuator.set_target({"cpu16": 1})
    with pytest.raises(ValueError, match=">= 0"):
        actuator.set_target({"cpu4": -1})


def test_drain_rejects_malformed_node_ids_before_touching_ray() -> None:
    with pytest.raises(ValueError, match="hex Ray node id"):
        RayActuator("127.0.0.1:1", SHAPES).drain("not-a-node")


def test_unreachable_gcs_is_a_cluster_state_error() -> None:
    with pytest.raises(ClusterStateError, match="unreachable"):
        read_cluster_state(f"127.0.0.1:{free_port()}")


def test_node_type_names_must_be_valid_label_values() -> None:
    with pytest.raises(ValueError, match="label value"):
        LocalNodeType("cpu 4", {"CPU": 4})


# ------------------------------------------------------------------------------------ with a cluster


def _state(cluster: LocalAutoscalingCluster) -> ClusterState:
    return read_cluster_state(cluster.address)


def _wait(condition: Callable[[], bool], what: str) -> None:
    wait_until(condition, timeout_s=GENEROUS_TIMEOUT_S, what=what)


def _stays(condition: Callable[[], bool], for_s: float) -> bool:
    """True if ``condition`` holds at every poll for ``for_s`` seconds (gives Ray a chance to overshoot)."""
    end = time.monotonic() + for_s
    while time.monotonic() < end:
        if not condition():
            return False
        time.sleep(0.5)
    return condition()


def _shape(cluster: LocalAutoscalingCluster) -> tuple[dict[str, int], dict[str, int]]:
    s = _state(cluster)
    return s.node_counts(), s.pending_counts()


def _floor(cluster: LocalAutoscalingCluster) -> Counter[tuple[tuple[str, float], ...]]:
    floor: Counter[tuple[tuple[str, float], ...]] = Counter()
    for d in _state(cluster).demand:
        if d.source == "floor":
            floor[tuple(sorted((k, float(v)) for k, v in d.resources.items()))] += d.count
    return floor


def _bundle(**resources: float) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(resources.items()))


MARKER = ((CPU4, 1.0),)


@pytest.fixture(scope="module")
def actuator(ray_cluster: LocalAutoscalingCluster) -> RayActuator:
    return RayActuator(ray_cluster.address, SHAPES, expire_after_s=120)


@pytest.fixture
def driver(ray_cluster: LocalAutoscalingCluster) -> Iterator[Any]:
    if not ray.is_initialized():
        ray_cluster.connect()
    yield ray


@pytest.mark.integration
@pytest.mark.ray
class TestOnCluster:
    def test_state_sees_the_head_and_the_autoscaler_version(
        self, ray_cluster: LocalAutoscalingCluster
    ) -> None:
        """Fresh cluster: a head and no workers."""
        assert {n: dict(t.ray_resources()) for n, t in ray_cluster.node_types.items()} == SHAPES
        assert detect_autoscaler_version(ray_cluster.address) == ray_cluster.autoscaler_version
        _wait(lambda: _state(ray_cluster).head is not None, "the head in the cluster state")
        state = _state(ray_cluster)
        assert state.autoscaler_version == ray_cluster.autoscaler_version
        assert state.head is not None and state.head.node_type == "ray.head.default"
        assert state.node_counts() == {}
        assert state.pending_counts() == {}
        assert state.failures == ()

    def test_floor_launches_exactly_the_chosen_node_type(
        self, ray_cluster: LocalAutoscalingCluster, actuator: RayActuator
    ) -> None:
        """Two 4-CPU nodes, not the one 8-CPU node a plain {CPU: 4} x 2 floor gets. Leaves 2 x cpu4."""
        status = actuator.set_target({"cpu4": 2})
        assert (status.form, status.channel, status.changed) == ("resource", "direct", True)
        assert status.bundles == ({CPU4: 1.0}, {CPU4: 1.0})

        _wait(lambda: _shape(ray_cluster) == ({"cpu4": 2}, {}), "exactly two cpu4 nodes")
        nodes = _state(ray_cluster).workers
        assert {n.node_type for n in nodes} == {"cpu4"}
        assert all(n.labels[NODE_TYPE_LABEL] == "cpu4" and n.total[CPU4] == 1 for n in nodes)
        assert _floor(ray_cluster) == Counter({MARKER: 2})

        again = actuator.set_target({"cpu4": 2})
        assert not again.changed and again.bundles == status.bundles
        assert _stays(lambda: _shape(ray_cluster) == ({"cpu4": 2}, {}), for_s=3)

    def test_label_floor_chooses_the_type_on_v2_and_is_refused_on_v1(
        self, ray_cluster: LocalAutoscalingCluster
    ) -> None:
        """Adds one gpu1 through a label floor on v2. Leaves 2 x cpu4 (+ 1 x gpu1 on v2)."""
        labelled = RayActuator(ray_cluster.address, SHAPES, floor_form="label", use_coordinator=False)
        unmarked = RayActuator(ray_cluster.address, {"cpu4": {"CPU": 4}}, use_coordinator=False)
        if ray_cluster.autoscaler_version == "v1":
            with pytest.raises(ActuatorError, match="ignores label selectors"):
                labelled.set_target({"cpu4": 2, "gpu1": 1})
            with pytest.raises(ActuatorError, match="marker resource"):
                unmarked.form()
            return
        assert unmarked.form() == "label"
        status = labelled.set_target({"cpu4": 2, "gpu1": 1})
        assert status.form == "label"
        assert status.label_selectors[-1] == {NODE_TYPE_LABEL: "gpu1"}
        _wait(lambda: _shape(ray_cluster) == ({"cpu4": 2, "gpu1": 1}, {}), "two cpu4 and one gpu1")

    def test_busy_node_drain_is_refused(
        self, ray_cluster: LocalAutoscalingCluster, actuator: RayActuator, driver: Any
    ) -> None:
        """Runs a task on one cpu4, cancels it afterwards. Leaves the nodes as they were."""
        busy = next(n for n in _state(ray_cluster).workers if n.node_type == "cpu4")

        def sleep_long() -> None:
            time.sleep(600)

        strategy = driver.util.scheduling_strategies.NodeAffinitySchedulingStrategy(busy.node_id, soft=False)
        ref = driver.remote(num_cpus=1, scheduling_strategy=strategy)(sleep_long).remote()
        try:
            _wait(lambda: _state(ray_cluster).node(busy.node_id).status == "RUNNING", "the task to start")
            result = actuator.drain(busy.node_id)
            assert not result.accepted
            assert "idle" in result.message
            assert _state(ray_cluster).node(busy.node_id).alive
        finally:
            driver.cancel(ref, force=True)
        head = _state(ray_cluster).head
        assert head is not None
        assert not actuator.drain(head.node_id).accepted
        assert not actuator.drain("ab" * 28).accepted
        _wait(lambda: _state(ray_cluster).node(busy.node_id).status == "IDLE", "the node to be idle again")

    def test_raytide_joins_ray_datas_coordinator_without_removing_its_request(
        self, ray_cluster: LocalAutoscalingCluster, actuator: RayActuator, driver: Any
    ) -> None:
        """Creates the coordinator as Ray Data does; it stays (detached). Leaves the nodes as they were."""
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            DefaultAutoscalingCoordinator,
        )

        ray_data = DefaultAutoscalingCoordinator(requester_id="data-test")
        # A request the running nodes already satisfy, so that nothing launches.
        ray_data.request_resources(resources=[{"CPU": 1}], expire_after_s=120, request_remaining=["CPU"])
        try:
            _wait(lambda: _floor(ray_cluster) == Counter({_bundle(CPU=1): 1}), "Ray Data's floor")
            driver.get_actor(COORDINATOR_NAME, namespace=COORDINATOR_NAMESPACE)

            status = actuator.set_target({"cpu4": 2})
            assert status.channel == "coordinator"
            merged = Counter({_bundle(CPU=1): 1, MARKER: 2})
            _wait(lambda: _floor(ray_cluster) == merged, "Ray Data's and raytide's floors merged")

            assert actuator.release() == "coordinator"
            _wait(lambda: _floor(ray_cluster) == Counter({_bundle(CPU=1): 1}), "Ray Data's floor alone")
        finally:
            ray_data.cancel_request()
        _wait(lambda: _floor(ray_cluster) == Counter(), "an empty floor")

    def test_lower_target_then_drain_idle_nodes(
        self, ray_cluster: LocalAutoscalingCluster, actuator: RayActuator
    ) -> None:
        """Removes every worker."""
        actuator.set_target({"cpu4": 0})
        idle = _state(ray_cluster).idle_nodes()
        assert idle, "expected idle workers from the earlier tests"
        for node in idle:
            result = actuator.drain(node.node_id, deadline_s=30)
            assert result.accepted, result.message
        _wait(lambda: _shape(ray_cluster) == ({}, {}), "no workers")
        assert _stays(lambda: _shape(ray_cluster) == ({}, {}), for_s=2)

    def test_delayed_provider_launches_nodes(self, ray_cluster: LocalAutoscalingCluster) -> None:
        """Replaces the shared cluster with one whose nodes take 2 s to boot (the last test of a version)."""
        ray_cluster.shutdown()
        with LocalAutoscalingCluster(
            [LocalNodeType("cpu4", {"CPU": 4})],
            autoscaler_v2=ray_cluster.autoscaler_version == "v2",
            launch_delay_s=2,
        ) as slow:
            assert slow.config["provider"]["module"] == "raytide_fake_provider.DelayedFakeMultiNodeProvider"
            RayActuator(slow.address, SHAPES, use_coordinator=False).set_target({"cpu4": 1})
            _wait(lambda: _shape(slow) == ({"cpu4": 1}, {}), "a cpu4 node from the delayed provider")
