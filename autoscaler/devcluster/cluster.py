"""A local autoscaling Ray cluster with fake node types, for tests, benchmarks and ``raytide demo``.

Ray's fake multi-node provider starts a real raylet on this host per node (GPUs are just a count). This
module writes the whole cluster config and starts the head the way ``ray.cluster_utils.AutoscalingCluster``
does, which fails as installed; every worker type carries raytide's node-type label and marker resource.
Differences, locking, ports and why: docs/architecture.md, "The local cluster".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Literal, Self

import yaml

from autoscaler.adapters.ray.cluster_state import (
    NODE_TYPE_LABEL,
    forget_gcs_client,
    gcs_client,
    node_type_resource,
)
from autoscaler.devcluster import slow_provider as ray_fake_provider

HEAD_NODE_TYPE = "ray.head.default"
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
"""The head's node id under the fake provider (``ray.autoscaler._private.fake_multi_node``)."""

_RAY_FAKE_PROVIDER_CLASS = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"

AutoscalerVersion = Literal["v1", "v2"]


@dataclass(frozen=True, slots=True)
class LocalNodeType:
    """A worker node type of the local cluster. ``GPU`` in ``resources`` is a fake count."""

    name: str
    resources: Mapping[str, float]
    min_workers: int = 0
    max_workers: int = 4
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        _check_label_value(self.name)
        if self.name == HEAD_NODE_TYPE:
            raise ValueError(f"{HEAD_NODE_TYPE!r} is the head's node type; pick another name")
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"node type {self.name}: need 0 <= min_workers <= max_workers")

    def ray_resources(self) -> dict[str, float]:
        """The resources Ray sees: the given ones plus one unit of the per-type marker resource."""
        return {**{k: float(v) for k, v in self.resources.items()}, node_type_resource(self.name): 1.0}

    def ray_labels(self) -> dict[str, str]:
        return {**self.labels, NODE_TYPE_LABEL: self.name}


def _check_label_value(value: str) -> None:
    # Ray's rule for label values (ray._private.label_utils.LABEL_REGEX); the type name becomes one.
    ok = 0 < len(value) <= 63 and value[0].isalnum() and value[-1].isalnum()
    ok = ok and all(c.isalnum() or c in "-_." for c in value)
    if not ok:
        raise ValueError(
            f"node type name {value!r} is not a valid Ray label value "
            "(1-63 chars of [A-Za-z0-9-_.], alphanumeric at both ends)"
        )


def _acquire_machine_lock() -> IO[str]:
    """Wait for the machine-wide lock on local clusters; the open file holds it until closed."""
    path = os.environ.get("RAYTIDE_CLUSTER_LOCK") or os.path.join(
        tempfile.gettempdir(), "raytide-local-cluster.lock"
    )
    f = open(path, "a+")  # noqa: SIM115 - held for the cluster's lifetime, closed by shutdown()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"raytide: another local Ray cluster is running; waiting for {path}", file=sys.stderr)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


# Ports Ray's own processes bind on their own later (autoscaler and dashboard metrics, dashboard, GCS, client
# server, metrics export): the kernel may hand one out as "free" before they do, and then two processes of
# the same cluster race for it.
_RAY_FIXED_PORTS = frozenset({44217, 44227, 8265, 6379, 8080, 10001, 52365})


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now and no Ray process binds by default (racy by nature, fine for a
    single-user test host)."""
    while True:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _RAY_FIXED_PORTS:
            return port


def _ray_cli() -> str:
    # The `ray` next to this interpreter, so a venv's Ray is used even when the venv is not activated.
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed (pip install 'raytide[ray]')")
    return found


def ray_stop(timeout_s: float = 60.0) -> None:
    """``ray stop --force``: kills every Ray process on this machine.

    After SIGKILL, ``ray stop`` waits up to the grace period for each group of processes to vanish; where
    PID 1 does not reap orphans (some containers) the killed processes linger as zombies and it always
    waits the full period, so it is kept short.
    """
    subprocess.run(
        [_ray_cli(), "stop", "--force", "--grace-period", "1"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout_s,
    )


def wait_until(
    condition: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.5, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


class LocalAutoscalingCluster:
    """Start a fake multi-node autoscaling cluster on this host; stop it on exit.

    ::

        types = [LocalNodeType("cpu4", {"CPU": 4}), LocalNodeType("gpu1", {"CPU": 2, "GPU": 1})]
        with LocalAutoscalingCluster(types, autoscaler_v2=True) as cluster:
            state = read_cluster_state(cluster.address)

    The head has no CPUs (as in ``AutoscalingCluster``), so all work lands on autoscaled workers.

    ``ray stop --force`` stops every Ray process on the machine, so :meth:`start` waits for an exclusive
    machine-wide lock (``$RAYTIDE_CLUSTER_LOCK``, default ``<tmp>/raytide-local-cluster.lock``) and
    :meth:`shutdown` releases it. Shutdown also removes the config directory and, unless ``keep_logs``, the
    cluster's Ray session directory. Ray's fixed default ports are replaced by free ones, except the
    autoscaler's metrics port (44217, which scrapers expect; ``AUTOSCALER_METRIC_PORT`` in ``extra_env``
    moves it).
    """

    def __init__(
        self,
        node_types: Iterable[LocalNodeType],
        *,
        autoscaler_v2: bool = False,
        head_resources: Mapping[str, float] | None = None,
        max_workers: int | None = None,
        idle_timeout_minutes: float = 0.2,
        upscaling_speed: float = 1.0,
        launch_delay_s: float = 0.0,
        include_dashboard: bool = False,
        startup_timeout_s: float = 90.0,
        extra_env: Mapping[str, str] | None = None,
        keep_logs: bool = False,
    ) -> None:
        types = tuple(node_types)
        names = [t.name for t in types]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate node type names: {names}")
        if launch_delay_s < 0:
            raise ValueError("launch_delay_s must be >= 0")
        self._node_types: Mapping[str, LocalNodeType] = MappingProxyType({t.name: t for t in types})
        self._autoscaler_v2 = autoscaler_v2
        self._head_resources = dict(head_resources or {})
        self._max_workers = max_workers if max_workers is not None else sum(t.max_workers for t in types)
        self._idle_timeout_minutes = idle_timeout_minutes
        self._upscaling_speed = upscaling_speed
        self._launch_delay_s = launch_delay_s
        self._include_dashboard = include_dashboard
        self._startup_timeout_s = startup_timeout_s
        self._extra_env = dict(extra_env or {})
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._address: str | None = None
        self._dashboard_url: str | None = None
        self._config: dict[str, Any] | None = None
        self._keep_logs = keep_logs
        self._session_dir: Path | None = None
        self._lock_file: IO[str] | None = None

    # ----------------------------------------------------------------------------------------- public

    @property
    def node_types(self) -> Mapping[str, LocalNodeType]:
        return self._node_types

    @property
    def autoscaler_version(self) -> AutoscalerVersion:
        return "v2" if self._autoscaler_v2 else "v1"

    @property
    def address(self) -> str:
        """The GCS address (``host:port``), for ``ray.init(address=...)`` and the raytide adapters."""
        if self._address is None:
            raise RuntimeError("cluster is not running")
        return self._address

    @property
    def dashboard_url(self) -> str | None:
        return self._dashboard_url

    @property
    def session_dir(self) -> Path | None:
        """Ray's session directory (logs) of this cluster; removed at shutdown unless ``keep_logs``."""
        return self._session_dir

    @property
    def config(self) -> Mapping[str, Any]:
        """The cluster config given to the autoscaler (available after :meth:`start`)."""
        if self._config is None:
            raise RuntimeError("cluster is not running")
        return self._config

    def start(self) -> Self:
        if self._address is not None:
            raise RuntimeError("cluster already started")
        self._lock_file = _acquire_machine_lock()
        # A leftover cluster from a crashed run would answer on the default ports and confuse everything.
        ray_stop()
        self._tmpdir = tempfile.TemporaryDirectory(prefix="raytide-cluster-")
        try:
            self._start_head(Path(self._tmpdir.name))
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self) -> None:
        """Stop every Ray process on this machine and remove the config directory. Idempotent."""
        if self._lock_file is None:
            # Never started, or already shut down: the Ray running now (if any) is another session's,
            # which took the lock after this one released it; `ray stop` would kill it.
            return
        # A driver connected from this process would keep retrying a dead GCS and spam the log.
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
        ray_stop()
        if self._address is not None:
            forget_gcs_client(self._address)
        self._address = None
        self._dashboard_url = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        if self._session_dir is not None and not self._keep_logs:
            shutil.rmtree(self._session_dir, ignore_errors=True)
        self._session_dir = None
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None
        with contextlib.suppress(Exception):
            import ray._private.services

            # Ray caches the GCS address it found on disk; the next cluster will have another one.
            getattr(ray._private.services.find_gcs_addresses, "cache_clear", lambda: None)()

    def connect(self, **init_kwargs: Any) -> Any:
        """``ray.init`` a driver in this process against the cluster; returns Ray's context."""
        import ray

        init_kwargs.setdefault("logging_level", "WARNING")
        init_kwargs.setdefault("log_to_driver", False)
        return ray.init(address=self.address, **init_kwargs)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    # --------------------------------------------------------------------------------------- internals

    def build_config(self, *, gcs_address: str) -> dict[str, Any]:
        """The full autoscaler cluster config (what ``ray up`` would have filled in)."""
        provider: dict[str, Any] = {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # v2 needs it; on v1 it made the autoscaler overshoot (docs/architecture.md).
            "launch_multiple": self._autoscaler_v2,
            "head_node_id": FAKE_HEAD_NODE_ID,
            # Workers must join this head, not the default port.
            "gcs_address": gcs_address,
        }
        if self._autoscaler_v2 or self._launch_delay_s > 0:
            provider["type"] = "external"
            provider["module"] = (
                ray_fake_provider.MODULE_PATH if self._launch_delay_s > 0 else _RAY_FAKE_PROVIDER_CLASS
            )
            provider["launch_delay_s"] = self._launch_delay_s
        node_types: dict[str, Any] = {
            HEAD_NODE_TYPE: {
                "resources": {"CPU": 0, **self._head_resources},
                "node_config": {},
                "max_workers": 0,
            }
        }
        for t in self._node_types.values():
            node_types[t.name] = {
                "resources": t.ray_resources(),
                "labels": t.ray_labels(),
                "node_config": {},
                "min_workers": t.min_workers,
                "max_workers": t.max_workers,
            }
        return {
            "cluster_name": "raytide-local",
            "max_workers": self._max_workers,
            "upscaling_speed": self._upscaling_speed,
            "idle_timeout_minutes": self._idle_timeout_minutes,
            "docker": {},
            "provider": provider,
            "auth": {},
            "available_node_types": node_types,
            "head_node_type": HEAD_NODE_TYPE,
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }

    def _start_head(self, workdir: Path) -> None:
        from ray._private.services import get_node_ip_address

        # The fake provider starts workers with Ray's own idea of this host's IP, so the head must use it
        # too; a loopback-only head would not be reachable at the address the workers are given.
        node_ip: str = get_node_ip_address()  # type: ignore[no-untyped-call]
        gcs_port = free_port()
        gcs_address = f"{node_ip}:{gcs_port}"
        config = self.build_config(gcs_address=gcs_address)
        config_path = workdir / "cluster.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

        head_res = config["available_node_types"][HEAD_NODE_TYPE]["resources"]
        extra = {k: v for k, v in head_res.items() if k not in ("CPU", "GPU")}
        cmd = [
            _ray_cli(),
            "start",
            "--head",
            f"--autoscaling-config={config_path}",
            f"--node-ip-address={node_ip}",
            f"--port={gcs_port}",
            f"--num-cpus={head_res.get('CPU', 0)}",
            f"--num-gpus={head_res.get('GPU', 0)}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ]
        if extra:
            cmd.append(f"--resources={json.dumps(extra)}")
        # Even without the dashboard Ray runs a minimal one (usage stats) on the dashboard port.
        dashboard_port = free_port()
        cmd += [
            f"--include-dashboard={'true' if self._include_dashboard else 'false'}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
        ]

        env = dict(os.environ)
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        if self._autoscaler_v2:
            env.update(
                {
                    "RAY_enable_autoscaler_v2": "1",
                    "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                    "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
                }
            )
        else:
            # An inherited setting would silently turn the v1 cluster the caller asked for into v2.
            env.pop("RAY_enable_autoscaler_v2", None)
        if self._launch_delay_s > 0:
            # Ray's monitor cannot import raytide's `autoscaler` package (its own autoscaler.py shadows it),
            # so it gets a copy of the provider module under a unique name.
            shutil.copyfile(ray_fake_provider.__file__, workdir / f"{ray_fake_provider.STANDALONE_MODULE}.py")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(workdir), env.get("PYTHONPATH", "")) if p)
        env.update(self._extra_env)
        log_path = workdir / "ray-start.log"
        with log_path.open("wb") as log:
            proc = subprocess.run(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=self._startup_timeout_s,
                check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(
                f"`ray start --head` failed (exit {proc.returncode}):\n{log_path.read_text()[-4000:]}"
            )
        self._config = config
        self._address = gcs_address
        self._session_dir = self._find_session_dir(env)
        if self._include_dashboard:
            self._dashboard_url = f"http://127.0.0.1:{dashboard_port}"

    def _find_session_dir(self, env: Mapping[str, str]) -> Path | None:
        # Ray names the session in the GCS and puts it under <RAY_TMPDIR or TMPDIR or /tmp>/ray.
        try:
            name = gcs_client(self.address).internal_kv_get(b"session_name", b"session", timeout=10)
        except Exception:
            return None
        if not name:
            return None
        root = Path(env.get("RAY_TMPDIR") or env.get("TMPDIR") or "/tmp") / "ray"
        session = root / name.decode()
        return session if session.is_dir() else None
