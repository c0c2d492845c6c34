"""The root of infleet's error hierarchy, with every branch.

    InfleetError                            retryable = False unless a class says otherwise
    ├── SpecError                           (infleet.api.errors) invalid InferenceDeployment spec
    ├── OperatorConfigError                 (infleet.api.errors) invalid operator configuration
    ├── SchedulerError                      (infleet.scheduler.errors)
    │   ├── InventoryError                  a node inventory that cannot be read
    │   ├── ProfileError                    a latency/capacity profile that cannot be read
    │   ├── MetricsError                    a serving pod's metrics that cannot be read
    │   ├── AutoscaleStateError             a saved autoscaler state that cannot be restored
    │   ├── ClusterReadError                reading Nodes/Pods failed (retryable)
    │   └── HardwareError                   hardware facts that describe no class key
    ├── RuntimeFailure                      (infleet.runtime.errors) the data plane
    │   ├── BackendUnavailable              a backend library or device is missing here
    │   ├── EndpointError                   an endpoint's answer is no v2 inference response
    │   ├── BuildError                      `infleet build` could not produce an engine
    │   │   ├── FetchError                  the model or calibration data could not be fetched
    │   │   │   ├── SourceUnreachable       (retryable)
    │   │   │   ├── SourceTooLarge
    │   │   │   └── ChecksumMismatch
    │   │   ├── ModelError                  not a usable ONNX model
    │   │   │   ├── UnsupportedModel        an op or dtype the backend cannot build
    │   │   │   └── ShapeError              input shapes that do not fit, or are missing
    │   │   ├── UnsupportedHardware         no builder targets the class's hardware
    │   │   ├── AccuracyGateFailed          no precision rung within the budget
    │   │   └── StoreError                  the engine store failed (retryable)
    │   └── ServeError                      (infleet.runtime.server.errors) `infleet serve`
    │       ├── InvalidInput                the request is wrong (HTTP 400)
    │       │   └── PayloadTooLarge
    │       ├── ModelNotFound
    │       ├── Unavailable                 not now (retryable; HTTP 503/429)
    │       │   ├── Overloaded
    │       │   └── NotReady
    │       ├── EngineError                 the engine failed to load or run
    │       └── ConfigError                 bad `infleet serve` arguments or manifest
    ├── OperatorError                       (infleet.operator.errors) the operator
    │   └── ApiError                        the API server refused a request
    │       └── ApiUnavailable              ...or did not answer (retryable)
    └── DevClusterError                     (infleet.devcluster.errors) the local control plane
        ├── ToolsMissingError
        ├── ToolsBuildError
        ├── FleetProfileError               a fleet profile that is unknown or invalid
        ├── ClusterStartError
        └── ClusterStateError

Every package's errors derive from :class:`InfleetError`, so entry points can tell infleet's own
failures (reported to the user as one clear line, non-zero exit) from bugs. ``retryable`` says
whether the same request may succeed later without a change of its input (a source that was
unreachable may come back; a checksum mismatch will not): the operator maps it to kopf's
``TemporaryError`` (retry with backoff) or ``PermanentError`` (fail until the spec changes), and
`infleet build` writes it into its ``BuildFailure``. tests/unit/test_errors.py checks that this
tree names every subclass.
"""

from __future__ import annotations

from typing import ClassVar


class InfleetError(Exception):
    """Base class of infleet's errors; ``str(e)`` is a message for people."""

    retryable: ClassVar[bool] = False
    """True for transient failures: trying the same thing again later may succeed."""
