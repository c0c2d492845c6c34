"""Errors of the local control plane.

    InfleetError
    └── DevClusterError                 anything the local cluster could not do
        ├── ToolsMissingError           the Go binaries are not built (says how to build them)
        ├── ToolsBuildError             `go build` failed (carries the tail of its output)
        ├── FleetProfileError           a fleet profile file is invalid or unknown
        ├── ClusterStartError           a component exited or never became healthy (logs attached)
        └── ClusterStateError           `infleet dev` found no cluster, or one already running
"""

from __future__ import annotations

from infleet.errors import InfleetError


class DevClusterError(InfleetError):
    """Base of the local control plane's errors."""


class ToolsMissingError(DevClusterError):
    """The cached Go binaries for the pinned versions are not there."""


class ToolsBuildError(DevClusterError):
    """Building the Go binaries failed."""


class FleetProfileError(DevClusterError):
    """A fleet profile is unknown or invalid."""


class ClusterStartError(DevClusterError):
    """A component of the cluster failed to start or to become healthy."""


class ClusterStateError(DevClusterError):
    """The saved state of a `infleet dev` cluster does not allow the requested action."""
