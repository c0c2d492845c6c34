"""The transport-free data plane: model registry, health, metadata, validation and infer.

An HTTP front end (``app``) and, later, a gRPC one call the same methods with the same
internal types (``tensors``). Nothing here knows about HTTP: errors are
:mod:`~infleet.runtime.server.errors` classes and the transport maps them to status codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from infleet import __version__
from infleet.runtime.manifest import EngineManifest, TensorSpec
from infleet.runtime.server.batcher import Batcher, BatchPolicy
from infleet.runtime.server.datatypes import numpy_dtype
from infleet.runtime.server.engines import EngineRuntime
from infleet.runtime.server.errors import (
    EngineError,
    InvalidInput,
    ModelNotFound,
    NotReady,
)
from infleet.runtime.server.metrics import Metrics
from infleet.runtime.server.tensors import InferRequest, InferResponse, Tensor
from infleet.runtime.server.wire import (
    MetadataTensor,
    ModelMetadataResponse,
    ServerMetadataResponse,
)
from infleet.runtime.server.workers import WorkerSlot

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data"]

_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tvm": "tvm", "tensorrt": "tensorrt_plan"}


@dataclass(slots=True, eq=False)
class ServedModel:
    """One model in the registry: its engine, its batcher and whether it is warm."""

    name: str
    version: str
    manifest: EngineManifest
    engine: EngineRuntime
    batcher: Batcher
    ready: bool = False
    index: int = 0
    """Its place in the registration order (the manifests' order, the same in every worker)."""
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs = {s.name: s for s in self.engine.inputs}
        self.outputs = {s.name: s for s in self.engine.outputs}


def is_batchable(engine: EngineRuntime) -> bool:
    """Requests can be merged when every tensor has a dynamic first (batch) dimension."""
    return all(s.shape and s.shape[0] == -1 for s in (*engine.inputs, *engine.outputs))


class DataPlane:
    def __init__(
        self,
        metrics: Metrics | None = None,
        peers: WorkerSlot | None = None,
        expected: Iterable[str] = (),
    ) -> None:
        """``peers``: this process is one worker of ``--workers N``; readiness is then the
        pod's (every worker's), read from the shared board. None for a lone server.
        ``expected``: the names of the models this server is loading. Until one is
        registered its routes answer "loading" (503) rather than "not served here" (404),
        and the server is not ready while any of them is missing."""
        self.metrics = metrics or Metrics()
        self.peers = peers
        self._expected = frozenset(expected)
        self._models: dict[str, ServedModel] = {}
        self._draining = False
        self.in_flight = 0

    # --- registry -------------------------------------------------------------------

    def add_model(
        self,
        name: str,
        version: str,
        manifest: EngineManifest,
        engine: EngineRuntime,
        policy: BatchPolicy,
    ) -> ServedModel:
        if name in self._models:
            raise ValueError(f"model {name!r} is registered twice")
        batchable = is_batchable(engine)
        if batchable:  # never merge past what the engine was built for
            size = min(policy.max_batch_size, manifest.max_batch_size)
            policy = BatchPolicy(
                size, policy.max_queue_delay_s, policy.max_queue_size, policy.max_concurrent_batches
            )
        batcher = Batcher(
            engine.run,
            policy,
            batchable=batchable,
            observer=self.metrics.observer(name),
            name=name,
        )
        model = ServedModel(name, version, manifest, engine, batcher, index=len(self._models))
        self._models[name] = model
        return model

    def has_model(self, name: str) -> bool:
        """Served here or being loaded."""
        return name in self._models or name in self._expected

    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    def get_model(self, name: str, version: str | None = None) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            if name in self._expected:
                raise NotReady(f"model {name!r} is loading; retry when /v2/health/ready says so")
            raise ModelNotFound(f"model {name!r} is not served here")
        if version is not None and version != model.version:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} (only {model.version!r})"
            )
        return model

    async def warm_up(self, model: ServedModel) -> None:
        """Run batches of zeros through the batcher (one of the largest size, or one of each
        size the engine asks to warm), then mark the model ready."""
        largest = model.batcher.policy.max_batch_size if model.batcher.batchable else 1
        # The largest batch pads up to the engine's next warm size, so it warms that one too.
        sizes = sorted({b for b in model.engine.warm_batch_sizes if b < largest} | {largest})
        for rows in sizes:
            feed = {
                s.name: _zeros(s, rows, model.engine.text_strings) for s in model.engine.inputs
            }
            await model.batcher.submit(feed)
        model.ready = True
        if self.peers is not None and not self._draining:
            self.peers.set_model(model.index, True)
        # this worker's own readiness: with --workers N the gauge's merge is the minimum
        self.metrics.ready.set(1 if self._ready_here() else 0)

    # --- health and metadata --------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready for inference: every model warm and not draining, in every worker."""
        return self._ready_here() and (self.peers is None or self.peers.all_ready())

    def _ready_here(self) -> bool:
        return (
            not self._draining
            and bool(self._models)
            and self._expected <= self._models.keys()
            and all(m.ready for m in self._models.values())
        )

    def model_ready(self, name: str, version: str | None = None) -> bool:
        model = self.get_model(name, version)
        return (
            model.ready
            and not self._draining
            and (self.peers is None or self.peers.model_ready(model.index))
        )

    def server_metadata(self) -> ServerMetadataResponse:
        return ServerMetadataResponse(name="infleet", version=__version__, extensions=EXTENSIONS)

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadataResponse:
        model = self.get_model(name, version)
        return ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform=_PLATFORMS.get(
                str(model.manifest.key.backend), str(model.manifest.key.backend)
            ),
            inputs=[MetadataTensor(**s.model_dump()) for s in model.engine.inputs],
            outputs=[MetadataTensor(**s.model_dump()) for s in model.engine.outputs],
        )

    # --- inference ------------------------------------------------------------------

    def admit(self) -> None:
        """Called by a transport when a request arrives, before it reads the body.

        Refusal happens here, at the door: a request admitted before a drain began is
        served to the end even if its body is still arriving when SIGTERM comes.
        """
        if self._draining:
            raise NotReady("the server is shutting down; send the request to another replica")

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        model = self.get_model(name, version)
        if not model.ready:
            raise NotReady(f"model {name!r} is loading; retry when /v2/health/ready says so")
        feed = validate(model, request)
        outputs = await model.batcher.submit(feed)
        wanted = [o.name for o in request.outputs] or list(model.outputs)
        tensors = []
        for out in wanted:
            spec = model.outputs[out]
            array = outputs.get(out)
            if array is None:
                raise EngineError(f"the engine returned no output {out!r}")
            tensors.append(Tensor(out, spec.datatype, array))
        return InferResponse(model.name, model.version, request.id, tuple(tensors))

    # --- draining -------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """Readiness turns false and new inference requests are refused from now on."""
        self._draining = True
        if self.peers is not None:
            self.peers.clear()
        self.metrics.ready.set(0)

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until no inference request is in flight; False when the timeout ran out."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight or any(
            m.batcher.depth or m.batcher.running for m in self._models.values()
        ):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self) -> None:
        for model in self._models.values():
            model.batcher.close()
            model.engine.close()


def validate(model: ServedModel, request: InferRequest) -> dict[str, np.ndarray]:
    """Check a request against the model's inputs; returns the engine feed."""
    given = {t.name: t for t in request.inputs}
    unknown = sorted(given.keys() - model.inputs.keys())
    if unknown:
        raise InvalidInput(
            f"unknown input {', '.join(map(repr, unknown))}; model {model.name!r} takes "
            f"{', '.join(map(repr, model.inputs))}"
        )
    missing = [n for n in model.inputs if n not in given]
    if missing:
        raise InvalidInput(f"missing input {', '.join(map(repr, missing))}")
    for out in request.outputs:
        if out.name not in model.outputs:
            raise InvalidInput(
                f"unknown output {out.name!r}; model {model.name!r} has "
                f"{', '.join(map(repr, model.outputs))}"
            )
    feed: dict[str, np.ndarray] = {}
    rows: int | None = None
    batchable = model.batcher.batchable
    for name, spec in model.inputs.items():
        tensor = given[name]
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input {name!r} is {tensor.datatype}, the model takes {spec.datatype}"
            )
        _check_shape(name, tensor.shape, spec.shape)
        if batchable:
            if rows is None:
                rows = tensor.shape[0]
            elif tensor.shape[0] != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch size ({rows} and {tensor.shape[0]} for {name!r})"
                )
        array = tensor.array
        if spec.datatype == "BYTES" and model.engine.text_strings:
            array = _as_text(name, array)
        feed[name] = array
    limit = model.batcher.policy.max_batch_size
    if rows is not None and rows > limit:
        raise InvalidInput(f"batch of {rows} rows is above the model's max batch size {limit}")
    return feed


def _check_shape(name: str, shape: tuple[int, ...], expected: list[int]) -> None:
    # a plain loop: a generator expression here cost a visible share of each request
    ok = len(shape) == len(expected)
    if ok:
        for s, e in zip(shape, expected):  # noqa: B905 (lengths compared just above)
            if e != -1 and e != s:
                ok = False
                break
    if not ok:
        raise InvalidInput(f"input {name!r} has shape {list(shape)}, the model takes {expected}")


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    try:
        out.reshape(-1)[:] = [v.decode() for v in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: this engine takes BYTES as UTF-8 text") from None
    return out


def _zeros(spec: TensorSpec, rows: int, text: bool) -> np.ndarray:
    shape = [1 if d == -1 else d for d in spec.shape]
    if shape and spec.shape[0] == -1:
        shape[0] = rows
    if spec.datatype == "BYTES":
        array = np.empty(shape, dtype=object)
        array.reshape(-1)[:] = "" if text else b""
        return array
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))


def specs_summary(specs: Mapping[str, TensorSpec]) -> str:
    return ", ".join(f"{s.name}:{s.datatype}{s.shape}" for s in specs.values())
