"""How fast every stage runs on every node shape: one small robust model per (stage, shape) pair.

Each pair learns DS2's "true processing rate" — work done per busy slot-second — as

    throughput(n slots) = r · n^b

with ``r`` the per-slot rate and ``b`` in [0.5, 1] a learned scaling efficiency (b = 1: linear; lower: the
stage gains less than linearly from more slots, like Flink's learned scaling coefficient). Every estimate
carries a relative uncertainty so callers can tell a measured rate from a guess.

Pure: no I/O, no clock, no randomness. The same snapshots in the same order give the same estimates, and the
state round-trips through JSON exactly, so a restarted daemon decides as the old one would have.
"""

from autoscaler.core.throughput.estimate import (
    MAX_EFFICIENCY,
    MAX_SLOTS,
    MIN_EFFICIENCY,
    RateEstimate,
    Source,
)
from autoscaler.core.throughput.models import ThroughputModels
from autoscaler.core.throughput.state import JSON_VERSION

__all__ = [
    "JSON_VERSION",
    "MAX_EFFICIENCY",
    "MAX_SLOTS",
    "MIN_EFFICIENCY",
    "RateEstimate",
    "Source",
    "ThroughputModels",
]
