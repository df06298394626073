"""OSS backup and restore through the real oss2 client against a protocol-level stand-in server."""

from __future__ import annotations

import hashlib
import os

import pytest

from aptops.backup import BackupConfig, backup_model, backup_to_oss, restore_from_cloud, restore_from_oss
from aptops.core.errors import ConfigError
from tests.services.oss_standin import OssStandIn


@pytest.fixture
def oss(tmp_path, monkeypatch):
    monkeypatch.setenv("APTOPS_CACHE_DIR", str(tmp_path / "cache"))
    with OssStandIn() as server:
        creds = {"oss_access_key_id": server.state.access_key_id, "oss_access_key_secret": server.state.access_key_secret}
        yield server, creds, BackupConfig(oss_endpoint=server.endpoint, backoff_s=0.01)


def _tree(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_oss_roundtrip_with_multipart_crc64_and_chinese_keys(oss, tmp_path):
    server, creds, cfg = oss
    model = tmp_path / "模型"
    (model / "权重").mkdir(parents=True)
    (model / "权重" / "model.safetensors").write_bytes(os.urandom(20 * 1024 * 1024))  # multipart: 3 parts
    (model / "配置.json").write_text('{"名字": "测试"}', encoding="utf-8")
    result = backup_model(model, ["oss://aptops-models/备份/v1"], cfg, credentials=creds)
    assert result.ok, result.destinations
    stored = server.state.buckets["aptops-models"]
    assert "备份/v1/权重/model.safetensors" in stored and "备份/v1/配置.json" in stored
    assert any("uploads" in path for method, path in server.state.requests if method == "POST")
    assert server.state.bad_signatures == 0
    restore_from_cloud("oss://aptops-models/备份/v1", None, tmp_path / "restored", cfg, credentials=creds)
    assert _tree(tmp_path / "restored") == _tree(model)
    again = backup_model(model, ["oss://aptops-models/备份/v1"], cfg, credentials=creds).destinations[0]
    assert again.files_sent == 0 and again.files_skipped == 2


def test_oss_wrong_secret_is_refused_by_the_signature_check(oss, tmp_path):
    server, creds, cfg = oss
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.bin").write_bytes(b"x" * 100)
    bad = {**creds, "oss_access_key_secret": "not-the-secret-canary"}
    (dest,) = backup_model(tmp_path / "m", ["oss://aptops-x/m"], cfg, credentials=bad).destinations
    assert dest.outcome == "failure" and "check the credentials" in dest.error
    assert "not-the-secret-canary" not in dest.error
    assert server.state.bad_signatures >= 1


def test_oss_corruption_is_caught_and_the_s3_copy_is_used(oss, s3_server, tiny_llama, tmp_path, monkeypatch):
    server, creds, _ = oss
    import uuid

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    both = BackupConfig(oss_endpoint=server.endpoint, endpoint_url=s3_server.endpoint, backoff_s=0.01)
    s3_dest = f"s3://mix-{uuid.uuid4().hex[:6]}/m"
    assert backup_model(tiny_llama, ["oss://aptops-mix/m", s3_dest], both, credentials=creds).ok
    obj = server.state.buckets["aptops-mix"]["m/model.safetensors"]
    obj["data"] = obj["data"][:-1] + bytes([obj["data"][-1] ^ 0x01])  # bit rot behind the server's back
    result = restore_from_cloud(["oss://aptops-mix/m", s3_dest], None, tmp_path / "r", both, credentials=creds)
    assert result.outputs["source"] == s3_dest
    assert _tree(tmp_path / "r") == _tree(tiny_llama)


def test_oss_legacy_functions(oss, tiny_llama, tmp_path):
    server, creds, _ = oss
    kw = {"access_key_id": creds["oss_access_key_id"], "access_key_secret": creds["oss_access_key_secret"],
          "endpoint": server.endpoint}
    assert backup_to_oss(tiny_llama, "legacy-oss", "v2", **kw).ok
    restore_from_oss("legacy-oss", "v2", tmp_path / "r", **kw)
    assert _tree(tmp_path / "r") == _tree(tiny_llama)


def test_oss_without_endpoint_or_credentials(tmp_path, monkeypatch):
    from aptops.core.errors import ConfigError

    for var in ("OSS_ENDPOINT", "OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a").write_text("x")
    with pytest.raises(ConfigError, match="set OSS_ENDPOINT"):
        backup_model(tmp_path / "m", ["oss://bkt-1/m"])
    with pytest.raises(ConfigError, match="set OSS_ACCESS_KEY_ID"):
        backup_model(tmp_path / "m", ["oss://bkt-1/m"], BackupConfig(oss_endpoint="http://127.0.0.1:9"))


def test_oss_transfer_acceleration_endpoint(monkeypatch):
    from aptops.backup.engine import store_for
    from aptops.core.locations import parse_location

    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "secret")
    monkeypatch.setenv("OSS_ENDPOINT", "https://oss-cn-hangzhou.aliyuncs.com")
    store = store_for(parse_location("oss://bucket-1/m"), BackupConfig(oss_accelerate="global"))
    assert store._bucket.endpoint == "https://oss-accelerate.aliyuncs.com"
    store = store_for(parse_location("oss://bucket-1/m"), BackupConfig())
    assert store._bucket.endpoint == "https://oss-cn-hangzhou.aliyuncs.com"
    with pytest.raises(ConfigError, match="oss_accelerate"):
        BackupConfig(oss_accelerate="faster")


def test_oss_unchanged_check_lists_pages_of_keys_and_catches_changes_since(oss, tmp_path):
    """A re-backup lists the prefix (URL-encoded Chinese keys, 100 a page) instead of a HEAD per file; an
    object overwritten after the manifest (same size) or deleted is sent again."""
    import time

    import oss2

    server, creds, cfg = oss
    model = tmp_path / "模型"
    model.mkdir()
    for i in range(130):
        (model / f"分片-{i:03d}.json").write_text(f'{{"i": {i:03d}}}')
    dest = "oss://aptops-list/备份/v2"
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    server.state.requests.clear()
    again = backup_model(model, [dest], cfg, credentials=creds).destinations[0]
    assert (again.files_sent, again.files_skipped) == (0, 130)
    heads = [p for m, p in server.state.requests if m == "HEAD" and not p.endswith(".aptops-backup.lease")]
    listings = [p for m, p in server.state.requests if m == "GET" and p.startswith("/aptops-list/?")]
    assert heads == [] and len(listings) == 2, server.state.requests  # 131 keys and the lease, 100 a page
    time.sleep(1.1)  # listings give modification times in whole seconds
    bucket = oss2.Bucket(oss2.Auth(creds["oss_access_key_id"], creds["oss_access_key_secret"]), server.endpoint,
                         "aptops-list")
    bucket.put_object("备份/v2/分片-007.json", b'{"i": 999}')  # same size, other bytes
    bucket.delete_object("备份/v2/分片-042.json")
    third = backup_model(model, [dest], cfg, credentials=creds).destinations[0]
    assert (third.files_sent, third.files_skipped) == (2, 128)
    assert server.state.bad_signatures == 0
    restore_from_cloud(dest, None, tmp_path / "back", cfg, credentials=creds)
    assert _tree(tmp_path / "back") == _tree(model)
