"""The loop behind ``raytide run``: observe → decide → guard → act → publish."""

from autoscaler.daemon.acting import DryRunActuator, choose_drains
from autoscaler.daemon.loop import Daemon
from autoscaler.daemon.publish import TickOutcome
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
