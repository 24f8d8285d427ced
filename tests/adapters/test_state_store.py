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
LATEST = connection.MIGRATIONS[-1].version


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
        assert store.schema_version() == LATEST
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
    new = Migration(LATEST + 1, "a note per decision", ("ALTER TABLE decisions ADD COLUMN note TEXT",))
    monkeypatch.setattr(connection, "MIGRATIONS", (*connection.MIGRATIONS, new))
    for _ in range(2):  # a second open must not apply it again (ALTER would fail)
        with StateStore(db) as store:
            assert store.schema_version() == LATEST + 1
            loaded = store.load()
            assert loaded is not None and loaded.tick == 1
    with sqlite3.connect(db) as con:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, LATEST + 2))
    monkeypatch.undo()
    with pytest.raises(StateStoreError, match="newer raytide") as e:
        StateStore(db)
    assert str(db) in str(e.value)


def test_a_failing_migration_changes_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    StateStore(db).close()
    broken = Migration(LATEST + 1, "broken", ("CREATE TABLE half (a)", "NOT SQL AT ALL"))
    monkeypatch.setattr(connection, "MIGRATIONS", (*connection.MIGRATIONS, broken))
    with pytest.raises(StateStoreError, match=str(db)):
        StateStore(db)
    monkeypatch.undo()
    with StateStore(db) as store:
        assert store.schema_version() == LATEST
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


def _run_until_killed(
    db: Path, round_: int, ticks: int, delay: float, *, checkpoint_seconds: float = 30.0
) -> list[str]:
    """Start the writer, wait until it printed ``ticks`` committed ticks, SIGKILL it; all it printed."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.state_store_writer",
            str(db),
            str(round_),
            str(checkpoint_seconds),
        ],
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
        assert printed[0] == "run " + ("none" if round_ == 0 else "unclean")
        assert printed[1] == f"stuck drain:stuck-{round_}"
        ticks = [int(x.split()[1]) for x in printed[2:]]
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


# ------------------------------------------------------------------------------------------ a lost -wal


def _wal(db: Path) -> Path:
    return Path(f"{db}-wal")


def test_a_clean_close_checkpoints_and_the_next_run_hears_it_was_clean(db: Path) -> None:
    store = StateStore(db)
    assert store.begin_run().previous == "none"
    commit(store, 1)
    assert _wal(db).stat().st_size > 0
    store.close()
    assert not _wal(db).exists()
    with StateStore(db) as again:
        assert again.begin_run().previous == "clean"
        loaded = again.load()
        assert loaded is not None and loaded.tick == 1


def test_checkpoints_come_after_the_period_and_after_any_drain(db: Path) -> None:
    now = [0.0]
    with StateStore(db, checkpoint_seconds=30.0, monotonic=lambda: now[0]) as store:
        commit(store, 1)
        assert _wal(db).stat().st_size > 0
        now[0] = 29.0
        commit(store, 2)
        assert _wal(db).stat().st_size > 0, "not due yet"
        now[0] = 30.0
        commit(store, 3)
        assert _wal(db).stat().st_size == 0, "due: copied into the file and emptied"
        commit(store, 4)
        assert _wal(db).stat().st_size > 0
        store.begin_action("drain:n1", kind="drain", node_id="n1", time=tick_time(4))
        assert _wal(db).stat().st_size == 0, "a drain is checkpointed at once"
        commit(store, 5, actions=[Action("drain:n2", "drain", "cpu4", "n2", {}, "intended", 1.0, 1.0)])
        assert _wal(db).stat().st_size == 0
    with StateStore(db, checkpoint_seconds=None, monotonic=lambda: now[0]) as store:
        now[0] = 1e9
        commit(store, 6)
        store.begin_action("drain:n3", kind="drain", node_id="n3", time=tick_time(6))
        assert _wal(db).stat().st_size > 0, "None: only SQLite's own checkpoints"
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        StateStore(db, checkpoint_seconds=0.0)


def test_kill_9_is_reported_as_unclean_and_a_deleted_wal_as_lost_with_what_survived(db: Path) -> None:
    # Round 0: killed, the log left alone: everything committed is there; the next run hears "unclean".
    printed = _run_until_killed(db, 0, ticks=20, delay=0.0, checkpoint_seconds=1e9)
    last = int(printed[-1].split()[1])
    with StateStore(db) as store:
        opening = store.begin_run()
        assert opening.previous == "unclean" and "nothing it committed is lost" in opening.detail
        loaded = store.load()
        assert loaded is not None and loaded.tick >= last
        kept = loaded.tick
    # Round 1: killed, then the -wal file deleted. The writer checkpoints only when it begins its run and
    # when it records its drain, so what it committed after that is gone; the store says so.
    printed = _run_until_killed(db, 1, ticks=20, delay=0.0, checkpoint_seconds=1e9)
    assert printed[0] == "run clean"
    round1 = [int(x.split()[1]) for x in printed[2:]]
    assert _wal(db).exists()
    _wal(db).unlink()
    with StateStore(db) as store:
        opening = store.begin_run()
        assert opening.previous == "log_lost"
        assert "-wal" in opening.detail and f"tick {kept}" in opening.detail
        loaded = store.load()
        assert loaded is not None and loaded.tick == kept, "rolled back to the last checkpoint"
        assert loaded.plan == sample_plan(kept)
        # The drain begun in the lost round was checkpointed when it was recorded: it is not lost.
        assert {"drain:stuck-0", "drain:stuck-1"} <= {a.key for a in store.pending_actions()}
        # (floor:{kept + 1} may be round 0's: begun in the tick it was killed in.)
        assert all(store.action(f"floor:{t}") is None for t in round1 if t > kept + 1)
        assert store.recent_decisions(1)[0].tick == kept
    # The next start hears that the last one stopped cleanly: the loss was reported once.
    with StateStore(db) as store:
        assert store.begin_run().previous == "clean"


def test_a_reader_after_a_crash_settles_it_so_the_next_run_does_not_call_a_merged_log_lost(db: Path) -> None:
    _run_until_killed(db, 0, ticks=5, delay=0.0)
    assert _wal(db).exists()
    with StateStore(db) as reader:  # no run: e.g. a tool reading the file
        assert reader.load() is not None
    assert not _wal(db).exists(), "the reader's close merged and deleted the log"
    with StateStore(db) as store:
        assert store.begin_run().previous == "unclean"


def test_a_run_in_this_process_that_never_closed_is_unclean_not_lost(db: Path) -> None:
    store = StateStore(db)  # a new file: no -wal when it opened
    store.begin_run()
    commit(store, 1)
    opening = store.begin_run()  # a second daemon on the same open store (an in-process restart)
    assert opening.previous == "unclean" and "in this process" in opening.detail
    store.close()


def test_recorded_floors_are_the_distinct_counts_without_zeros(db: Path) -> None:
    with StateStore(db) as store:
        assert store.recorded_floors() == ()
        for i, counts in enumerate([{"cpu4": 0, "gpu1": 2}, {"gpu1": 2}, {"cpu4": 1, "gpu1": 2}]):
            store.begin_action(f"floor:{i}", kind="floor", payload={"counts": counts}, time=tick_time(1))
        store.begin_action("floor:x", kind="floor", payload={}, time=tick_time(1))
        store.begin_action("drain:a", kind="drain", node_id="a", payload={"counts": {"x": 9}})
        floors = {frozenset(f.items()) for f in store.recorded_floors()}
        assert floors == {frozenset({"gpu1": 2}.items()), frozenset({"cpu4": 1, "gpu1": 2}.items())}
