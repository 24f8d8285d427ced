"""A watcher of a real cluster's nodes, for tests that must show a launch never happened.

It polls the GCS in a thread while the test runs, so a node that comes and goes between the test's own
reads is still seen.
"""

from __future__ import annotations

import contextlib
import threading

from autoscaler.adapters.ray.cluster_state import read_cluster_state
from autoscaler.ports import ClusterState


class Watcher:
    """The most nodes of ``shape`` alive at once (``max_alive``), and alive or pending
    (``max_with_pending``); the most nodes of every other type alive or pending (``max_others``); and,
    after :meth:`freeze`, every new ``shape`` node and pending launch (``after_freeze``: from then on the
    plan only shrinks, so each is one nobody should have made).

    Alive nodes are what to assert on: v2 can list a joining node both as alive and as a pending instance
    for a moment, so alive + pending may overcount.
    """

    def __init__(self, address: str, shape: str) -> None:
        self.address = address
        self.shape = shape
        self.max_alive = 0
        self.max_with_pending = 0
        self.max_others = 0
        self.after_freeze: list[str] = []
        self._seen: set[str] = set()
        self._frozen: set[str] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def freeze(self) -> None:
        with self._lock:
            self._frozen = set(self._seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._see(read_cluster_state(self.address))
            self._stop.wait(0.3)

    def _see(self, s: ClusterState) -> None:
        alive, pending = s.node_counts(), s.pending_counts()
        ids = {n.node_id for n in s.workers if n.node_type == self.shape}
        others = sum(v for k, v in alive.items() if k != self.shape)
        others += sum(v for k, v in pending.items() if k != self.shape)
        with self._lock:
            self._seen |= ids
            self.max_alive = max(self.max_alive, len(ids))
            self.max_with_pending = max(self.max_with_pending, len(ids) + pending.get(self.shape, 0))
            self.max_others = max(self.max_others, others)
            if self._frozen is not None:
                if ids - self._frozen:
                    self.after_freeze.append(f"new {self.shape} node(s) {sorted(ids - self._frozen)}")
                if pending:
                    self.after_freeze.append(f"pending launches {pending}")

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
