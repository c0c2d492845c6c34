"""``InferenceDeployment.spec``: what the user asks for."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from infleet.api.base import ApiModel, CelRule

GROUP = "infleet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceDeployment"
PLURAL = "inferencedeployments"
SINGULAR = "inferencedeployment"
SHORT_NAME = "idep"

# A DNS-1123 label: node-class names and served model names end up in object names and URLs.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SHA256_HEX = r"^[0-9a-f]{64}$"
MODEL_URI = r"^(https?|s3|pvc|file)://.+$"


class Backend(StrEnum):
    """Inference backends infleet can build engines for."""

    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"
    TVM = "tvm"


class Precision(StrEnum):
    """Numeric precision of an engine, from most to least exact."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    FP8 = "fp8"


class AccuracyMetric(StrEnum):
    """How an engine's outputs are compared with the FP32 ONNX Runtime reference."""

    TOP1 = "top1"
    """Fraction of validation inputs whose arg-max differs from the reference (0 = all agree)."""
    COSINE = "cosine"
    """1 - cosine similarity of the flattened outputs, worst over validation inputs."""
    MAX_ABS_ERROR = "max-abs-error"
    """Largest absolute element-wise difference over validation inputs."""


# The deviation an FP16 engine may show when the spec gives no budget. FP16 is routine for
# GPU serving, so it is tried without a budget, but still gated; INT8 and FP8 never are.
DEFAULT_FP16_DEVIATION: dict[AccuracyMetric, float] = {
    AccuracyMetric.TOP1: 0.01,
    AccuracyMetric.COSINE: 1e-3,
    AccuracyMetric.MAX_ABS_ERROR: 1e-2,
}


class InputShape(ApiModel):
    """The full shape of one model input, for dimensions the ONNX file leaves dynamic."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    """The input's name in the ONNX graph."""
    shape: Annotated[list[Annotated[int, Field(ge=-1, le=1_000_000)]], Field(min_length=1,
                                                                            max_length=16)]
    """Every dimension's size, -1 for the batch dimension (first, and only there): e.g.
    `[-1, 3, 48, 192]` for an image input whose height and width the model leaves open."""

    cel_rules = (
        CelRule(
            rule="!self.shape.exists(d, d == 0)",
            message="model.inputs[].shape: a dimension must be at least 1 (or -1 for batch)",
            holds=lambda s: 0 not in s.shape,
            field_path=".shape",
        ),
        CelRule(
            rule="self.shape.filter(d, d == -1).size() == 0 || "
            "(self.shape[0] == -1 && self.shape.filter(d, d == -1).size() == 1)",
            message="model.inputs[].shape: -1 marks the batch dimension, which is the first",
            holds=lambda s: s.shape.count(-1) == 0 or (s.shape[0] == -1 and s.shape.count(-1) == 1),
            field_path=".shape",
        ),
    )


class ModelSource(ApiModel):
    """The ONNX model to serve."""

    uri: Annotated[str, Field(pattern=MODEL_URI, max_length=2048)]
    """Where the ONNX file lives: https://, http://, s3://bucket/key, pvc://claim/path or file:///path."""
    sha256: Annotated[str | None, Field(pattern=SHA256_HEX)] = None
    """Expected SHA-256 of the file, 64 lower-case hex characters; a mismatch fails the build."""
    name: Annotated[str | None, Field(pattern=DNS_LABEL, max_length=63)] = None
    """Name the model is served under; defaults to metadata.name."""
    inputs: Annotated[list[InputShape], Field(max_length=64)] = []
    """Shapes of inputs with dynamic dimensions other than batch (checked by the build against
    the model: a dynamic dimension left without a size fails the class, naming it)."""

    cel_rules = (
        CelRule(
            rule="!has(self.inputs) || "
            "self.inputs.all(i, self.inputs.exists_one(j, j.name == i.name))",
            message="model.inputs: each input may be given only once",
            holds=lambda m: len({i.name for i in m.inputs}) == len(m.inputs),
            field_path=".inputs",
        ),
    )


class Slo(ApiModel):
    """The service level the autoscaler holds."""

    latency_p99_ms: Annotated[float, Field(gt=0, le=600_000)]
    """Target 99th-percentile request latency in milliseconds."""
    max_throughput_rps: Annotated[float | None, Field(gt=0)] = None
    """Optional cap on provisioned capacity, in requests per second."""


class Calibration(ApiModel):
    """Calibration data for INT8/FP8 engines."""

    uri: Annotated[str | None, Field(pattern=MODEL_URI, max_length=2048)] = None
    """An .npz of real model inputs, one array per input name with the samples along the first
    axis, fetched like the model (https://, s3://, pvc://, file://); synthetic inputs when
    absent. Without `accuracy.validation` its first samples are the validation data too."""
    sha256: Annotated[str | None, Field(pattern=SHA256_HEX)] = None
    """Expected SHA-256 of the file; a mismatch fails the build."""
    samples: Annotated[int, Field(ge=1, le=100_000)] = 256
    """How many calibration samples to use."""

    cel_rules = (
        CelRule(
            rule="!has(self.sha256) || has(self.uri)",
            message="accuracy.calibration.sha256 checks a file: give accuracy.calibration.uri",
            holds=lambda c: c.sha256 is None or c.uri is not None,
            field_path=".sha256",
        ),
    )


class Validation(ApiModel):
    """Real inputs the accuracy gate judges every engine on.

    Synthetic inputs show that an engine computes the model's function; they cannot show that
    it is accurate on the inputs it will serve, and on some models (a detector whose map is
    near zero on noise) they give a reference that judges nothing. Give real inputs here.
    """

    uri: Annotated[str, Field(pattern=MODEL_URI, max_length=2048)]
    """An .npz of real model inputs, one array per input name with the samples along the first
    axis (the format of `accuracy.calibration.uri`), fetched like the model."""
    sha256: Annotated[str | None, Field(pattern=SHA256_HEX)] = None
    """Expected SHA-256 of the file; a mismatch fails the build."""
    samples: Annotated[int, Field(ge=1, le=100_000)] = 64
    """How many validation samples to compare on."""


class Accuracy(ApiModel):
    """How far a reduced-precision engine may deviate from the FP32 reference."""

    metric: AccuracyMetric = AccuracyMetric.COSINE
    """Comparison metric: top1, cosine or max-abs-error."""
    max_deviation: Annotated[float | None, Field(ge=0)] = None
    """Largest deviation allowed, in the metric's units. Without it INT8 and FP8 are never tried."""
    calibration: Calibration | None = None
    """Calibration data for INT8/FP8; synthetic inputs when absent."""
    validation: Validation | None = None
    """Real inputs every rung is judged on; the calibration file, else synthetic inputs, when
    absent. Each rung's status says which it was judged on."""

    cel_rules = (
        CelRule(
            rule="self.metric != 'top1' || !has(self.maxDeviation) || self.maxDeviation <= 1.0",
            message="accuracy.maxDeviation for metric top1 is a fraction and must be <= 1",
            holds=lambda a: a.metric != AccuracyMetric.TOP1
            or a.max_deviation is None
            or a.max_deviation <= 1.0,
            field_path=".maxDeviation",
        ),
        CelRule(
            rule="self.metric != 'cosine' || !has(self.maxDeviation) || self.maxDeviation <= 2.0",
            message="accuracy.maxDeviation for metric cosine is 1 - similarity and must be <= 2",
            holds=lambda a: a.metric != AccuracyMetric.COSINE
            or a.max_deviation is None
            or a.max_deviation <= 2.0,
            field_path=".maxDeviation",
        ),
    )


def selector_matches(selector: str, class_name: str) -> bool:
    """A class selector is a class name or a prefix of one ending at a dash:
    ``nvidia-h100`` matches ``nvidia-h100-80gb-p5-48xlarge`` and itself."""
    return class_name == selector or class_name.startswith(selector + "-")


def selectors_overlap(a: str, b: str) -> bool:
    """Whether some class name could match both selectors."""
    return selector_matches(a, b) or selector_matches(b, a)


class ClassOverride(ApiModel):
    """Pins the backend and/or precision for one node class."""

    class_name: Annotated[str, Field(alias="class", pattern=DNS_LABEL, max_length=63)]
    """Class selector: a class name as `infleet plan` prints it, or a prefix of one ending at a
    dash (`nvidia-h100` covers `nvidia-h100-80gb-p5-48xlarge`); the longest match wins."""
    backend: Backend | None = None
    """Backend to use on this class instead of the default."""
    precision: Precision | None = None
    """Precision to use on this class; skips the precision ladder."""

    cel_rules = (
        CelRule(
            rule="has(self.backend) || has(self.precision)",
            message="classes.overrides[]: an override must set backend, precision or both",
            holds=lambda o: o.backend is not None or o.precision is not None,
        ),
        CelRule(
            rule="!has(self.precision) || self.precision != 'fp8' || "
            "!has(self.backend) || self.backend == 'tensorrt'",
            message="classes.overrides[]: precision fp8 needs backend tensorrt",
            holds=lambda o: o.precision != Precision.FP8
            or o.backend in (None, Backend.TENSORRT),
            field_path=".precision",
        ),
    )


class ClassSelection(ApiModel):
    """Which node classes may serve the model, and per-class overrides."""

    allow: Annotated[
        list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] | None,
        Field(max_length=64),
    ] = None
    """Only classes matching these selectors may be used (a class name or a prefix of one ending
    at a dash); every class when absent."""
    overrides: Annotated[list[ClassOverride], Field(max_length=64)] = []
    """Per-class backend/precision overrides."""

    cel_rules = (
        CelRule(
            rule="!has(self.overrides) || "
            "self.overrides.all(o, self.overrides.exists_one(p, p.class == o.class))",
            message="classes.overrides: each class may be overridden only once",
            holds=lambda s: len({o.class_name for o in s.overrides}) == len(s.overrides),
            field_path=".overrides",
        ),
        CelRule(
            rule="!has(self.allow) || !has(self.overrides) || self.overrides.all(o, "
            "self.allow.exists(a, a == o.class || o.class.startsWith(a + '-') || "
            "a.startsWith(o.class + '-')))",
            message="classes.overrides: every override must select a class that classes.allow "
            "allows",
            holds=lambda s: s.allow is None
            or all(any(selectors_overlap(a, o.class_name) for a in s.allow) for o in s.overrides),
            field_path=".overrides",
        ),
    )


class Batching(ApiModel):
    """Dynamic batching in the serving pods."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Largest batch the server forms; engines are built and profiled up to it."""
    max_queue_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0
    """Longest a request waits for others to join its batch, in milliseconds."""


class Scaling(ApiModel):
    """Bounds for the SLO autoscaler, over all classes together."""

    min_replicas: Annotated[int, Field(ge=0, le=10_000)] = 1
    """Fewest serving replicas."""
    max_replicas: Annotated[int, Field(ge=1, le=10_000)] = 20
    """Most serving replicas."""
    headroom_fraction: Annotated[float, Field(ge=0, le=4)] = 0.2
    """Capacity provisioned above measured demand, as a fraction (0.2 = 20 %)."""
    scale_down_stabilization_seconds: Annotated[int, Field(ge=0, le=86_400)] = 300
    """How long demand must stay lower before replicas are removed."""

    cel_rules = (
        CelRule(
            rule="!has(self.maxReplicas) || !has(self.minReplicas) || "
            "self.maxReplicas >= self.minReplicas",
            message="scaling.maxReplicas must be greater than or equal to scaling.minReplicas",
            holds=lambda s: s.max_replicas >= s.min_replicas,
            field_path=".maxReplicas",
        ),
    )


class BuildOptions(ApiModel):
    """How this deployment's engines are built."""

    wait_for_tuning: bool = False
    """Where the operator tunes TVM engines (its build.tuningTrials): false serves each class's
    untuned engine (built first, in minutes) while the tuned one builds, then rolls the tuned
    one out; true keeps the class's rollout waiting for the tuned engine."""


NAME_MAX = 45
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_RULE = CelRule(
    rule=f"self.metadata.name.size() <= {NAME_MAX} && "
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    message=f"metadata.name must be a DNS-1035 label of at most {NAME_MAX} characters (it "
    "names the Services, Deployments and the served model of the deployment)",
    holds=lambda name: len(name) <= NAME_MAX and DNS_1035.match(name) is not None,
)
"""Checked on the whole object (the API server) and on the name alone (the operator)."""


def _default_object() -> dict[str, object]:
    # Lets the API server apply the nested defaults when the whole object is omitted.
    return {"default": {}}


class InferenceDeploymentSpec(ApiModel):
    """One model, served across the node classes of the cluster."""

    model: ModelSource
    """The ONNX model to serve."""
    slo: Slo
    """The latency target."""
    accuracy: Annotated[Accuracy, Field(json_schema_extra=_default_object())] = Accuracy()
    """Accuracy budget for reduced-precision engines."""
    classes: Annotated[ClassSelection, Field(json_schema_extra=_default_object())] = (
        ClassSelection()
    )
    """Allowed node classes and per-class overrides."""
    batching: Annotated[Batching, Field(json_schema_extra=_default_object())] = Batching()
    """Dynamic batching in the serving pods."""
    scaling: Annotated[Scaling, Field(json_schema_extra=_default_object())] = Scaling()
    """Autoscaling bounds."""
    build: Annotated[BuildOptions, Field(json_schema_extra=_default_object())] = BuildOptions()
    """How engines are built (TVM tuning)."""
    replicas: Annotated[int | None, Field(ge=0, le=10_000)] = None
    """Pins the total replica count (`kubectl scale` sets it); absent: the autoscaler decides."""

    cel_rules = (
        CelRule(
            rule="!has(self.replicas) || (self.replicas >= self.scaling.minReplicas && "
            "self.replicas <= self.scaling.maxReplicas)",
            message="replicas must lie between scaling.minReplicas and scaling.maxReplicas",
            holds=lambda s: s.replicas is None
            or s.scaling.min_replicas <= s.replicas <= s.scaling.max_replicas,
            field_path=".replicas",
        ),
    )
