"""StateStore against real SQLite files: schema and migrations, durability settings, retention, actions in
flight, damaged files, threads, and a real ``kill -9`` of a process committing ticks."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

from autoscaler.adapters.state_store import (
    Migration,
    StateStore,
    StateStoreError,
    actions_table,
    connection,
    decision_log,
)
from autoscaler.core.decide import DecisionState
from autoscaler.core.guardrails import GuardState
from autoscaler.core.throughput import ThroughputModels
from autoscaler.ports import Action
from tests.support.state_store_writer import (
    KEEP_DECISIONS,
    T0,
    sample_decision_state,
    sample_models,
    sample_plan,
    sample_snapshot,
    tick_time,
)

ROOT = Path(__file__).resolve().parents[2]


def commit(
    store: StateStore, tick: int, *, time: float | None = None, actions: list[Action] | None = None
) -> None:
    store.commit_tick(
        tick=tick,
        time=tick_time(tick) if time is None else time,
        models=sample_models(tick),
        decision_state=sample_decision_state(tick),
        plan=sample_plan(tick),
        snapshot=sample_snapshot(tick),
        reasons=[f"r{tick}"],
        actions=actions or [],
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


# ------------------------------------------------------------------------------------------ opening


def test_a_new_store_is_empty_migrated_and_in_wal_mode(db: Path) -> None:
    with StateStore(db) as store:
        assert store.load() is None
        assert store.pending_actions() == ()
        assert store.recent_decisions() == []
        info = store.stats()
        assert info["schema_version"] == connection.MIGRATIONS[-1].version == store.schema_version()
        assert info["journal_mode"] == "wal"
        assert info["synchronous"] == "FULL"
    # WAL is a property of the file: any other connection sees it.
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_empty_file_is_migrated(db: Path) -> None:
    db.write_bytes(b"")
    with StateStore(db) as store:
        assert store.schema_version() == 1
        commit(store, 1)
        assert store.load() is not None


def test_missing_directories_are_created_and_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "var" / "lib" / "raytide" / "state.db"
    old = os.umask(0o022)
    try:
        with StateStore(db) as store:
            commit(store, 1)
            for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        os.umask(old)


def test_an_existing_file_keeps_its_mode(db: Path) -> None:
    db.write_bytes(b"")
    db.chmod(0o640)
    StateStore(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640


def test_forward_migrations_are_applied_once_and_keep_the_data(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StateStore(db) as store:
        commit(store, 1)
    v2 = Migration(2, "a note per decision", ("ALTER TABLE decisions ADD COLUMN note TEXT",))
    monkeypatch.setattr(connection, "MIGRATIONS", (*connection.MIGRATIONS, v2))
    for _ in range(2):  # a second open must not apply v2 again (ALTER would fail)
        with StateStore(db) as store:
            assert store.schema_version() == 2
            loaded = store.load()
            assert loaded is not None and loaded.tick == 1
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY version")] == [1, 2]
    monkeypatch.undo()
    with pytest.raises(StateStoreError, match="newer raytide") as e:
        StateStore(db)
    assert str(db) in str(e.value)


def test_a_failing_migration_changes_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    StateStore(db).close()
    v2 = Migration(2, "broken", ("CREATE TABLE half (a)", "NOT SQL AT ALL"))
    monkeypatch.setattr(connection, "MIGRATIONS", (*connection.MIGRATIONS, v2))
    with pytest.raises(StateStoreError, match=str(db)):
        StateStore(db)
    monkeypatch.undo()
    with StateStore(db) as store:
        assert store.schema_version() == 1
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


# ------------------------------------------------------------------------------------------ bad files


def test_a_file_that_is_not_a_database_names_the_path_and_the_fix(db: Path) -> None:
    db.write_bytes(b"this is no SQLite file\n" * 300)
    with pytest.raises(StateStoreError) as e:
        StateStore(db)
    assert str(db) in str(e.value) and "move the file aside" in str(e.value)
    assert e.value.path == db


def test_damaged_pages_are_found_at_open(db: Path) -> None:
    with StateStore(db) as store:
        for t in range(1, 30):
            commit(store, t)
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[2 * page :] = bytes([0xA5]) * (len(data) - 2 * page)
    db.write_bytes(bytes(data))
    with pytest.raises(StateStoreError) as e:
        StateStore(db)
    assert str(db) in str(e.value) and "move the file aside" in str(e.value)


def test_another_applications_database_is_left_alone(db: Path) -> None:
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(StateStoreError, match="not a raytide state file"):
        StateStore(db)
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_unreadable_content_is_an_error_not_a_silent_reset(db: Path) -> None:
    with StateStore(db) as store:
        commit(store, 1)
    with sqlite3.connect(db) as con:
        con.execute('UPDATE state SET plan = \'{"kind": "plan"}\'')
    with StateStore(db) as store, pytest.raises(StateStoreError, match="the stored plan cannot be read") as e:
        store.load()
    assert str(db) in str(e.value)


def test_a_directory_is_not_a_state_file(tmp_path: Path) -> None:
    with pytest.raises(StateStoreError, match="is a directory"):
        StateStore(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_an_unwritable_directory_names_the_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StateStoreError, match="cannot create it") as e:
            StateStore(locked / "state.db")
        assert str(locked / "state.db") in str(e.value)
    finally:
        locked.chmod(0o700)


def test_a_closed_store_says_so(db: Path) -> None:
    store = StateStore(db)
    store.close()
    store.close()
    with pytest.raises(StateStoreError, match="closed"):
        store.load()


# ------------------------------------------------------------------------------------------ ticks


def test_a_tick_round_trips_with_the_real_state_types(db: Path) -> None:
    models = ThroughputModels(window=16)
    for t in range(1, 6):
        models.update(sample_snapshot(t))
    state = DecisionState(
        guard=GuardState(history=((T0, (("cpu4", 3),)),), watching_since=T0), policy_state={"ewma": 1.5}
    )
    with StateStore(db) as store:
        store.commit_tick(
            tick=5,
            time=tick_time(5),
            models=models.to_json(),
            decision_state=state.to_json(),
            plan=sample_plan(5),
            snapshot=sample_snapshot(5),
            reasons=["fine"],
        )
    with StateStore(db) as store:
        loaded = store.load()
        assert loaded is not None
        assert loaded.tick == 5 and loaded.time == tick_time(5)
        assert loaded.plan == sample_plan(5)
        assert ThroughputModels.from_json(loaded.models).to_json() == models.to_json()
        assert DecisionState.from_json(loaded.decision_state) == state
        [row] = store.recent_decisions()
        assert (row.tick, row.time, row.policy, row.held) == (5, tick_time(5), "throughput", True)
        assert row.plan == sample_plan(5) and row.snapshot == sample_snapshot(5)
        assert row.reasons == ("fine",)


def test_ticks_must_increase(db: Path) -> None:
    with StateStore(db) as store:
        commit(store, 5)
        with pytest.raises(StateStoreError, match="not after the stored tick 5"):
            commit(store, 5)
        with pytest.raises(StateStoreError):
            commit(store, 3)
        assert [r.tick for r in store.recent_decisions()] == [5]


def test_a_value_that_cannot_be_stored_writes_nothing(db: Path) -> None:
    with StateStore(db) as store:
        with pytest.raises(ValueError, match="decision_state: cannot be stored as JSON"):
            store.commit_tick(
                tick=1,
                time=T0,
                models={},
                decision_state={"policy_state": {"x": {1, 2}}},
                plan=sample_plan(1),
                snapshot=sample_snapshot(1),
            )
        with pytest.raises(ValueError, match="models: cannot be stored as JSON"):
            store.commit_tick(
                tick=1,
                time=T0,
                models={"rate": float("inf")},
                decision_state={},
                plan=sample_plan(1),
                snapshot=sample_snapshot(1),
            )
        with pytest.raises(ValueError, match="time must be a finite number"):
            commit(store, 1, time=float("nan"))
        assert store.load() is None and store.recent_decisions() == []


def test_decision_log_queries(db: Path) -> None:
    with StateStore(db) as store:
        for t in range(1, 11):
            commit(store, t)
        assert [r.tick for r in store.recent_decisions(3)] == [10, 9, 8]
        assert store.recent_decisions(0) == []
        between = store.decisions_between(tick_time(4), tick_time(7))
        assert [r.tick for r in between] == [4, 5, 6, 7]
        assert [r.tick for r in store.decisions_between(tick_time(4), tick_time(7), limit=2)] == [4, 5]
        assert store.decisions_between(tick_time(20), tick_time(30)) == []
        with pytest.raises(ValueError):
            store.recent_decisions(-1)


# ------------------------------------------------------------------------------------------ retention


def test_retention_keeps_the_last_n_ticks(db: Path) -> None:
    with StateStore(db, keep_decisions=5) as store:
        for t in range(1, 13):
            commit(store, t)
        assert [r.tick for r in store.recent_decisions(100)] == [12, 11, 10, 9, 8]
        loaded = store.load()
        assert loaded is not None and loaded.tick == 12


def test_retention_keeps_the_last_d_days_and_prunes_finished_actions_only(db: Path) -> None:
    day = 86400.0
    with StateStore(db, keep_decisions=None, keep_days=1.0) as store:
        store.begin_action("drain:old", kind="drain", node_id="old", time=T0 - 10 * day)
        store.begin_action("floor:old", kind="floor", time=T0 - 10 * day)
        store.finish_action("floor:old", "confirmed", time=T0 - 10 * day)
        for i in range(10):
            commit(store, i + 1, time=T0 + i * 0.4 * day)
        # newest at 3.6 days: 1 day back is 2.6 days, so 2.8, 3.2 and 3.6 (ticks 8, 9, 10) remain
        assert [r.tick for r in store.recent_decisions(100)] == [10, 9, 8]
        assert store.action("floor:old") is None
        assert [a.key for a in store.pending_actions()] == ["drain:old"]


def test_the_current_tick_is_never_pruned_even_when_the_clock_jumps(db: Path) -> None:
    with StateStore(db, keep_days=1.0) as store:
        commit(store, 1, time=T0)
        commit(store, 2, time=T0 + 400 * 86400.0)
        commit(store, 3, time=T0 - 400 * 86400.0)  # clock stepped back
        assert [r.tick for r in store.recent_decisions(100)] == [3, 2]


def test_pruning_walks_indexes_not_the_whole_log(db: Path) -> None:
    StateStore(db).close()
    with sqlite3.connect(db) as con:
        for sql, args in (
            (decision_log.PRUNE_BY_TICK, (1,)),
            (decision_log.PRUNE_BY_TIME, (1.0, 1)),
            (actions_table.PRUNE_ACTIONS, ()),
        ):
            plan = " | ".join(str(r[3]) for r in con.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "SCAN" not in plan, (sql, plan)
            assert "SEARCH" in plan, (sql, plan)


# ------------------------------------------------------------------------------------------ actions


def test_action_lifecycle(db: Path) -> None:
    with StateStore(db, clock=lambda: 100.0) as store:
        a = store.begin_action("drain:n1", kind="drain", node_id="n1", shape="cpu4", payload={"why": "idle"})
        assert (a.status, a.attempts, a.created, a.updated, a.pending) == ("intended", 1, 100.0, 100.0, True)
        assert dict(a.payload) == {"why": "idle"}
        assert store.pending_actions() == (a,)
        sent = store.finish_action("drain:n1", "sent", time=101.0)
        assert sent.status == "sent" and sent.pending and sent.updated == 101.0
        done = store.finish_action("drain:n1", "confirmed", "node gone", time=102.0)
        assert (done.status, done.detail, done.pending) == ("confirmed", "node gone", False)
        assert store.pending_actions() == ()
        assert store.finish_action("drain:n1", "confirmed", "again", time=103.0) == done
        with pytest.raises(ValueError, match="already finished as 'confirmed'"):
            store.finish_action("drain:n1", "failed")
        with pytest.raises(KeyError, match="drain:nope"):
            store.finish_action("drain:nope", "confirmed")
        with pytest.raises(ValueError, match="status must be one of"):
            store.finish_action("drain:n1", "intended")
        with pytest.raises(ValueError, match="kind must be one of"):
            store.begin_action("x", kind="explode")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="payload: cannot be stored as JSON"):
            store.begin_action("floor:1", kind="floor", payload={"f": object()})
        assert store.action("floor:1") is None


def test_a_failed_action_is_retried_under_the_same_key(db: Path) -> None:
    with StateStore(db) as store:
        store.begin_action("drain:n1", kind="drain", node_id="n1", time=10.0)
        store.finish_action("drain:n1", "failed", "node busy", time=11.0)
        again = store.begin_action("drain:n1", kind="drain", node_id="n1", time=20.0)
        assert (again.status, again.attempts, again.created, again.updated, again.detail) == (
            "intended",
            2,
            10.0,
            20.0,
            "",
        )
        assert store.pending_actions() == (again,)


def test_actions_committed_with_a_tick_do_not_undo_a_later_finish(db: Path) -> None:
    with StateStore(db) as store:
        t = tick_time(1)
        intended = Action("floor:1", "floor", None, None, {"counts": {"cpu4": 3}}, "intended", t, t)
        commit(store, 1, actions=[intended])
        assert store.pending_actions() == (intended,)
        # Same timestamp, later status: the finish wins over the stale copy committed with the next tick.
        store.finish_action("floor:1", "confirmed", time=t)
        commit(store, 2, actions=[intended])
        stored = store.action("floor:1")
        assert stored is not None and stored.status == "confirmed"
        newer = Action("floor:1", "floor", None, None, {}, "failed", t, t + 9.0, detail="re-checked")
        commit(store, 3, actions=[newer])
        assert store.action("floor:1") == newer
        with pytest.raises(ValueError, match="status must be one of"):
            commit(store, 4, actions=[Action("k", "floor", None, None, {}, "lost", 1.0, 1.0)])  # type: ignore[arg-type]


async def test_calls_from_worker_threads_are_serialised(db: Path) -> None:
    store = StateStore(db)
    try:

        async def one(t: int) -> None:
            key = f"floor:{t}"
            # Action times share the ticks' clock, as in the daemon, so retention keeps them.
            at = tick_time(1) + t
            await asyncio.to_thread(store.begin_action, key, kind="floor", time=at)
            await asyncio.to_thread(store.finish_action, key, "confirmed", time=at)
            await asyncio.to_thread(store.recent_decisions, 5)

        await asyncio.gather(
            *(one(t) for t in range(40)), *(asyncio.to_thread(commit, store, t) for t in [1])
        )
        assert sum(1 for t in range(40) if store.action(f"floor:{t}") is not None) == 40
        assert store.pending_actions() == ()
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ kill -9


def _lines(stream: IO[str], out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line.strip())
    out.put(None)


def _run_until_killed(db: Path, round_: int, ticks: int, delay: float) -> list[str]:
    """Start the writer, wait until it printed ``ticks`` committed ticks, SIGKILL it; all it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.state_store_writer", str(db), str(round_)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    printed: list[str] = []
    try:
        while sum(1 for x in printed if x.startswith("tick ")) < ticks:
            try:
                line = lines.get(timeout=15)
            except queue.Empty:
                pytest.fail(f"writer printed nothing for 15 s after {printed[-3:]}")
            if line is None:
                pytest.fail(f"writer exited early ({proc.wait()}): {proc.stderr.read()}")
            printed.append(line)
    finally:
        # The writer is woken by our read, so an immediate kill lands at the start of its next tick; a
        # short, varying delay moves the kill into the tick's other steps (inside commit_tick included).
        # Nothing is asserted about timing.
        threading.Event().wait(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    while (line := lines.get_nowait()) is not None:
        printed.append(line)  # what it printed after we stopped reading, before the kill landed
    return printed


def test_kill_9_mid_run_loses_no_committed_tick_and_leaves_no_partial_one(db: Path) -> None:
    previous = 0
    for round_, delay in enumerate((0.0, 0.002, 0.004, 0.007)):
        printed = _run_until_killed(db, round_, ticks=30, delay=delay)
        assert printed[0] == f"stuck drain:stuck-{round_}"
        ticks = [int(x.split()[1]) for x in printed[1:]]
        assert ticks == list(range(previous + 1, previous + 1 + len(ticks))), "resumed after the last tick"
        last_printed = ticks[-1]

        with StateStore(db, keep_decisions=KEEP_DECISIONS) as store:
            loaded = store.load()
            assert loaded is not None
            # Printed only after commit returned, so committed >= printed; at most one more made it.
            assert last_printed <= loaded.tick <= last_printed + 1
            tick = loaded.tick
            # A whole tick, exactly as written: nothing from a half-written one.
            assert loaded.plan == sample_plan(tick)
            assert loaded.models == sample_models(tick)
            assert loaded.decision_state == sample_decision_state(tick)
            log = store.recent_decisions(100)
            assert log[0].tick == tick, "the state row and the newest log row are the same tick"
            assert [r.tick for r in log] == list(range(tick, tick - len(log), -1))
            assert len(log) == min(KEEP_DECISIONS, tick)
            assert log[0].snapshot == sample_snapshot(tick) and log[0].plan == sample_plan(tick)
            # Begun and never finished: reported, in every later round too. The only other pending action
            # can be the one the writer began for the tick it was killed in.
            pending = {a.key for a in store.pending_actions()}
            stuck = {f"drain:stuck-{r}" for r in range(round_ + 1)}
            assert stuck <= pending
            assert pending - stuck <= {f"floor:{tick + 1}"}
            for t in ticks[-5:]:
                action = store.action(f"floor:{t}")
                assert action is not None and action.status == "confirmed"
        previous = tick
