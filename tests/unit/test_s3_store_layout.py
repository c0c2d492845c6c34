"""The pure part of the S3 engine store: where each object lives, which manifests a reader
trusts, where credentials come from, and the signature of a PUT (checked against AWS's own
published example; the protocol against a real server is tests/integration/test_s3_store.py).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infleet.api import Backend, Precision
from infleet.runtime.errors import StoreError
from infleet.runtime.manifest import EngineKey, EngineManifest, TensorSpec
from infleet.runtime.s3 import Credentials, S3Config, signed_headers
from infleet.runtime.s3store import Location, engine_files, store_config
from infleet.runtime.store import EngineStore

ENGINE = "0123456789abcdef0123456789abcdef"


def test_locations_and_object_keys() -> None:
    loc = Location.parse("s3://infleet-engines/team/a/")
    assert (loc.bucket, loc.prefix, loc.uri) == ("infleet-engines", "team/a",
                                                  "s3://infleet-engines/team/a")
    assert loc.manifest(ENGINE) == f"team/a/engines/{ENGINE}/manifest.json"
    assert loc.blob(ENGINE, "f" * 64) == f"team/a/engines/{ENGINE}/blobs/{'f' * 64}"
    assert loc.request(ENGINE) == f"team/a/requests/{ENGINE}.json"
    root = Location.parse("s3://engines")
    assert root.prefix == "" and root.manifest(ENGINE) == f"engines/{ENGINE}/manifest.json"


@pytest.mark.parametrize("uri", ["s3://Engines/x", "s3://e/../x", "s3://e/a//b", "s3://e",
                                 "pvc://engines", "s3:///x"])
def test_bad_store_uris_are_refused(uri: str) -> None:
    with pytest.raises(StoreError, match="expected s3://BUCKET"):
        Location.parse(uri)


def test_a_key_that_is_not_a_digest_never_becomes_an_object_key() -> None:
    with pytest.raises(StoreError, match="not an engine or request digest"):
        Location.parse("s3://engines/p").manifest("../requests/x")


def _manifest(files: dict[str, str], engine_file: str = "engine.onnx") -> EngineManifest:
    spec = TensorSpec(name="x", datatype="FP32", shape=[-1, 4])
    key = EngineKey(model_sha256="a" * 64, backend=Backend.ONNXRUNTIME, backend_version="1",
                    precision=Precision.FP32, hardware_fingerprint="hw1-x",
                    builder_version="test")
    return EngineManifest(key=key, engine_file=engine_file, model_name="m", inputs=[spec],
                          outputs=[spec], max_batch_size=4, node_class="x86",
                          created_at="2026-01-01T00:00:00+00:00", build_seconds=0.1,
                          files=files)


@pytest.mark.parametrize(("files", "words"), [
    ({}, "lists no files"),
    ({"../../etc/passwd": "a" * 64, "engine.onnx": "b" * 64}, "bad file name"),
    ({"/abs": "a" * 64, "engine.onnx": "b" * 64}, "bad file name"),
    ({"manifest.json": "a" * 64, "engine.onnx": "b" * 64}, "bad file name"),
    ({"engine.onnx": "not-a-digest"}, "bad sha256"),
    ({"weights.bin": "a" * 64}, "does not list the engine file"),
])
def test_a_manifest_from_the_bucket_must_name_only_files_inside_its_engine(
        files: dict[str, str], words: str) -> None:
    with pytest.raises(StoreError, match=words):
        engine_files(_manifest(files))


def test_a_good_manifests_files() -> None:
    files = {"engine.onnx": "a" * 64, "data/weights.bin": "b" * 64}
    assert engine_files(_manifest(files)) == files


def test_the_store_takes_its_own_variables_first_and_needs_credentials() -> None:
    own = {"INFLEET_STORE_AWS_ACCESS_KEY_ID": "SK-ID", "INFLEET_STORE_AWS_SECRET_ACCESS_KEY": "S",
           "INFLEET_STORE_AWS_ENDPOINT_URL_S3": "http://minio:9000",
           "AWS_ACCESS_KEY_ID": "MODEL-ID", "AWS_SECRET_ACCESS_KEY": "M"}
    config = store_config(own)
    assert config.credentials == Credentials("SK-ID", "S")
    assert config.endpoint == "http://minio:9000"
    # by hand: the standard variables
    plain = store_config({"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"})
    assert plain.credentials == Credentials("A", "B") and plain.endpoint is None
    # the operator's pod without its Secret: the error names the Secret to check
    with pytest.raises(StoreError, match=r"the Secret 'engine-store' .* is it there"):
        store_config({"INFLEET_STORE_SECRET": "engine-store",
                      "INFLEET_STORE_AWS_ENDPOINT_URL_S3": "http://minio:9000"})
    with pytest.raises(StoreError, match="no credentials"):
        store_config({})
    with pytest.raises(StoreError, match="both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        store_config({"INFLEET_STORE_AWS_ACCESS_KEY_ID": "x"})


def test_a_put_signs_its_payload_as_the_aws_documentation_example_does() -> None:
    # The "PUT Object" example of AWS's "Signature Version 4 (AWS4-HMAC-SHA256)" S3 page.
    payload = b"Welcome to Amazon S3."
    config = S3Config("us-east-1", None, Credentials(
        "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"))
    headers = signed_headers(
        "PUT", "https://examplebucket.s3.amazonaws.com/test%24file.text", config,
        datetime(2013, 5, 24, tzinfo=UTC),
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        payload_sha256=hashlib.sha256(payload).hexdigest(),
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
    )


def test_a_local_store_without_a_remote_publishes_nothing_and_says_what_it_has(
        tmp_path: Path) -> None:
    store = EngineStore(tmp_path)
    staged = store.staging()
    (staged / "engine.onnx").write_bytes(b"x")
    manifest = _manifest({})
    assert not store.has(manifest.key)
    store.commit(staged, manifest)
    assert store.has(manifest.key)
    store.publish(manifest.key)  # no remote: a no-op, not an error
    assert store.get(manifest.key).files == {"engine.onnx": hashlib.sha256(b"x").hexdigest()}
