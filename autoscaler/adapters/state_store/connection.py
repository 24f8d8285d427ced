"""The state file's one SQLite connection: opening (private file, WAL, ``synchronous=FULL``, integrity
check), the forward-only schema migrations, transactions and checkpoints under a lock, and SQLite errors
turned into :class:`StateStoreError` naming the file and the fix."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from autoscaler.adapters.state_store import run_marker
from autoscaler.ports import StateError

__all__ = ["MIGRATIONS", "Connection", "Migration", "StateStoreError", "move_aside"]

_T = TypeVar("_T")
_S = TypeVar("_S")

_WAL_LIMIT_BYTES = 64 * 1024 * 1024
"""After a checkpoint the WAL is truncated to this size, so one burst of large ticks does not keep the
file big forever."""


class StateStoreError(StateError):
    """The state file cannot be opened, read or written; the message names the file and the fix."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


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
    Migration(
        2,
        "the run marker: whether the last daemon on the file stopped cleanly",
        (
            """CREATE TABLE run (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                state TEXT NOT NULL CHECK (state IN ('running', 'stopped', 'recovered', 'log_lost')),
                pid INTEGER NOT NULL,
                process TEXT NOT NULL,
                started REAL NOT NULL,
                changed REAL NOT NULL
            )""",
        ),
    ),
)
"""Forward-only, applied in order inside one transaction; never edit a released one, append a new one."""


class Connection:
    """One long-lived connection, used by one thread at a time (callers come from ``asyncio.to_thread``,
    whose worker threads differ from call to call)."""

    def __init__(
        self,
        path: Path,
        *,
        check_integrity: bool,
        busy_timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        # Looked at before SQLite opens (and so creates) it: after an unclean stop the log must still be
        # there, or what was committed after the last checkpoint is gone.
        self.log_found = Path(f"{path}-wal").exists()
        """Whether the write-ahead log (``<file>-wal``) existed when this connection opened."""
        self._con: sqlite3.Connection | None = self._open(check_integrity, busy_timeout_s)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                try:
                    self._con.close()
                except sqlite3.Error as e:
                    raise self.wrap(e) from e
                finally:
                    self._con = None

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._con
            if con is None:
                raise StateStoreError(f"state store {self.path}: already closed", path=self.path)
            try:
                # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then writes
                # can fail with SQLITE_BUSY mid-way when another connection wrote in between.
                con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise self.wrap(e) from e
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                if con.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self.wrap(e) from e
                raise

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the file and empty it, so that a lost ``-wal`` loses nothing
        committed so far. False when another connection's reader kept it from finishing (the log then
        stays as it was: nothing is lost, the next checkpoint does it)."""
        with self._lock:
            con = self._con
            if con is None:
                raise StateStoreError(f"state store {self.path}: already closed", path=self.path)
            try:
                busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as e:
                raise self.wrap(e) from e
            return not busy

    def content(self, decode: Callable[[_S], _T], text: _S, what: str) -> _T:
        """``decode(text)``; a value that cannot be read back is a damaged (or newer) file."""
        try:
            return decode(text)
        except (ValueError, TypeError, RecursionError) as e:
            raise StateStoreError(
                f"state store {self.path}: {what} cannot be read ({e}). If a newer raytide wrote it, run "
                f"that version; otherwise {move_aside(self.path, lower=True)}",
                path=self.path,
            ) from e

    def wrap(self, e: sqlite3.Error) -> StateStoreError:
        p = self.path
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
            fix = move_aside(p)
        return StateStoreError(f"state store {p}: {text}. {fix}", path=p)

    # ------------------------------------------------------------------------------------ opening

    def _open(self, check_integrity: bool, busy_timeout_s: float) -> sqlite3.Connection:
        p = self.path
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
            raise self.wrap(e) from e
        try:
            mode = str(con.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise StateStoreError(
                    f"state store {p}: SQLite cannot use WAL mode there (journal mode stays {mode!r}). "
                    "Put the file on a local file system (not NFS or a read-only mount).",
                    path=p,
                )
            # FULL, not NORMAL: an ``intended`` record must survive a power cut too, or it guards nothing.
            con.execute("PRAGMA synchronous = FULL")
            con.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
            if check_integrity:
                problems = [str(r[0]) for r in con.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StateStoreError(
                        f"state store {p}: the file is damaged ({'; '.join(problems)}). {move_aside(p)}",
                        path=p,
                    )
            self._migrate(con)
            con.execute("BEGIN IMMEDIATE")
            try:
                run_marker.settle(con, self.log_found, self._clock())
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except BaseException as e:
            con.close()
            if isinstance(e, sqlite3.Error):
                raise self.wrap(e) from e
            raise
        return con

    def _migrate(self, con: sqlite3.Connection) -> None:
        p = self.path
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
                    f"knows up to {latest}). Run that version, or {move_aside(p, lower=True)}",
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


def move_aside(p: Path, *, lower: bool = False) -> str:
    """What to do with a file raytide cannot use."""
    text = (
        f"Stop raytide, move the file aside (mv {p} {p}.broken, and {p}-wal and {p}-shm if present) and "
        "start again: raytide starts fresh (models relearned, empty decision log) and adopts the floor and "
        "placeholders it finds in the cluster; keep the moved file to find out what happened."
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
