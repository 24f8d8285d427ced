"""``raytide run`` with a damaged state file exits 5 with one message (no traceback); its daemon is wired with
the fakes of tests/support instead of Ray."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscaler.adapters.state_store import StateStore
from autoscaler.app import wiring
from autoscaler.app.cli import EXIT_CONFIG, EXIT_MISSING_METRICS, EXIT_STATE, app
from autoscaler.core.config import Config
from autoscaler.core.policy_api import Policy
from autoscaler.ports import ClusterState, MetricsSource
from tests.support.daemon_fakes import (
    CONFIG_TEXT,
    FakeActuator,
    FakeCluster,
    FakeSource,
    make_daemon,
)


class FakeWiring(wiring.Wiring):
    """The real wiring's daemon, with fakes for Ray and the metrics source."""

    def __init__(
        self,
        config: Config,
        policy: Policy,
        options: wiring.WiringOptions,
        store: StateStore,
        source_failure: Exception | None = None,
    ) -> None:
        self.cluster = FakeCluster()
        self.source_failure = source_failure
        super().__init__(
            config=config,
            policy=policy,
            options=options,
            actuator=FakeActuator(self.cluster),
            warm_pool=None,
            store=store,
            scratch=None,
        )

    def read_cluster(self) -> ClusterState:
        return self.cluster()

    def metrics_source(self) -> MetricsSource:  # type: ignore[override]
        source = _ClosingSource()
        source.fail = self.source_failure
        return source


class _ClosingSource(FakeSource):
    async def aclose(self) -> None:
        pass


@pytest.fixture
def state_db(tmp_path: Path) -> Path:
    """A state file one fake daemon tick committed."""
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        cluster = FakeCluster()
        daemon = make_daemon(store, FakeSource(backlog=3.0), cluster, FakeActuator(cluster))

        async def one_tick() -> None:
            await daemon.start()
            await daemon.tick()

        asyncio.run(one_tick())
    return path


def run_once(
    tmp_path: Path, state_db: Path, monkeypatch: pytest.MonkeyPatch, source_failure: Exception | None = None
) -> tuple[int, str, str]:
    config = tmp_path / "raytide.yaml"
    config.write_text(CONFIG_TEXT, encoding="utf-8")

    def wire(cfg: Config, policy: Policy, options: wiring.WiringOptions) -> wiring.Wiring:
        return FakeWiring(cfg, policy, options, StateStore(state_db), source_failure)

    monkeypatch.setattr(wiring, "wire", wire)
    result = CliRunner().invoke(
        app,
        ["run", "--config", str(config), "--ray-address", "127.0.0.1:1", "--once"],
        env={"COLUMNS": "200"},
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_a_good_state_file_runs_a_tick(
    tmp_path: Path, state_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, errout = run_once(tmp_path, state_db, monkeypatch)
    assert code == 0, errout
    assert out.startswith("tick 2: targets")


def test_a_degraded_tick_lists_its_errors_as_plain_text(
    tmp_path: Path, state_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = RuntimeError("[/] [bold]x \x1b[2J\x1b]0;title\x07 at http://raytide:hunter2-secret@prom:9090")
    code, out, errout = run_once(tmp_path, state_db, monkeypatch, failure)
    assert code == EXIT_MISSING_METRICS
    assert out.startswith("tick 2: targets")
    assert "[/] [bold]x" in errout and "http://***@prom:9090" in errout
    assert "hunter2-secret" not in errout and "\x1b" not in errout and "\x07" not in errout


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("plan", '{"kind": "plan"}', "the stored plan cannot be read"),
        ("decision_state", '{"daemon": []}', "the daemon's stored floor and warm pool cannot be restored"),
    ],
)
def test_a_bad_state_row_exits_5_with_one_message(
    tmp_path: Path, state_db: Path, monkeypatch: pytest.MonkeyPatch, column: str, value: str, says: str
) -> None:
    with sqlite3.connect(state_db) as con:
        con.execute(f"UPDATE state SET {column} = ?", (value,))
    code, out, errout = run_once(tmp_path, state_db, monkeypatch)
    assert code == EXIT_STATE
    assert says in errout and "Traceback" not in errout
    assert out == ""


def test_an_infinite_interval_is_a_usage_error(tmp_path: Path, state_db: Path) -> None:
    config = tmp_path / "raytide.yaml"
    config.write_text(CONFIG_TEXT, encoding="utf-8")
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--interval", "inf"])
    assert result.exit_code == EXIT_CONFIG
    assert "--interval must be a finite number > 0" in result.stderr
