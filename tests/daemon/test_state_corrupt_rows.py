"""Fuzzing the state rows (Hypothesis, bounded, derandomized): any value in any column of the state row,
the decision log, the actions table or the run marker — wrong types, broken or deeply nested JSON, valid
JSON of the wrong shape — gives a clear ``StateStoreError`` (or, from the daemon, a ``StateError``) or a
held tick; never another exception."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.adapters.state_store import StateStore, StateStoreError
from autoscaler.ports import StateError
from tests.support.daemon_fakes import FakeActuator, FakeCluster, FakeSource, make_daemon

COLUMNS: dict[str, tuple[str, ...]] = {
    "state": ("tick", "time", "models", "decision_state", "plan", "written"),
    "decisions": ("tick", "time", "policy", "held", "plan", "snapshot", "reasons"),
    "actions": (
        "key",
        "kind",
        "shape",
        "node_id",
        "payload",
        "status",
        "detail",
        "attempts",
        "created",
        "updated",
    ),
    "run": ("state", "pid", "process", "started", "changed"),
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

scalars = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | json_values.map(json.dumps)
    | st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)
    | st.sampled_from(["Infinity", "NaN", '{"counts": {"gpu1": -1}}', '{"version": 99}', "{}", "[]"])
)


@pytest.fixture(scope="module")
def baseline() -> Iterator[Path]:
    """A state file a daemon wrote: two ticks, a floor, a pending floor and drain, finished actions."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        cluster = FakeCluster()
        store = StateStore(path)
        d = make_daemon(store, FakeSource(backlog=100.0), cluster, FakeActuator(cluster))

        async def run() -> None:
            await d.start()
            await d.tick()
            await d.tick()

        asyncio.run(run())
        store.begin_action("drain:n1", kind="drain", shape="gpu1", node_id="n1", payload={"why": "idle"})
        store.begin_action("floor:99", kind="floor", payload={"counts": {"cpu4": 0, "gpu1": 1}})
        store.close()
        yield path


def _corrupt(src: Path, dst: Path, table: str, column: str, row: int, value: Any) -> bool:
    """Copy the file and set one cell; False when SQLite itself refuses the value (a constraint)."""
    shutil.copy(src, dst)
    con = sqlite3.connect(dst)
    try:
        rowids = [r[0] for r in con.execute(f"SELECT rowid FROM {table} ORDER BY rowid")]
        target = rowids[row % len(rowids)]
        with con:
            con.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value, target))
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return True


def _read_everything(path: Path) -> None:
    with StateStore(path) as store:
        store.load()
        store.pending_actions()
        store.recent_decisions(5)
        store.decisions_between(0.0, 1e12)
        store.stats()
        store.recorded_floors()
        for key in ("drain:n1", "floor:99", "floor:1", "floor:2"):
            store.action(key)
        store.begin_run()


async def _run_daemon(path: Path) -> None:
    cluster = FakeCluster()
    with StateStore(path) as store:
        d = make_daemon(store, FakeSource(backlog=100.0), cluster, FakeActuator(cluster))
        try:
            await d.start()
        except StateError as e:
            assert str(e)
            return
        # A tick never raises; one whose commit fails holds (its errors say why).
        await d.tick()


@settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    table=st.sampled_from(sorted(COLUMNS)),
    column_index=st.integers(0, 9),
    row=st.integers(0, 5),
    value=scalars,
)
def test_a_corrupt_cell_is_a_clear_error_or_a_held_tick_never_a_traceback(
    baseline: Path, table: str, column_index: int, row: int, value: Any
) -> None:
    column = COLUMNS[table][column_index % len(COLUMNS[table])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        if not _corrupt(baseline, path, table, column, row, value):
            return
        try:
            _read_everything(path)
        except StateStoreError as e:
            assert str(path) in str(e)
        asyncio.run(_run_daemon(path))


@pytest.mark.parametrize(
    ("edit", "part"),
    [
        (lambda s: {**s, "daemon": {**s["daemon"], "floor": {"gpu1": "two"}}}, "floor and warm pool"),
        (lambda s: {**s, "daemon": ["not", "an", "object"]}, "floor and warm pool"),
        (lambda s: {**s, "guard": [1, 2]}, "decision state"),
    ],
)
async def test_stored_state_the_daemon_cannot_restore_is_a_state_error_saying_what(
    baseline: Path, tmp_path: Path, edit: Any, part: str
) -> None:
    path = tmp_path / "state.db"
    shutil.copy(baseline, path)
    con = sqlite3.connect(path)
    with con:
        state = json.loads(con.execute("SELECT decision_state FROM state").fetchone()[0])
        con.execute("UPDATE state SET decision_state = ?", (json.dumps(edit(state)),))
    con.close()
    cluster = FakeCluster()
    with StateStore(path) as store:
        d = make_daemon(store, FakeSource(), cluster, FakeActuator(cluster))
        with pytest.raises(StateError, match=f"{part} cannot be restored") as e:
            await d.start()
    assert "move the file aside" in str(e.value)
