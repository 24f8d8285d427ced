"""The :class:`StateStore`: the state row, the decision log and the actions table in one SQLite file, with one
transaction per tick, a checkpoint now and then, and the run marker that tells a clean stop from a lost
log."""

from __future__ import annotations

import contextlib
import math
import os
import time as _time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoscaler.adapters.state_store import actions_table, decision_log, run_marker
from autoscaler.adapters.state_store.connection import Connection, StateStoreError, move_aside
from autoscaler.adapters.state_store.decision_log import DecisionRecord
from autoscaler.adapters.state_store.values import (
    check_key,
    dump,
    finite,
    json_object,
    stored_float,
    stored_int,
    stored_tick,
    strings,
)
from autoscaler.adapters.state_store.values import limit as check_limit
from autoscaler.core import codec as serialize
from autoscaler.ports import Action, ActionKind, ActionStatus, JournalOpening, StoredState
from autoscaler.types import Plan, Snapshot

__all__ = ["StateStore"]

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class StateStore:
    """The daemon's crash-safe state in one SQLite file (see :mod:`autoscaler.adapters.state_store`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keep_decisions: int | None = 10_000,
        keep_days: float | None = 7.0,
        check_integrity: bool = True,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = _time.time,
        checkpoint_seconds: float | None = 30.0,
        monotonic: Callable[[], float] = _time.monotonic,
    ) -> None:
        """Open (creating file and directory if missing, mode 0600) and migrate the store at ``path``.

        ``keep_decisions``/``keep_days`` bound the decision log (None: unbounded); ``check_integrity`` runs
        ``PRAGMA quick_check`` first (reads the whole file once; turn off only for huge files);
        ``clock`` times actions when the caller gives no time. ``checkpoint_seconds`` (``monotonic``
        seconds; None: only SQLite's own, by log size) bounds what a lost ``-wal`` file can take: the log is
        copied into the file and emptied after the first write this long after the last checkpoint, after
        any write that records a drain, and at :meth:`close`.
        """
        if keep_decisions is not None and (isinstance(keep_decisions, bool) or keep_decisions < 1):
            raise ValueError(f"keep_decisions must be >= 1 or None, got {keep_decisions!r}")
        if keep_days is not None and not (math.isfinite(keep_days) and keep_days > 0):
            raise ValueError(f"keep_days must be > 0 or None, got {keep_days!r}")
        if checkpoint_seconds is not None and not (
            math.isfinite(checkpoint_seconds) and checkpoint_seconds > 0
        ):
            raise ValueError(f"checkpoint_seconds must be > 0 or None, got {checkpoint_seconds!r}")
        self._path = Path(path)
        self._keep_decisions = keep_decisions
        self._keep_seconds = None if keep_days is None else keep_days * 86400.0
        self._clock = clock
        self._monotonic = monotonic
        self._checkpoint_seconds = checkpoint_seconds
        self._conn = Connection(
            self._path, check_integrity=check_integrity, busy_timeout_s=busy_timeout_s, clock=clock
        )
        self._last_checkpoint = monotonic()
        self._running = False

    @property
    def path(self) -> Path:
        return self._path

    # -------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the file; after :meth:`begin_run`, mark the run stopped and checkpoint first (best effort:
        a failure there leaves the log, which SQLite still merges, and a next start that says "unclean")."""
        if self._running:
            self._running = False
            with contextlib.suppress(StateStoreError):
                with self._conn.transaction(write=True) as con:
                    run_marker.end(con, self._clock())
                self._conn.checkpoint()
        self._conn.close()

    def begin_run(self) -> JournalOpening:
        """Mark the file as in use by a running daemon until :meth:`close`, and checkpoint so the mark is in
        the file itself; returns how the previous run ended (``unclean`` after a ``kill -9``, ``log_lost``
        when its ``-wal`` file vanished too: then the store is older than what that run did)."""
        with self._conn.transaction(write=True) as con:
            row = con.execute("SELECT tick FROM state WHERE id = 1").fetchone()
            tick = None if row is None else self._conn.content(stored_int, row[0], "the stored tick")
            opening = run_marker.begin(con, self._conn.log_found, self._clock(), tick)
        self._running = True
        self._checkpoint()
        return opening

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the file now (see ``checkpoint_seconds``); False when a reader in
        another connection kept it from finishing."""
        return self._checkpoint()

    def _checkpoint(self) -> bool:
        self._last_checkpoint = self._monotonic()
        return self._conn.checkpoint()

    def _checkpoint_if_due(self, *, drain: bool) -> None:
        every = self._checkpoint_seconds
        if every is None:
            return
        if drain or self._monotonic() - self._last_checkpoint >= every:
            # After a commit: a checkpoint that fails must not make the caller think the commit did. The
            # log keeps everything; the next one tries again.
            with contextlib.suppress(StateStoreError):
                self._checkpoint()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._conn.transaction(write=False) as con:
            return int(con.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """For health endpoints and ``check-config``: where the file is and what it holds."""
        with self._conn.transaction(write=False) as con:
            tick = con.execute("SELECT tick FROM state WHERE id = 1").fetchone()
            lo, hi, n = con.execute("SELECT min(tick), max(tick), count(*) FROM decisions").fetchone()
            pending = actions_table.pending_count(con)
            version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            journal = con.execute("PRAGMA journal_mode").fetchone()[0]
            sync = con.execute("PRAGMA synchronous").fetchone()[0]
        content = self._conn.content
        return {
            "path": str(self._path),
            "schema_version": int(version),
            "journal_mode": str(journal),
            "synchronous": _SYNCHRONOUS.get(int(sync), str(sync)),
            "tick": None if tick is None else content(stored_int, tick[0], "the stored tick"),
            "decisions": int(n),
            "oldest_decision_tick": lo,
            "newest_decision_tick": hi,
            "pending_actions": pending,
        }

    # -------------------------------------------------------------------------------------- state

    def load(self) -> StoredState | None:
        """The last committed tick's state; None when no tick was ever committed.

        None does not mean no actions are pending: actions begun before the first commit are only in
        :meth:`pending_actions`, which the daemon reconciles at start-up either way.
        """
        with self._conn.transaction(write=False) as con:
            row = con.execute(
                "SELECT tick, time, models, decision_state, plan FROM state WHERE id = 1"
            ).fetchone()
            if row is None:
                return None
            rows = actions_table.pending_rows(con)
            newest = con.execute("SELECT max(tick) FROM decisions").fetchone()[0]
        tick, t, models, decision_state, plan = row
        content = self._conn.content
        tick = content(stored_tick, tick, "the stored tick")
        if isinstance(newest, int) and newest > tick:
            # Every commit writes both; a log ahead of the state row would make every next commit fail.
            raise StateStoreError(
                f"state store {self._path}: the state row (tick {tick}) is behind its own decision log "
                f"(tick {newest}): the file was changed outside raytide. {move_aside(self._path)}",
                path=self._path,
            )
        return StoredState(
            tick=tick,
            time=content(stored_float, t, "the stored time"),
            models=content(json_object, models, "the stored models"),
            decision_state=content(json_object, decision_state, "the stored decision state"),
            plan=content(serialize.decode_plan, plan, "the stored plan"),
            pending_actions=tuple(actions_table.decode(r, self._conn) for r in rows),
        )

    def commit_tick(
        self,
        *,
        tick: int,
        time: float,
        models: Mapping[str, Any],
        decision_state: Mapping[str, Any],
        plan: Plan,
        snapshot: Snapshot,
        reasons: Sequence[str] = (),
        actions: Sequence[Action] = (),
    ) -> None:
        """Atomically: replace the state row, append the tick to the decision log, upsert ``actions``, prune.

        ``tick`` must be greater than the stored one: a smaller one means two daemons share the file (or a
        restart ignored :meth:`load`), and the store refuses rather than interleave their histories.
        An action whose stored row is newer (later ``updated``, or the same time and a later status) is not
        overwritten, so passing the objects :meth:`begin_action` returned cannot undo a later finish.
        Raises ValueError, before writing anything, when a value cannot be stored as JSON.
        """
        if isinstance(tick, bool) or not isinstance(tick, int) or tick < 0:
            raise ValueError(f"tick must be an int >= 0, got {tick!r}")
        t = finite(time, "time")
        models_text = dump(models, "models")
        state_text = dump(decision_state, "decision_state")
        plan_text = serialize.encode(plan)
        snapshot_text = serialize.encode(snapshot)
        reasons_text = dump(strings(reasons, "reasons"), "reasons")
        action_rows = [actions_table.action_row(a) for a in actions]
        written = self._clock()
        with self._conn.transaction(write=True) as con:
            prev = con.execute("SELECT tick FROM state WHERE id = 1").fetchone()
            if prev is not None and tick <= prev[0]:
                raise StateStoreError(
                    f"state store {self._path}: tick {tick} is not after the stored tick {prev[0]}. "
                    "Two daemons may be writing the same state file: give each its own path.",
                    path=self._path,
                )
            con.execute(
                "INSERT INTO state (id, tick, time, models, decision_state, plan, written) "
                "VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET tick = excluded.tick, "
                "time = excluded.time, models = excluded.models, decision_state = excluded.decision_state, "
                "plan = excluded.plan, written = excluded.written",
                (tick, t, models_text, state_text, plan_text, written),
            )
            decision_log.append(con, tick, t, plan, plan_text, snapshot_text, reasons_text)
            actions_table.upsert(con, action_rows)
            decision_log.prune(con, tick, t, self._keep_decisions, self._keep_seconds)
            con.execute(actions_table.PRUNE_ACTIONS)
        self._checkpoint_if_due(drain=any(a.kind == "drain" for a in actions))

    # -------------------------------------------------------------------------------------- actions

    def begin_action(
        self,
        key: str,
        *,
        kind: ActionKind,
        shape: str | None = None,
        node_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
        time: float | None = None,
    ) -> Action:
        """Record (durably, before returning) that ``key`` is about to be done: status ``intended``.

        Call it before the actuator. A key seen before is started again — status back to ``intended``,
        ``attempts`` + 1, ``created`` kept — which is how a failed drain is retried; to avoid repeating an
        action that may be in flight, look it up with :meth:`action` first.
        """
        payload_text = actions_table.check_begin(key, kind, shape, node_id, payload)
        now = self._now(time)
        with self._conn.transaction(write=True) as con:
            row = actions_table.begin(con, key, kind, shape, node_id, payload_text, now)
        self._checkpoint_if_due(drain=kind == "drain")
        return actions_table.decode(row, self._conn)

    def finish_action(
        self, key: str, status: ActionStatus, detail: str = "", *, time: float | None = None
    ) -> Action:
        """Record what became of an action: ``sent`` (asked, outcome not known yet), ``confirmed``,
        ``failed`` or ``abandoned`` (given up after reconciliation).

        Finishing twice with the same outcome is a no-op; changing a finished outcome raises ValueError
        (start it again with :meth:`begin_action`). An unknown key raises KeyError.
        """
        actions_table.check_finish(key, status, detail)
        now = self._now(time)
        with self._conn.transaction(write=True) as con:
            row = actions_table.finish(con, str(self._path), key, status, detail, now)
        self._checkpoint_if_due(drain=False)
        return actions_table.decode(row, self._conn)

    def action(self, key: str) -> Action | None:
        check_key(key)
        with self._conn.transaction(write=False) as con:
            row = actions_table.row_for(con, key)
        return None if row is None else actions_table.decode(row, self._conn)

    def pending_actions(self) -> tuple[Action, ...]:
        """Actions ``intended`` or ``sent`` and never finished, oldest first: reconcile these at start-up."""
        with self._conn.transaction(write=False) as con:
            rows = actions_table.pending_rows(con)
        return tuple(actions_table.decode(r, self._conn) for r in rows)

    def recorded_floors(self) -> tuple[Mapping[str, int], ...]:
        """Every distinct floor (shape → nodes, zeros left out) a ``floor`` action still records: what
        this store knows raytide asked of the cluster."""
        with self._conn.transaction(write=False) as con:
            payloads = actions_table.floor_payloads(con)
        floors: dict[frozenset[tuple[str, int]], Mapping[str, int]] = {}
        for text in payloads:
            counts = actions_table.floor_counts(self._conn.content(json_object, text, "a floor's payload"))
            if counts is not None:
                floors.setdefault(frozenset(counts.items()), counts)
        return tuple(floors.values())

    # -------------------------------------------------------------------------------------- the log

    def recent_decisions(self, limit: int = 20) -> list[DecisionRecord]:
        """The newest ``limit`` decisions, newest first."""
        n = check_limit(limit)
        with self._conn.transaction(write=False) as con:
            rows = decision_log.newest(con, n)
        return [decision_log.decode(r, self._conn) for r in rows]

    def decisions_between(self, t0: float, t1: float, *, limit: int | None = None) -> list[DecisionRecord]:
        """Decisions with ``t0 <= time <= t1``, oldest first (at most ``limit`` of them)."""
        lo, hi = finite(t0, "t0"), finite(t1, "t1")
        n = -1 if limit is None else check_limit(limit)
        with self._conn.transaction(write=False) as con:
            rows = decision_log.between(con, lo, hi, n)
        return [decision_log.decode(r, self._conn) for r in rows]

    def _now(self, t: float | None) -> float:
        return finite(self._clock() if t is None else t, "time")
