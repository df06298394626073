from __future__ import annotations

from pathlib import Path

import pytest

from aptops.core.errors import LocationError
from aptops.core.locations import parse_location, redact


@pytest.mark.parametrize(
    ("uri", "scheme", "bucket", "key", "revision"),
    [
        ("runs/model", "file", "", "runs/model", None),
        ("/abs/path", "file", "", "/abs/path", None),
        ("file:///tmp/x%20y", "file", "", "/tmp/x y", None),
        ("s3://my-bucket/models/v1/", "s3", "my-bucket", "models/v1", None),
        ("s3://my.bucket", "s3", "my.bucket", "", None),
        ("oss://my-bucket/模型/权重", "oss", "my-bucket", "模型/权重", None),
        ("hf://org/repo", "hf", "org/repo", "", None),
        ("hf://org/repo@v1.0/sub/dir", "hf", "org/repo", "sub/dir", "v1.0"),
        ("modelscope://org/repo", "modelscope", "org/repo", "", None),
    ],
)
def test_valid_locations(uri, scheme, bucket, key, revision):
    loc = parse_location(uri)
    assert (loc.scheme, loc.bucket, loc.key, loc.revision) == (scheme, bucket, key, revision)


def test_hf_dataset_repo_type_and_roundtrip():
    loc = parse_location("hf://datasets/org/corpus@main/train")
    assert loc.repo_type == "dataset"
    assert parse_location(loc.uri) == loc


def test_join_and_path():
    assert parse_location("s3://bkt/a").join("b", "c.txt").uri == "s3://bkt/a/b/c.txt"
    assert parse_location("runs").join("x").path == Path("runs/x")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "location is empty"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("s3:/bucket/x", "one slash"),
        ("s3://", "has no bucket"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://ab/x", "not a valid S3 bucket name"),
        ("s3://192.168.1.1/x", "not a valid S3 bucket name"),
        ("oss://has.dot/x", "not a valid OSS bucket name"),
        ("s3://bucket/a/../b", "'..' are not allowed"),
        ("hf://justorg", "must name a repo"),
        ("hf://org/bad--name", "not a valid repo name"),
        ("hf://org/repo@", "empty revision"),
        ("modelscope://org", "must name a repo"),
        ("file://host/path", "name no host"),
        ("s3://bucket/x?versionId=1", "query or fragment"),
    ],
)
def test_malformed_locations_name_the_problem(uri, message):
    with pytest.raises(LocationError, match=message):
        parse_location(uri)


def test_credentials_in_uri_are_refused_and_never_echoed():
    secret = "wJalrXUtnFEMI-SECRET"
    for uri in (f"s3://AKIA:{secret}@bucket/x", f"hf://user:{secret}@org/repo"):
        with pytest.raises(LocationError) as info:
            parse_location(uri)
        assert secret not in str(info.value)
        assert "***" in str(info.value)


def test_redact_query_secrets():
    assert "abc" not in redact("https://h/x?token=abc&X-Amz-Signature=def")
