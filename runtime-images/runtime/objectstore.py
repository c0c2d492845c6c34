"""Objects of one bucket of an S3-compatible service: GET, HEAD and PUT, signed with SigV4.

The adapter under the S3 engine store (:mod:`infleet.runtime.s3store`): the only module that
sends its requests. Transport errors, timeouts and 5xx answers are retried with a doubling
pause; a 4xx answer is final. Every failure becomes a :class:`StoreError` naming the object,
the endpoint and S3's error code (``SignatureDoesNotMatch``, ``AccessDenied``,
``NoSuchBucket``...), so the one line a build or a serving pod reports says what to fix.

Objects are written with one PUT each, the payload's sha256 signed (the server refuses bytes
that changed on the way); S3 caps a single PUT at 5 GiB, and multipart uploads are not
implemented, so a larger engine file is refused with that reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx

from infleet.runtime import s3
from infleet.runtime.errors import StoreError
from infleet.runtime.fetch import Retries

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
MAX_PUT_BYTES = 5 << 30
"""S3's limit on one PUT."""

T = TypeVar("T")



class _Again(Exception):
    """A failure worth another attempt."""


class ObjectStore:
    """One bucket, addressed as the configuration says (path-style on an endpoint)."""

    def __init__(self, bucket: str, config: s3.S3Config, retries: Retries | None = None) -> None:
        self.bucket = bucket
        self.config = config
        self.retries = retries or Retries()
        self._client = httpx.Client(timeout=self.retries.timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return self.config.endpoint or f"AWS S3 ({self.config.region})"

    def url(self, key: str) -> str:
        return s3.object_url(f"s3://{self.bucket}/{key}", self.config)

    # --- requests ----------------------------------------------------------------------------

    def get(self, key: str, max_bytes: int = 16 << 20) -> bytes | None:
        """A small object's bytes; None when there is no such object."""

        def once() -> bytes | None:
            url = self.url(key)
            with self._client.stream("GET", url, headers=s3.signed_headers("GET", url,
                                                                        self.config)) as r:
                if r.status_code == 404 and s3.error_code(r.read()) != "NoSuchBucket":
                    return None  # NoSuchKey; a missing bucket is an error (_check says so)
                self._check(r, key, "GET")
                body = bytearray()
                for chunk in r.iter_bytes(_CHUNK):
                    body += chunk
                    if len(body) > max_bytes:
                        raise StoreError(f"{self._name(key)}: larger than {max_bytes} bytes")
                return bytes(body)

        return self._attempts(once, key, "GET")

    def exists(self, key: str) -> bool:
        def once() -> bool:
            url = self.url(key)
            r = self._client.head(url, headers=s3.signed_headers("HEAD", url, self.config))
            if r.status_code == 404:
                return False
            self._check(r, key, "HEAD")
            return True

        return self._attempts(once, key, "HEAD")

    def download(self, key: str, dest: Path, max_bytes: int) -> tuple[str, int]:
        """Stream an object into ``dest`` (written whole or not at all); its sha256 and size.
        A missing object is a StoreError."""

        def once() -> tuple[str, int]:
            url = self.url(key)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part",
                                            dir=dest.parent)
            tmp = Path(tmp_name)
            try:
                h, size = hashlib.sha256(), 0
                with (os.fdopen(fd, "wb") as out,
                      self._client.stream("GET", url, headers=s3.signed_headers(
                          "GET", url, self.config)) as r):
                    self._check(r, key, "GET")
                    for chunk in r.iter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise StoreError(f"{self._name(key)}: larger than {max_bytes} bytes")
                        h.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                tmp.replace(dest)
                return h.hexdigest(), size
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        return self._attempts(once, key, "GET")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        digest = hashlib.sha256(data).hexdigest()
        self._put(key, lambda: iter([data]), len(data), digest, content_type)

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        size = path.stat().st_size
        if size > MAX_PUT_BYTES:
            raise StoreError(
                f"{path.name} is {size} bytes, over S3's {MAX_PUT_BYTES}-byte limit of one PUT "
                "(multipart uploads are not implemented)")

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    yield chunk

        self._put(key, chunks, size, sha256, "application/octet-stream")

    def _put(self, key: str, body: Callable[[], Iterator[bytes]], size: int, sha256: str,
             content_type: str) -> None:
        def once() -> None:
            url = self.url(key)
            # An explicit length: S3 refuses the chunked transfer encoding httpx would use
            # for a streamed body.
            extra = {"content-length": str(size), "content-type": content_type}
            headers = s3.signed_headers("PUT", url, self.config, extra=extra,
                                        payload_sha256=sha256)
            r = self._client.put(url, content=body(), headers=headers)
            self._check(r, key, "PUT")

        self._attempts(once, key, "PUT")

    # --- errors and retries ------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return f"s3://{self.bucket}/{key} at {self.where}"

    def _check(self, r: httpx.Response, key: str, verb: str) -> None:
        if 200 <= r.status_code < 300:
            return
        code = s3.error_code(r.read())
        detail = f"S3 error {code} (HTTP {r.status_code})" if code != "?" else (
            f"HTTP {r.status_code}")
        if r.status_code >= 500:
            raise _Again(detail)
        raise StoreError(f"{verb} {self._name(key)}: {detail}{_hint(code)}")

    def _attempts(self, once: Callable[[], T], key: str, verb: str) -> T:
        delay = self.retries.backoff_s
        for attempt in range(self.retries.retries + 1):
            try:
                return once()
            except httpx.TransportError as e:  # refused, DNS, timeouts, broken streams
                failure = f"{type(e).__name__}: {e}"
            except _Again as e:
                failure = str(e)
            if attempt == self.retries.retries:
                raise StoreError(f"{verb} {self._name(key)}: {failure} "
                                 f"(after {attempt + 1} attempts)")
            log.warning("%s %s failed (%s); retrying in %.1fs", verb, self._name(key), failure,
                        delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover


def _hint(code: str) -> str:
    """What a person should look at, for the S3 errors a misconfigured store gives."""
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return ": the store's credentials are wrong (its Secret's AWS_ACCESS_KEY_ID / " \
               "AWS_SECRET_ACCESS_KEY)"
    if code == "AccessDenied":
        return ": the store's credentials may not do this (they need s3:GetObject, " \
               "s3:PutObject and s3:ListBucket on the bucket's prefix)"
    if code == "NoSuchBucket":
        return ": create the bucket, or fix engineStore"
    return ""
