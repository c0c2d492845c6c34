"""The engine store: content addressing, atomic commit, lost races, locks across processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path

import pytest

from infleet.api import Backend, Precision
from infleet.runtime.errors import StoreError
from infleet.runtime.manifest import EngineKey, EngineManifest, TensorSpec
from infleet.runtime.store import EngineStore


def _key(precision: Precision = Precision.FP32) -> EngineKey:
    return EngineKey(
        model_sha256="a" * 64,
        backend=Backend.ONNXRUNTIME,
        backend_version="1.32.0",
        precision=precision,
        hardware_fingerprint="x86_64-abc",
        builder_version="test",
    )


def _manifest(key: EngineKey) -> EngineManifest:
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 4])
    return EngineManifest(
        key=key,
        engine_file="engine.onnx",
        model_name="m",
        inputs=[spec],
        outputs=[spec],
        max_batch_size=8,
        node_class="x86",
        created_at="2026-01-01T00:00:00+00:00",
        build_seconds=0.1,
    )


def _stage(store: EngineStore, payload: bytes) -> Path:
    staged = store.staging()
    (staged / "engine.onnx").write_bytes(payload)
    return staged


def test_key_digest_is_stable_and_distinguishes_fields() -> None:
    assert _key().digest() == _key().digest()
    assert _key().digest() != _key(Precision.INT8).digest()
    assert len(_key().digest()) == 32


def test_commit_then_get(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    key = _key()
    assert store.get(key) is None
    final = store.commit(_stage(store, b"one"), _manifest(key))
    assert final == store.engine_dir(key)
    # the commit records every file's sha256, what a copy elsewhere is verified against
    files = {"engine.onnx": hashlib.sha256(b"one").hexdigest()}
    assert store.get(key) == _manifest(key).model_copy(update={"files": files})
    assert (final / "engine.onnx").read_bytes() == b"one"
    assert list((tmp_path / "staging").iterdir()) == []


def test_losing_a_race_keeps_the_first_engine(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    key = _key()
    first = _stage(store, b"first")
    second = _stage(store, b"second")
    store.commit(first, _manifest(key))
    final = store.commit(second, _manifest(key))  # what a builder without the lock would do
    assert (final / "engine.onnx").read_bytes() == b"first"
    assert not second.exists()


def test_a_manifest_under_the_wrong_key_is_refused(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    key, other = _key(), _key(Precision.INT8)
    final = store.commit(_stage(store, b"x"), _manifest(key))
    final.rename(store.engine_dir(other))
    with pytest.raises(StoreError, match="holds key"):
        store.get(other)


def test_request_records_round_trip_and_tolerate_garbage(tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    store.put_request("r1", {"engine_key": "k"})
    assert store.get_request("r1") == {"engine_key": "k"}
    (tmp_path / "requests" / "r2.json").write_text("{not json")
    assert store.get_request("r2") is None
    assert store.get_request("absent") is None


def _hold_lock(root: str, digest: str, log: str, hold_s: float) -> None:
    store = EngineStore(Path(root))
    with store.lock(digest):
        with open(log, "a") as f:
            f.write(f"enter {time.monotonic()}\n")
        time.sleep(hold_s)
        with open(log, "a") as f:
            f.write(f"leave {time.monotonic()}\n")


def test_lock_serialises_processes(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_hold_lock, args=(str(tmp_path), "k", str(log), 0.3)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["enter", "leave", "enter", "leave"]


def test_unwritable_store_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError):
        EngineStore(blocker / "store")
