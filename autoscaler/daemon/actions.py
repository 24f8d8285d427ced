"""The daemon's actions as one state machine: intended → sent → confirmed / failed / abandoned.

:data:`TRANSITIONS` lists every allowed status change; :class:`ActionLedger` holds the actions in flight and
records each change in the journal. Reflecting the cluster (:meth:`ActionLedger.sync_from`: is a drained
node gone?) is kept apart from acting (the callers that move an action once the actuator answered).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from autoscaler.ports import (
    FINISHED_STATUSES,
    Action,
    ActionKind,
    ActionStatus,
    ClusterState,
    StateJournal,
)

__all__ = ["TRANSITIONS", "ActionLedger", "AwaitedDrain", "allowed"]

log = logging.getLogger(__name__)

TRANSITIONS: Mapping[ActionStatus, frozenset[ActionStatus]] = MappingProxyType(
    {
        "intended": frozenset({"sent", "confirmed", "failed", "abandoned"}),
        "sent": frozenset({"confirmed", "failed", "abandoned"}),
        "confirmed": frozenset(),
        "failed": frozenset(),
        "abandoned": frozenset(),
    }
)
"""Status → the statuses it may become. ``intended`` is entered only by beginning an action (a first
attempt, or a retry of one that is pending): :meth:`ActionLedger.intended` and :meth:`ActionLedger.begin`."""


def allowed(current: ActionStatus, new: ActionStatus) -> bool:
    return new in TRANSITIONS[current]


@dataclass(frozen=True, slots=True)
class AwaitedDrain:
    """A drain Ray may have carried out: settled by what the cluster shows on the next ticks."""

    key: str
    node_id: str
    since: float


class ActionLedger:
    """The actions in flight, by key; every status change is checked against :data:`TRANSITIONS` and
    recorded in the journal (a journal that cannot record it is logged, not raised: the action happened)."""

    def __init__(self, journal: StateJournal, clock: Callable[[], float]) -> None:
        self._journal = journal
        self._clock = clock
        self._open: dict[str, Action] = {}
        self._awaited: dict[str, AwaitedDrain] = {}

    @staticmethod
    def intended(
        key: str,
        kind: ActionKind,
        *,
        now: float,
        shape: str | None = None,
        node_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Action:
        """A new ``intended`` action, not yet recorded (a tick's commit or :meth:`begin` records it)."""
        return Action(
            key=key,
            kind=kind,
            shape=shape,
            node_id=node_id,
            payload=dict(payload or {}),
            status="intended",
            created=now,
            updated=now,
        )

    def status(self, key: str) -> ActionStatus | None:
        """The status of an action in flight; None once finished (or never begun)."""
        a = self._open.get(key)
        return None if a is None else a.status

    # ------------------------------------------------------------------------------------ entering

    def committed(self, actions: Iterable[Action]) -> None:
        """A tick's commit recorded ``actions`` as intended."""
        for a in actions:
            self._open[a.key] = a

    async def begin(self, a: Action) -> None:
        """Record ``a`` as intended outside a tick's commit (a first attempt, or a retry)."""
        await asyncio.to_thread(
            self._journal.begin_action,
            a.key,
            kind=a.kind,
            shape=a.shape,
            node_id=a.node_id,
            payload=a.payload,
            time=a.created,
        )
        self._open[a.key] = replace(a, status="intended", detail="")

    async def load_pending(self) -> tuple[Action, ...]:
        """At start-up: the journal's unfinished actions, now in flight here, oldest first."""
        pending = await asyncio.to_thread(self._journal.pending_actions)
        for a in pending:
            self._open[a.key] = a
        return pending

    # ------------------------------------------------------------------------------------ moving

    async def move(self, key: str, status: ActionStatus, detail: str) -> None:
        """Move an action in flight to ``status``; a drain that becomes ``sent`` is awaited from then on."""
        current = self._open.get(key)
        if current is None:
            log.warning("action %s is not in flight: not recording it as %s", key, status)
            return
        if not allowed(current.status, status):
            log.warning("action %s cannot go from %s to %s: not recorded", key, current.status, status)
            return
        now = self._clock()
        try:
            await asyncio.to_thread(self._journal.finish_action, key, status, detail, time=now)
        except Exception as e:
            log.warning("state store: could not record %s as %s: %s", key, status, e)
        if status in FINISHED_STATUSES:
            del self._open[key]
            self._awaited.pop(key, None)
            return
        self._open[key] = replace(current, status=status, detail=detail, updated=now)
        if status == "sent" and current.kind == "drain" and current.node_id is not None:
            self._awaited[key] = AwaitedDrain(key, current.node_id, now)

    def await_drain(self, a: Action, node_id: str, *, since: float) -> None:
        """Settle drain ``a`` (found pending at start-up) by what the cluster shows next."""
        self._awaited[a.key] = AwaitedDrain(a.key, node_id, since)

    # ------------------------------------------------------------------------------------ reflecting

    def draining(self) -> set[str]:
        """Node ids of the drains awaited: not to be chosen again."""
        return {d.node_id for d in self._awaited.values()}

    async def sync_from(self, cluster: ClusterState, now: float, *, confirm_within_s: float) -> None:
        """Awaited drains: ``confirmed`` once the node is gone, ``abandoned`` when it outstays
        ``confirm_within_s``."""
        alive = {n.node_id for n in cluster.nodes if n.alive}
        for key, d in list(self._awaited.items()):
            if d.node_id not in alive:
                await self.move(key, "confirmed", "the node is gone")
            elif now - d.since > confirm_within_s:
                await self.move(key, "abandoned", "the node is still alive long after the drain")
            else:
                continue
            self._awaited.pop(key, None)
