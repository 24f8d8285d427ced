"""What raytide must see in the replayed window of the capture (``replay.DECODE_BACKED_UP``), whichever
source read it: the same facts through Prometheus and through scraping Ray's exporters directly."""

from __future__ import annotations

from autoscaler.types import Snapshot


def check_backed_up_snapshot(snapshot: Snapshot) -> None:
    """No error; decode backed up and working, Infer keeping up with less queued; one cpu4 and one gpu1
    node up and none pending; three nodes with the head, each with CPU utilization and none with GPU
    utilization (the capture's GPUs are fake, so unknown, not 0)."""
    assert snapshot.errors == ()
    decode = snapshot.stage("decode")
    infer = snapshot.stage("infer")
    assert decode.complete and infer.complete
    assert decode.backlog.get() > 0
    assert decode.throughput.known
    assert decode.throughput.get() > 0
    assert infer.backlog.get() < decode.backlog.get()
    assert dict(snapshot.node_counts) == {"cpu4": 1, "gpu1": 1}
    assert dict(snapshot.pending_counts) == {"cpu4": 0, "gpu1": 0}
    assert len(snapshot.nodes) == 3
    assert all(n.cpu_utilization.known for n in snapshot.nodes)
    assert not any(n.gpu_utilization.known for n in snapshot.nodes)
