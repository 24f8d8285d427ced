"""Replay real Ray exporter scrapes to a real Prometheus.

The capture ``ray-2.60-two-stage/scrapes.tgz`` holds 14 scrapes (``dump_000.prom`` … ``dump_013.prom``, 3 s
apart) of every exporter of a fake multinode Ray 2.60 cluster running ``range → decode (CPU) → Infer (GPU
actors)``. Each file starts with ``# time <unix>`` and has ``# TARGET host:port`` before each exporter's text.

``ReplayExporter`` serves each original target on its own loopback port (prometheus-client's HTTP server with
a collector that yields the current frame's families), so Prometheus sees separate targets with their own
``instance`` label; the node exporters would otherwise collide, because every node of the fake cluster has
ip 192.0.2.2.

What is in the capture (decode blocks / Infer blocks; nodes by type):

====== ============================ ================================= ===============================
frame  decode queued / processed    Infer queued / processed          active (pending) nodes
====== ============================ ================================= ===============================
0–1    no Ray Data series yet       —                                 head; gpu1 pending (1)
2–3    0 / 0                        0 / 0                             gpu1 pending (2), up (3)
4–5    175 / 0                      0 / 0                             cpu4 pending (4), up (5)
6      187 / 12                     0 / 11                            cpu4=1, gpu1=1
7–8    148 / 51                     0 / 50                            cpu4=1, gpu1=1
9      89 / 106                     18 / 86                           cpu4=1, gpu1=1
10–11  0 / 200                      77 / 121                          gpu1 pending (10), gpu1=2 (11)
12–13  0 / 200                      38→0 / 160→200                    cpu4=1, gpu1=2
====== ============================ ================================= ===============================

``DECODE_BACKED_UP`` (frames 6–9) is the default window: every exporter is present, the decode stage is
backed up, Infer keeps up, and one node of each configured shape runs.

Ray reports throughput as cumulative gauges (and real counters/histograms), so replaying a window in a loop
would make them jump back at each wrap. Instead each loop adds the window's growth (last − first frame) to
every cumulative series, keeping them monotonic so ``rate()`` sees a steady pipeline rather than resets.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

DECODE_BACKED_UP = range(6, 10)
"""Frames where the decode stage is backed up; every exporter is present and cpu4=1, gpu1=1 run."""

CUMULATIVE_TYPES = frozenset({"counter", "histogram", "summary"})
CUMULATIVE_GAUGES = frozenset(
    {
        # Ray Data exports these running totals as gauges; they reset when a dataset ends.
        "ray_data_num_task_inputs_processed",
        "ray_data_bytes_task_inputs_processed",
        "ray_data_num_task_outputs_generated",
        "ray_data_bytes_task_outputs_generated",
        "ray_data_rows_task_outputs_generated",
        "ray_data_num_inputs_received",
        "ray_data_bytes_inputs_received",
        "ray_data_num_row_inputs_received",
        "ray_data_num_outputs_taken",
        "ray_data_bytes_outputs_taken",
        "ray_data_row_outputs_taken",
        "ray_data_block_outputs_taken",
        "ray_data_num_outputs_of_finished_tasks",
        "ray_data_bytes_outputs_of_finished_tasks",
        "ray_data_rows_outputs_of_finished_tasks",
        "ray_data_bytes_inputs_of_submitted_tasks",
        "ray_data_rows_inputs_of_submitted_tasks",
        "ray_data_num_tasks_submitted",
        "ray_data_num_tasks_finished",
        "ray_data_num_tasks_failed",
        "ray_data_output_rows",
        "ray_data_output_bytes",
        "ray_data_obj_store_mem_freed",
        "ray_data_obj_store_mem_spilled",
        "ray_data_freed_bytes",
        "ray_data_spilled_bytes",
    }
)

_TIME = re.compile(r"^# time (\S+)\s*$", re.MULTILINE)
_TARGET = re.compile(r"^# TARGET (\S+)\s*\n", re.MULTILINE)

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Frame:
    """One capture file: when it was taken and each exporter's metric families."""

    index: int
    time: float
    targets: Mapping[str, tuple[Metric, ...]]


def parse_capture(text: str, index: int = 0) -> Frame:
    """One ``dump_NNN.prom`` file → a Frame (every family of the capture parses, histograms too)."""
    m = _TIME.search(text)
    if m is None:
        raise ValueError(f"capture {index} has no '# time <unix>' line")
    parts = _TARGET.split(text)
    targets: dict[str, tuple[Metric, ...]] = {}
    for i in range(1, len(parts), 2):
        targets[parts[i]] = tuple(text_string_to_metric_families(parts[i + 1]))
    return Frame(index=index, time=float(m.group(1)), targets=MappingProxyType(targets))


def extract_captures(archive: Path, into: Path) -> list[Path]:
    """Unpack the archive and return its ``*.prom`` files in capture order."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    files = sorted(into.rglob("*.prom"))
    if not files:
        raise ValueError(f"{archive} holds no *.prom files")
    return files


def load_frames(archive: Path, into: Path) -> list[Frame]:
    return [
        parse_capture(p.read_text(encoding="utf-8"), i) for i, p in enumerate(extract_captures(archive, into))
    ]


def _is_cumulative(family: Metric, sample_name: str) -> bool:
    if sample_name.endswith("_created"):
        return False
    return family.type in CUMULATIVE_TYPES or family.name in CUMULATIVE_GAUGES


def _series(frame: Frame, target: str) -> dict[SeriesKey, float]:
    out: dict[SeriesKey, float] = {}
    for family in frame.targets.get(target, ()):
        for s in family.samples:
            if _is_cumulative(family, s.name):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@dataclass(frozen=True)
class _Schedule:
    first: int
    last: int
    period: float
    loop: bool
    started: float
    growth: Mapping[str, Mapping[SeriesKey, float]]
    """Per target, how much each cumulative series grows over one pass of the window."""

    def position(self, now: float) -> tuple[int, int]:
        """(frame index, completed loops) at monotonic time ``now``."""
        n = self.last - self.first + 1
        if n == 1 or self.period <= 0:
            return self.first, 0
        step = int((now - self.started) / self.period)
        if not self.loop:
            return self.first + min(step, n - 1), 0
        return self.first + step % n, step // n


class _TargetCollector(Collector):
    def __init__(self, replay: ReplayExporter, target: str) -> None:
        self._replay = replay
        self._target = target

    def collect(self) -> Iterator[Metric]:
        yield from self._replay.families(self._target)


class ReplayExporter:
    """Serves captured frames, one HTTP endpoint per original exporter, on 127.0.0.1.

    ``hold(i)`` serves frame ``i`` until told otherwise; ``play(first, last)`` steps through a window every
    ``period`` seconds (looping by default). Frames advance by the clock, so whoever scrapes — Prometheus or a
    test — sees the same frame at the same moment. A target absent from the current frame answers with no
    series (an exporter that is up but has nothing to say yet).
    """

    def __init__(self, frames: Sequence[Frame]) -> None:
        if not frames:
            raise ValueError("no frames to replay")
        self.frames = tuple(frames)
        names: list[str] = []
        for f in self.frames:
            names.extend(t for t in f.targets if t not in names)
        self.targets: tuple[str, ...] = tuple(names)
        self._lock = threading.Lock()
        self._schedule = self._make_schedule(0, 0, period=0.0, loop=False)
        self._servers: dict[str, tuple[WSGIServer, threading.Thread]] = {}

    @property
    def addresses(self) -> dict[str, str]:
        """Original target (``192.0.2.2:38151``) → where it is served now (``127.0.0.1:PORT``)."""
        return {t: f"127.0.0.1:{srv.server_port}" for t, (srv, _) in self._servers.items()}

    def start(self) -> None:
        for target in self.targets:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_TargetCollector(self, target))
            self._servers[target] = start_http_server(0, addr="127.0.0.1", registry=registry)

    def stop(self) -> None:
        for server, thread in self._servers.values():
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers.clear()

    def __enter__(self) -> ReplayExporter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold(self, index: int) -> None:
        """Serve frame ``index`` until told otherwise."""
        self._set(self._make_schedule(index, index, period=0.0, loop=False))

    def play(self, window: range = DECODE_BACKED_UP, *, period: float = 1.0, loop: bool = True) -> None:
        """Step through ``window`` (consecutive frames) every ``period`` seconds, from its first frame now."""
        if window.step != 1 or len(window) == 0:
            raise ValueError("window must be a non-empty range of consecutive frames")
        self._set(self._make_schedule(window.start, window[-1], period=period, loop=loop))

    def current(self) -> tuple[int, int]:
        """(frame index being served, completed loops of the window)."""
        with self._lock:
            schedule = self._schedule
        return schedule.position(time.monotonic())

    def families(self, target: str) -> list[Metric]:
        """What ``target`` exposes now: the current frame, cumulative series lifted past earlier loops."""
        with self._lock:
            schedule = self._schedule
        index, loops = schedule.position(time.monotonic())
        growth = schedule.growth.get(target, {})
        out: list[Metric] = []
        for family in self.frames[index].targets.get(target, ()):
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                value = s.value
                if loops and _is_cumulative(family, s.name):
                    value += loops * growth.get((s.name, tuple(sorted(s.labels.items()))), 0.0)
                # Captured timestamps (none in this capture) would be years off; let Prometheus stamp it.
                copy.add_sample(s.name, dict(s.labels), value)
            out.append(copy)
        return out

    def _set(self, schedule: _Schedule) -> None:
        with self._lock:
            self._schedule = schedule

    def _make_schedule(self, first: int, last: int, *, period: float, loop: bool) -> _Schedule:
        if not (0 <= first <= last < len(self.frames)):
            raise ValueError(f"frames {first}..{last} are outside 0..{len(self.frames) - 1}")
        growth: dict[str, dict[SeriesKey, float]] = {}
        for target in self.targets:
            start = _series(self.frames[first], target)
            end = _series(self.frames[last], target)
            growth[target] = {k: end[k] - v for k, v in start.items() if k in end and end[k] >= v}
        return _Schedule(first, last, period, loop, time.monotonic(), MappingProxyType(growth))


# --- a real Prometheus scraping the replay ---------------------------------------------------------------

STARTUP_SECONDS = 30.0


class PrometheusStartError(RuntimeError):
    """Prometheus did not come up (the message ends with the tail of its log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read().decode())


@dataclass
class PrometheusServer:
    """A Prometheus process on 127.0.0.1 with its own config and storage directory."""

    url: str
    process: subprocess.Popen[bytes]
    config_file: Path
    log_file: Path

    @classmethod
    def start(
        cls, binary: str, work: Path, targets: Mapping[str, str], attempts: int = 3
    ) -> PrometheusServer:
        """Start Prometheus scraping ``targets`` (original name → ``host:port``) every second, and wait until
        it is ready and every target is up. Each target's original name is kept in a ``ray_target`` label."""
        static = [
            {"targets": [address], "labels": {"ray_target": original}}
            for original, address in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ray", "static_configs": static}],
        }
        for attempt in range(attempts):
            server = cls._launch(binary, work / f"run{attempt}", config)
            try:
                server.wait_ready(targets=len(static))
                return server
            except PrometheusStartError:
                server.stop()
                # The free port is only reserved until Prometheus binds it; another process may win that race.
                if attempt + 1 < attempts and "address already in use" in server.log_tail():
                    continue
                raise
        raise PrometheusStartError("unreachable")

    @classmethod
    def _launch(cls, binary: str, work: Path, config: Mapping[str, Any]) -> PrometheusServer:
        work.mkdir(parents=True, exist_ok=True)
        config_file = work / "prometheus.yml"
        # JSON is YAML, and keeps this free of a YAML writer.
        config_file.write_text(json.dumps(config, indent=2))
        log_file = work / "prometheus.log"
        port = free_port()
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(f"http://127.0.0.1:{port}", process, config_file, log_file)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def instant(self, promql: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": promql})
        body = _get_json(f"{self.url}/api/v1/query?{query}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, *, minimum: int = 1, timeout: float = STARTUP_SECONDS) -> None:
        """Wait until ``promql`` returns at least ``minimum`` series: a readiness wait, not an assertion."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.instant(promql)) >= minimum:
                return
            time.sleep(0.25)
        raise TimeoutError(f"Prometheus never answered {promql!r} with {minimum}+ series\n{self.log_tail()}")

    def wait_ready(self, targets: int) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        ready = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusStartError(
                    f"prometheus exited with {self.process.returncode}\n{self.log_tail()}"
                )
            try:
                if not ready:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                        ready = resp.status == 200
                if ready:
                    active = _get_json(f"{self.url}/api/v1/targets?state=active")["data"]["activeTargets"]
                    if len(active) == targets and all(t["health"] == "up" for t in active):
                        return
            except (urllib.error.URLError, OSError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        raise PrometheusStartError(
            f"Prometheus was not ready with {targets} targets up in time\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
