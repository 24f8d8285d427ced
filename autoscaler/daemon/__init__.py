"""The loop behind ``raytide run``: observe → decide → guard → act → publish."""

from autoscaler.daemon.loop import Daemon, DryRunActuator, TickOutcome, choose_drains
from autoscaler.ports import Actuator, ClusterReader, EventSink, MetricsSource, WarmPool

__all__ = [
    "Actuator",
    "ClusterReader",
    "Daemon",
    "DryRunActuator",
    "EventSink",
    "MetricsSource",
    "TickOutcome",
    "WarmPool",
    "choose_drains",
]
