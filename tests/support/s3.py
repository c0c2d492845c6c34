"""A real S3 server for tests: versitygw (an S3 gateway over a folder, built from the Go module
proxy by `infleet dev tools`), speaking the S3 protocol over HTTP with SigV4 checked by the
server. Nothing is mocked.

The folder behind it is the bucket space: each sub-folder is a bucket, the files below it are
its objects, so a test can create a bucket with ``mkdir`` and look at what was uploaded.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infleet.devcluster import tools
from infleet.devcluster.cluster import free_port
from infleet.toolbox import wait_until

ACCESS, SECRET = "infleet-test", "infleet-test-secret"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    root: Path
    """Sub-folders are buckets, files below are objects."""
    proc: subprocess.Popen[bytes]

    def bucket(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@contextlib.contextmanager
def s3_server(root: Path, log: Path) -> Iterator[S3Server]:
    """versitygw serving ``root`` on a free 127.0.0.1 port, stopped on exit."""
    binary = tools.s3_server()  # built by hack/bootstrap.sh; a missing one fails, never skips
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--access", ACCESS, "--secret", SECRET, "--port", f"127.0.0.1:{port}",
             "posix", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def listening() -> bool:
        assert proc.poll() is None, f"versitygw exited {proc.returncode}"
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    try:
        wait_until(listening, 30, "versitygw to listen", log.read_text, interval=0.1)
        yield S3Server(f"http://127.0.0.1:{port}", root, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def bucket_server(tmp_path_factory: Any, name: str, bucket: str) -> Iterator[S3Server]:
    """A versitygw of its own under a fresh temporary folder, with ``bucket`` made."""
    base = tmp_path_factory.mktemp(name)
    with s3_server(base / "root", base / "versitygw.log") as server:
        server.bucket(bucket)
        yield server
