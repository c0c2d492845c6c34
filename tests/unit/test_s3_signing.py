"""The pure part of s3:// fetches: object URLs, configuration from the AWS environment and
SigV4 signatures (checked against AWS's own published example; the real server check is in
tests/integration/test_fetch_s3.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infleet.runtime.errors import FetchError
from infleet.runtime.s3 import (
    EMPTY_SHA256,
    Credentials,
    S3Config,
    error_code,
    object_url,
    signed_headers,
)

# The "GET Object" example of AWS's "Signature Version 4 (AWS4-HMAC-SHA256)" S3 documentation.
AWS_EXAMPLE = S3Config(
    "us-east-1",
    None,
    Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
)


def test_signature_matches_the_aws_documentation_example() -> None:
    headers = signed_headers(
        "GET",
        "https://examplebucket.s3.amazonaws.com/test.txt",
        AWS_EXAMPLE,
        datetime(2013, 5, 24, tzinfo=UTC),
        {"Range": "bytes=0-9"},
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-content-sha256"] == EMPTY_SHA256
    assert headers["x-amz-date"] == "20130524T000000Z"


def test_session_token_is_sent_and_signed() -> None:
    config = S3Config("eu-west-1", None, Credentials("AK", "SK", "TOKEN"))
    headers = signed_headers("GET", object_url("s3://b/k.onnx", config), config)
    assert headers["x-amz-security-token"] == "TOKEN"
    assert "x-amz-security-token" in headers["authorization"].split("SignedHeaders=")[1]
    assert "/eu-west-1/s3/aws4_request" in headers["authorization"]


def test_without_credentials_the_request_is_unsigned() -> None:
    headers = signed_headers("GET", "https://b.s3.us-east-1.amazonaws.com/k", S3Config())
    assert headers == {}


@pytest.mark.parametrize(
    ("uri", "endpoint", "url"),
    [
        ("s3://models/a/b.onnx", None, "https://models.s3.eu-west-1.amazonaws.com/a/b.onnx"),
        ("s3://my.models/b.onnx", None, "https://s3.eu-west-1.amazonaws.com/my.models/b.onnx"),
        ("s3://m/a b+c~.onnx", "http://minio:9000", "http://minio:9000/m/a%20b%2Bc~.onnx"),
        ("s3://m/x%20y.onnx", "http://minio:9000", "http://minio:9000/m/x%20y.onnx"),
    ],
)
def test_object_urls(uri: str, endpoint: str | None, url: str) -> None:
    assert object_url(uri, S3Config("eu-west-1", endpoint)) == url


@pytest.mark.parametrize("uri", ["s3://bucket-only", "s3://bucket/", "s3:///key.onnx"])
def test_a_uri_needs_bucket_and_key(uri: str) -> None:
    with pytest.raises(FetchError, match="s3://BUCKET/KEY"):
        object_url(uri, S3Config())


def test_configuration_from_the_aws_environment() -> None:
    config = S3Config.from_env(
        {
            "AWS_DEFAULT_REGION": "ap-south-1",
            "AWS_ENDPOINT_URL": "http://generic:1/",
            "AWS_ENDPOINT_URL_S3": "http://s3-only:2/",
            "AWS_ACCESS_KEY_ID": "AK",
            "AWS_SECRET_ACCESS_KEY": "SK",
        }
    )
    assert config == S3Config("ap-south-1", "http://s3-only:2", Credentials("AK", "SK"))
    assert S3Config.from_env({"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}).region == "a"
    assert S3Config.from_env({}) == S3Config()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "AK"}, "both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ({"AWS_SECRET_ACCESS_KEY": "SK"}, "both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ({"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"}, "IRSA"),
    ],
)
def test_unusable_credentials_are_refused_with_a_reason(env: dict[str, str], message: str) -> None:
    with pytest.raises(FetchError, match=message):
        S3Config.from_env(env)


def test_error_code_of_an_s3_error_body() -> None:
    body = b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code><Message>x</Message></Error>'
    assert error_code(body) == "NoSuchKey"
    assert error_code(b"not xml") == "?"
