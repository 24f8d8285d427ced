"""The daemon's state, kept in one SQLite file so that a ``kill -9`` and a restart resume where it stopped:
the state row (what the next tick needs), the decision log (one row per tick), the actions in flight
(written ahead as ``intended``, finished afterwards) and the schema version. One transaction per tick;
every SQLite failure is a :class:`StateStoreError` naming the file and the fix."""

from autoscaler.adapters.state_store.connection import MIGRATIONS, Migration, StateStoreError
from autoscaler.adapters.state_store.decision_log import DecisionRecord
from autoscaler.adapters.state_store.store import StateStore
from autoscaler.ports import Action, ActionKind, ActionStatus, StoredState

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
