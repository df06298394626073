"""The real test servers start, enforce auth, and stop by PID."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_seaweedfs_s3_roundtrip_with_auth(s3_server):
    client = s3_server.client()
    client.create_bucket(Bucket="fixture-check")
    client.put_object(Bucket="fixture-check", Key="模型/权重.bin", Body=b"\x00\x01payload")
    assert client.get_object(Bucket="fixture-check", Key="模型/权重.bin")["Body"].read() == b"\x00\x01payload"

    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    intruder = boto3.client(
        "s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="wrong-secret", region_name="us-east-1", config=Config(s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as info:
        intruder.get_object(Bucket="fixture-check", Key="模型/权重.bin")
    assert info.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}


def test_server_stop_by_pid(tmp_path):
    from tests.services.servers import start_pushgateway

    server, _ = start_pushgateway(tmp_path)
    pid = server.proc.pid
    server.stop()
    assert server.proc.poll() is not None
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
