"""The ``run`` table: one row saying whether the last daemon on the file is running, stopped cleanly, or
ended uncleanly with its write-ahead log found (``recovered``) or missing (``log_lost``).

A daemon marks the file ``running`` when it begins (and checkpoints, so the mark is in the main file, not
only in the log) and ``stopped`` when it closes it. Whoever opens the file next and finds ``running`` for a
process that no longer exists settles the row: the ``-wal`` file SQLite needed is either still there
(recovered, nothing lost) or gone (everything committed after the last checkpoint is lost). Settling it at
once matters because a clean close of that opener merges and deletes the log: a later start could no longer
tell a merged log from a lost one.
"""

from __future__ import annotations

import datetime
import os
import secrets
import sqlite3

from autoscaler.ports import JournalOpening

__all__ = ["begin", "end", "settle"]

_TOKEN = secrets.token_hex(8)


def _process() -> str:
    """This process, told apart from an earlier one that had the same pid (pid 1 in a container)."""
    return f"{os.getpid()}-{_TOKEN}"


def settle(con: sqlite3.Connection, log_found: bool, now: float) -> None:
    """At any open: the run recorded as ``running`` by a process that is gone ended uncleanly; say whether
    its log survived. A live process (this one included) is left alone: it may still be using the file."""
    row = con.execute("SELECT state, pid, process FROM run WHERE id = 1").fetchone()
    if row is None or row[0] != "running" or row[2] == _process():
        return
    if row[1] != os.getpid() and _alive(row[1]):
        return
    con.execute(
        "UPDATE run SET state = ?, changed = ? WHERE id = 1 AND state = 'running'",
        ("recovered" if log_found else "log_lost", now),
    )


def begin(con: sqlite3.Connection, log_found: bool, now: float, tick: int | None) -> JournalOpening:
    """Mark the file ``running`` for this process; returns how the previous run ended. ``tick``: the stored
    state's tick, for the log line."""
    row = con.execute("SELECT state, pid, process, started FROM run WHERE id = 1").fetchone()
    con.execute(
        "INSERT INTO run (id, state, pid, process, started, changed) VALUES (1, 'running', ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, pid = excluded.pid, "
        "process = excluded.process, started = excluded.started, changed = excluded.changed",
        (os.getpid(), _process(), now, now),
    )
    if row is None:
        return JournalOpening("none")
    state, pid, process, started = row
    if state == "stopped":
        return JournalOpening("clean")
    which = f"the previous run (pid {pid}, started {_when(started)})"
    if state == "running" and process == _process():
        # This process has had the file open all along: its connection saw every commit.
        return JournalOpening("unclean", f"{which} in this process ended without closing the state store")
    if state == "running" and pid != os.getpid() and _alive(pid):
        which += f"; pid {pid} still exists: is another raytide using this state file?"
    if state == "recovered" or (state == "running" and log_found):
        return JournalOpening(
            "unclean",
            f"{which} did not stop cleanly (killed or crashed); its write-ahead log was found, so nothing "
            "it committed is lost",
        )
    as_of = "holds no tick" if tick is None else f"is as of tick {tick}"
    return JournalOpening(
        "log_lost",
        f"{which} did not stop cleanly and its write-ahead log (the -wal file) is gone: what it committed "
        f"after its last checkpoint is lost, the state {as_of} (or another process opened and "
        "closed the file in between)",
    )


def end(con: sqlite3.Connection, now: float) -> None:
    """Mark the run of this process ``stopped``."""
    con.execute(
        "UPDATE run SET state = 'stopped', changed = ? WHERE id = 1 AND process = ? AND state = 'running'",
        (now, _process()),
    )


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def _when(t: object) -> str:
    if isinstance(t, int | float) and not isinstance(t, bool):
        try:
            return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")
        except (OverflowError, OSError, ValueError):
            pass
    return "at an unknown time"
