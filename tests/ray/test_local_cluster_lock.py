"""``LocalAutoscalingCluster.shutdown`` stops Ray only while it holds the machine-wide lock.

A second ``shutdown()`` (a test that shuts the shared cluster down itself, then the fixture's exit) used to
run ``ray stop --force`` again after the lock was released — killing whichever session's cluster had taken
the lock in between.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from autoscaler.devcluster import cluster as ray_local
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType


def test_shutdown_without_the_lock_stops_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stops: list[float] = []
    monkeypatch.setattr(ray_local, "ray_stop", lambda timeout_s=60.0: stops.append(timeout_s))
    cluster = LocalAutoscalingCluster([LocalNodeType("cpu4", {"CPU": 4})])
    cluster.shutdown()  # never started
    cluster.shutdown()  # and again, as a fixture's exit after a test's own shutdown would
    assert stops == []


def test_shutdown_while_holding_the_lock_stops_ray_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stops: list[float] = []
    monkeypatch.setattr(ray_local, "ray_stop", lambda timeout_s=60.0: stops.append(timeout_s))
    monkeypatch.setenv("RAYTIDE_CLUSTER_LOCK", str(tmp_path / "lock"))
    cluster = LocalAutoscalingCluster([LocalNodeType("cpu4", {"CPU": 4})])
    cluster._lock_file = ray_local._acquire_machine_lock()  # what start() holds while the cluster runs
    cluster.shutdown()
    cluster.shutdown()
    assert len(stops) == 1
    # The lock is free again: another session can take it at once.
    with (tmp_path / "lock").open("a+") as again:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if still held
