"""Fetch a model (or calibration file) from file://, pvc://, http(s):// or s3://.

Local sources (file://, pvc://) are hashed where they lie; remote ones are streamed into a
temporary file next to the destination and renamed into place only after the size cap and
the checksum have been checked, so no half-written or unverified file is ever visible under
its final name. The sha256 is always computed and returned, verified when one is expected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from infleet.runtime.errors import (
    ChecksumMismatch,
    FetchError,
    SourceTooLarge,
    SourceUnreachable,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
DEFAULT_PVC_ROOT = Path("/mnt/pvc")
"""Where the build pod mounts volume claims: pvc://claim/a/b -> /mnt/pvc/claim/a/b."""


@dataclass(frozen=True)
class Retries:
    """How hard one HTTP or S3 transfer tries (model fetches and the S3 engine store)."""

    timeout_s: float = 30.0
    """Connect/read timeout of one HTTP or S3 request."""
    retries: int = 3
    """Extra attempts after a transport error or a 5xx answer (never after a 4xx)."""
    backoff_s: float = 0.5
    """First pause between attempts; doubles each time."""


@dataclass(frozen=True)
class FetchOptions(Retries):
    max_bytes: int = 8 << 30
    """Size cap for one download."""
    pvc_root: Path = field(default_factory=lambda: _env_path("INFLEET_PVC_ROOT", DEFAULT_PVC_ROOT))
    """Mount root of pvc:// claims (INFLEET_PVC_ROOT overrides the default)."""


def _env_path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name) or default)


@dataclass(frozen=True)
class Fetched:
    uri: str
    path: Path
    sha256: str
    size: int


_Chunks = Callable[[str, FetchOptions], Iterator[bytes]]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(uri: str, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected.lower():
        raise ChecksumMismatch(uri, expected.lower(), actual)


def local_path(uri: str, options: FetchOptions) -> Path | None:
    """The file a file:// or pvc:// URI names, or None for a remote URI."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.netloc + parts.path))
    if parts.scheme == "pvc":
        claim, rel = parts.netloc, unquote(parts.path).lstrip("/")
        root = (options.pvc_root / claim).resolve()
        path = (root / rel).resolve()
        if not claim or not rel or not path.is_relative_to(root):
            raise FetchError(f"{uri}: expected pvc://CLAIM/PATH inside the claim")
        return path
    return None


def fetch(
    uri: str,
    dest_dir: Path,
    expected_sha256: str | None = None,
    options: FetchOptions | None = None,
) -> Fetched:
    """Make ``uri`` available as a local, verified file and return where it is."""
    options = options or FetchOptions()
    scheme = urlsplit(uri).scheme
    path = local_path(uri, options)
    if path is not None:
        if not path.is_file():
            raise SourceUnreachable(f"{uri}: no such file ({path})")
        size = path.stat().st_size
        if size > options.max_bytes:
            raise SourceTooLarge(f"{uri}: {size} bytes is over the {options.max_bytes}-byte cap")
        digest = sha256_file(path)
        _verify(uri, digest, expected_sha256)
        return Fetched(uri, path, digest, size)
    chunks: _Chunks
    if scheme in ("http", "https"):
        chunks = _http_chunks
    elif scheme == "s3":
        chunks = _s3_chunks
    else:
        raise FetchError(f"{uri}: unsupported scheme {scheme!r} (file, pvc, http, https, s3)")
    name = Path(unquote(urlsplit(uri).path)).name or "model.onnx"
    return _download(uri, name, chunks, dest_dir, expected_sha256, options)


def _download(
    uri: str,
    name: str,
    chunks: _Chunks,
    dest_dir: Path,
    expected: str | None,
    options: FetchOptions,
) -> Fetched:
    dest_dir.mkdir(parents=True, exist_ok=True)
    delay = options.backoff_s
    for attempt in range(options.retries + 1):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                h, size = _copy(uri, chunks(uri, options), out, options.max_bytes)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            _verify(uri, digest, expected)
            final = dest_dir / f"{digest[:16]}-{name}"
            tmp.replace(final)  # atomic on one filesystem: readers see all or nothing
            return Fetched(uri, final, digest, size)
        except _Retryable as e:
            tmp.unlink(missing_ok=True)
            if attempt == options.retries:
                raise SourceUnreachable(f"{uri}: {e} (after {attempt + 1} attempts)") from e
            log.warning("fetch %s failed (%s); retrying in %.1fs", uri, e, delay)
            time.sleep(delay)
            delay *= 2
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


class _Retryable(Exception):
    """A failure worth another attempt: transport error, timeout, 5xx."""


def _copy(uri: str, chunks: Iterator[bytes], out: IO[bytes], cap: int) -> tuple[Any, int]:
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise SourceTooLarge(f"{uri}: larger than the {cap}-byte cap")
        h.update(chunk)
        out.write(chunk)
    return h, size


def _http_chunks(uri: str, options: FetchOptions) -> Iterator[bytes]:
    return _stream(uri, uri, {}, options, follow_redirects=True)


def _s3_chunks(uri: str, options: FetchOptions) -> Iterator[bytes]:
    from infleet.runtime import s3

    config = s3.S3Config.from_env(os.environ)
    url = s3.object_url(uri, config)
    # signed per attempt: a signature is only valid for a few minutes
    return _stream(uri, url, s3.signed_headers("GET", url, config), options, s3_errors=True)


def _stream(
    uri: str,
    url: str,
    headers: dict[str, str],
    options: FetchOptions,
    *,
    follow_redirects: bool = False,
    s3_errors: bool = False,
) -> Iterator[bytes]:
    import httpx

    try:
        with (
            httpx.Client(timeout=options.timeout_s, follow_redirects=follow_redirects) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            status = response.status_code
            if not 200 <= status < 300:  # S3 answers a wrong region with 301, unfollowed
                detail = f"HTTP {status}"
                if s3_errors:
                    from infleet.runtime.s3 import error_code

                    detail = f"S3 error {error_code(response.read())} (HTTP {status})"
                if status >= 500:
                    raise _Retryable(detail)
                raise SourceUnreachable(f"{uri}: {detail}")
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > options.max_bytes:
                raise SourceTooLarge(
                    f"{uri}: Content-Length {length} is over the {options.max_bytes}-byte cap"
                )
            yield from response.iter_bytes(_CHUNK)
    except httpx.TransportError as e:  # connect refused, DNS, timeouts, broken streams
        raise _Retryable(f"{type(e).__name__}: {e}") from e
