"""`infleet build` orchestration: fetch, reference, ladder walk per backend, measured choice.

For each backend (the scheduler's default first, then alternatives the class can also run)
the precision ladder is walked: each rung is built (or taken from the store), compared with
the FP32 ONNX Runtime reference, and the first rung within the budget is profiled and stored.
Among backends that produced a passing engine, the fastest (geometric-mean throughput over the
profiled batch sizes) is kept, and the notes say what was measured and why it won.

The target comes from the scheduler's hardware key of the class (``BuildRequest.hardware``),
and the engine key's hardware fingerprint is that key's: classes that differ only in instance
type share engines. A whole build request is keyed too (model, hardware, backends and their
library versions, ladder, budget, shapes, options; never the class name): a second identical
request finds its record and the stored engine, and returns without building.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from infleet.api import AccuracyMetric, Backend, LatencyPoint, Precision, RungResult
from infleet.api.engine import BUILDER_VERSION
from infleet.runtime import datasets, shapes
from infleet.runtime import fetch as fetching
from infleet.runtime.accuracy import Budget, Reference, judge, needs_noise, output_deviations
from infleet.runtime.builders import (
    BuildJob,
    EngineBuilder,
    LoadedEngine,
    get_builder,
    load_built,
)
from infleet.runtime.errors import (
    AccuracyGateFailed,
    BackendUnavailable,
    BuildError,
    ModelError,
    UnsupportedHardware,
    UnsupportedModel,
)
from infleet.runtime.hardware import cpu_limit_threads, target_for
from infleet.runtime.manifest import BuildSummary, EngineKey, EngineManifest
from infleet.runtime.onnxmodel import ModelInfo, model_info, synthetic_inputs
from infleet.runtime.opsupport import model_ops
from infleet.runtime.profile import measure, speed_score
from infleet.runtime.server.engines.base import run_batches
from infleet.runtime.store import EngineStore
from infleet.scheduler.hardware import HardwareKey

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    model_uri: str
    hardware: HardwareKey
    """The scheduler's key of the class built for: the target and the engine key's hardware
    fingerprint come from it (``infleet build --hardware``, or the host's key)."""
    store: Path
    """The local engine store; with ``remote_store``, the build's working copy of it."""
    backends: tuple[Backend, ...]
    """The scheduler's backend first; the rest are alternatives measured against it."""
    node_class: str = ""
    """The class's name, recorded in the summary and the manifest; it keys nothing."""
    ladder: tuple[Precision, ...] = (Precision.FP32,)
    model_sha256: str | None = None
    model_name: str = "model"
    metric: AccuracyMetric = AccuracyMetric.COSINE
    max_deviation: float | None = None
    max_batch: int = 8
    inputs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Whole shapes of inputs, -1 for the batch (``--input``, ``spec.model.inputs``)."""
    dims: Mapping[str, int] = field(default_factory=dict)
    """Sizes of open dimensions by name, in every input (``--dim``)."""
    calibration_uri: str | None = None
    calibration_sha256: str | None = None
    calibration_samples: int = 64
    validation_uri: str | None = None
    """.npz of real inputs the gate judges on; without it the calibration data, else
    synthetic inputs (which cannot judge everything: see the README)."""
    validation_sha256: str | None = None
    validation_samples: int = 16
    tuning_trials: int = 0
    tuning_seconds: float = 0.0
    batch_sizes: tuple[int, ...] = ()
    int8_method: str = "auto"
    threads: int | None = None
    profile_seconds: float = 0.5
    fetch_options: fetching.FetchOptions = field(default_factory=fetching.FetchOptions)
    remote_store: str | None = None
    """An ``s3://BUCKET/PREFIX`` engine store: engines and request records are looked up
    there too, and the engine kept is uploaded there (credentials from the environment:
    ``s3store.store_config``)."""

    def digest(
        self,
        model_sha256: str,
        info: ModelInfo,
        versions: Mapping[Backend, str],
        calibration_sha: str | None,
        validation_sha: str | None = None,
    ) -> str:
        """The request's key in the store's requests/: everything its outcome depends on, and
        not the class name (classes that differ only in instance type share engines).
        ``info`` is the model with its shapes resolved, ``versions`` each backend's library
        version (a new library builds anew)."""
        fields = {
            "model": model_sha256,
            "hardware": self.hardware.fingerprint(),
            "backends": [[b.value, versions[b]] for b in self.backends],
            "ladder": [p.value for p in self.ladder],
            "metric": self.metric.value,
            "budget": self.max_deviation,
            "max_batch": self.max_batch,
            "shapes": shapes.input_shapes(info),
            "calibration": calibration_sha,
            "validation": validation_sha,
            "samples": [self.calibration_samples, self.validation_samples],
            "tuning": [self.tuning_trials, self.tuning_seconds],
            "batch_sizes": list(self.batch_sizes),
            "int8": self.int8_method,
            "builder": BUILDER_VERSION,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class _Candidate:
    backend: Backend
    manifest: EngineManifest | None = None
    rungs: list[RungResult] = field(default_factory=list)
    failures: list[BuildError] = field(default_factory=list)
    """The errors of rungs (or of the whole backend) that could not be built."""
    notes: list[str] = field(default_factory=list)
    cache_hit: bool = False
    emulated: bool = False
    emulated_profile: list[LatencyPoint] = field(default_factory=list)
    """The emulator's speed on the gate's calls: recorded, marked emulated, never compared."""


def build(request: BuildRequest, progress: Progress = lambda _msg: None) -> BuildSummary:
    if request.remote_store is None:
        return _build_request(request, EngineStore(request.store), progress)
    from infleet.runtime.s3store import S3EngineStore

    with S3EngineStore(request.remote_store, os.environ) as remote:
        # Before any work: a wrong endpoint, bucket or Secret fails in a second, not after
        # a build of many minutes.
        progress(f"engine store {remote.uri}: checking access")
        remote.check(write=True)
        return _build_request(request, EngineStore(request.store, remote), progress)


def _build_request(request: BuildRequest, store: EngineStore, progress: Progress) -> BuildSummary:
    started = time.monotonic()
    target = target_for(request.hardware)
    progress(f"target: {target.describe()} (hardware {request.hardware.fingerprint()})")
    progress(f"fetching {request.model_uri}")
    fetched = fetching.fetch(
        request.model_uri, request.store / "models", request.model_sha256, request.fetch_options
    )
    progress(f"model sha256 {fetched.sha256} ({fetched.size} bytes)")
    declared = model_info(fetched.path)
    if not declared.inputs:
        raise ModelError(f"{request.model_uri}: the model has no inputs")
    info = shapes.resolve(declared, request.inputs, request.dims)
    threads = request.threads or cpu_limit_threads()
    builders, versions = _builders(request.backends)
    data = datasets.load(
        info,
        store.root / "data",
        request.fetch_options,
        calibration=datasets.Source(
            request.calibration_uri, request.calibration_sha256, request.calibration_samples
        ),
        validation=datasets.Source(
            request.validation_uri, request.validation_sha256, request.validation_samples
        ),
    )
    req_digest = request.digest(
        fetched.sha256, info, versions, data.calibration_sha, data.validation_sha
    )
    with store.lock(f"request-{req_digest}"):
        cached = _cached_summary(store, req_digest)
        if cached is not None:
            progress(f"cache hit: engine {cached.engine_key} exists for this request")
            return cached.model_copy(update={"node_class": request.node_class})
        with tempfile.TemporaryDirectory(dir=store.root / "staging", prefix="work-") as work:
            job = BuildJob(
                model_path=fetched.path,
                info=info,
                target=target,
                max_batch=_max_batch(request, info),
                calibration=data.calibration,
                threads=threads,
                work_dir=Path(work),
                tuning_trials=request.tuning_trials,
                tuning_seconds=request.tuning_seconds,
                batch_sizes=request.batch_sizes,
                int8_method=request.int8_method,
                model_sha256=fetched.sha256,
                tuning_dir=store.root / "tuning",
            )
            summary = _build(
                request, job, data, store, builders, fetched.sha256, progress, started
            )
        summary = summary.model_copy(update={"notes": [*data.notes, *summary.notes]})
        if summary.key is not None:
            store.publish(summary.key)  # before the record that names it
        store.put_request(req_digest, json.loads(summary.model_dump_json()))
    return summary


def _builders(
    backends: tuple[Backend, ...],
) -> tuple[dict[Backend, EngineBuilder | BackendUnavailable], dict[Backend, str]]:
    """Each backend's builder (or why it is missing) and library version. The scheduler's
    backend must be there; a missing alternative is reported in the notes."""
    builders: dict[Backend, EngineBuilder | BackendUnavailable] = {}
    versions: dict[Backend, str] = {}
    for i, backend in enumerate(backends):
        try:
            builder = get_builder(backend)
            versions[backend] = builder.version()
            builders[backend] = builder
        except BackendUnavailable as e:
            if i == 0:
                raise
            builders[backend], versions[backend] = e, "unavailable"
    return builders, versions


def _max_batch(request: BuildRequest, info: ModelInfo) -> int:
    fixed = info.fixed_batch
    return fixed if fixed is not None else request.max_batch


def _cached_summary(store: EngineStore, digest: str) -> BuildSummary | None:
    record = store.get_request(digest)
    if record is None:
        return None
    try:
        summary = BuildSummary.model_validate(record)
    except ValueError:
        return None
    if summary.key is None or not store.has(summary.key):  # removed: build again
        return None
    return summary.model_copy(update={"cache_hit": True, "build_seconds": 0.0})


def _build(
    request: BuildRequest,
    job: BuildJob,
    data: datasets.Data,
    store: EngineStore,
    builders: Mapping[Backend, EngineBuilder | BackendUnavailable],
    model_sha: str,
    progress: Progress,
    started: float,
) -> BuildSummary:
    from infleet.runtime.builders.onnxruntime import OnnxRuntimeBuilder, reference_outputs

    # Operators first, from each backend's own table: a model a backend cannot run fails
    # there with the operators named, before any reference or engine is built.
    ops = model_ops(job.model_path)
    candidates: list[_Candidate] = []
    ready: list[EngineBuilder] = []
    for backend, builder in builders.items():
        if isinstance(builder, BackendUnavailable):
            candidates.append(
                _Candidate(backend, notes=[f"alternative {backend} not measured: {builder}"])
            )
        elif missing := builder.unsupported_ops(ops):
            error = UnsupportedModel(f"{backend} cannot run the operators {', '.join(missing)}")
            progress(f"{backend}: {error}")
            candidates.append(_Candidate(backend, failures=[error]))
        else:
            ready.append(builder)
    if not ready:
        raise _no_engine(candidates)
    if missing := OnnxRuntimeBuilder().unsupported_ops(ops):
        raise UnsupportedModel(
            f"the FP32 reference (onnxruntime) cannot run the operators {', '.join(missing)}, "
            "so no engine can be checked against it"
        )
    progress(f"running the FP32 ONNX Runtime reference on {data.judged_on} inputs")
    outputs = reference_outputs(job.model_path, data.validation, job.threads)
    reference = Reference.of([t.name for t in job.info.outputs], outputs, data.judged_on)
    gate = _Gate(Budget(request.metric, request.max_deviation), reference, job, data.validation)
    if hint := reference.hint():
        progress(hint)
    for builder in ready:
        candidates.append(_walk_ladder(request, job, store, builder, model_sha, gate, progress))
    passing = [c for c in candidates if c.manifest is not None]
    if not passing:
        raise _no_engine(candidates)
    winner, choice_notes = choose(passing)
    assert winner.manifest is not None
    notes = [*choice_notes, *(n for c in candidates for n in c.notes)]
    if hint:
        notes.insert(0, hint)
    for c in candidates:
        if c is not winner and c.rungs:
            notes.append(
                f"{c.backend} rungs: "
                + ", ".join(
                    f"{r.precision} {'pass' if r.passed else 'fail'} ({r.message})" for r in c.rungs
                )
            )
    return BuildSummary(
        engine_key=winner.manifest.key.digest(),
        key=winner.manifest.key,
        backend=winner.backend,
        precision=winner.manifest.key.precision,
        cache_hit=winner.cache_hit,
        model_sha256=model_sha,
        node_class=request.node_class,
        accuracy=winner.rungs,
        # The store's manifest keeps no emulated profile (a native node reusing the engine
        # must not inherit the emulator's speed); the summary carries it, marked.
        profile=winner.manifest.profile or winner.emulated_profile,
        notes=notes,
        build_seconds=round(time.monotonic() - started, 2),
        emulated=winner.emulated,
    )


def _no_engine(candidates: list[_Candidate]) -> BuildError:
    """Why no backend produced an engine, as the error class that says it: the model's
    operators or dtypes (every failure UnsupportedModel), the accuracy budget (a rung was
    measured and broke it), else a build failure."""
    failures = [f for c in candidates for f in c.failures]
    tried = (
        "; ".join(
            [f"{c.backend}: {f}" for c in candidates for f in c.failures if not c.rungs]
            + [f"{c.backend} {r.precision}: {r.message}" for c in candidates for r in c.rungs]
        )
        or "nothing to try"
    )
    if failures and all(isinstance(f, UnsupportedModel) for f in failures):
        return UnsupportedModel(f"no backend can build this model: {tried}")
    if failures and all(isinstance(f, UnsupportedHardware) for f in failures):
        return UnsupportedHardware(f"no backend can run on this hardware: {tried}")
    if any(r.deviation is not None for c in candidates for r in c.rungs):
        return AccuracyGateFailed(f"no precision rung passed the accuracy gate: {tried}")
    return BuildError(f"no engine could be built: {tried}")


def choose(passing: list[_Candidate]) -> tuple[_Candidate, list[str]]:
    """The fastest passing engine; the scheduler's default when speeds cannot be compared."""
    if len(passing) == 1:
        return passing[0], []
    measured = [
        c for c in passing if c.manifest is not None and c.manifest.profile and not c.emulated
    ]
    if len(measured) < 2:
        return passing[0], [
            f"kept {passing[0].backend}: the alternatives could not be timed on this host"
        ]
    common = sorted(
        set.intersection(
            *({p.batch_size for p in c.manifest.profile} for c in measured if c.manifest)
        )
    )
    scores = {c.backend: speed_score(c.manifest.profile, common) for c in measured if c.manifest}
    best = max(measured, key=lambda c: scores[c.backend])
    others = ", ".join(f"{b} {s:.1f}/s" for b, s in scores.items() if b != best.backend)
    return best, [
        f"kept {best.backend}: measured faster on this hardware, {scores[best.backend]:.1f}/s "
        f"against {others} (geometric-mean throughput over batch sizes {common})"
    ]


class _Gate:
    """The accuracy gate of one build: the budget, the reference and, measured once when an
    FP32 rung first needs it, the reference's noise floor (ORT's own optimisation levels)."""

    def __init__(
        self, budget: Budget, reference: Reference, job: BuildJob, validation: _Feeds
    ) -> None:
        self.budget, self.reference, self.validation = budget, reference, validation
        self._job = job
        self._noise: list[float] | None = None
        self._measured = False

    def noise(self) -> list[float] | None:
        """Each output's noise floor; None when ORT could not run the other levels (the rung
        is then judged on its budget alone)."""
        if not self._measured:
            from infleet.runtime.builders.onnxruntime import other_levels

            self._measured = True
            ref = self.reference.outputs
            try:
                runs = other_levels(self._job.model_path, self.validation, self._job.threads)
            except BuildError as e:
                log.warning("no noise floor for the FP32 gate: %s", e)
                return None
            per_level = [output_deviations(self.budget.metric, ref, r) for r in runs]
            self._noise = [max(devs) for devs in zip(*per_level, strict=True)]
        return self._noise

    def judge(self, precision: Precision, outputs: list[np.ndarray]) -> RungResult:
        measured = output_deviations(self.budget.metric, self.reference.outputs, outputs)
        noise = self.noise() if needs_noise(self.budget, precision, measured) else None
        return judge(self.budget, precision, self.reference, measured, noise)


_Feeds = Mapping[str, np.ndarray]


def _walk_ladder(
    request: BuildRequest,
    job: BuildJob,
    store: EngineStore,
    builder: EngineBuilder,
    model_sha: str,
    gate: _Gate,
    progress: Progress,
) -> _Candidate:
    cand = _Candidate(builder.backend)
    budget = gate.budget
    version = builder.version()
    for precision in request.ladder:
        limit = budget.limit(precision)
        if limit is None:
            cand.rungs.append(
                RungResult(
                    precision=precision,
                    passed=False,
                    message=f"skipped: {precision} is tried only with accuracy.maxDeviation",
                )
            )
            continue
        reason = builder.unsupported(precision, job.target)
        if reason is not None:
            cand.rungs.append(
                RungResult(precision=precision, passed=False, message=f"skipped: {reason}")
            )
            continue
        key = EngineKey(
            model_sha256=model_sha,
            backend=builder.backend,
            backend_version=version,
            precision=precision,
            hardware_fingerprint=job.target.key.fingerprint(),
            builder_version=BUILDER_VERSION,
            input_shapes=shapes.input_shapes(job.info),
            max_batch_size=job.max_batch,
            batch_sizes=list(builder.batch_sizes(job)),
            tuning=builder.tuning(job),
        )
        progress(f"{builder.backend} {precision}: engine {key.digest()}")
        with store.lock(key.digest()):
            result = _rung(request, job, store, builder, key, gate, progress)
        rung, manifest, hit, emulated, notes, error, emulated_profile = result
        cand.rungs.append(rung)
        cand.notes.extend(notes)
        if error is not None:
            cand.failures.append(error)
        progress(
            f"{builder.backend} {precision}: {'PASS' if rung.passed else 'FAIL'} {rung.message}"
        )
        if manifest is not None:
            cand.manifest = manifest.model_copy(update={"accuracy": list(cand.rungs)})
            cand.cache_hit, cand.emulated = hit, emulated
            cand.emulated_profile = emulated_profile
            if not hit:  # what a first build of this backend costs on this class
                cand.notes.append(
                    f"{builder.backend} {precision}: first build {manifest.build_seconds:.0f}s "
                    f"on {job.threads} CPUs (compile and tuning; later builds reuse it)"
                )
            break
    return cand


class _RungOutcome(NamedTuple):
    rung: RungResult
    manifest: EngineManifest | None
    cache_hit: bool
    emulated: bool
    notes: list[str]
    error: BuildError | None
    emulated_profile: list[LatencyPoint] = []
    """The gate's calls as latency points, when the engine ran under an emulator."""


def _rung(
    request: BuildRequest,
    job: BuildJob,
    store: EngineStore,
    builder: EngineBuilder,
    key: EngineKey,
    gate: _Gate,
    progress: Progress,
) -> _RungOutcome:
    """Build (or reuse) one engine and gate it.

    Returns the rung, the manifest (None when the rung failed), whether it was a cache hit,
    whether the engine ran under an emulator (with the emulator's timings), notes, and the
    build error or None.
    """
    precision = key.precision
    validation = gate.validation
    existing = store.get(key)
    notes: list[str] = []
    if existing is not None:
        engine_dir, manifest, staged = store.engine_dir(key), existing, None
        progress(f"{builder.backend} {precision}: reusing stored engine")
    else:
        staged = store.staging()
        t0 = time.monotonic()
        try:
            built = builder.build(job, precision, staged)
        except BackendUnavailable:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        except BuildError as e:
            shutil.rmtree(staged, ignore_errors=True)
            word = "unsupported model" if isinstance(e, UnsupportedModel) else "build failed"
            return _RungOutcome(
                RungResult(precision=precision, passed=False, message=f"{word}: {e}"),
                None,
                False,
                False,
                [],
                e,
            )
        notes.extend(built.notes)
        engine_dir = staged
        manifest = EngineManifest(
            key=key,
            engine_file=built.engine_file,
            model_name=request.model_name,
            inputs=[t.spec() for t in job.info.inputs],
            outputs=[t.spec() for t in job.info.outputs],
            max_batch_size=job.max_batch,
            batch_sizes=list(built.batch_sizes),
            node_class=request.node_class,
            options=dict(built.options),
            notes=list(built.notes),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.monotonic() - t0, 2),
        )
    loaded = load_built(engine_dir, manifest, job.target, job.threads)
    emulated = loaded.emulated
    try:
        if emulated:
            arch = job.target.arch
            progress(f"{builder.backend} {precision}: running the {arch} engine under emulation")
        produced = (
            loaded.engine.run(validation)  # one emulator start for every row
            if emulated
            else run_batches(loaded.engine, validation, job.max_batch)
        )
        outputs = [produced[t.name] for t in manifest.outputs]
        rung = gate.judge(precision, outputs)
        if not rung.passed:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            return _RungOutcome(rung, None, False, False, notes, None)
        emulated_profile = emulated_points(loaded)
        if emulated:
            sizes = ", ".join(str(p.batch_size) for p in emulated_profile) or "none"
            notes.append(
                f"{builder.backend}: the {job.target.arch} engine ran under qemu-user emulation: "
                f"its profile (batch {sizes}, the gate's own calls) is the emulator's speed, not "
                "the hardware's, and is marked emulated"
            )
        if existing is not None:
            return _RungOutcome(rung, existing, True, emulated, notes, None, emulated_profile)
        profile: list[LatencyPoint] = []
        if not emulated:
            progress(f"{builder.backend} {precision}: profiling batch sizes up to {job.max_batch}")
            profile = measure(
                loaded.engine,
                lambda b: synthetic_inputs(job.info, b, seed=2),
                job.max_batch,
                seconds_per_size=request.profile_seconds,
                sizes=list(manifest.batch_sizes) or None,
            )
    finally:
        loaded.engine.close()
    manifest = manifest.model_copy(update={"profile": profile, "accuracy": [rung]})
    assert staged is not None  # a stored engine returned above
    final = store.commit(staged, manifest)
    return _RungOutcome(
        rung,
        EngineManifest.model_validate_json((final / "manifest.json").read_bytes()),
        False,
        emulated,
        notes,
        None,
        emulated_profile,
    )


def emulated_points(loaded: LoadedEngine) -> list[LatencyPoint]:
    """The emulator's timings of an engine that ran under one; empty otherwise."""
    if not loaded.emulated:
        return []
    measure_emulated = getattr(loaded.engine, "emulated_profile", None)
    return list(measure_emulated()) if callable(measure_emulated) else []
