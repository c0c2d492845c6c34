"""S3 requests signed with AWS Signature Version 4, over plain HTTP (httpx).

Why not boto3: botocore pins ``python-dateutil<3`` while the kubernetes client infleet
depends on needs ``>=3``, so the two cannot share one environment; and infleet needs three
calls: GET an object, streamed (model fetches, engine downloads), PUT one (engine uploads) and
HEAD one. This module is their pure part: where the object lives and the headers that sign the
request. ``fetch`` and ``objectstore`` send them.

Configuration comes from the standard AWS environment variables, so a Secret mounted with
``envFrom`` works unchanged:

- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``): the request is
  signed; without them it is sent unsigned (public buckets).
- ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (default ``us-east-1``).
- ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: an S3-compatible service (MinIO, Ceph,
  versitygw, ...), addressed path-style (``ENDPOINT/BUCKET/KEY``). Without one, AWS's
  virtual-hosted style (``https://BUCKET.s3.REGION.amazonaws.com/KEY``).

Not supported (the error says so): web-identity (IRSA) and instance-profile credentials,
which need a call to AWS STS or the instance metadata service first.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

from infleet.runtime.errors import FetchError

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None


@dataclass(frozen=True)
class S3Config:
    region: str = "us-east-1"
    endpoint: str | None = None
    """An S3-compatible service's base URL (path-style addressing); None: AWS itself."""
    credentials: Credentials | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Config:
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        credentials = None
        if key and secret:
            credentials = Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)
        elif key or secret:
            raise FetchError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
        elif env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
            raise FetchError(
                "web-identity (IRSA) credentials are not supported for s3:// models; give "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for example from a Secret)"
            )
        return cls(region, endpoint.rstrip("/") if endpoint else None, credentials)


def object_url(uri: str, config: S3Config) -> str:
    """The HTTP(S) URL of ``s3://BUCKET/KEY``."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc, unquote(parts.path).lstrip("/")
    if not bucket or not key:
        raise FetchError(f"{uri}: expected s3://BUCKET/KEY")
    path = quote(key, safe="/~")
    if config.endpoint is not None:
        return f"{config.endpoint}/{quote(bucket, safe='')}/{path}"
    if "." in bucket:  # virtual-hosted TLS certificates do not cover dotted bucket names
        return f"https://s3.{config.region}.amazonaws.com/{bucket}/{path}"
    return f"https://{bucket}.s3.{config.region}.amazonaws.com/{path}"


def signed_headers(
    method: str,
    url: str,
    config: S3Config,
    now: datetime | None = None,
    extra: Mapping[str, str] | None = None,
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """The headers of an S3 request: ``extra`` plus, with credentials, the SigV4
    ``Authorization`` and the ``x-amz-*`` headers it signs. ``payload_sha256`` is the body's
    hash (a PUT signs its payload, so the server refuses bytes changed on the way)."""
    headers = {k.lower(): v for k, v in (extra or {}).items()}
    if config.credentials is None:
        return headers
    creds = config.credentials
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    parts = urlsplit(url)
    headers["host"] = parts.netloc
    headers["x-amz-date"] = stamp
    headers["x-amz-content-sha256"] = payload_sha256
    if creds.session_token:
        headers["x-amz-security-token"] = creds.session_token
    names = sorted(headers)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",  # already URI-encoded once by object_url; S3 wants no second
            _canonical_query(parts.query),
            "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{stamp[:8]}/{config.region}/s3/aws4_request"
    to_sign = "\n".join(
        [_ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + creds.secret_key).encode()
    for part in (stamp[:8], config.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"{_ALGORITHM} Credential={creds.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


def _canonical_query(query: str) -> str:
    pairs = [p.partition("=") for p in query.split("&") if p]
    encoded = sorted(
        (quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")) for k, _, v in pairs
    )
    return "&".join(f"{k}={v}" for k, v in encoded)


def error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 XML error body, or "?"."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    if start < 0 or end < 0:
        return "?"
    return body[start + 6 : end].decode("utf-8", "replace")
