"""The ``actions`` table: actions in flight, keyed by the caller, recorded ``intended`` before the actuator is
called and finished afterwards; pending ones are never pruned."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast, get_args

from autoscaler.adapters.state_store.connection import Connection
from autoscaler.adapters.state_store.values import (
    check_key,
    dump,
    finite,
    json_object,
    optional_str,
    stored_float,
    stored_int,
    stored_optional_str,
    stored_str,
)
from autoscaler.ports import FINISHED_STATUSES, Action, ActionKind, ActionStatus

__all__ = [
    "PRUNE_ACTIONS",
    "action_row",
    "begin",
    "decode",
    "finish",
    "floor_counts",
    "floor_payloads",
    "pending_count",
    "pending_rows",
    "row_for",
    "upsert",
]

_KINDS: frozenset[str] = frozenset(get_args(ActionKind))
_STATUSES: frozenset[str] = frozenset(get_args(ActionStatus))

_COLUMNS = "key, kind, shape, node_id, payload, status, detail, attempts, created, updated"
_RANK = "CASE {0} WHEN 'intended' THEN 0 WHEN 'sent' THEN 1 ELSE 2 END"

PRUNE_ACTIONS = (
    # Finished actions older than every logged decision explain nothing any more; pending ones stay until
    # finished, however old. This compares action times with tick times: the daemon must time both with
    # the same clock (the default clock and snapshot times are both wall-clock seconds).
    "DELETE FROM actions WHERE status IN ('confirmed', 'failed', 'abandoned') "
    "AND updated < (SELECT min(time) FROM decisions)"
)


def action_row(a: Action) -> tuple[Any, ...]:
    """The row for ``a``; ValueError for anything that cannot be stored."""
    if not isinstance(a, Action):
        raise ValueError(f"actions: expected Action objects, got {type(a).__name__}")
    check_key(a.key)
    if a.kind not in _KINDS:
        raise ValueError(f"action {a.key!r}: kind must be one of {sorted(_KINDS)}, got {a.kind!r}")
    if a.status not in _STATUSES:
        raise ValueError(f"action {a.key!r}: status must be one of {sorted(_STATUSES)}, got {a.status!r}")
    optional_str(a.shape, f"action {a.key!r}: shape")
    optional_str(a.node_id, f"action {a.key!r}: node_id")
    if not isinstance(a.detail, str):
        raise ValueError(f"action {a.key!r}: detail must be a string, got {a.detail!r}")
    if isinstance(a.attempts, bool) or not isinstance(a.attempts, int) or a.attempts < 1:
        raise ValueError(f"action {a.key!r}: attempts must be an int >= 1, got {a.attempts!r}")
    return (
        a.key,
        a.kind,
        a.shape,
        a.node_id,
        dump(a.payload, f"action {a.key!r}: payload"),
        a.status,
        a.detail,
        a.attempts,
        finite(a.created, f"action {a.key!r}: created"),
        finite(a.updated, f"action {a.key!r}: updated"),
    )


def upsert(con: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write ``rows``, except over a stored row that is newer (later ``updated``, or the same time and a
    later status): passing the objects ``begin`` returned cannot undo a later finish."""
    con.executemany(
        f"INSERT INTO actions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, shape = excluded.shape, "
        "node_id = excluded.node_id, payload = excluded.payload, status = excluded.status, "
        "detail = excluded.detail, attempts = excluded.attempts, created = excluded.created, "
        "updated = excluded.updated "
        "WHERE excluded.updated > actions.updated OR (excluded.updated = actions.updated AND "
        f"{_RANK.format('excluded.status')} >= {_RANK.format('actions.status')})",
        rows,
    )


def check_begin(
    key: str, kind: ActionKind, shape: str | None, node_id: str | None, payload: Mapping[str, Any] | None
) -> str:
    """Validate a begin before any transaction; returns the payload's JSON."""
    check_key(key)
    if kind not in _KINDS:
        raise ValueError(f"action {key!r}: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    optional_str(shape, f"action {key!r}: shape")
    optional_str(node_id, f"action {key!r}: node_id")
    return dump({} if payload is None else payload, f"action {key!r}: payload")


def begin(
    con: sqlite3.Connection,
    key: str,
    kind: ActionKind,
    shape: str | None,
    node_id: str | None,
    payload_text: str,
    now: float,
) -> Any:
    """Insert as ``intended``, or start a known key again (attempts + 1, ``created`` kept); the new row."""
    con.execute(
        f"INSERT INTO actions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'intended', '', 1, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, shape = excluded.shape, "
        "node_id = excluded.node_id, payload = excluded.payload, status = 'intended', detail = '', "
        "attempts = actions.attempts + 1, updated = max(actions.updated, excluded.updated)",
        (key, kind, shape, node_id, payload_text, now, now),
    )
    return row_for(con, key)


def check_finish(key: str, status: ActionStatus, detail: str) -> None:
    check_key(key)
    if status not in _STATUSES or status == "intended":
        raise ValueError(
            f"action {key!r}: status must be one of 'sent', {', '.join(map(repr, FINISHED_STATUSES))}; "
            f"got {status!r} (begin_action records 'intended')"
        )
    if not isinstance(detail, str):
        raise ValueError(f"action {key!r}: detail must be a string, got {detail!r}")


def finish(
    con: sqlite3.Connection, where: str, key: str, status: ActionStatus, detail: str, now: float
) -> Any:
    """Record the outcome; the same finished outcome twice is a no-op, another one raises ValueError and an
    unknown key KeyError (``where`` names the file). Returns the row."""
    row = row_for(con, key)
    if row is None:
        raise KeyError(f"no action {key!r} in the state store {where}")
    old = row[5]
    if old in FINISHED_STATUSES:
        if old == status:
            return row
        raise ValueError(
            f"action {key!r} already finished as {old!r}, cannot become {status!r}; "
            "begin_action() it again to retry"
        )
    con.execute(
        "UPDATE actions SET status = ?, detail = ?, updated = max(updated, ?) WHERE key = ?",
        (status, detail, now, key),
    )
    return row_for(con, key)


def row_for(con: sqlite3.Connection, key: str) -> Any:
    return con.execute(f"SELECT {_COLUMNS} FROM actions WHERE key = ?", (key,)).fetchone()


def pending_rows(con: sqlite3.Connection) -> list[Any]:
    return con.execute(
        f"SELECT {_COLUMNS} FROM actions WHERE status IN ('intended', 'sent') ORDER BY created, key"
    ).fetchall()


def pending_count(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT count(*) FROM actions WHERE status IN ('intended', 'sent')").fetchone()[0])


def floor_payloads(con: sqlite3.Connection) -> list[Any]:
    return [r[0] for r in con.execute("SELECT DISTINCT payload FROM actions WHERE kind = 'floor'")]


def floor_counts(payload: Mapping[str, Any]) -> dict[str, int] | None:
    """The floor a ``floor`` action's payload asked for, zeros left out; None when it names none."""
    counts = payload.get("counts")
    if not isinstance(counts, Mapping):
        return None
    out: dict[str, int] = {}
    for shape, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return None
        if n:
            out[str(shape)] = n
    return out


def decode(row: Sequence[Any], conn: Connection) -> Action:
    key, kind, shape, node_id, payload, status, detail, attempts, created, updated = row
    where = f"action {key!r}"
    content = conn.content
    return Action(
        key=content(stored_str, key, "an action's key"),
        kind=cast(ActionKind, content(stored_str, kind, f"the kind of {where}")),
        shape=content(stored_optional_str, shape, f"the shape of {where}"),
        node_id=content(stored_optional_str, node_id, f"the node of {where}"),
        payload=MappingProxyType(content(json_object, payload, f"the payload of {where}")),
        status=cast(ActionStatus, content(stored_str, status, f"the status of {where}")),
        created=content(stored_float, created, f"the creation time of {where}"),
        updated=content(stored_float, updated, f"the update time of {where}"),
        detail=content(stored_str, detail, f"the detail of {where}"),
        attempts=content(stored_int, attempts, f"the attempts of {where}"),
    )
