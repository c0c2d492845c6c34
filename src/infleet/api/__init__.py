"""The InferenceDeployment API (group ``infleet.dev``, version ``v1alpha1``).

The pydantic models here are the single source of truth: the CRD in the repository's
``crds/`` folder is rendered from them by ``infleet crds``, and every component validates
the objects it reads through them. ``config`` holds the operator configuration's wire model,
``engine`` the contract between ``infleet build``, ``infleet serve`` and the operator.
"""

from infleet.api.errors import SpecError
from infleet.api.spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    Accuracy,
    AccuracyMetric,
    Backend,
    Batching,
    BuildOptions,
    Calibration,
    ClassOverride,
    ClassSelection,
    InferenceDeploymentSpec,
    InputShape,
    ModelSource,
    Precision,
    Scaling,
    Slo,
    Validation,
)
from infleet.api.status import (
    AutoscalerStatus,
    ClassStatus,
    Condition,
    EngineState,
    EngineStatus,
    InferenceDeploymentStatus,
    JudgedOn,
    LatencyPoint,
    ObservedLoad,
    Phase,
    RungResult,
)
from infleet.api.validation import parse_spec

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "Accuracy",
    "AccuracyMetric",
    "AutoscalerStatus",
    "Backend",
    "Batching",
    "BuildOptions",
    "Calibration",
    "ClassOverride",
    "ClassSelection",
    "ClassStatus",
    "Condition",
    "EngineState",
    "EngineStatus",
    "InferenceDeploymentSpec",
    "InferenceDeploymentStatus",
    "InputShape",
    "JudgedOn",
    "LatencyPoint",
    "ModelSource",
    "ObservedLoad",
    "Phase",
    "Precision",
    "RungResult",
    "Scaling",
    "Slo",
    "SpecError",
    "Validation",
    "parse_spec",
]
