"""The decision log: one row per tick (the plan, the snapshot it was made from, the reasons), so any decision
can be replayed and explained; pruned by count and age with indexed range deletes."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autoscaler.adapters.state_store.connection import Connection
from autoscaler.adapters.state_store.values import json_strings, stored_float, stored_int, stored_str
from autoscaler.core import codec
from autoscaler.types import Plan, Snapshot

__all__ = [
    "PRUNE_BY_TICK",
    "PRUNE_BY_TIME",
    "DecisionRecord",
    "append",
    "between",
    "decode",
    "newest",
    "prune",
]

_COLUMNS = "tick, time, policy, held, plan, snapshot, reasons"

PRUNE_BY_TICK = "DELETE FROM decisions WHERE tick <= ?"
PRUNE_BY_TIME = "DELETE FROM decisions WHERE time < ? AND tick < ?"


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


def append(
    con: sqlite3.Connection, tick: int, t: float, plan: Plan, plan_text: str, snapshot_text: str, reasons: str
) -> None:
    con.execute(
        f"INSERT INTO decisions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (tick, t, plan.policy, int(plan.held), plan_text, snapshot_text, reasons),
    )


def prune(con: sqlite3.Connection, tick: int, t: float, keep: int | None, keep_seconds: float | None) -> None:
    """Keep the last ``keep`` ticks and ``keep_seconds``, and always the current tick's row (so the newest
    log row matches the state row)."""
    # Both deletes walk an index from its low end and stop at the bound: the cost is the rows removed, not
    # the size of the log. Ticks count up by one, so "the last N ticks" is "the last N rows".
    if keep is not None:
        con.execute(PRUNE_BY_TICK, (tick - keep,))
    if keep_seconds is not None:
        con.execute(PRUNE_BY_TIME, (t - keep_seconds, tick))


def newest(con: sqlite3.Connection, n: int) -> list[Any]:
    return con.execute(f"SELECT {_COLUMNS} FROM decisions ORDER BY tick DESC LIMIT ?", (n,)).fetchall()


def between(con: sqlite3.Connection, lo: float, hi: float, n: int) -> list[Any]:
    """Rows with ``lo <= time <= hi``, oldest first, at most ``n`` (-1: all)."""
    return con.execute(
        f"SELECT {_COLUMNS} FROM decisions WHERE time >= ? AND time <= ? ORDER BY time, tick LIMIT ?",
        (lo, hi, n),
    ).fetchall()


def decode(row: Sequence[Any], conn: Connection) -> DecisionRecord:
    tick, t, policy, held, plan, snapshot, reasons = row
    where = f"decision log row {tick!r}"
    content = conn.content
    return DecisionRecord(
        tick=content(stored_int, tick, f"the tick of {where}"),
        time=content(stored_float, t, f"the time of {where}"),
        policy=content(stored_str, policy, f"the policy of {where}"),
        held=bool(held),
        plan=conn.content(codec.decode_plan, plan, f"the plan of {where}"),
        snapshot=conn.content(codec.decode_snapshot, snapshot, f"the snapshot of {where}"),
        reasons=tuple(conn.content(json_strings, reasons, f"the reasons of {where}")),
    )
