"""Model fetching: local and pvc paths, HTTP through a local server, checksums, caps, errors."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infleet.runtime.errors import ChecksumMismatch, FetchError, SourceTooLarge, SourceUnreachable
from infleet.runtime.fetch import FetchOptions, fetch

PAYLOAD = b"onnx-bytes" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FAST = FetchOptions(timeout_s=2.0, retries=1, backoff_s=0.0)


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/model.onnx":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/flaky.onnx" and self.hits[self.path] == 1:
            self.send_response(503)
            self.end_headers()
        elif self.path == "/bucket/moved.onnx":  # injected fault: S3's wrong-region answer
            body = b"<Error><Code>PermanentRedirect</Code></Error>"
            self.send_response(301)
            self.send_header("Location", "https://elsewhere.example/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/flaky.onnx":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


def test_file_uri_is_hashed_in_place(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(PAYLOAD)
    got = fetch(f"file://{src}", tmp_path / "dl", DIGEST)
    assert got.path == src and got.sha256 == DIGEST and got.size == len(PAYLOAD)


def test_sha256_is_recorded_without_an_expected_one(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(PAYLOAD)
    assert fetch(f"file://{src}", tmp_path).sha256 == DIGEST


def test_checksum_mismatch_names_both_digests(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as e:
        fetch(f"file://{src}", tmp_path, wrong)
    assert wrong in str(e.value) and DIGEST in str(e.value)


def test_pvc_uri_resolves_under_the_mount_root(tmp_path: Path) -> None:
    (tmp_path / "models" / "resnet").mkdir(parents=True)
    (tmp_path / "models" / "resnet" / "m.onnx").write_bytes(PAYLOAD)
    opts = FetchOptions(pvc_root=tmp_path)
    got = fetch("pvc://models/resnet/m.onnx", tmp_path / "dl", DIGEST, opts)
    assert got.path == tmp_path / "models" / "resnet" / "m.onnx"


def test_pvc_uri_cannot_escape_its_claim(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"x")
    with pytest.raises(FetchError, match="inside the claim"):
        fetch("pvc://models/../secret", tmp_path / "dl", options=FetchOptions(pvc_root=tmp_path))


def test_missing_file_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(SourceUnreachable, match="no such file"):
        fetch(f"file://{tmp_path}/nope.onnx", tmp_path)


def test_http_download_is_verified_and_atomic(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    got = fetch(f"{server}/model.onnx", dest, DIGEST, FAST)
    assert got.path.read_bytes() == PAYLOAD and got.path.parent == dest
    assert [p.name for p in dest.iterdir()] == [got.path.name]  # no temporary file left behind


def test_http_checksum_mismatch_leaves_no_file(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumMismatch):
        fetch(f"{server}/model.onnx", dest, "f" * 64, FAST)
    assert list(dest.iterdir()) == []


def test_http_5xx_is_retried(server: str, tmp_path: Path) -> None:
    got = fetch(f"{server}/flaky.onnx", tmp_path, DIGEST, FAST)
    assert got.sha256 == DIGEST and _Handler.hits["/flaky.onnx"] == 2


def test_http_404_fails_without_retry(server: str, tmp_path: Path) -> None:
    with pytest.raises(SourceUnreachable, match="HTTP 404"):
        fetch(f"{server}/missing.onnx", tmp_path, options=FAST)
    assert _Handler.hits["/missing.onnx"] == 1


def test_size_cap(server: str, tmp_path: Path) -> None:
    opts = FetchOptions(timeout_s=2.0, retries=0, max_bytes=100)
    with pytest.raises(SourceTooLarge, match="100-byte cap"):
        fetch(f"{server}/model.onnx", tmp_path, options=opts)


def test_refused_connection_is_unreachable_after_retries(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}/model.onnx"
    with pytest.raises(SourceUnreachable, match="after 2 attempts"):
        fetch(uri, tmp_path, options=FAST)


def test_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="unsupported scheme"):
        fetch("ftp://host/m.onnx", tmp_path)


def test_s3_uri_needs_bucket_and_key(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="s3://BUCKET/KEY"):
        fetch("s3://bucket-only", tmp_path)


def test_s3_redirect_is_an_error_naming_the_s3_code(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", server)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SourceUnreachable, match=r"PermanentRedirect \(HTTP 301\)"):
        fetch("s3://bucket/moved.onnx", tmp_path / "dl", options=FAST)
    assert not list((tmp_path / "dl").iterdir())
