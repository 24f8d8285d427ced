"""Waiting in async tests for something to become true: a bounded poll, never a fixed sleep.

A read runs in a worker thread, since reads go to the GCS, a state file or a Ray driver and would block
the event loop the daemon under test ticks on; a check of the daemon's own memory (its warm pool's members)
runs on the loop instead, where nothing changes it meanwhile. The synchronous twin is
:func:`autoscaler.devcluster.cluster.wait_until`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.ports import ClusterState

T = TypeVar("T")

TIMEOUT_S = 90.0
"""The default bound: what the tests wait for on a real cluster usually holds within seconds, but CI
machines are slow and Ray's own loops run every few seconds."""


async def until_value(
    read: Callable[[], T],
    check: Callable[[T], bool],
    what: str,
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = 0.3,
    describe: Callable[[T], str] | None = None,
    in_thread: bool = True,
) -> T:
    """Poll ``read`` until ``check`` accepts what it returned, and return that; ``TimeoutError`` naming
    ``what`` (and the last value, through ``describe``) once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(read) if in_thread else read()
        if check(value):
            return value
        if time.monotonic() > deadline:
            last = f": {describe(value)}" if describe is not None else ""
            raise TimeoutError(f"timed out waiting for {what}{last}")
        await asyncio.sleep(interval_s)


async def until(
    check: Callable[[], bool],
    what: str,
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = 0.3,
    in_thread: bool = True,
) -> None:
    """Poll ``check`` until it is true; ``TimeoutError`` naming ``what`` once ``timeout_s`` has passed."""
    await until_value(check, bool, what, timeout_s=timeout_s, interval_s=interval_s, in_thread=in_thread)


def _counts(state: ClusterState) -> str:
    return f"{state.node_counts()} {state.pending_counts()}"


async def until_cluster(
    address: str, check: Callable[[ClusterState], bool], what: str, *, timeout_s: float = TIMEOUT_S
) -> ClusterState:
    """Poll the state of the cluster whose GCS is at ``address`` until ``check`` accepts it, and return it;
    the timeout names the nodes up and pending at the last read."""
    return await until_value(
        lambda: read_cluster_state(address),
        check,
        what,
        timeout_s=timeout_s,
        interval_s=0.5,
        describe=_counts,
    )
