"""``kill -9`` of ``raytide run`` mid-scale-up, then a restart, on a real local autoscaling cluster (v1, v2).

The daemon runs as its own process (the ``raytide`` console script) with a SQLite state file, against a
real cluster whose nodes take a few seconds to boot; its metrics come from a stand-in Prometheus
(:mod:`tests.ray.fake_prometheus`) reporting a backlog on the GPU stage. The test

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
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoscaler.adapters.ray.actuator import RayActuator
from autoscaler.adapters.ray.cluster_state import node_type_resource, read_cluster_state
from autoscaler.adapters.state_store import StateStore, StoredState
from autoscaler.devcluster.cluster import LocalAutoscalingCluster, LocalNodeType, wait_until
from autoscaler.ports import ClusterState
from tests.ray.conftest import _ray_cli_available
from tests.ray.fake_prometheus import FakePrometheus

pytestmark = [pytest.mark.integration, pytest.mark.ray]

NODE_TYPES = (
    LocalNodeType("cpu4", {"CPU": 4}, max_workers=2),
    # One more than raytide may ask for: a duplicate launch would have room to happen.
    LocalNodeType("gpu1", {"CPU": 1, "GPU": 1}, max_workers=3),
)
LAUNCH_DELAY_S = 6.0
"""Long enough that the daemon is killed while the nodes it asked for are still booting."""
TIMEOUT_S = 120.0

CONFIG = """
shapes:
  - {{name: cpu4, resources: {{CPU: 4}}, price_per_hour: 0.2, min: 0, max: 2, launch_seconds: 5}}
  - {{name: gpu1, resources: {{CPU: 1, GPU: 1}}, price_per_hour: 1.0, min: 0, max: 2, launch_seconds: 5}}
stages:
  - {{name: infer, operator: "Infer", resources: {{CPU: 1, GPU: 1}}, prior_rate: {{gpu1: 1.0}}}}
targets: {{drain_seconds: 60, headroom: 0.2}}
bounds: {{max_step_down: 2, scale_down_window_seconds: 300}}
prometheus: {{url: "{url}", timeout_seconds: 2, retries: 0}}
daemon: {{interval_seconds: 1, observe_timeout_seconds: 10, act_timeout_seconds: 15, http_port: null,
         state_path: "{state}"}}
ray: {{floor_form: resource, use_coordinator: false}}
"""
FLOOR = {"cpu4": 0, "gpu1": 2}
GPU1 = node_type_resource("gpu1")


@pytest.fixture(scope="module", params=["v1", "v2"])
def slow_cluster(request: pytest.FixtureRequest) -> Iterator[LocalAutoscalingCluster]:
    if not _ray_cli_available():
        if os.environ.get("CI"):
            pytest.fail("the `ray` CLI is not installed")
        pytest.skip("the `ray` CLI is not installed")
    cluster = LocalAutoscalingCluster(
        NODE_TYPES,
        autoscaler_v2=request.param == "v2",
        idle_timeout_minutes=1.0,
        launch_delay_s=LAUNCH_DELAY_S,
    )
    with cluster:
        yield cluster


class Watcher:
    """Polls the GCS in a thread and keeps the most gpu1 and cpu4 nodes seen alive (and alive + pending).

    Alive nodes are what the assertion uses: v2 can list a node that is joining both as alive and as a
    pending instance for a moment, so alive + pending may overcount; a duplicate launch would show up as a
    third alive gpu1 node (the node type allows three) a launch delay later.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.max_gpu1 = 0
        self.max_gpu1_with_pending = 0
        self.max_cpu4 = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                s = read_cluster_state(self.address)
            except Exception:
                pass
            else:
                alive, pending = s.node_counts(), s.pending_counts()
                self.max_gpu1 = max(self.max_gpu1, alive.get("gpu1", 0))
                both = alive.get("gpu1", 0) + pending.get("gpu1", 0)
                self.max_gpu1_with_pending = max(self.max_gpu1_with_pending, both)
                self.max_cpu4 = max(self.max_cpu4, alive.get("cpu4", 0) + pending.get("cpu4", 0))
            self._stop.wait(0.3)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _raytide(config: Path, address: str, log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("raytide")
    cmd = (
        [str(exe)] if exe.exists() else [sys.executable, "-c", "from autoscaler.app.cli import main; main()"]
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [*cmd, "run", "--config", str(config), "--ray-address", address],
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
    config.write_text(CONFIG.format(url=prom.url, state=state_path))

    def state() -> ClusterState:
        return read_cluster_state(address)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        with Watcher(address) as watcher:
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
        assert watcher.max_gpu1 == 2, (
            f"{watcher.max_gpu1} gpu1 nodes alive for a floor of two "
            f"(alive + pending at most {watcher.max_gpu1_with_pending})"
        )
        assert watcher.max_cpu4 == 0
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
