"""Real local autoscaling Ray clusters, one per autoscaler version, each shared by the tests of a module.

``ray stop --force`` ends every Ray process on the machine, so only one cluster exists at a time: the
fixtures are module-scoped and parametrized, and pytest tears the v1 cluster down before it starts v2.

- ``ray_cluster``: the Ray adapters' cluster (cpu4, cpu8, gpu1).
- ``daemon_cluster``: the daemon tests' cluster (cpu4, gpu1; the shapes of ``tests.support.cluster_config``).
- ``slow_cluster``: the daemon tests' node types, with room for a third gpu1 node, whose nodes take the
  module's ``launch_delay_s`` fixture to boot (each module using it defines that fixture).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType
from tests.support.programs import require_ray_cli

NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, max_workers=3),
    LocalNodeType("cpu8", {"CPU": 8}, max_workers=2),
    LocalNodeType("gpu1", {"CPU": 2, "GPU": 1}, max_workers=2),
)

DAEMON_NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, max_workers=2),
    LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, max_workers=2),
)
"""The daemon tests' cluster: one CPU type and one (fake) GPU type, each with its marker resource."""

SLOW_NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, max_workers=2),
    # One more than raytide may ask for: a duplicate launch (or a standby node next to the plan's) has room.
    LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, max_workers=3),
)


def _cluster(
    request: pytest.FixtureRequest, node_types: Sequence[LocalNodeType], **kwargs: Any
) -> Iterator[LocalAutoscalingCluster]:
    require_ray_cli()
    # Ray's own idle timeout (60 s) stays out of the way: every scale-down in these tests is raytide's or
    # the test's own drain.
    with LocalAutoscalingCluster(
        node_types, autoscaler_v2=request.param == "v2", idle_timeout_minutes=1.0, **kwargs
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module", params=["v1", "v2"])
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[LocalAutoscalingCluster]:
    yield from _cluster(request, NODE_TYPES)


@pytest.fixture(scope="module", params=["v1", "v2"])
def daemon_cluster(request: pytest.FixtureRequest) -> Iterator[LocalAutoscalingCluster]:
    yield from _cluster(request, DAEMON_NODE_TYPES)


@pytest.fixture(scope="module", params=["v1", "v2"])
def slow_cluster(request: pytest.FixtureRequest, launch_delay_s: float) -> Iterator[LocalAutoscalingCluster]:
    yield from _cluster(request, SLOW_NODE_TYPES, launch_delay_s=launch_delay_s)
