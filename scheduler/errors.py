"""Errors of the scheduler package.

    InfleetError                 (infleet.errors) root of every infleet error
    └── SchedulerError           anything the scheduler refuses
        ├── InventoryError       a node inventory (file or objects) that cannot be read
        ├── ProfileError         a latency/capacity profile file that cannot be read
        ├── MetricsError         a serving pod's metrics that cannot be read
        ├── AutoscaleStateError  a saved autoscaler state that cannot be restored
        ├── ClusterReadError     reading Nodes/Pods from the API server failed (retryable)
        └── HardwareError        hardware facts given to a build that describe no class key

An infeasible placement is not an error: the planner returns it as a result with its
explanation, so the operator can put it in status and ``infleet plan`` can print it.
"""

from __future__ import annotations

from infleet.errors import InfleetError


class SchedulerError(InfleetError):
    """Base class of the scheduler's errors."""


class InventoryError(SchedulerError):
    """A node inventory that cannot be read; the message names the node or document."""


class ProfileError(SchedulerError):
    """A class profile file that cannot be read."""


class MetricsError(SchedulerError):
    """Metrics text (or values) that cannot be read; the message names what is wrong."""


class AutoscaleStateError(SchedulerError):
    """A saved autoscaler state that cannot be restored (not JSON, or the wrong shape)."""


class ClusterReadError(SchedulerError):
    """Nodes or Pods could not be read from the cluster."""

    retryable = True


class HardwareError(SchedulerError):
    """Hardware facts (a class's engine fields, given to a build) that describe no key."""
