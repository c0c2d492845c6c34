"""Runs ``infleet serve`` as a real subprocess on a free port, for the server's tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from infleet.devcluster.cluster import free_port

DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class ServerProcess:
    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()  # always a fixed port: --workers N needs one
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infleet",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout_s}s:\n{self.log()}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def promtool_check(exposition: bytes) -> None:
    """``promtool check metrics`` (Prometheus' own linter) passes on a /metrics body."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install the Debian package 'prometheus'"
    lint = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()


def json_input(name: str, array: np.ndarray, datatype: str) -> dict:
    data = (
        [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
        if datatype == "BYTES"
        else array.ravel().tolist()
    )
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def binary_body(
    inputs: list[tuple[str, np.ndarray, str]], binary_output: bool = True
) -> tuple[bytes, dict[str, str]]:
    """A request body with every input as binary data, and its headers."""
    from infleet.runtime.server.codec import encode_bytes_elements

    specs, chunks = [], []
    for name, array, datatype in inputs:
        raw = (
            encode_bytes_elements(list(array.ravel()))
            if datatype == "BYTES"
            else np.ascontiguousarray(array).tobytes()
        )
        specs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    header = orjson.dumps({"inputs": specs, "parameters": {"binary_data_output": binary_output}})
    return header + b"".join(chunks), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def decode_response(response: httpx.Response) -> dict[str, np.ndarray]:
    """Output arrays of a v2 response, JSON or binary (the way a Triton client reads it)."""
    from infleet.runtime.server.datatypes import numpy_dtype

    length = response.headers.get("inference-header-content-length")
    raw = response.content
    header = orjson.loads(raw[: int(length)] if length else raw)
    offset = int(length) if length else 0
    out = {}
    for o in header["outputs"]:
        shape, datatype = o["shape"], o["datatype"]
        if "data" in o:
            if datatype == "BYTES":
                array = np.array([v.encode() for v in o["data"]], dtype=object)
            else:
                array = np.array(o["data"], dtype=numpy_dtype(datatype))
            out[o["name"]] = array.reshape(shape)
            continue
        size = o["parameters"]["binary_data_size"]
        chunk = raw[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            items, pos = [], 0
            while pos < len(chunk):
                n = int.from_bytes(chunk[pos : pos + 4], "little")
                items.append(chunk[pos + 4 : pos + 4 + n])
                pos += 4 + n
            out[o["name"]] = np.array(items, dtype=object).reshape(shape)
        else:
            out[o["name"]] = np.frombuffer(chunk, dtype=numpy_dtype(datatype)).reshape(shape)
    return out
