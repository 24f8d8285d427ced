"""The action state machine: the allowed transitions, the ledger recording them in a real state store, and
drains settled by what the cluster shows (reflecting kept apart from acting)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from autoscaler.adapters.state_store import StateStore
from autoscaler.daemon.actions import TRANSITIONS, ActionLedger, allowed
from autoscaler.ports import FINISHED_STATUSES, ActionStatus
from tests.support.daemon_fakes import FakeCluster, ManualClock

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def test_the_transitions_go_one_way_and_finished_is_final() -> None:
    assert set(TRANSITIONS) == set(get_args(ActionStatus))
    assert allowed("intended", "sent") and allowed("sent", "confirmed") and allowed("intended", "failed")
    assert not allowed("sent", "intended") and not allowed("sent", "sent")
    for done in FINISHED_STATUSES:
        assert TRANSITIONS[done] == frozenset()
    assert all("intended" not in after for after in TRANSITIONS.values())


async def test_the_ledger_records_allowed_moves_and_refuses_the_rest(store: StateStore) -> None:
    clock = ManualClock(T0)
    ledger = ActionLedger(store, clock)
    await ledger.begin(ActionLedger.intended("floor:1", "floor", payload={"counts": {"gpu1": 2}}, now=T0))
    clock.now += 1.0
    await ledger.move("floor:1", "confirmed", "")
    assert ledger.status("floor:1") is None  # finished: no longer in flight
    await ledger.move("floor:1", "failed", "too late")  # not in flight: nothing recorded
    stored = store.action("floor:1")
    assert stored is not None and (stored.status, stored.updated) == ("confirmed", T0 + 1.0)


async def test_a_sent_drain_is_awaited_until_the_cluster_settles_it(store: StateStore) -> None:
    clock = ManualClock(T0)
    ledger = ActionLedger(store, clock)
    cluster = FakeCluster()
    stays, goes = cluster.add("gpu1"), cluster.add("gpu1")
    for node in (stays, goes):
        await ledger.begin(
            ActionLedger.intended(f"drain:{node.node_id}", "drain", node_id=node.node_id, now=T0)
        )
        await ledger.move(f"drain:{node.node_id}", "sent", "accepted by the GCS")
    assert ledger.draining() == {stays.node_id, goes.node_id}

    cluster.remove(goes.node_id)
    await ledger.sync_from(cluster(), T0 + 5.0, confirm_within_s=60.0)
    assert ledger.draining() == {stays.node_id}
    assert store.action(f"drain:{goes.node_id}").status == "confirmed"  # type: ignore[union-attr]

    await ledger.sync_from(cluster(), T0 + 61.0, confirm_within_s=60.0)
    assert ledger.draining() == set()
    assert store.action(f"drain:{stays.node_id}").status == "abandoned"  # type: ignore[union-attr]
    assert store.pending_actions() == ()


async def test_pending_actions_are_picked_up_at_start(store: StateStore) -> None:
    store.begin_action("drain:n1", kind="drain", node_id="n1", time=T0)
    store.finish_action("drain:n1", "sent", time=T0)
    ledger = ActionLedger(store, ManualClock(T0 + 1.0))
    [pending] = await ledger.load_pending()
    assert ledger.status("drain:n1") == "sent"
    ledger.await_drain(pending, "n1", since=pending.updated)
    await ledger.sync_from(FakeCluster()(), T0 + 1.0, confirm_within_s=60.0)  # n1 is not there: gone
    assert store.action("drain:n1").status == "confirmed"  # type: ignore[union-attr]
