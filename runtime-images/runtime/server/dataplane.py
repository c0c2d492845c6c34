"""The transport-free data plane: model registry, health, metadata, admission, validation
and infer.

An HTTP front end (``app``) and, later, a gRPC one call the same methods with the same
internal types (``tensors``). Nothing here knows about HTTP or its wire models: errors are
:mod:`~infleet.runtime.server.errors` classes, answers are internal dataclasses, and the
transport maps both to its own format. Admission (draining, the in-flight cap) and the
in-flight count are the data plane's, so every transport refuses and drains alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

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
    Overloaded,
)
from infleet.runtime.server.metrics import Metrics
from infleet.runtime.server.tensors import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
    Tensor,
)

log = logging.getLogger(__name__)

EXTENSIONS = ("binary_tensor_data",)

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


class Peers(Protocol):
    """The readiness this process shares with the other workers of its pod (``--workers N``;
    :class:`~infleet.runtime.server.workers.WorkerSlot` is the one implementation). Model
    indexes are the registration order, the same in every worker."""

    def set_model(self, model: int, ready: bool) -> None: ...
    def clear(self) -> None: ...
    def all_ready(self) -> bool: ...
    def model_ready(self, model: int) -> bool: ...


class DataPlane:
    def __init__(
        self,
        metrics: Metrics | None = None,
        peers: Peers | None = None,
        expected: Iterable[str] = (),
        max_in_flight: int = 1024,
    ) -> None:
        """``peers``: this process is one worker of ``--workers N``; readiness is then the
        pod's (every worker's), read from the shared board. None for a lone server.
        ``expected``: the names of the models this server is loading. Until one is
        registered its routes answer "loading" (503) rather than "not served here" (404),
        and the server is not ready while any of them is missing.
        ``max_in_flight``: inference requests admitted at once; one more is refused (429)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.metrics = metrics or Metrics()
        self.peers = peers
        self.max_in_flight = max_in_flight
        self._expected = frozenset(expected)
        self._models: dict[str, ServedModel] = {}
        self._draining = False
        self._stopping = False
        """Not ready (stopping), still admitting: see :meth:`begin_shutdown`."""
        self._in_flight = 0
        # moved with _in_flight in admit/release: a callback read at scrape time cannot work
        # with --workers N, where each worker's value must be in its own metrics file
        self._in_flight_gauge = self.metrics.in_flight

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
            policy = replace(policy, max_batch_size=size)
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
        if self.peers is not None and not self._stopping:
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
            not self._stopping
            and bool(self._models)
            and self._expected <= self._models.keys()
            and all(m.ready for m in self._models.values())
        )

    def model_ready(self, name: str, version: str | None = None) -> bool:
        model = self.get_model(name, version)
        return (
            model.ready
            and not self._stopping
            and (self.peers is None or self.peers.model_ready(model.index))
        )

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name="infleet", version=__version__, extensions=EXTENSIONS)

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        model = self.get_model(name, version)
        backend = str(model.manifest.key.backend)
        return ModelMetadata(
            name=model.name,
            versions=(model.version,),
            platform=_PLATFORMS.get(backend, backend),
            inputs=tuple(model.engine.inputs),
            outputs=tuple(model.engine.outputs),
        )

    # --- admission ------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Inference requests admitted and not yet released."""
        return self._in_flight

    def admit(self) -> None:
        """Let one inference request in; the transport calls it once the request's headers
        are read, before it keeps any of the body, and calls :meth:`release` exactly once
        after the answer is written (or the client left).

        Refusal happens here, at the door: :class:`NotReady` while draining,
        :class:`Overloaded` when ``max_in_flight`` requests are in already. A request
        admitted before a drain began is served to the end (and waited for by
        :meth:`wait_drained`) even if its body is still arriving when SIGTERM comes.
        """
        if self._draining:
            raise NotReady("the server is shutting down; send the request to another replica")
        if self._in_flight >= self.max_in_flight:
            raise Overloaded(f"{self.max_in_flight} inference requests are in flight; retry later")
        self._in_flight += 1
        self._in_flight_gauge.inc()

    def release(self) -> None:
        """An admitted request is answered or abandoned."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching admit()")
        self._in_flight -= 1
        self._in_flight_gauge.dec()

    # --- inference ------------------------------------------------------------------

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

    def begin_shutdown(self) -> None:
        """Readiness turns false; requests are still admitted and served as before. A pod
        being deleted stays in the gateway's (and kube-proxy's) endpoints for a moment after
        its SIGTERM: refusing at once would answer those requests 503, or, once the process
        has exited, leave the gateway a dead address to answer 502 with. The drain
        (:meth:`begin_drain`) comes after the shutdown delay."""
        self._stopping = True
        if self.peers is not None:
            self.peers.clear()
        self.metrics.ready.set(0)

    def begin_drain(self) -> None:
        """Readiness turns false and new inference requests are refused from now on."""
        self.begin_shutdown()
        self._draining = True

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until no inference request is in flight; False when the timeout ran out."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight or any(
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
