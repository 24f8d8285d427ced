"""A daemon whose Prometheus URL carries a password, pointed at a closed port: the password is in none of
the places the failure is told — ``/readyz``, the decision rows of state.db, the JSON log lines."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from autoscaler.adapters.http_endpoint import HttpEndpoint
from autoscaler.adapters.logging_setup import configure_logging
from autoscaler.adapters.prometheus import PrometheusSource
from autoscaler.adapters.state_store import StateStore
from autoscaler.adapters.telemetry import Telemetry
from autoscaler.core.config import PrometheusConfig
from tests.support.daemon_fakes import FakeActuator, FakeCluster, make_daemon
from tests.support.net import closed_port

PASSWORD = "hunter2-secret"


pytestmark = pytest.mark.usefixtures("restore_root_logger")


def everything_in(db: Path) -> str:
    """Every value of every row of every table, as text."""
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(repr(row) for t in tables for row in con.execute(f"SELECT * FROM {t}"))


async def test_the_password_is_not_served_stored_or_logged(tmp_path: Path) -> None:
    logs = io.StringIO()
    configure_logging("json", "INFO", stream=logs)
    port = closed_port()
    config = PrometheusConfig(url=f"http://raytide:{PASSWORD}@127.0.0.1:{port}", retries=1, timeout_seconds=2)
    telemetry = Telemetry(tick_interval_seconds=1.0)
    cluster = FakeCluster()
    db = tmp_path / "state.db"
    async with PrometheusSource(config=config, backoff_seconds=0) as source:
        with StateStore(db) as store:
            daemon = make_daemon(store, source, cluster, FakeActuator(cluster), telemetry=telemetry)
            await daemon.start()
            out = await daemon.tick()
            await daemon.tick()
            endpoint = HttpEndpoint(registry=telemetry.registry, health=telemetry)
            async with endpoint, httpx.AsyncClient(base_url=endpoint.url, timeout=5.0) as client:
                readyz = await client.get("/readyz")

    told = f"cannot reach Prometheus at http://127.0.0.1:{port}"
    assert any(told in e for e in out.errors), out.errors

    assert readyz.status_code == 503
    assert told in readyz.text and PASSWORD not in readyz.text

    stored = everything_in(db)
    assert told in stored and PASSWORD not in stored

    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert any(told in e for d in lines for e in d.get("errors", []))
    assert PASSWORD not in logs.getvalue()
