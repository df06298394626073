"""Backup and restore against a real SeaweedFS S3 server with authentication on."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

import pytest

from aptops.backup import BackupConfig, backup_model, backup_to_s3, restore_from_cloud, restore_from_s3
from aptops.backup.engine import DestinationResult, _retry
from aptops.core.errors import ConfigError, InvalidArtifactError, LocationError, StorageError

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(s3_server):
    creds = {"aws_access_key_id": s3_server.access_key, "aws_secret_access_key": s3_server.secret_key}
    return s3_server, creds, BackupConfig(endpoint_url=s3_server.endpoint, backoff_s=0.01)


def _tree(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_roundtrip_skip_unchanged_and_send_changed(s3, tiny_llama, tmp_path):
    _server, creds, cfg = s3
    bucket = f"bk-{uuid.uuid4().hex[:8]}"  # created on first backup
    dest = f"s3://{bucket}/models/tiny"
    first = backup_model(tiny_llama, [dest], cfg, credentials=creds)
    (res,) = first.destinations
    assert res.outcome == "success", res.error
    assert res.files_sent == len(first.manifest["files"]) and res.bytes_sent == first.manifest["total_bytes"]
    again = backup_model(tiny_llama, [dest], cfg, credentials=creds).destinations[0]
    assert (again.files_sent, again.files_skipped, again.bytes_sent) == (0, len(first.manifest["files"]), 0)
    restored = restore_from_cloud(dest, None, tmp_path / "restored", cfg, credentials=creds)
    assert _tree(tmp_path / "restored") == _tree(tiny_llama)
    assert restored.metrics["bytes"] == first.manifest["total_bytes"]
    work = tmp_path / "work"
    import shutil

    shutil.copytree(tiny_llama, work)
    (work / "config.json").write_text((work / "config.json").read_text().replace("64", "64 "))
    third = backup_model(work, [dest], cfg, credentials=creds).destinations[0]
    assert third.files_sent == 1 and third.files_skipped == len(first.manifest["files"]) - 1


def test_multipart_upload_of_a_large_file_in_parallel_parts(s3, tmp_path):
    server, creds, cfg = s3
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(os.urandom(20 * 1024 * 1024))  # 3 parts of 8 MiB
    dest = f"s3://big-{uuid.uuid4().hex[:8]}/m"
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    obj = server.client().head_object(Bucket=dest[5:].split("/")[0], Key="m/model.safetensors")
    assert obj["ContentLength"] == 20 * 1024 * 1024 and "-" in obj["ETag"]  # a multipart ETag
    restore_from_cloud(dest, None, tmp_path / "back", cfg, credentials=creds)
    assert _tree(tmp_path / "back") == _tree(model)


def test_corrupt_object_falls_back_to_the_next_source(s3, tiny_llama, tmp_path):
    server, creds, cfg = s3
    bucket = f"fb-{uuid.uuid4().hex[:8]}"
    a, b = f"s3://{bucket}/a", f"s3://{bucket}/b"
    assert backup_model(tiny_llama, [a, b], cfg, credentials=creds).ok
    client = server.client()
    body = bytearray(client.get_object(Bucket=bucket, Key="a/model.safetensors")["Body"].read())
    body[len(body) // 2] ^= 0xFF  # one flipped byte
    client.put_object(Bucket=bucket, Key="a/model.safetensors", Body=bytes(body))
    with pytest.raises(StorageError, match="does not match its manifest"):
        restore_from_cloud(a, None, tmp_path / "only-a", cfg, credentials=creds)
    assert not (tmp_path / "only-a").exists()
    result = restore_from_cloud([a, b], None, tmp_path / "out", cfg, credentials=creds)
    assert result.outputs["source"].endswith("/b")
    assert _tree(tmp_path / "out") == _tree(tiny_llama)


def test_unsafe_manifest_is_refused_before_any_download(s3, tmp_path):
    server, creds, cfg = s3
    bucket = f"ev-{uuid.uuid4().hex[:8]}"
    client = server.client()
    client.create_bucket(Bucket=bucket)
    evil = {"files": [{"path": "../../etc/passwd", "size": 4, "sha256": "0" * 64}]}
    client.put_object(Bucket=bucket, Key="m/manifest.json", Body=json.dumps(evil).encode())
    with pytest.raises(StorageError, match=r"unsafe path '\.\./\.\./etc/passwd'"):
        restore_from_cloud(f"s3://{bucket}/m", None, tmp_path / "x", cfg, credentials=creds)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.restore-*"))


def test_wrong_credentials_fail_clearly_without_the_secret(s3, tiny_llama):
    server, _, cfg = s3
    secret = "wrong-secret-canary-7731"
    res = backup_model(tiny_llama, [f"s3://creds-{uuid.uuid4().hex[:6]}/m"], cfg,
                       credentials={"aws_access_key_id": server.access_key, "aws_secret_access_key": secret})
    (dest,) = res.destinations
    assert dest.outcome == "failure" and "check the credentials" in dest.error
    assert secret not in dest.error


def test_legacy_functions(s3, tiny_llama, tmp_path):
    server, creds, _cfg = s3
    bucket = f"legacy-{uuid.uuid4().hex[:6]}"
    out = backup_to_s3(tiny_llama, bucket, "v1", endpoint_url=server.endpoint, **creds)
    assert out.ok
    restore_from_s3(bucket, "v1", tmp_path / "r", endpoint_url=server.endpoint, **creds)
    assert _tree(tmp_path / "r") == _tree(tiny_llama)


@pytest.mark.parametrize(
    ("dest", "error", "message"),
    [
        ("s3://Bad_Bucket/x", LocationError, "not a valid S3 bucket name"),
        ("gs://bucket/x", LocationError, "unsupported scheme 'gs'"),
        ("modelscope://org/models", ConfigError, "set MODELSCOPE_API_TOKEN"),
        ("hf://org/bad name!", LocationError, "not a valid repo name"),
        ("oss://bucket-1/x", ConfigError, "set OSS_ENDPOINT"),
    ],
)
def test_bad_destinations_fail_before_any_upload(s3, tiny_llama, dest, error, message, monkeypatch):
    monkeypatch.delenv("OSS_ENDPOINT", raising=False)
    monkeypatch.delenv("MODELSCOPE_API_TOKEN", raising=False)
    server, creds, cfg = s3
    with pytest.raises(error, match=message):
        backup_model(tiny_llama, [f"s3://never-{uuid.uuid4().hex[:6]}/m", dest], cfg, credentials=creds)
    names = [b["Name"] for b in server.client().list_buckets().get("Buckets", [])]
    assert not any(n.startswith("never-") for n in names)


def test_empty_folder(s3, tmp_path):
    _, creds, cfg = s3
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArtifactError, match="empty: nothing to back up"):
        backup_model(tmp_path / "empty", ["s3://some-bucket/m"], cfg, credentials=creds)


def test_retry_backs_off_on_transient_errors_only():
    class Flaky:
        uri = "s3://x/y"

        def __init__(self, failures, transient=True):
            self.failures, self.transient, self.calls = failures, transient, 0

        def is_transient(self, exc):
            return self.transient

        def op(self):
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionError("reset by peer")
            return "done"

    cfg = BackupConfig(max_retries=3, backoff_s=0.001)
    store, res = Flaky(2), DestinationResult("s3://x/y")
    assert _retry(store.op, store, cfg, res, "op") == "done" and res.retries == 2
    store, res = Flaky(5), DestinationResult("s3://x/y")
    with pytest.raises(ConnectionError):
        _retry(store.op, store, cfg, res, "op")
    assert store.calls == 4
    store, res = Flaky(1, transient=False), DestinationResult("s3://x/y")
    with pytest.raises(ConnectionError):
        _retry(store.op, store, cfg, res, "op")
    assert store.calls == 1 and res.retries == 0


def test_cli_backup_and_restore(s3, tiny_llama, tmp_path):
    from tests.cli import aptops

    server, creds, _cfg = s3
    env = {"AWS_ACCESS_KEY_ID": creds["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
           "AWS_ENDPOINT_URL": server.endpoint}
    dest = f"s3://cli-{uuid.uuid4().hex[:6]}/tiny"
    out = aptops("backup", str(tiny_llama), "--to", dest, env=env)
    assert out.returncode == 0, out.stderr
    assert "success" in out.stdout
    back = aptops("restore", dest, "--out", str(tmp_path / "r"), env=env)
    assert back.returncode == 0, back.stderr
    assert _tree(tmp_path / "r") == _tree(tiny_llama)
    bad = aptops("backup", str(tiny_llama), "--to", dest, env={**env, "AWS_SECRET_ACCESS_KEY": "nope-canary-99"})
    assert bad.returncode == 1 and "check the credentials" in bad.stdout
    assert "nope-canary-99" not in bad.stdout + bad.stderr


def test_legacy_adapter_for_cloud_storage():
    from aptops.plugins import get_adapter

    plugin = get_adapter("cloud_storage").get_legacy_plugin()
    assert (plugin.category, plugin.priority) == ("storage", 700)
    assert plugin.backup_to_s3 is backup_to_s3


def test_backup_pipeline_compiles_with_secrets_and_no_cache(tmp_path):
    import yaml

    from tests.cli import aptops

    out = aptops("compile", "--out", str(tmp_path), "--pipeline", "backup", "--secret", "aws=aptops-aws",
                 "--secret", "hf=aptops-hf")
    assert out.returncode == 0, out.stderr
    spec, platform = yaml.safe_load_all((tmp_path / "backup.yaml").read_text())
    task = spec["root"]["dag"]["tasks"]["backup-model"]
    assert not task.get("cachingOptions", {}).get("enableCache")
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-backup-model"]
    secrets = {s["secretName"]: s for s in executor["secretAsEnv"]}
    assert set(secrets) == {"aptops-aws", "aptops-hf"}
    envs = {m["envVar"] for m in secrets["aptops-aws"]["keyToEnv"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs
    assert "destinations" in spec["root"]["inputDefinitions"]["parameters"]
    bad = aptops("compile", "--out", str(tmp_path / "b"), "--secret", "gcs=x")
    assert bad.returncode == 2 and "unknown provider 'gcs'" in bad.stderr


@pytest.mark.slow
def test_backup_pipeline_runs_locally_with_env_credentials(s3, tiny_llama, tmp_path, monkeypatch):
    from tests.cli import aptops

    server, creds, _ = s3
    env = {"AWS_ACCESS_KEY_ID": creds["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
           "AWS_ENDPOINT_URL": server.endpoint}
    dest = f"s3://pipe-{uuid.uuid4().hex[:6]}/m"
    out = aptops("run", "backup", "--local", "--param", f"model_path={tiny_llama}", "--param", f"destinations={dest}",
                 "--runs-dir", str(tmp_path), env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    restore_from_cloud(dest, None, tmp_path / "r", BackupConfig(endpoint_url=server.endpoint), credentials=creds)
    assert _tree(tmp_path / "r") == _tree(tiny_llama)
    assert creds["aws_secret_access_key"] not in out.stdout + out.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in {".json", ".yaml", ".prom", ".log"}:
            assert creds["aws_secret_access_key"] not in f.read_text(errors="replace"), f


def test_dropped_connection_mid_multipart_resumes_sending_only_missing_parts(s3, tmp_path, monkeypatch):
    from tests.services.proxy import DropRule, FaultyProxy

    server, creds, _ = s3
    monkeypatch.setenv("APTOPS_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # parts 1-3 of 8 MiB
    host, port = server.endpoint.split("//")[1].split(":")
    with FaultyProxy(host, int(port), rules=[DropRule("partNumber=3", times=3)]) as proxy:
        cfg = BackupConfig(endpoint_url=proxy.url, backoff_s=0.01)
        dest = f"s3://flaky-{uuid.uuid4().hex[:6]}/m"
        result = backup_model(model, [dest], cfg, credentials=creds)
        (d,) = result.destinations
        assert d.outcome == "success", d.error
        assert proxy.rules[0].dropped == 3, dict(proxy.seen)
        assert d.retries >= 1, d
        assert proxy.count("partNumber=3") == 4  # dropped three times, then sent
        assert proxy.count("partNumber=1") == 1 and proxy.count("partNumber=2") == 1  # never re-sent
        assert proxy.count("POST /" + dest[5:].split("/")[0] + "/m/weights.bin?uploads") == 1  # one upload, resumed
    restore_from_cloud(dest, None, tmp_path / "r", BackupConfig(endpoint_url=server.endpoint), credentials=creds)
    assert _tree(tmp_path / "r") == _tree(model)
    assert not list((tmp_path / "cache" / "uploads").glob("*.json"))  # state removed once complete


def test_auto_source_probes_locations_and_skips_unhealthy_ones(s3, tiny_llama, tmp_path, caplog):
    import logging

    server, creds, cfg = s3
    bucket = f"auto-{uuid.uuid4().hex[:6]}"
    assert backup_model(tiny_llama, [f"s3://{bucket}/good/llama-tiny"], cfg, credentials=creds).ok
    server.client().create_bucket(Bucket=f"{bucket}-empty")
    from dataclasses import replace

    auto = replace(cfg, locations=(f"s3://{bucket}-empty/models", f"s3://{bucket}/good"))
    with caplog.at_level(logging.INFO, logger="aptops.backup.engine"):
        result = restore_from_cloud("auto", "llama-tiny", tmp_path / "r", auto, credentials=creds)
    assert result.outputs["source"] == f"s3://{bucket}/good/llama-tiny"
    assert _tree(tmp_path / "r") == _tree(tiny_llama)
    assert "no backup" in caplog.text  # the empty location was probed and put last
    with pytest.raises(ConfigError, match=r"probes config\.locations, which is empty"):
        restore_from_cloud("auto", "llama-tiny", tmp_path / "x", cfg, credentials=creds)


def test_dropped_connection_mid_download_resumes_the_missing_ranges(s3, tmp_path):
    from tests.services.proxy import DropRule, FaultyProxy

    server, creds, cfg = s3
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # 3 ranged GETs of 8 MiB
    dest = f"s3://dl-{uuid.uuid4().hex[:6]}/m"
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    host, port = server.endpoint.split("//")[1].split(":")
    line = "GET /" + dest[5:].split("/")[0] + "/m/weights.bin"
    rule = DropRule(line, skip=1, times=3)  # the first range arrives, then three GETs are reset
    with FaultyProxy(host, int(port), rules=[rule]) as proxy:
        result = restore_from_cloud(dest, None, tmp_path / "r", BackupConfig(endpoint_url=proxy.url, backoff_s=0.01),
                                    credentials=creds)
        gets = proxy.count(line)
    assert rule.dropped == 3
    assert result.metrics["retries"] >= 1
    assert gets == 3 + rule.dropped  # every range fetched once successfully: finished ranges never re-fetched
    assert _tree(tmp_path / "r") == _tree(model)
    assert not list((tmp_path / "r").rglob("*.ranges"))


def test_restore_killed_with_sigkill_is_continued_by_the_next_process(s3, tiny_llama, tmp_path, monkeypatch):
    """A restore process killed -9 mid-way leaves its staging folder; the next restore keeps what verifies."""
    import signal
    import subprocess
    import sys
    import textwrap

    from aptops.backup.manifest import list_model_files

    server, creds, cfg = s3
    dest = f"s3://kill-{uuid.uuid4().hex[:6]}/m"
    assert backup_model(tiny_llama, [dest], cfg, credentials=creds).ok
    n_files = len(list_model_files(tiny_llama))
    target = tmp_path / "restored"
    script = textwrap.dedent(f"""
        import os, signal
        from aptops.backup import BackupConfig, restore_from_cloud
        from aptops.backup.s3 import S3Store
        real, calls = S3Store.download, []
        def download(self, path, local):
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
            calls.append(path)
            real(self, path, local)
        S3Store.download = download
        restore_from_cloud({dest!r}, None, {str(target)!r}, BackupConfig(endpoint_url={server.endpoint!r}, file_concurrency=1),
                           credentials={creds!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not target.exists()
    (staging,) = tmp_path.glob(".restored.restore-*")

    from aptops.backup.s3 import S3Store

    downloads = []
    real = S3Store.download

    def counting(self, path, local):
        downloads.append(path)
        real(self, path, local)

    monkeypatch.setattr(S3Store, "download", counting)
    result = restore_from_cloud(dest, None, target, cfg, credentials=creds)
    assert result.metrics["files_kept"] == 2 and len(downloads) == n_files - 2
    assert _tree(target) == _tree(tiny_llama)
    assert not staging.exists() and not list(tmp_path.glob(".restored.restore-*"))


@pytest.mark.slow
@pytest.mark.integration
def test_seaweedfs_killed_and_restarted_mid_multipart_resumes_with_only_missing_parts(tmp_path, monkeypatch):
    """kill -9 of the S3 server after the first part; it comes back on the same data; the backup goes on."""
    import signal
    import threading

    from aptops.backup.s3 import S3Store
    from tests.services.servers import _wait_s3_writable, start_seaweedfs

    monkeypatch.setenv("APTOPS_CACHE_DIR", str(tmp_path / "cache"))
    s3 = start_seaweedfs(tmp_path / "weed")
    try:
        model = tmp_path / "model"
        model.mkdir()
        (model / "weights.bin").write_bytes(os.urandom(24 * 1024 * 1024))  # three 8 MiB parts
        sent: list[int] = []
        created: list[str] = []
        restarted = threading.Event()

        def restart() -> None:
            time.sleep(1.0)
            s3.server.start(timeout_s=90)
            _wait_s3_writable(s3)
            restarted.set()

        def on_part(params, **_):
            sent.append(params["PartNumber"])
            if len(sent) == 1:  # the first part is on the server: kill it now, no grace
                os.killpg(s3.server.proc.pid, signal.SIGKILL)
                s3.server.proc.wait()
                threading.Thread(target=restart, daemon=True).start()

        real_init = S3Store.__post_init__

        def post_init(self):
            self.max_concurrency = 1  # parts in order: part 1 arrives, then the kill
            real_init(self)
            current: dict[str, int] = {}
            self._client.meta.events.register("before-parameter-build.s3.UploadPart",
                                              lambda **kw: current.update(part=kw["params"]["PartNumber"]))
            self._client.meta.events.register("after-call.s3.UploadPart",
                                              lambda **kw: on_part({"PartNumber": current["part"]}))
            self._client.meta.events.register("after-call.s3.CreateMultipartUpload",
                                              lambda **kw: created.append(kw["parsed"].get("UploadId")))

        monkeypatch.setattr(S3Store, "__post_init__", post_init)
        creds = {"aws_access_key_id": s3.access_key, "aws_secret_access_key": s3.secret_key}
        cfg = BackupConfig(endpoint_url=s3.endpoint, backoff_s=1.0, max_backoff_s=4.0, max_retries=12)
        dest = f"s3://restart-{uuid.uuid4().hex[:6]}/m"
        result = backup_model(model, [dest], cfg, credentials=creds)
        (d,) = result.destinations
        assert restarted.is_set()
        assert d.outcome == "success", d.error
        assert d.retries >= 1
        assert sent.count(1) == 1  # the part that reached the server before the kill is never sent again
        assert sorted(set(sent)) == [1, 2, 3]
        assert len(created) == 1  # the same multipart upload, resumed after the restart
        restore_from_cloud(dest, None, tmp_path / "r", BackupConfig(endpoint_url=s3.endpoint), credentials=creds)
        assert _tree(tmp_path / "r") == _tree(model)
    finally:
        s3.server.stop()


def test_unchanged_files_reuse_their_hash_and_a_changed_one_is_never_missed(s3, tmp_path, monkeypatch, caplog):
    """A second backup of a settled folder takes every SHA-256 from the hash cache; a same-size edit that
    restores the old modification time is still hashed again, uploaded and restored with its new bytes."""
    _server, creds, cfg = s3
    monkeypatch.setenv("APTOPS_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(os.urandom(9 * 1024 * 1024))  # multipart
    (model / "config.json").write_text('{"hidden_size": 64}')
    time.sleep(2.1)  # older than the settle window, so the first backup remembers the hashes
    dest = f"s3://bk-{uuid.uuid4().hex[:8]}/m"
    first = backup_model(model, [dest], cfg, credentials=creds)
    assert first.ok and (tmp_path / "cache" / "file-hashes.sqlite3").is_file()
    caplog.clear()
    with caplog.at_level("INFO", logger="aptops.backup.engine"):
        second = backup_model(model, [f"{dest}-2"], cfg, credentials=creds)
    assert second.ok and second.manifest["files"] == first.manifest["files"]
    assert "2 of 2 files unchanged since they were last hashed" in caplog.text
    config = model / "config.json"
    old = config.stat()
    config.write_text('{"hidden_size": 65}')
    os.utime(config, ns=(old.st_atime_ns, old.st_mtime_ns))
    third = backup_model(model, [dest], cfg, credentials=creds).destinations[0]
    assert (third.outcome, third.files_sent, third.files_skipped) == ("success", 1, 1)
    restore_from_cloud(dest, None, tmp_path / "back", cfg, credentials=creds)
    assert (tmp_path / "back" / "config.json").read_text() == '{"hidden_size": 65}'
    assert _tree(tmp_path / "back") == _tree(model)


def test_the_next_large_file_starts_while_the_last_parts_of_the_one_before_are_in_flight(s3, tmp_path):
    """Two large files share the part pool: the second file's upload begins before the first completes,
    so no thread idles at file boundaries; both arrive whole."""
    from aptops.backup.s3 import S3Store

    server, creds, cfg = s3
    model = tmp_path / "model"
    model.mkdir()
    for name in ("a.bin", "b.bin"):
        (model / name).write_bytes(os.urandom(17 * 1024 * 1024))  # three parts each, the last one short
    events: list[tuple[str, str]] = []
    store = S3Store(f"pipe-{uuid.uuid4().hex[:6]}", "m", endpoint_url=server.endpoint, max_concurrency=3, **creds)
    for op in ("CreateMultipartUpload", "CompleteMultipartUpload"):
        store._client.meta.events.register(f"before-parameter-build.s3.{op}",
                                           lambda params, op=op, **_: events.append((op, params["Key"])))
    from aptops.backup.engine import _backup_to_stores

    result = _backup_to_stores(model, [store], cfg)
    assert result.ok, result.destinations
    order = [f"{op[:-len('MultipartUpload')]} {key.rsplit('/', 1)[-1]}" for op, key in events]
    assert order.index("Create b.bin") < order.index("Complete a.bin"), order
    restore_from_cloud(f"s3://{store.bucket}/m", None, tmp_path / "back", cfg, credentials=creds)
    assert _tree(tmp_path / "back") == _tree(model)


def test_part_size_sets_the_parts_and_ranges(s3, tmp_path):
    from aptops.backup.engine import _backup_to_stores, store_for
    from aptops.core.locations import parse_location

    server, creds, cfg = s3
    with pytest.raises(ConfigError, match="part_size_mb"):
        BackupConfig(part_size_mb=1)
    cfg = BackupConfig(endpoint_url=server.endpoint, part_size_mb=5)
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # 5 + 5 + 2 MiB
    (model / "small.bin").write_bytes(os.urandom(4 * 1024 * 1024))  # one request
    dest = f"s3://parts-{uuid.uuid4().hex[:6]}/m"
    store = store_for(parse_location(dest), cfg, creds)
    calls: list[str] = []
    for op in ("UploadPart", "PutObject", "GetObject"):
        store._client.meta.events.register(f"before-call.s3.{op}", lambda op=op, **_: calls.append(op))
    assert _backup_to_stores(model, [store], cfg).ok
    # small.bin and the manifest, and the lease taken and confirmed before the manifest
    assert calls.count("UploadPart") == 3 and calls.count("PutObject") == 4
    calls.clear()
    from aptops.backup.engine import _restore_one

    _restore_one(store, tmp_path / "back", cfg)
    assert calls.count("GetObject") == 1 + 1 + 3  # the manifest, small.bin, three ranges of w.bin
    assert _tree(tmp_path / "back") == _tree(model)


def test_unchanged_check_lists_once_and_catches_objects_changed_or_deleted_since(s3, tmp_path):
    """A re-backup asks one LIST instead of a HEAD per file; an object overwritten after the manifest (same
    size, other bytes) or deleted is sent again."""
    from aptops.backup.engine import _backup_to_stores, store_for
    from aptops.core.locations import parse_location

    server, creds, cfg = s3
    model = tmp_path / "model"
    model.mkdir()
    for i in range(6):
        (model / f"f{i}.json").write_text(json.dumps({"i": i}))
    dest = f"s3://list-{uuid.uuid4().hex[:6]}/m"
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    store = store_for(parse_location(dest), cfg, creds)
    calls: list[str] = []
    for op in ("HeadObject", "ListObjectsV2", "PutObject"):
        store._client.meta.events.register(f"before-call.s3.{op}", lambda op=op, **_: calls.append(op))
    (again,) = _backup_to_stores(model, [store], cfg).destinations
    assert (again.files_sent, again.files_skipped) == (0, 6)
    assert calls.count("HeadObject") == 0 and calls.count("ListObjectsV2") == 1, calls
    time.sleep(1.1)  # the servers' modification times count whole seconds
    raw = server.client()
    raw.put_object(Bucket=store.bucket, Key="m/f1.json", Body=json.dumps({"i": 9}).encode())  # same size
    raw.delete_object(Bucket=store.bucket, Key="m/f4.json")
    (third,) = _backup_to_stores(model, [store], cfg).destinations
    assert (third.files_sent, third.files_skipped) == (2, 4)
    restore_from_cloud(dest, None, tmp_path / "back", cfg, credentials=creds)
    assert _tree(tmp_path / "back") == _tree(model)
