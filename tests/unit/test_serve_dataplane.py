"""The transport-free data plane with a real ONNX Runtime engine (no HTTP involved)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from infleet.api import Backend
from infleet.runtime.manifest import EngineManifest, TensorSpec
from infleet.runtime.server import samples
from infleet.runtime.server.app import status_of
from infleet.runtime.server.batcher import BatchPolicy
from infleet.runtime.server.dataplane import DataPlane, ServedModel
from infleet.runtime.server.engines import EngineOptions, load_engine
from infleet.runtime.server.errors import (
    BackendUnavailable,
    ConfigError,
    EngineError,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
)
from infleet.runtime.server.tensors import InferRequest, RequestedOutput, Tensor

pytest.importorskip("onnxruntime")  # part of CI's install; never skips there


def load(path) -> EngineManifest:
    return EngineManifest.model_validate_json(path.read_text())


def _identity_plane(tmp_path) -> tuple[DataPlane, ServedModel, Tensor]:
    """A data plane serving model "m" (an INT32 identity engine, batches of up to 4, not
    warmed yet) and a two-row input for it."""
    manifest = load(samples.identity_engine(tmp_path, "INT32"))
    engine = load_engine(manifest, tmp_path, EngineOptions(threads=1))
    plane = DataPlane()
    model = plane.add_model("m", "1", manifest, engine, BatchPolicy(max_batch_size=4))
    return plane, model, Tensor("x", "INT32", np.arange(6, dtype=np.int32).reshape(2, 3))


def test_ready_only_after_warm_up_and_false_while_draining(tmp_path) -> None:
    plane, model, x = _identity_plane(tmp_path)

    async def main() -> None:
        assert not plane.ready() and not plane.model_ready("m")
        with pytest.raises(NotReady):
            await plane.infer("m", None, InferRequest((x,)))
        await plane.warm_up(model)
        assert plane.ready() and plane.model_ready("m", "1")
        response = await plane.infer("m", "1", InferRequest((x,), (RequestedOutput("y"),)))
        np.testing.assert_array_equal(response.outputs[0].array, x.array)
        plane.begin_drain()
        assert not plane.ready() and not plane.model_ready("m")
        assert plane.metrics.ready._value.get() == 0

    asyncio.run(main())
    plane.close()


def test_a_shutdown_turns_readiness_false_and_serves_on_until_the_drain(tmp_path) -> None:
    plane, model, x = _identity_plane(tmp_path)

    async def main() -> None:
        await plane.warm_up(model)
        plane.begin_shutdown()
        assert not plane.ready() and not plane.model_ready("m")
        assert plane.metrics.ready._value.get() == 0
        assert not plane.draining  # connections are kept: answers go out as before
        plane.admit()  # still let in (the gateway may not have dropped this pod yet)
        response = await plane.infer("m", None, InferRequest((x,)))
        plane.release()
        np.testing.assert_array_equal(response.outputs[0].array, x.array)
        plane.begin_drain()
        assert plane.draining and not plane.ready()
        with pytest.raises(NotReady, match="shutting down"):
            plane.admit()

    asyncio.run(main())
    plane.close()


def test_drain_refuses_new_requests_and_waits_for_those_admitted_before_it(tmp_path) -> None:
    plane, model, x = _identity_plane(tmp_path)

    async def main() -> None:
        await plane.warm_up(model)
        plane.admit()  # its headers are read; its body is still arriving when SIGTERM comes
        assert plane.in_flight == 1
        plane.begin_drain()
        with pytest.raises(NotReady, match="shutting down"):
            plane.admit()  # new requests are refused at the door...
        assert plane.in_flight == 1  # (and a refusal holds nothing)
        # ...and the drain is not over while the admitted one is in flight, though nothing
        # is queued or running yet (the timeout running out is the behaviour under test)
        assert model.batcher.depth == 0 and model.batcher.running == 0
        assert not await plane.wait_drained(0.05)
        response = await plane.infer("m", None, InferRequest((x,)))  # served to the end
        np.testing.assert_array_equal(response.outputs[0].array, x.array)
        plane.release()
        assert plane.in_flight == 0
        assert await plane.wait_drained(5.0)

    asyncio.run(main())
    assert "infleet_serve_requests_in_flight 0.0" in plane.metrics.exposition().decode()
    plane.close()


def test_admission_is_capped_and_every_admit_is_released_once() -> None:
    plane = DataPlane(max_in_flight=2)
    plane.admit()
    plane.admit()
    with pytest.raises(Overloaded, match="2 inference requests are in flight"):
        plane.admit()
    assert plane.in_flight == 2
    assert "infleet_serve_requests_in_flight 2.0" in plane.metrics.exposition().decode()
    plane.release()
    plane.admit()  # room again
    plane.release()
    plane.release()
    with pytest.raises(RuntimeError, match="without a matching admit"):
        plane.release()
    with pytest.raises(ValueError):
        DataPlane(max_in_flight=0)


def test_models_still_loading_are_503_and_keep_the_server_not_ready(tmp_path) -> None:
    manifest = load(samples.identity_engine(tmp_path, "INT32"))
    engine = load_engine(manifest, tmp_path, EngineOptions(threads=1))
    plane = DataPlane(expected=["a", "b"])
    x = Tensor("x", "INT32", np.zeros((1, 3), dtype=np.int32))

    async def main() -> None:
        for name in ("a", "b"):
            with pytest.raises(NotReady, match=f"model '{name}' is loading"):
                plane.model_ready(name)
            with pytest.raises(NotReady, match="is loading"):
                await plane.infer(name, None, InferRequest((x,)))
        with pytest.raises(ModelNotFound):
            plane.model_ready("c")
        assert plane.has_model("b") and not plane.has_model("c")
        await plane.warm_up(plane.add_model("a", "1", manifest, engine, BatchPolicy()))
        assert plane.model_ready("a")
        assert not plane.ready()  # "b" is not loaded yet
        with pytest.raises(NotReady):
            plane.model_ready("b")

    asyncio.run(main())
    plane.close()


def test_manifest_batch_size_caps_the_policy(tmp_path) -> None:
    manifest = load(samples.identity_engine(tmp_path, "FP32", max_batch_size=2))
    engine = load_engine(manifest, tmp_path, EngineOptions())
    model = DataPlane().add_model("m", "1", manifest, engine, BatchPolicy(max_batch_size=64))
    assert model.batcher.policy.max_batch_size == 2


def test_manifest_that_does_not_match_the_engine_is_refused(tmp_path) -> None:
    samples.identity_model(tmp_path / "model.onnx", "FP32")
    path = samples.write_manifest(
        tmp_path,
        "model.onnx",
        "m",
        [TensorSpec(name="image", datatype="FP32", shape=[-1, 3])],
        [TensorSpec(name="y", datatype="FP32", shape=[-1, 3])],
    )
    with pytest.raises(ConfigError, match="image"):
        load_engine(load(path), tmp_path, EngineOptions())


def test_tensorrt_without_the_library_says_what_is_missing(tmp_path) -> None:
    (tmp_path / "engine.plan").write_bytes(b"not a plan")
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 3])
    path = samples.write_manifest(
        tmp_path, "engine.plan", "m", [spec], [spec], backend=Backend.TENSORRT
    )
    from infleet.runtime.server.engines.tensorrt_engine import capability

    reason = capability()
    if reason is None:  # a machine with TensorRT and a GPU: the plan is garbage instead
        with pytest.raises(EngineError, match="cannot deserialize"):
            load_engine(load(path), tmp_path, EngineOptions())
    else:
        with pytest.raises(BackendUnavailable, match=r"not installed|no CUDA device"):
            load_engine(load(path), tmp_path, EngineOptions())


def test_unknown_model_and_input_errors(tmp_path) -> None:
    manifest = load(samples.identity_engine(tmp_path, "FP32"))
    engine = load_engine(manifest, tmp_path, EngineOptions())
    plane = DataPlane()
    model = plane.add_model("m", "1", manifest, engine, BatchPolicy())
    with pytest.raises(ModelNotFound):
        plane.model_metadata("other")
    with pytest.raises(ModelNotFound, match="no version '7'"):
        plane.model_metadata("m", "7")

    async def main() -> None:
        await plane.warm_up(model)
        good = Tensor("x", "FP32", np.zeros((1, 3), np.float32))
        for request, needle in [
            (InferRequest((Tensor("q", "FP32", good.array),)), "unknown input 'q'"),
            (InferRequest((good,), (RequestedOutput("nope"),)), "unknown output 'nope'"),
            (InferRequest((Tensor("x", "FP64", good.array.astype(np.float64)),)), "is FP64"),
            (InferRequest((Tensor("x", "FP32", np.zeros((1, 4), np.float32)),)), "shape [1, 4]"),
        ]:
            with pytest.raises(InvalidInput, match=needle.replace("[", r"\[")):
                await plane.infer("m", None, request)

    asyncio.run(main())
    plane.close()


def test_error_classes_map_to_the_documented_status_codes() -> None:
    assert status_of(InvalidInput("x"))[0] == 400
    assert status_of(PayloadTooLarge("x"))[0] == 413
    assert status_of(ModelNotFound("x"))[0] == 404
    assert status_of(Overloaded("x"))[0] == 429
    assert status_of(NotReady("x"))[0] == 503
    assert status_of(EngineError("x"))[0] == 500
    assert status_of(KeyError("x"))[0] == 500


def test_manifest_datatype_must_match_the_model(tmp_path) -> None:
    samples.identity_model(tmp_path / "model.onnx", "FP32")
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 3])
    wrong = TensorSpec(name="y", datatype="FP16", shape=[-1, 3])
    path = samples.write_manifest(tmp_path, "model.onnx", "m", [spec], [wrong])
    with pytest.raises(EngineError, match="'y' is tensor\\(float\\) in the model but FP16"):
        load_engine(load(path), tmp_path, EngineOptions())


def test_a_model_without_a_batch_dimension_runs_each_request_alone(tmp_path) -> None:
    samples.identity_model(tmp_path / "model.onnx", "INT64")
    spec = TensorSpec(name="x", datatype="INT64", shape=[2, 3])
    out = TensorSpec(name="y", datatype="INT64", shape=[2, 3])
    manifest = load(samples.write_manifest(tmp_path, "model.onnx", "m", [spec], [out]))
    engine = load_engine(manifest, tmp_path, EngineOptions())
    plane = DataPlane()
    model = plane.add_model("m", "1", manifest, engine, BatchPolicy(max_batch_size=8))
    assert not model.batcher.batchable

    async def main() -> None:
        await plane.warm_up(model)
        xs = [np.full((2, 3), i, np.int64) for i in range(4)]
        results = await asyncio.gather(
            *(plane.infer("m", None, InferRequest((Tensor("x", "INT64", x),))) for x in xs)
        )
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_array_equal(r.outputs[0].array, x)
        with pytest.raises(InvalidInput, match="shape \\[4, 3\\]"):
            await plane.infer("m", None, InferRequest((Tensor("x", "INT64", np.ones((4, 3))),)))

    asyncio.run(main())
    plane.close()


def test_manifest_shape_must_match_the_model(tmp_path) -> None:
    samples.identity_model(tmp_path / "model.onnx", "FP32")  # x: [N, 3]
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 4])
    out = TensorSpec(name="y", datatype="FP32", shape=[-1, 3])
    path = samples.write_manifest(tmp_path, "model.onnx", "m", [spec], [out])
    with pytest.raises(EngineError, match="'x' has shape \\['N', 3\\] in the model"):
        load_engine(load(path), tmp_path, EngineOptions())


def test_gpu_engine_that_ort_moved_to_the_cpu_is_refused(tmp_path, monkeypatch) -> None:
    # Fault injected on purpose: this CPU-only onnxruntime is made to claim a CUDA provider.
    # Asked for it anyway, ORT warns and builds a CPU session (what it does on a GPU node whose
    # CUDA libraries do not load); `--device gpu` must refuse that, not serve from the CPU.
    import onnxruntime

    available = onnxruntime.get_available_providers()
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )
    manifest = load(samples.identity_engine(tmp_path, "FP32"))
    with pytest.raises(BackendUnavailable, match="fell back to CPUExecutionProvider"):
        load_engine(manifest, tmp_path, EngineOptions(device="gpu"))


def test_engines_that_take_some_batch_sizes_pad_up_and_slice_above(tmp_path) -> None:
    from infleet.runtime.server.engines.base import run_padded

    seen: list[int] = []

    def double(feed):
        seen.append(len(feed["x"]))
        return {"y": feed["x"] * 2}

    x = np.arange(11, dtype=np.float32).reshape(11, 1)
    out = run_padded(double, {"x": x}, (1, 2, 4))
    np.testing.assert_array_equal(out["y"], x * 2)  # each row its own answer, in order
    assert seen == [4, 4, 4]  # 4 + 4 + 3 padded to 4
    seen.clear()
    out = run_padded(double, {"x": x[:3]}, (1, 2, 4))
    assert seen == [4] and out["y"].shape == (3, 1)


def test_padding_buffers_are_reused_and_never_change_an_answer() -> None:
    # The padded batch lives in a buffer this thread reuses: each answer must still be its
    # own rows', also right after a larger batch, and an engine that hands its input back
    # (identity) must not see its earlier answer overwritten by the next batch.
    from infleet.runtime.server.engines.base import run_padded

    handed: list[np.ndarray] = []

    def identity(feed):
        handed.append(feed["x"])
        return {"y": feed["x"]}

    rng = np.random.default_rng(0)
    first = rng.standard_normal((3, 2)).astype(np.float32)
    out1 = run_padded(identity, {"x": first}, (1, 4))
    second = rng.standard_normal((2, 2)).astype(np.float32)
    out2 = run_padded(identity, {"x": second}, (1, 4))
    assert handed[0] is handed[1]  # one buffer, reused
    np.testing.assert_array_equal(out1["y"], first)  # not overwritten by the second batch
    np.testing.assert_array_equal(out2["y"], second)
    assert np.isfinite(handed[1]).all()  # padding rows are real rows, never garbage


class _DeclaresSizes:
    """A real CPU engine that declares the warm batch sizes a CUDA engine would."""

    warm_batch_sizes = (1, 2, 4, 8)

    def __init__(self, inner) -> None:
        self._inner = inner
        self.rows_run: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def run(self, inputs):
        self.rows_run.append(len(next(iter(inputs.values()))))
        return self._inner.run(inputs)


def test_warm_up_runs_each_size_the_engine_asks_for(tmp_path) -> None:
    manifest = load(samples.identity_engine(tmp_path, "FP32", max_batch_size=8))
    cpu_engine = load_engine(manifest, tmp_path, EngineOptions(threads=1))
    assert cpu_engine.warm_batch_sizes == ()  # on the CPU one batch of the largest size
    engine = _DeclaresSizes(cpu_engine)
    plane = DataPlane()
    model = plane.add_model("m", "1", manifest, engine, BatchPolicy(max_batch_size=6))

    asyncio.run(plane.warm_up(model))
    # Sizes above the policy's largest batch are never formed; the largest is warmed itself.
    assert engine.rows_run == [1, 2, 4, 6] and plane.ready()
    plane.close()
