"""Backend and precision per node class, with the reason for every decision.

Three layers, each overriding the one before: the default table of DESIGN.md, the cluster's
operator configuration (:class:`ClusterPolicy`), and the deployment's ``spec.classes``.
Then the choice is checked against the hardware, the model and the accuracy budget; a rung
that cannot run is dropped with its reason, and a class left with nothing is excluded.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from infleet.api import AccuracyMetric, Backend, InferenceDeploymentSpec, Precision
from infleet.api.spec import DEFAULT_FP16_DEVIATION
from infleet.scheduler.classes import NodeClass
from infleet.scheduler.hardware import HardwareKey
from infleet.scheduler.inventory import Resources
from infleet.scheduler.tensorrt_impl import ALL_IMPLS, TensorRtImpl, choose

GIB = 2**30
_WIDTH = {Precision.FP32: 4, Precision.FP16: 2, Precision.INT8: 1, Precision.FP8: 1}
_LOW = (Precision.INT8, Precision.FP8)
# The dev fleet's emulated classes (hardware.EMULATED_LABEL): what they are, and the one backend
# that cannot be checked there. Said in every decision for such a class, never papered over.
EMULATED = ("emulated: pods run under qemu-user on an x86 host (real processes and answers, "
            "not the hardware's speed)")
ORT_UNDER_QEMU = ("ONNX Runtime's aarch64 wheel crashes under qemu-user, so ONNX Runtime on "
                  "arm64 is verifiable only on real arm64 hardware")
_BACKEND_NAME = {
    Backend.TENSORRT: "TensorRT",
    Backend.ONNXRUNTIME: "ONNX Runtime",
    Backend.TVM: "TVM",
}

# Rough on-demand prices per GPU-hour, used only when the operator configuration gives no
# costPerHour for a class; `infleet plan` marks such costs as estimated.
DEFAULT_GPU_HOUR: Mapping[str, float] = MappingProxyType(
    {
        "t4": 0.35,
        "l4": 0.8,
        "a10": 1.0,
        "a10g": 1.0,
        "v100": 3.0,
        "a100": 4.0,
        "a30": 1.5,
        "l40s": 2.0,
        "l40": 1.8,
        "h100": 10.0,
        "h200": 12.0,
        "gh200": 10.0,
        "b200": 15.0,
    }
)


CPU_REPLICA = Resources(2000, 4 * GIB, 0)
GPU_REPLICA = Resources(2000, 8 * GIB, 1)


@dataclass(frozen=True, slots=True)
class ClassDefaults:
    """A cluster-wide override for the classes a selector matches."""

    backend: Backend | None = None
    precision_ladder: tuple[Precision, ...] | None = None
    cost_per_hour: float | None = None
    replica: Resources | None = None
    """CPU and memory requests of one serving pod instead of the cluster's default (a GPU
    class's pod requests one GPU whatever this says)."""


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """Cluster-wide inputs of the policy and the planner (from the operator configuration)."""

    class_defaults: Mapping[str, ClassDefaults] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Keyed by class selector: a class name or a prefix of one ending at a dash."""
    cpu_replica: Resources = CPU_REPLICA
    """Requests of one serving pod on a CPU class (memory grows with the model)."""
    gpu_replica: Resources = GPU_REPLICA
    """Requests of one serving pod on a GPU class."""
    gpu_workspace_bytes: int = 3 * GIB // 2
    """GPU memory a replica needs beyond the weights: CUDA context and TensorRT workspace."""
    cpu_core_hour: float = 0.04
    memory_gib_hour: float = 0.005
    gpu_hour: Mapping[str, float] = field(default_factory=lambda: DEFAULT_GPU_HOUR)
    default_gpu_hour: float = 3.0
    tensorrt_impls: tuple[TensorRtImpl, ...] = ALL_IMPLS
    """The TensorRT implementations the cluster's TensorRT builder image carries: full
    TensorRT, TensorRT-RTX or both. A GPU class that none of them runs on gets the ONNX Runtime
    CUDA provider instead (the reason says which and why)."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the policy may know about the model; everything optional."""

    size_bytes: int | None = None
    """Size of the ONNX file; weights are taken as FP32 and scale with the precision."""
    unsupported_ops: Mapping[Backend, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Operators of the model each backend cannot run (found by whoever inspects the model)."""


@dataclass(frozen=True, slots=True)
class ClassDecision:
    """Backend, ladder and replica shape for one class, or why the class is excluded."""

    class_name: str
    backend: Backend | None
    ladder: tuple[Precision, ...]
    """Precisions the builder tries, first that passes the accuracy gate wins."""
    reasons: tuple[str, ...]
    """Short human reasons, in the order the decisions were taken."""
    exclusion: str | None
    """Why the class cannot serve the model; None when it can."""
    replica: Resources
    """Requests of one serving pod."""
    cost_per_hour: float
    cost_estimated: bool
    """True when the cost comes from DEFAULT_GPU_HOUR and friends, not the configuration."""
    tensorrt_impl: TensorRtImpl | None = None
    """With backend TensorRT: the implementation that builds and runs the class's engine."""

    @property
    def excluded(self) -> bool:
        return self.exclusion is not None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def most_specific(selectors: Collection[str], class_name: str) -> str | None:
    """The longest selector that matches ``class_name``, or None. Looks up the name's
    dash-bounded prefixes (a handful) instead of testing every selector."""
    if not selectors:
        return None
    if class_name in selectors:
        return class_name
    parts = class_name.split("-")
    for end in range(len(parts), 0, -1):
        prefix = "-".join(parts[:end])
        if prefix in selectors:
            return prefix
    return None


def _fmt_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _cc(compute: tuple[int, int] | None) -> str:
    return f"{compute[0]}.{compute[1]}" if compute else "unknown"


def default_choice(
    hw: HardwareKey, impls: tuple[TensorRtImpl, ...] = ALL_IMPLS
) -> tuple[Backend, tuple[Precision, ...], str]:
    """DESIGN.md's table: backend, precision ladder and why. On NVIDIA classes, TensorRT with
    the first of ``impls`` that runs on the GPU; the ONNX Runtime CUDA provider, saying why,
    where none does."""
    fp8, int8, fp16, fp32 = Precision.FP8, Precision.INT8, Precision.FP16, Precision.FP32
    if hw.is_gpu:
        cc = hw.compute
        trt = choose(impls, cc)
        if trt.impl is None:
            # Tensor cores (7.0+) make the CUDA provider's FP16 worth a rung; older GPUs not.
            ort_ladder = (fp16, fp32) if cc is not None and cc >= (7, 0) else (fp32,)
            return Backend.ONNXRUNTIME, ort_ladder, f"ONNX Runtime (CUDA): {trt.reason}"
        if cc is None:
            return (
                Backend.TENSORRT,
                (fp16, fp32),
                "TensorRT: NVIDIA GPU, compute capability unknown (no GPU Feature Discovery "
                f"labels), INT8/FP8 not planned; {trt.reason}",
            )
        ladder = tuple(
            p for p in (fp8, int8, fp16, fp32) if _trt_precision_problem(trt.impl, cc, p) is None
        )
        why = f"TensorRT: NVIDIA compute {_cc(cc)}, {trt.reason}"
        if trt.impl == TensorRtImpl.RTX:
            why += "; no INT8 rung: TensorRT-RTX has no INT8 calibration (Q/DQ models only)"
        return Backend.TENSORRT, ladder, why
    feats = set(hw.cpu_features)
    if hw.arch == "amd64":
        if feats & {"AMXINT8", "AVX512VNNI", "AVXVNNI"}:
            best = next(f for f in ("AMXINT8", "AVX512VNNI", "AVXVNNI") if f in feats)
            return Backend.ONNXRUNTIME, (int8, fp32), f"ONNX Runtime: x86 with {best}"
        return Backend.ONNXRUNTIME, (fp32,), "ONNX Runtime: x86 without VNNI/AMX"
    if hw.arch == "arm64":
        if "ASIMDHP" in feats:
            return Backend.TVM, (fp16, fp32), "TVM: arm64 with FP16 arithmetic (ASIMDHP)"
        return Backend.TVM, (fp32,), "TVM: arm64 without FP16 arithmetic"
    return Backend.ONNXRUNTIME, (fp32,), f"ONNX Runtime: generic {hw.arch} CPU"


def _trt_precision_problem(
    impl: TensorRtImpl, compute: tuple[int, int] | None, p: Precision
) -> str | None:
    if p == Precision.FP8 and (compute is None or compute < (8, 9)):
        return f"FP8 skipped: needs compute >= 8.9 (this class: {_cc(compute)})"
    if p == Precision.INT8 and impl == TensorRtImpl.RTX:
        # RTX builds strongly typed networks only: INT8 comes from Q/DQ nodes in the model,
        # never from calibration, and the builder calibrates.
        return "INT8 skipped: TensorRT-RTX has no INT8 calibration (Q/DQ models only)"
    if p == Precision.INT8 and compute is None:
        return "INT8 skipped: compute capability unknown"
    return None


def _default_ladder(
    backend: Backend, hw: HardwareKey, impls: tuple[TensorRtImpl, ...] = ALL_IMPLS
) -> tuple[Precision, ...]:
    chosen, ladder, _ = default_choice(hw, impls)
    if chosen == backend:
        return ladder
    full = (Precision.FP8, Precision.INT8, Precision.FP16, Precision.FP32)
    return tuple(p for p in full if precision_problem(backend, hw, p, impls) is None)


def backend_problem(
    backend: Backend, hw: HardwareKey, impls: tuple[TensorRtImpl, ...] = ALL_IMPLS
) -> str | None:
    if backend == Backend.TENSORRT:
        if not hw.is_gpu:
            return "TensorRT needs an NVIDIA GPU"
        trt = choose(impls, hw.compute)
        if trt.impl is None:
            return f"TensorRT cannot run on this class: {trt.reason}"
    if backend == Backend.TVM and hw.is_gpu:
        return "infleet's TVM builder targets CPUs; this class serves on its GPU"
    if backend == Backend.ONNXRUNTIME and hw.emulated and hw.arch == "arm64":
        return ORT_UNDER_QEMU
    return None


def precision_problem(
    backend: Backend, hw: HardwareKey, p: Precision, impls: tuple[TensorRtImpl, ...] = ALL_IMPLS
) -> str | None:
    """Why ``backend`` cannot build ``p`` on this hardware; None when it can."""
    up = p.value.upper()
    if backend == Backend.TENSORRT:
        impl = choose(impls, hw.compute).impl or TensorRtImpl.FULL
        return _trt_precision_problem(impl, hw.compute, p)
    if p == Precision.FP8:
        return "FP8 skipped: TensorRT only"
    if backend == Backend.ONNXRUNTIME:
        if hw.is_gpu and p == Precision.INT8:
            return "INT8 skipped: ONNX Runtime's CUDA provider has no INT8 build in infleet"
        if not hw.is_gpu and p == Precision.FP16:
            return "FP16 skipped: ONNX Runtime has no fast FP16 kernels on CPUs"
        return None
    # TVM on CPUs
    if p == Precision.INT8:
        return "INT8 skipped: infleet's TVM builder has no INT8 path"
    if p == Precision.FP16 and "ASIMDHP" not in hw.cpu_features:
        return f"{up} skipped: the CPU has no FP16 arithmetic (ASIMDHP)"
    return None


def _weights(size: int, p: Precision) -> int:
    return size * _WIDTH[p] // 4


def _replica(
    cls: NodeClass,
    policy: ClusterPolicy,
    defaults: ClassDefaults,
    model: ModelFacts,
    ladder: tuple[Precision, ...],
) -> Resources:
    base = policy.gpu_replica if cls.key.is_gpu else policy.cpu_replica
    if defaults.replica is not None:
        base = Resources(defaults.replica.cpu_millis, defaults.replica.memory_bytes, base.gpus)
    if model.size_bytes is None or not ladder:
        return base
    # Host memory: the engine of the heaviest rung that may be served; a CPU server also keeps
    # ONNX Runtime's/TVM's working copies of the weights, hence twice as much.
    heaviest = max(_weights(model.size_bytes, p) for p in ladder)
    need = heaviest * (1 if cls.key.is_gpu else 2) + GIB // 2
    return Resources(base.cpu_millis, max(base.memory_bytes, need), base.gpus)


_MIG_SLICES = re.compile(r"^(\d+)g")


def estimate_cost(hw: HardwareKey, replica: Resources, policy: ClusterPolicy) -> float:
    gpu = 0.0
    if replica.gpus:
        price = policy.gpu_hour.get(hw.gpu_model, policy.default_gpu_hour)
        if hw.mig:
            m = _MIG_SLICES.match(hw.mig)
            price *= (int(m.group(1)) if m else 1) / 7
        gpu = replica.gpus * price
    cpu = replica.cpu_millis / 1000 * policy.cpu_core_hour
    mem = replica.memory_bytes / GIB * policy.memory_gib_hour
    return round(gpu + cpu + mem, 6)


def _describe_request(r: Resources) -> str:
    out = f"{r.cpu_millis / 1000:g} CPU, {_fmt_bytes(r.memory_bytes)}"
    return out + (f", {r.gpus} GPU" if r.gpus else "")


def _budget(spec: InferenceDeploymentSpec) -> tuple[AccuracyMetric, float | None]:
    return spec.accuracy.metric, spec.accuracy.max_deviation


def decide(
    cls: NodeClass,
    spec: InferenceDeploymentSpec,
    policy: ClusterPolicy | None = None,
    model: ModelFacts | None = None,
) -> ClassDecision:
    """The backend, precision ladder and replica shape for ``cls``, with reasons."""
    policy = policy or ClusterPolicy()
    model = model or ModelFacts()
    hw = cls.key
    name = cls.name
    reasons: list[str] = []
    sel = most_specific(policy.class_defaults, name)
    defaults = policy.class_defaults[sel] if sel else ClassDefaults()
    impls = policy.tensorrt_impls

    def result(
        backend: Backend | None, ladder: tuple[Precision, ...], exclusion: str | None
    ) -> ClassDecision:
        replica = _replica(cls, policy, defaults, model, ladder)
        if defaults.cost_per_hour is not None:
            cost, estimated = defaults.cost_per_hour, False
        else:
            cost, estimated = estimate_cost(hw, replica, policy), True
        biggest = cls.max_allocatable
        if exclusion is None and cls.usable_nodes and biggest.fits(replica) == 0:
            exclusion = (
                f"a replica needs {_describe_request(replica)}; the largest node offers "
                f"{_describe_request(biggest)}"
            )
        if exclusion:
            reasons.append("excluded: " + exclusion)
        elif estimated:
            reasons.append(f"cost {cost:.2f}/h estimated (no costPerHour in operator config)")
        impl = choose(impls, hw.compute).impl if backend == Backend.TENSORRT else None
        return ClassDecision(
            name, backend, ladder, tuple(reasons), exclusion, replica, cost, estimated, impl
        )

    allow = spec.classes.allow
    if allow is not None and most_specific(frozenset(allow), name) is None:
        return result(None, (), "not in spec.classes.allow")
    if hw.emulated and allow is None:
        # Slow by orders of magnitude (a build gates under qemu for minutes): a deployment
        # asks for it by name rather than have every deployment wait on it.
        return result(None, (), f"{EMULATED}; used only when spec.classes.allow selects it")

    backend, ladder, why = default_choice(hw, impls)
    reasons.append(why)
    if hw.emulated:
        reasons.append(EMULATED)
        if hw.arch == "arm64" and backend == Backend.TVM:
            reasons.append("the planned ONNX Runtime fallback is not tried: " + ORT_UNDER_QEMU)
    if defaults.backend is not None and defaults.backend != backend:
        backend = defaults.backend
        ladder = _default_ladder(backend, hw, impls)
        reasons.append(f"{_BACKEND_NAME[backend]}: operator config classes.{sel}")
    if defaults.precision_ladder:
        ladder = defaults.precision_ladder
        rungs = " -> ".join(p.value.upper() for p in ladder)
        reasons.append(f"ladder {rungs}: operator config classes.{sel}")

    overrides = {o.class_name: o for o in spec.classes.overrides}
    osel = most_specific(overrides, name)
    if osel is not None:
        o = overrides[osel]
        if o.backend is not None and o.backend != backend:
            backend = o.backend
            ladder = _default_ladder(backend, hw, impls)
            reasons.append(f"{_BACKEND_NAME[backend]}: spec.classes.overrides[{osel}]")
        if o.precision is not None:
            ladder = (o.precision,)
            reasons.append(f"{o.precision.value.upper()} pinned: spec.classes.overrides[{osel}]")

    problem = backend_problem(backend, hw, impls)
    if problem:
        return result(backend, (), problem)
    ops = model.unsupported_ops.get(backend, ())
    if ops:
        listed = ", ".join(sorted(ops)[:5]) + (" ..." if len(ops) > 5 else "")
        return result(backend, (), f"{_BACKEND_NAME[backend]} cannot run operators: {listed}")

    metric, budget = _budget(spec)
    kept: list[Precision] = []
    dropped: list[str] = []
    gpu_mem = cls.gpu_memory_bytes if hw.is_gpu else 0
    for p in ladder:
        why_not = precision_problem(backend, hw, p, impls)
        up = p.value.upper()
        if why_not is None and p in _LOW and budget is None:
            why_not = f"{up} skipped: no accuracy budget (spec.accuracy.maxDeviation)"
        if why_not is None and gpu_mem and model.size_bytes is not None:
            need = _weights(model.size_bytes, p) + policy.gpu_workspace_bytes
            if need > gpu_mem:
                why_not = (
                    f"{up} skipped: {_fmt_bytes(_weights(model.size_bytes, p))} weights + "
                    f"{_fmt_bytes(policy.gpu_workspace_bytes)} workspace exceed "
                    f"{_fmt_bytes(gpu_mem)} GPU memory"
                )
        if why_not:
            dropped.append(why_not)
        else:
            kept.append(p)
    if not kept:
        return result(backend, (), "no precision left: " + "; ".join(dropped))
    reasons.extend(dropped)

    low = [p.value.upper() for p in kept if p in _LOW]
    if low and budget is not None:
        reasons.append(f"{'/'.join(low)} gated at {metric.value} <= {budget:g}")
    if Precision.FP16 in kept and budget is None:
        reasons.append(
            f"FP16 gated at default {metric.value} <= {DEFAULT_FP16_DEVIATION[metric]:g}"
        )
    return result(backend, tuple(kept), None)
