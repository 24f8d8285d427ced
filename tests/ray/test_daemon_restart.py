"""``kill -9`` of ``raytide run`` mid-scale-up, then a restart, on a real local autoscaling cluster (v1, v2).

The daemon runs as its own process (the ``raytide`` console script) with a SQLite state file, against a
real cluster whose nodes take a few seconds to boot; its metrics come from a stand-in Prometheus
(:mod:`tests.support.fake_prometheus`) reporting a backlog on the GPU stage. The test

1. waits until the daemon's floor of two gpu1 nodes has reached the autoscaler, and ``SIGKILL``\\ s it
   while those nodes are still booting;
2. restarts it: the floor is re-asserted unchanged, the two nodes come up, and no third is ever launched;
3. once the throughput models have data, ``SIGKILL``\\ s it again and restarts it: the models come back
   (no sample lost), and the decision log's tick numbers run on without a gap or a repeat.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import node_type_resource, read_cluster_state
from autoscaler.adapters.state_store import StateStore, StoredState
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, wait_until
from autoscaler.ports import ClusterState
from tests.support.cluster_config import config_text
from tests.support.cluster_watch import Watcher
from tests.support.fake_prometheus import FakePrometheus
from tests.support.programs import raytide_command

pytestmark = [pytest.mark.integration, pytest.mark.ray]

LAUNCH_DELAY_S = 6.0
"""Long enough that the daemon is killed while the nodes it asked for are still booting."""
TIMEOUT_S = 120.0
FLOOR = {"cpu4": 0, "gpu1": 2}
GPU1 = node_type_resource("gpu1")


@pytest.fixture(scope="module")
def launch_delay_s() -> float:
    return LAUNCH_DELAY_S


def _config_text(prometheus_url: str, state_path: Path) -> str:
    return config_text(
        bounds={"scale_down_window_seconds": 300},
        prometheus={"url": prometheus_url, "timeout_seconds": 2, "retries": 0},
        daemon={"drain_share_per_tick": None, "state_path": str(state_path)},
    )


def _raytide(config: Path, address: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*raytide_command(), "run", "--config", str(config), "--ray-address", address],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _load(path: Path) -> StoredState | None:
    with StateStore(path, check_integrity=False) as store:
        return store.load()


def _decision_ticks(path: Path) -> list[int]:
    with StateStore(path, check_integrity=False) as store:
        return sorted(d.tick for d in store.recent_decisions(limit=100_000))


def _samples(state: StoredState | None) -> int:
    if state is None:
        return 0
    return sum(len(p.get("samples", ())) for p in state.models.get("pairs", ()))


def _floor_markers(s: ClusterState) -> int:
    return sum(d.count for d in s.demand if d.source == "floor" and GPU1 in d.resources)


def _wait(condition: Callable[[], bool], what: str) -> None:
    wait_until(condition, timeout_s=TIMEOUT_S, interval_s=0.2, what=what)


def test_kill_9_mid_scale_up_then_restart_restores_state_and_launches_nothing_extra(
    slow_cluster: LocalAutoscalingCluster, tmp_path: Path
) -> None:
    address = slow_cluster.address
    state_path = tmp_path / "state.db"
    log = tmp_path / "raytide.log"
    prom = FakePrometheus(backlog=100.0, rate=1.0, slots=1.0).start()
    config = tmp_path / "raytide.yaml"
    config.write_text(_config_text(prom.url, state_path))

    def state() -> ClusterState:
        return read_cluster_state(address)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Watcher(address, "gpu1") as watcher:
            # 1. Scale-up starts; kill -9 once the floor has reached the autoscaler.
            procs.append(_raytide(config, address, log))
            _wait(lambda: _floor_markers(state()) == 2, "the daemon's floor of two gpu1 nodes")
            _kill9(procs[-1])
            first = _load(state_path)
            assert first is not None
            assert first.decision_state["daemon"]["floor"] == FLOOR
            booting = state()
            print(
                f"killed at tick {first.tick}: {booting.node_counts()} up, {booting.pending_counts()} pending"
            )

            # 2. Restart: the floor is re-asserted as it was, the nodes arrive, nothing more launches.
            procs.append(_raytide(config, address, log))
            _wait(lambda: (_load(state_path) or first).tick > first.tick, "a tick after the restart")
            _wait(
                lambda: state().node_counts().get("gpu1", 0) == 2 and not state().pending_counts(),
                "two gpu1 nodes",
            )
            _wait(lambda: _samples(_load(state_path)) > 0, "throughput samples in the stored models")
            text = log.read_text(errors="replace")
            assert f"floor {FLOOR} re-asserted" in text, text[-3000:]

            # 3. kill -9 again, restart: models, tick numbers and the floor come back.
            _kill9(procs[-1])
            second = _load(state_path)
            assert second is not None
            procs.append(_raytide(config, address, log))
            _wait(lambda: (_load(state_path) or second).tick >= second.tick + 3, "three ticks after restart")
            third = _load(state_path)
            assert third is not None
            assert _samples(third) >= _samples(second) > 0, "the models were not restored"
            ticks = _decision_ticks(state_path)
            assert ticks == list(range(1, ticks[-1] + 1)), "tick numbers restarted, skipped or repeated"
            assert log.read_text(errors="replace").count(f"floor {FLOOR} re-asserted") == 2
            assert third.decision_state["daemon"]["floor"] == FLOOR
            assert _floor_markers(state()) == 2
            _wait(lambda: state().node_counts() == {"gpu1": 2}, "two gpu1 nodes, nothing else")
        # A duplicate launch would show up as a third alive gpu1 node (the node type allows three).
        assert watcher.max_alive == 2, (
            f"{watcher.max_alive} gpu1 nodes alive for a floor of two "
            f"(alive + pending at most {watcher.max_with_pending})"
        )
        assert watcher.max_others == 0
        procs[-1].send_signal(signal.SIGTERM)
        assert procs[-1].wait(timeout=30) == 0
        with StateStore(state_path, check_integrity=False) as store:
            assert not [a for a in store.pending_actions() if a.kind == "floor"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        prom.stop()
        # The floor stays after a daemon exits (by design): withdraw it for whatever runs next.
        RayActuator(address, {"cpu4": {}, "gpu1": {}}, floor_form="resource", use_coordinator=False).release()
