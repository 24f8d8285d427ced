"""The daemon's state, kept so that a ``kill -9`` and a restart resume where the daemon stopped.

One SQLite file (stdlib ``sqlite3``) holds:

``state``
    one row: the tick counter, the throughput models' JSON, the decision state's JSON (guard history and
    policy state) and the last plan — what the next tick needs to decide as the old daemon would have.
``decisions``
    the decision log, one row per tick: time, policy, held, the plan and the snapshot it was made from (so
    any decision can be replayed and explained), and reasons. Pruned to the last ``keep_decisions`` ticks
    and ``keep_days`` days inside every commit — two indexed range deletes, so the cost does not grow with
    the log.
``actions``
    actions in flight, keyed deterministically by the caller (``drain:<node id>``, ``floor:<tick>``).
``schema_version``
    one row per applied migration. Migrations only go forward; a file from a newer build is refused.

**One transaction per tick.** :meth:`StateStore.commit_tick` writes the state row, the log row and the
actions it is given, and prunes, in one ``BEGIN IMMEDIATE … COMMIT``: after a crash the file holds every
committed tick in full and nothing of the tick that was being written (the state row's tick always equals
the newest log row's).

**Write-ahead actions.** An action is recorded as ``intended`` before the actuator is called
(:meth:`begin_action`, or in the tick's own commit), and marked ``sent``/``confirmed``/``failed``/
``abandoned`` afterwards (:meth:`finish_action`). At start-up :meth:`pending_actions` lists what was intended
or sent but never finished; the daemon checks each against the cluster (a drain: is the node gone? a floor:
re-assert it, it is idempotent) instead of repeating it blindly or forgetting it. Pending actions are never
pruned.

**Durability: WAL with ``synchronous=FULL``.** In WAL mode ``NORMAL`` already survives a process crash
(``kill -9``: committed pages are in the OS by the time COMMIT returns); it loses the last commits only when
the machine loses power or the kernel crashes. ``FULL`` adds one fsync of the WAL per commit, which closes
that gap too. The gap matters here because of write-ahead: an ``intended`` record that is not on disk when
the actuator acts guards nothing — after a power cut the daemon would forget a drain or a floor it had
already sent. At a few commits per tick and one tick every several seconds the fsyncs cost nothing
noticeable.

**Threads.** The daemon calls this class from ``asyncio.to_thread``, whose worker threads differ from call
to call. One connection is opened with ``check_same_thread=False`` and every method holds a lock for its
whole use of it, so exactly one thread uses the connection at a time. One long-lived connection rather than
one per call: opening re-reads the schema and re-applies the pragmas each time, and one connection already
serialises this process's writers, which SQLite would do anyway (one writer per file).

**Failure.** Every SQLite failure becomes a :class:`StateStoreError` naming the file and what to do; a
damaged file is refused at open (``PRAGMA quick_check``) rather than read with holes. Nothing is ever
dropped to make a write succeed: a value that cannot be stored raises before the transaction starts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time as _time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast, get_args

from autoscaler.core import codec as serialize
from autoscaler.ports import FINISHED_STATUSES, PENDING_STATUSES, Action, ActionKind, ActionStatus
from autoscaler.types import Plan, Snapshot

__all__ = [
    "MIGRATIONS",
    "Action",
    "ActionKind",
    "ActionStatus",
    "DecisionRecord",
    "Migration",
    "StateStore",
    "StateStoreError",
    "StoredState",
]


_KINDS: frozenset[str] = frozenset(get_args(ActionKind))
_STATUSES: frozenset[str] = frozenset(get_args(ActionStatus))
_PENDING = PENDING_STATUSES
_FINISHED = FINISHED_STATUSES

_WAL_LIMIT_BYTES = 64 * 1024 * 1024
"""After a checkpoint the WAL is truncated to this size, so one burst of large ticks does not keep the
file big forever."""

_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------ values


class StateStoreError(RuntimeError):
    """The state file cannot be opened, read or written; the message names the file and the fix."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, slots=True)
class StoredState:
    """What the last committed tick left for the next one."""

    tick: int
    time: float
    models: Mapping[str, Any]
    """``ThroughputModels.to_json()`` as committed; restore with ``ThroughputModels.from_json``."""
    decision_state: Mapping[str, Any]
    """``DecisionState.to_json()`` as committed; restore with ``DecisionState.from_json``."""
    plan: Plan
    pending_actions: tuple[Action, ...] = field(default_factory=tuple)
    """Actions intended or sent and not finished, oldest first (the same as ``pending_actions()``)."""


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One row of the decision log."""

    tick: int
    time: float
    policy: str
    held: bool
    plan: Plan
    snapshot: Snapshot
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_RANK = "CASE {0} WHEN 'intended' THEN 0 WHEN 'sent' THEN 1 ELSE 2 END"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "state row, decision log, actions in flight",
        (
            """CREATE TABLE state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                tick INTEGER NOT NULL,
                time REAL NOT NULL,
                models TEXT NOT NULL,
                decision_state TEXT NOT NULL,
                plan TEXT NOT NULL,
                written REAL NOT NULL
            )""",
            """CREATE TABLE decisions (
                tick INTEGER PRIMARY KEY,
                time REAL NOT NULL,
                policy TEXT NOT NULL,
                held INTEGER NOT NULL CHECK (held IN (0, 1)),
                plan TEXT NOT NULL,
                snapshot TEXT NOT NULL,
                reasons TEXT NOT NULL
            )""",
            "CREATE INDEX decisions_by_time ON decisions (time)",
            """CREATE TABLE actions (
                key TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                shape TEXT,
                node_id TEXT,
                payload TEXT NOT NULL,
                status TEXT NOT NULL
                    CHECK (status IN ('intended', 'sent', 'confirmed', 'failed', 'abandoned')),
                detail TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                created REAL NOT NULL,
                updated REAL NOT NULL
            )""",
            "CREATE INDEX actions_by_status ON actions (status, updated)",
        ),
    ),
)
"""Forward-only, applied in order inside one transaction; never edit a released one, append a new one."""

_PRUNE_BY_TICK = "DELETE FROM decisions WHERE tick <= ?"
_PRUNE_BY_TIME = "DELETE FROM decisions WHERE time < ? AND tick < ?"
_PRUNE_ACTIONS = (
    # Finished actions older than every logged decision explain nothing any more; pending ones stay until
    # finished, however old. This compares action times with tick times: the daemon must time both with
    # the same clock (the default clock and snapshot times are both wall-clock seconds).
    "DELETE FROM actions WHERE status IN ('confirmed', 'failed', 'abandoned') "
    "AND updated < (SELECT min(time) FROM decisions)"
)

_ACTION_COLUMNS = "key, kind, shape, node_id, payload, status, detail, attempts, created, updated"
_DECISION_COLUMNS = "tick, time, policy, held, plan, snapshot, reasons"


# ------------------------------------------------------------------------------------------ the store


class StateStore:
    """The daemon's crash-safe state in one SQLite file. See the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keep_decisions: int | None = 10_000,
        keep_days: float | None = 7.0,
        check_integrity: bool = True,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = _time.time,
    ) -> None:
        """Open (creating file and directory if missing, mode 0600) and migrate the store at ``path``.

        ``keep_decisions``/``keep_days`` bound the decision log (None: unbounded); ``check_integrity`` runs
        ``PRAGMA quick_check`` first (reads the whole file once; turn off only for huge files);
        ``clock`` times actions when the caller gives no time.
        """
        if keep_decisions is not None and (isinstance(keep_decisions, bool) or keep_decisions < 1):
            raise ValueError(f"keep_decisions must be >= 1 or None, got {keep_decisions!r}")
        if keep_days is not None and not (math.isfinite(keep_days) and keep_days > 0):
            raise ValueError(f"keep_days must be > 0 or None, got {keep_days!r}")
        self._path = Path(path)
        self._keep_decisions = keep_decisions
        self._keep_seconds = None if keep_days is None else keep_days * 86400.0
        self._clock = clock
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = self._open(check_integrity, busy_timeout_s)

    @property
    def path(self) -> Path:
        return self._path

    # -------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                try:
                    self._con.close()
                except sqlite3.Error as e:
                    raise self._wrap(e) from e
                finally:
                    self._con = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        with self._transaction(write=False) as con:
            return int(con.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """For health endpoints and ``check-config``: where the file is and what it holds."""
        with self._transaction(write=False) as con:
            tick = con.execute("SELECT tick FROM state WHERE id = 1").fetchone()
            lo, hi, n = con.execute("SELECT min(tick), max(tick), count(*) FROM decisions").fetchone()
            pending = con.execute(
                "SELECT count(*) FROM actions WHERE status IN ('intended', 'sent')"
            ).fetchone()[0]
            version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            journal = con.execute("PRAGMA journal_mode").fetchone()[0]
            sync = con.execute("PRAGMA synchronous").fetchone()[0]
        return {
            "path": str(self._path),
            "schema_version": int(version),
            "journal_mode": str(journal),
            "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(int(sync), str(sync)),
            "tick": None if tick is None else int(tick[0]),
            "decisions": int(n),
            "oldest_decision_tick": lo,
            "newest_decision_tick": hi,
            "pending_actions": int(pending),
        }

    # -------------------------------------------------------------------------------------- state

    def load(self) -> StoredState | None:
        """The last committed tick's state; None when no tick was ever committed.

        None does not mean no actions are pending: actions begun before the first commit are only in
        :meth:`pending_actions`, which the daemon reconciles at start-up either way.
        """
        with self._transaction(write=False) as con:
            row = con.execute(
                "SELECT tick, time, models, decision_state, plan FROM state WHERE id = 1"
            ).fetchone()
            if row is None:
                return None
            rows = self._pending_rows(con)
        tick, t, models, decision_state, plan = row
        return StoredState(
            tick=int(tick),
            time=float(t),
            models=self._content(_json_object, models, "the stored models"),
            decision_state=self._content(_json_object, decision_state, "the stored decision state"),
            plan=self._content(serialize.decode_plan, plan, "the stored plan"),
            pending_actions=tuple(self._action(r) for r in rows),
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
        t = _finite(time, "time")
        models_text = _dump(models, "models")
        state_text = _dump(decision_state, "decision_state")
        plan_text = serialize.encode(plan)
        snapshot_text = serialize.encode(snapshot)
        reasons_text = _dump(_strings(reasons, "reasons"), "reasons")
        action_rows = [_action_row(a) for a in actions]
        written = self._clock()
        with self._transaction(write=True) as con:
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
            con.execute(
                f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tick, t, plan.policy, int(plan.held), plan_text, snapshot_text, reasons_text),
            )
            con.executemany(
                f"INSERT INTO actions ({_ACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, shape = excluded.shape, "
                "node_id = excluded.node_id, payload = excluded.payload, status = excluded.status, "
                "detail = excluded.detail, attempts = excluded.attempts, created = excluded.created, "
                "updated = excluded.updated "
                "WHERE excluded.updated > actions.updated OR (excluded.updated = actions.updated AND "
                f"{_RANK.format('excluded.status')} >= {_RANK.format('actions.status')})",
                action_rows,
            )
            self._prune(con, tick, t)

    def _prune(self, con: sqlite3.Connection, tick: int, t: float) -> None:
        # Both deletes walk an index from its low end and stop at the bound: cost is the rows removed
        # (one or two per tick in steady state), not the size of the log. Ticks count up by one, so "the
        # last N ticks" is "the last N rows"; the current tick's row is never removed, so the newest log row
        # always matches the state row.
        if self._keep_decisions is not None:
            con.execute(_PRUNE_BY_TICK, (tick - self._keep_decisions,))
        if self._keep_seconds is not None:
            con.execute(_PRUNE_BY_TIME, (t - self._keep_seconds, tick))
        con.execute(_PRUNE_ACTIONS)

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
        _check_key(key)
        if kind not in _KINDS:
            raise ValueError(f"action {key!r}: kind must be one of {sorted(_KINDS)}, got {kind!r}")
        _optional_str(shape, f"action {key!r}: shape")
        _optional_str(node_id, f"action {key!r}: node_id")
        payload_text = _dump({} if payload is None else payload, f"action {key!r}: payload")
        now = self._now(time)
        with self._transaction(write=True) as con:
            con.execute(
                f"INSERT INTO actions ({_ACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'intended', '', 1, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, shape = excluded.shape, "
                "node_id = excluded.node_id, payload = excluded.payload, status = 'intended', detail = '', "
                "attempts = actions.attempts + 1, updated = max(actions.updated, excluded.updated)",
                (key, kind, shape, node_id, payload_text, now, now),
            )
            row = self._action_row_for(con, key)
        return self._action(row)

    def finish_action(
        self, key: str, status: ActionStatus, detail: str = "", *, time: float | None = None
    ) -> Action:
        """Record what became of an action: ``sent`` (asked, outcome not known yet), ``confirmed``,
        ``failed`` or ``abandoned`` (given up after reconciliation).

        Finishing twice with the same outcome is a no-op; changing a finished outcome raises ValueError
        (start it again with :meth:`begin_action`). An unknown key raises KeyError.
        """
        _check_key(key)
        if status not in _STATUSES or status == "intended":
            raise ValueError(
                f"action {key!r}: status must be one of 'sent', {', '.join(map(repr, _FINISHED))}; "
                f"got {status!r} (begin_action records 'intended')"
            )
        if not isinstance(detail, str):
            raise ValueError(f"action {key!r}: detail must be a string, got {detail!r}")
        now = self._now(time)
        with self._transaction(write=True) as con:
            row = self._action_row_for(con, key)
            if row is None:
                raise KeyError(f"no action {key!r} in the state store {self._path}")
            old = row[5]
            if old in _FINISHED:
                if old == status:
                    return self._action(row)
                raise ValueError(
                    f"action {key!r} already finished as {old!r}, cannot become {status!r}; "
                    "begin_action() it again to retry"
                )
            con.execute(
                "UPDATE actions SET status = ?, detail = ?, updated = max(updated, ?) WHERE key = ?",
                (status, detail, now, key),
            )
            row = self._action_row_for(con, key)
        return self._action(row)

    def action(self, key: str) -> Action | None:
        _check_key(key)
        with self._transaction(write=False) as con:
            row = self._action_row_for(con, key)
        return None if row is None else self._action(row)

    def pending_actions(self) -> tuple[Action, ...]:
        """Actions ``intended`` or ``sent`` and never finished, oldest first: reconcile these at start-up."""
        with self._transaction(write=False) as con:
            rows = self._pending_rows(con)
        return tuple(self._action(r) for r in rows)

    # -------------------------------------------------------------------------------------- the log

    def recent_decisions(self, limit: int = 20) -> list[DecisionRecord]:
        """The newest ``limit`` decisions, newest first."""
        n = _limit(limit)
        with self._transaction(write=False) as con:
            rows = con.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions ORDER BY tick DESC LIMIT ?", (n,)
            ).fetchall()
        return [self._decision(r) for r in rows]

    def decisions_between(self, t0: float, t1: float, *, limit: int | None = None) -> list[DecisionRecord]:
        """Decisions with ``t0 <= time <= t1``, oldest first (at most ``limit`` of them)."""
        lo, hi = _finite(t0, "t0"), _finite(t1, "t1")
        n = -1 if limit is None else _limit(limit)
        with self._transaction(write=False) as con:
            rows = con.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE time >= ? AND time <= ? "
                "ORDER BY time, tick LIMIT ?",
                (lo, hi, n),
            ).fetchall()
        return [self._decision(r) for r in rows]

    # -------------------------------------------------------------------------------------- internals

    def _open(self, check_integrity: bool, busy_timeout_s: float) -> sqlite3.Connection:
        p = self._path
        if p.is_dir():
            raise StateStoreError(
                f"state store {p}: is a directory. Pass a file path, e.g. {p / 'state.db'}.", path=p
            )
        try:
            _create_private(p)
        except OSError as e:
            raise StateStoreError(
                f"state store {p}: cannot create it ({e.strerror or e}). Check that the directory is "
                "writable by this user, or configure another path.",
                path=p,
            ) from e
        try:
            con = sqlite3.connect(p, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise self._wrap(e) from e
        try:
            mode = str(con.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise StateStoreError(
                    f"state store {p}: SQLite cannot use WAL mode there (journal mode stays {mode!r}). "
                    "Put the file on a local file system (not NFS or a read-only mount).",
                    path=p,
                )
            con.execute("PRAGMA synchronous = FULL")
            con.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
            if check_integrity:
                problems = [str(r[0]) for r in con.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StateStoreError(
                        f"state store {p}: the file is damaged ({'; '.join(problems)}). {_move_aside(p)}",
                        path=p,
                    )
            self._migrate(con)
        except BaseException as e:
            con.close()
            if isinstance(e, sqlite3.Error):
                raise self._wrap(e) from e
            raise
        return con

    def _migrate(self, con: sqlite3.Connection) -> None:
        p = self._path
        latest = MIGRATIONS[-1].version
        # IMMEDIATE: a second process opening the same new file waits here and then sees the schema
        # already made, instead of both creating it.
        con.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                str(r[0])
                for r in con.execute(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
                )
            }
            if "schema_version" not in tables:
                if tables:
                    raise StateStoreError(
                        f"state store {p}: not a raytide state file (it has tables "
                        f"{', '.join(sorted(tables))} and no schema_version). Configure another path; "
                        "raytide does not touch this file.",
                        path=p,
                    )
                con.execute(
                    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                    "applied REAL NOT NULL)"
                )
            current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if current > latest:
                raise StateStoreError(
                    f"state store {p}: schema version {current} was written by a newer raytide (this build "
                    f"knows up to {latest}). Run that version, or {_move_aside(p, lower=True)}",
                    path=p,
                )
            for m in MIGRATIONS:
                if m.version <= current:
                    continue
                for statement in m.statements:
                    con.execute(statement)
                con.execute(
                    "INSERT INTO schema_version (version, description, applied) VALUES (?, ?, ?)",
                    (m.version, m.description, self._clock()),
                )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._con
            if con is None:
                raise StateStoreError(f"state store {self._path}: already closed", path=self._path)
            try:
                # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then writes
                # can fail with SQLITE_BUSY mid-way when another connection wrote in between.
                con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise self._wrap(e) from e
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                if con.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._wrap(e) from e
                raise

    def _wrap(self, e: sqlite3.Error) -> StateStoreError:
        p = self._path
        text = str(e)
        low = text.lower()
        if "locked" in low or "busy" in low:
            fix = (
                "Another process holds it (a second raytide on the same file?): stop it, or give each "
                "daemon its own path."
            )
        elif "unable to open" in low or "readonly" in low or "read-only" in low or "permission" in low:
            fix = "Check that the file and its directory are readable and writable by this user."
        elif "full" in low or "i/o" in low:
            fix = "Check the disk (free space, I/O errors); the failed transaction was rolled back whole."
        else:
            fix = _move_aside(p)
        return StateStoreError(f"state store {p}: {text}. {fix}", path=p)

    def _content(self, decode: Callable[[str], _T], text: str, what: str) -> _T:
        try:
            return decode(text)
        except ValueError as e:
            raise StateStoreError(
                f"state store {self._path}: {what} cannot be read ({e}). If a newer raytide wrote it, run "
                f"that version; otherwise {_move_aside(self._path, lower=True)}",
                path=self._path,
            ) from e

    def _now(self, t: float | None) -> float:
        return _finite(self._clock() if t is None else t, "time")

    @staticmethod
    def _action_row_for(con: sqlite3.Connection, key: str) -> Any:
        return con.execute(f"SELECT {_ACTION_COLUMNS} FROM actions WHERE key = ?", (key,)).fetchone()

    @staticmethod
    def _pending_rows(con: sqlite3.Connection) -> list[Any]:
        return con.execute(
            f"SELECT {_ACTION_COLUMNS} FROM actions "
            "WHERE status IN ('intended', 'sent') ORDER BY created, key"
        ).fetchall()

    def _action(self, row: Sequence[Any]) -> Action:
        key, kind, shape, node_id, payload, status, detail, attempts, created, updated = row
        return Action(
            key=str(key),
            kind=cast(ActionKind, kind),
            shape=shape,
            node_id=node_id,
            payload=MappingProxyType(self._content(_json_object, payload, f"the payload of action {key!r}")),
            status=cast(ActionStatus, status),
            created=float(created),
            updated=float(updated),
            detail=str(detail),
            attempts=int(attempts),
        )

    def _decision(self, row: Sequence[Any]) -> DecisionRecord:
        tick, t, policy, held, plan, snapshot, reasons = row
        where = f"decision log row {tick}"
        return DecisionRecord(
            tick=int(tick),
            time=float(t),
            policy=str(policy),
            held=bool(held),
            plan=self._content(serialize.decode_plan, plan, f"the plan of {where}"),
            snapshot=self._content(serialize.decode_snapshot, snapshot, f"the snapshot of {where}"),
            reasons=tuple(self._content(_json_strings, reasons, f"the reasons of {where}")),
        )


# ------------------------------------------------------------------------------------------ helpers


def _move_aside(p: Path, *, lower: bool = False) -> str:
    text = (
        f"Stop raytide, move the file aside (mv {p} {p}.broken, and {p}-wal and {p}-shm if present) and "
        "start again: raytide starts fresh (models relearned, empty decision log); keep the moved file to "
        "find out what happened."
    )
    return text[0].lower() + text[1:] if lower else text


def _create_private(p: Path) -> None:
    """Create the file with mode 0600 (and its directory) if missing; an existing file is left as it is."""
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        # The umask may have removed bits SQLite needs (0o200); SQLite gives its -wal and -shm files the
        # main file's mode, so this also makes them private.
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    # Without this a power cut right after creation can lose the directory entry, and with it every
    # commit made into the file.
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _dump(value: Any, what: str) -> str:
    try:
        return json.dumps(
            dict(value) if isinstance(value, Mapping) else value, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: cannot be stored as JSON: {e}") from e


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _json_strings(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    return _strings(value, "reasons")


def _strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"{what}: expected a list of strings, got {type(value).__name__}")
    for i, s in enumerate(value):
        if not isinstance(s, str):
            raise ValueError(f"{what}[{i}]: expected a string, got {s!r}")
    return list(value)


def _finite(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    return float(v)


def _limit(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"limit must be an int >= 0, got {n!r}")
    return n


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"action key must be a non-empty string, got {key!r}")


def _optional_str(v: Any, what: str) -> None:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{what} must be a string or None, got {v!r}")


def _action_row(a: Action) -> tuple[Any, ...]:
    if not isinstance(a, Action):
        raise ValueError(f"actions: expected Action objects, got {type(a).__name__}")
    _check_key(a.key)
    if a.kind not in _KINDS:
        raise ValueError(f"action {a.key!r}: kind must be one of {sorted(_KINDS)}, got {a.kind!r}")
    if a.status not in _STATUSES:
        raise ValueError(f"action {a.key!r}: status must be one of {sorted(_STATUSES)}, got {a.status!r}")
    _optional_str(a.shape, f"action {a.key!r}: shape")
    _optional_str(a.node_id, f"action {a.key!r}: node_id")
    if not isinstance(a.detail, str):
        raise ValueError(f"action {a.key!r}: detail must be a string, got {a.detail!r}")
    if isinstance(a.attempts, bool) or not isinstance(a.attempts, int) or a.attempts < 1:
        raise ValueError(f"action {a.key!r}: attempts must be an int >= 1, got {a.attempts!r}")
    return (
        a.key,
        a.kind,
        a.shape,
        a.node_id,
        _dump(a.payload, f"action {a.key!r}: payload"),
        a.status,
        a.detail,
        a.attempts,
        _finite(a.created, f"action {a.key!r}: created"),
        _finite(a.updated, f"action {a.key!r}: updated"),
    )
