"""A real local autoscaling Ray cluster per autoscaler version, shared by the tests of a module.

``ray stop --force`` ends every Ray process on the machine, so only one cluster exists at a time: the
fixture is module-scoped and parametrized, and pytest tears the v1 cluster down before it starts v2.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType

NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, max_workers=3),
    LocalNodeType("cpu8", {"CPU": 8}, max_workers=2),
    LocalNodeType("gpu1", {"CPU": 2, "GPU": 1}, max_workers=2),
)


def _ray_cli_available() -> bool:
    return Path(sys.executable).with_name("ray").exists() or shutil.which("ray") is not None


@pytest.fixture(scope="module", params=["v1", "v2"])
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[LocalAutoscalingCluster]:
    if not _ray_cli_available():
        # As for the other integration servers: on CI a missing Ray is a broken build, not a skip.
        if os.environ.get("CI"):
            pytest.fail("the `ray` CLI is not installed")
        pytest.skip("the `ray` CLI is not installed")
    cluster = LocalAutoscalingCluster(
        NODE_TYPES,
        autoscaler_v2=request.param == "v2",
        # Long enough that Ray's idle timeout never races the drains the tests make themselves.
        idle_timeout_minutes=1.0,
    )
    with cluster:
        yield cluster


DAEMON_NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, max_workers=2),
    LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, max_workers=2),
)
"""The daemon tests' cluster: one CPU type and one (fake) GPU type, each with its marker resource."""


@pytest.fixture(scope="module", params=["v1", "v2"])
def daemon_cluster(request: pytest.FixtureRequest) -> Iterator[LocalAutoscalingCluster]:
    if not _ray_cli_available():
        if os.environ.get("CI"):
            pytest.fail("the `ray` CLI is not installed")
        pytest.skip("the `ray` CLI is not installed")
    # Ray's own idle timeout (60 s) stays out of the way: every scale-down in these tests is the daemon's.
    cluster = LocalAutoscalingCluster(
        DAEMON_NODE_TYPES, autoscaler_v2=request.param == "v2", idle_timeout_minutes=1.0
    )
    with cluster:
        yield cluster
