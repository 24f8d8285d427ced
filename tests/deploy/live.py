"""Real processes for the deploy checks that run raytide for real: ``raytide run`` and a Prometheus.

Used by tests/ray/test_systemd_notify.py (a real run with a real notify socket) and
tests/ray/test_grafana_queries.py (the dashboard's queries on a Prometheus that scraped a real run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoscaler.devcluster.cluster import free_port
from tests.support.programs import raytide_command

STARTUP_S = 60.0


class RaytideRun:
    """``raytide run`` as its own process, its output in ``log``."""

    def __init__(self, config: Path, address: str, log: Path, env: Mapping[str, str] | None = None) -> None:
        self.log = log
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)  # only what the test gives it
        full_env.update(env or {})
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*raytide_command(), "run", "--config", str(config), "--ray-address", address],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
            )

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit (SIGKILL if it does not come); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        body: bytes = answer.read()
        return body


class Prometheus:
    """A real Prometheus on 127.0.0.1 with the given scrape configs and rule files."""

    def __init__(
        self,
        binary: str,
        work: Path,
        scrape_configs: Sequence[Mapping[str, Any]],
        rule_files: Sequence[Path] = (),
        interval: str = "2s",
    ) -> None:
        work.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": list(scrape_configs),
        }
        self.config_file = work / "prometheus.yml"
        self.config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_file = work / "prometheus.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                http_get(f"{self.url}/-/ready")
                return
            time.sleep(0.25)
        raise RuntimeError(f"Prometheus did not become ready\n{self.log_tail()}")

    def api(self, path: str, **params: str) -> Any:
        body = json.loads(http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30))
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=promql, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")
        assert data["resultType"] == "matrix", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
