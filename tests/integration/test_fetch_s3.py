"""s3:// model fetch against a real S3 server: versitygw (an S3 gateway over a folder, built
from the Go module proxy by `infleet dev tools`), speaking the S3 protocol over HTTP with
SigV4 checked by the server. Nothing is mocked."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from build_helpers import built, stored_manifests
from support.s3 import ACCESS, SECRET, s3_server

from infleet.runtime.errors import ChecksumMismatch, SourceTooLarge, SourceUnreachable
from infleet.runtime.fetch import FetchOptions, fetch
from infleet.runtime.zoo import synthetic

pytestmark = pytest.mark.integration

FAST = FetchOptions(timeout_s=5.0, retries=1, backoff_s=0.0)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(endpoint, the folder behind it: sub-folders are buckets, files below are objects)."""
    base = tmp_path_factory.mktemp("s3")
    with s3_server(base / "root", base / "versitygw.log") as server:
        yield server.endpoint, server.root


@pytest.fixture
def aws_env(s3: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    endpoint, root = s3
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return root


def _put(root: Path, bucket: str, key: str, data: bytes) -> str:
    path = root / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_an_object_is_fetched_and_verified(aws_env: Path, tmp_path: Path) -> None:
    data = synthetic.mlp(tmp_path / "mlp.onnx").read_bytes()
    digest = _put(aws_env, "models", "team a/mlp+v1~.onnx", data)  # keys needing escapes
    got = fetch("s3://models/team a/mlp+v1~.onnx", tmp_path / "dl", digest, FAST)
    assert got.sha256 == digest and got.size == len(data)
    assert got.path.read_bytes() == data
    assert got.path.parent == tmp_path / "dl"


def test_server_refusals_name_the_s3_error_and_leave_no_file(
    aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put(aws_env, "models", "m.onnx", b"x" * 100)
    dest = tmp_path / "dl"
    with pytest.raises(SourceUnreachable, match="NoSuchKey"):
        fetch("s3://models/absent.onnx", dest, options=FAST)
    with pytest.raises(SourceUnreachable, match="NoSuchBucket"):
        fetch("s3://nobucket/m.onnx", dest, options=FAST)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SourceUnreachable, match="SignatureDoesNotMatch"):
        fetch("s3://models/m.onnx", dest, options=FAST)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SourceUnreachable, match="AccessDenied"):  # unsigned, private bucket
        fetch("s3://models/m.onnx", dest, options=FAST)
    assert not list(dest.iterdir())


def test_checksum_and_size_cap(aws_env: Path, tmp_path: Path) -> None:
    digest = _put(aws_env, "models", "big.onnx", b"y" * 5000)
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumMismatch):
        fetch("s3://models/big.onnx", dest, "0" * 64, FAST)
    small = FetchOptions(timeout_s=5.0, retries=0, max_bytes=1000)
    with pytest.raises(SourceTooLarge, match="1000-byte cap"):
        fetch("s3://models/big.onnx", dest, digest, small)
    assert not list(dest.iterdir())


def test_infleet_build_takes_an_s3_model(aws_env: Path, tmp_path: Path) -> None:
    data = synthetic.mlp(tmp_path / "mlp.onnx").read_bytes()
    digest = _put(aws_env, "models", "mlp.onnx", data)
    store = tmp_path / "store"
    built("s3://models/mlp.onnx", store=store, sha256=digest)
    [manifest] = stored_manifests(store)
    assert manifest.key.model_sha256 == digest
