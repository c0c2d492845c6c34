"""The engine store on a real S3 server (versitygw, tests/support/s3.py): `infleet build
--store s3://...` uploads (blobs, then the manifest), a second build finds the engine without
building or downloading it, `infleet pull` copies it verified, half-written and tampered
engines are refused, two uploaders of one key never mix, and a wrong store fails a build in a
second, naming the cause. The operator's flow over the same store is test_operator_s3.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from build_helpers import build_fails, built, ort_reference, run_stored, stored_manifests
from support.s3 import ACCESS, SECRET, S3Server, bucket_server

from infleet.devcluster.cluster import free_port
from infleet.runtime.manifest import MANIFEST_FILE
from infleet.runtime.s3store import S3EngineStore
from infleet.runtime.store import EngineStore
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration

BUCKET = "engines"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with bucket_server(tmp_path_factory, "s3", BUCKET) as server:
        yield server


@pytest.fixture
def store_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The store's variables as the operator gives them to pods (the Secret's keys with the
    INFLEET_STORE_ prefix, the endpoint from the configuration)."""
    monkeypatch.setenv("INFLEET_STORE_AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("INFLEET_STORE_AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("INFLEET_STORE_AWS_ENDPOINT_URL_S3", s3.endpoint)
    return s3


def pull(store: str, engine: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infleet", "pull", "--store", store,
                           "--engine", engine, "--dest", str(dest), *extra],
                          capture_output=True, text=True, timeout=120)


def test_a_build_uploads_its_engine_and_the_next_build_finds_it_without_building(
    store_env: S3Server, tmp_path: Path
) -> None:
    model = synthetic.mlp(tmp_path / "mlp.onnx")
    uri = f"s3://{BUCKET}/reuse"
    first = built(model, store=uri, cache_dir=tmp_path / "cache-1").summary
    key = first["engine_key"]
    assert not first["cache_hit"]
    prefix = store_env.root / BUCKET / "reuse"
    manifest = json.loads((prefix / "engines" / key / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {manifest["engine_file"]}
    for digest in manifest["files"].values():
        assert (prefix / "engines" / key / "blobs" / digest).is_file()
    assert json.loads((prefix / "infleet-store.json").read_text()) == {"layout": 1}

    # Another build pod (a fresh working copy): a cache hit from the bucket's request
    # record, without downloading the engine.
    again = built(model, store=uri, cache_dir=tmp_path / "cache-2")
    assert again.summary["cache_hit"] and again.summary["engine_key"] == key
    assert "cache hit" in again.stderr
    assert not list((tmp_path / "cache-2" / "engines").iterdir())

    # A serving pod's init container: the engine, verified, computes the model's function.
    pulled = pull(uri, key, tmp_path / "pulled" / "engines")
    assert pulled.returncode == 0, pulled.stderr
    [stored] = stored_manifests(tmp_path / "pulled")
    assert stored.key.digest() == key and stored.files == manifest["files"]
    x = {"x": np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_allclose(run_stored(tmp_path / "pulled", stored, x)[0],
                               ort_reference(model, x)[0], rtol=1e-5, atol=1e-6)
    # a second run in the same pod keeps the complete folder
    assert pull(uri, key, tmp_path / "pulled" / "engines").returncode == 0


def test_an_engine_without_its_manifest_is_absent_and_a_tampered_one_is_refused(
    store_env: S3Server, tmp_path: Path
) -> None:
    model = synthetic.mlp(tmp_path / "mlp.onnx", seed=3)
    uri = f"s3://{BUCKET}/partial"
    key = built(model, store=uri, cache_dir=tmp_path / "cache-1").summary["engine_key"]
    folder = store_env.root / BUCKET / "partial" / "engines" / key

    # An upload that died before its manifest: the blobs are there, the engine is not.
    (folder / MANIFEST_FILE).unlink()
    absent = pull(uri, key, tmp_path / "dest", "--termination-log", str(tmp_path / "term"))
    assert absent.returncode == 1 and "is not in the store" in absent.stderr
    assert "is not in the store" in (tmp_path / "term").read_text()
    rebuilt = built(model, store=uri, cache_dir=tmp_path / "cache-2").summary
    assert not rebuilt["cache_hit"] and (folder / MANIFEST_FILE).is_file()

    # A blob changed in the bucket: the download is refused and leaves no engine behind.
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    blob = folder / "blobs" / manifest["files"][manifest["engine_file"]]
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    tampered = pull(uri, key, tmp_path / "dest")
    assert tampered.returncode == 1 and "its manifest says" in tampered.stderr
    assert not list((tmp_path / "dest").iterdir())


def test_two_uploads_of_one_engine_never_mix(store_env: S3Server, tmp_path: Path) -> None:
    """Builders of one key in two namespaces race: A puts its blobs, B uploads whole, A's
    manifest lands last. Blobs are named by content, so A's manifest names A's bytes, all
    there; what a reader gets is one builder's engine, whole."""
    import os

    from infleet.runtime.manifest import EngineKey, EngineManifest, TensorSpec

    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 4])
    key = EngineKey(model_sha256="c" * 64, backend="onnxruntime", backend_version="1",
                    precision="fp32", hardware_fingerprint="hw1-race", builder_version="t")
    dirs = {}
    for name in ("a", "b"):
        local = EngineStore(tmp_path / name)
        staged = local.staging()
        (staged / "engine.onnx").write_bytes(f"engine of {name}".encode())
        dirs[name] = local.commit(staged, EngineManifest(
            key=key, engine_file="engine.onnx", model_name="m", inputs=[spec], outputs=[spec],
            max_batch_size=4, node_class=name, created_at="2026-01-01T00:00:00", build_seconds=0))
    with S3EngineStore(f"s3://{BUCKET}/race", os.environ) as store:
        a = EngineManifest.model_validate_json((dirs["a"] / MANIFEST_FILE).read_bytes())
        sha_a = a.files["engine.onnx"]
        store.objects.put_file(store.location.blob(key.digest(), sha_a),
                               dirs["a"] / "engine.onnx", sha_a)
        store.upload(dirs["b"])
        store.objects.put_bytes(store.location.manifest(key.digest()),
                                a.model_dump_json().encode())
        got = store.download(key.digest(), tmp_path / "reader")
    assert got is not None
    assert (got / "engine.onnx").read_bytes() == b"engine of a"
    assert EngineManifest.model_validate_json((got / MANIFEST_FILE).read_bytes()).node_class == "a"


@pytest.mark.parametrize("case", ["wrong-secret", "no-secret", "no-bucket", "unreachable"])
def test_a_wrong_store_fails_the_build_before_any_work_naming_the_cause(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    monkeypatch.setenv("INFLEET_STORE_AWS_ENDPOINT_URL_S3", s3.endpoint)
    monkeypatch.setenv("INFLEET_STORE_AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("INFLEET_STORE_AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("INFLEET_STORE_SECRET", "engine-store")
    uri, words = f"s3://{BUCKET}/failures", ""
    if case == "wrong-secret":
        monkeypatch.setenv("INFLEET_STORE_AWS_SECRET_ACCESS_KEY", "not-the-secret")
        words = "SignatureDoesNotMatch (HTTP 403): the store's credentials are wrong"
    elif case == "no-secret":  # what a pod sees when the Secret the config names is missing
        monkeypatch.delenv("INFLEET_STORE_AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("INFLEET_STORE_AWS_SECRET_ACCESS_KEY")
        words = "no credentials; they come from the Secret 'engine-store'"
    elif case == "no-bucket":
        uri, words = "s3://no-such-bucket/x", "NoSuchBucket (HTTP 404): create the bucket"
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setenv("INFLEET_STORE_AWS_ENDPOINT_URL_S3", endpoint)
        words = f"at {endpoint}: ConnectError"
    model = synthetic.mlp(tmp_path / "mlp.onnx")
    log = tmp_path / "termination-log"
    r = build_fails(model, store=uri, cache_dir=tmp_path / "cache", termination_log=log)
    assert words in r.stderr, r.stderr
    failure = json.loads(log.read_text())
    assert failure["reason"] == "StoreError" and failure["retryable"] is True
    assert words in failure["error"]
    assert "fetching" not in r.stderr  # failed before the model was even fetched
