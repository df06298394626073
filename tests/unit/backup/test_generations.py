"""Issue 32: a failed or killed backup must never break the last good one, and a backup must never commit a
file that changed while it was sent. Real SeaweedFS (through a loopback proxy that drops chosen requests, as a
dying server or network would) and the OSS stand-in."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest

from aptops.backup import BackupConfig, backup_model, restore_model
from aptops.backup.engine import parse_location, store_for
from aptops.backup.manifest import MANIFEST, OBJECTS
from tests.services.oss_standin import OssStandIn
from tests.services.proxy import DropRule, FaultyProxy

pytestmark = pytest.mark.integration


def _tree(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "v": 1}))
    (folder / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _update(folder):
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "v": 2}))
    (folder / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    (folder / "tokenizer.json").unlink()
    (folder / "generation_config.json").write_text("{}")


@pytest.fixture(params=["s3", "oss"])
def target(request, s3_server, tmp_path, monkeypatch):
    """(destination, credentials, config, proxied config maker) on SeaweedFS or the OSS stand-in."""
    monkeypatch.setenv("APTOPS_CACHE_DIR", str(tmp_path / "cache"))
    if request.param == "s3":
        creds = {"aws_access_key_id": s3_server.access_key, "aws_secret_access_key": s3_server.secret_key}
        cfg = BackupConfig(endpoint_url=s3_server.endpoint, backoff_s=0.01, max_retries=1)
        host, port = s3_server.endpoint.split("//")[1].split(":")
        yield (f"s3://gen-{uuid.uuid4().hex[:8]}/m", creds, cfg, (host, int(port)),
               lambda url: BackupConfig(**{**cfg.__dict__, "endpoint_url": url}))
        return
    with OssStandIn() as server:
        creds = {"oss_access_key_id": server.state.access_key_id,
                 "oss_access_key_secret": server.state.access_key_secret}
        cfg = BackupConfig(oss_endpoint=server.endpoint, backoff_s=0.01, max_retries=1)
        host, port = server.endpoint.split("//")[1].split(":")
        yield (f"oss://gen-{uuid.uuid4().hex[:8]}/m", creds, cfg, (host, int(port)),
               lambda url: BackupConfig(**{**cfg.__dict__, "oss_endpoint": url}))


def _at(dest, key):
    """How a request line names ``key`` under the destination's prefix (oss2 quotes the slashes of a key)."""
    bucket = dest.split("/")[2]
    return f"/{bucket}/m{'%2F' if dest.startswith('oss') else '/'}{key}"


def _keys(dest, creds, cfg):
    return set(store_for(parse_location(dest), cfg, creds).listing())


def test_a_backup_that_dies_before_its_manifest_leaves_the_last_one_restorable(target, model, tmp_path):
    dest, creds, cfg, (host, port), via = target
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    first = _tree(model)
    _update(model)
    # the server stops taking the manifest: every changed object is sent, the commit never happens
    with FaultyProxy(host, port, rules=[DropRule(f"PUT {_at(dest, MANIFEST)}", times=100)]) as proxy:
        (res,) = backup_model(model, [dest], via(proxy.url), credentials=creds).destinations
        assert res.outcome == "failure" and res.files_sent == 3, res
    restore_model(dest, output_dir=tmp_path / "r1", config=cfg, credentials=creds)
    assert _tree(tmp_path / "r1") == first  # before the fix: "config.json does not match its manifest"
    # the next backup completes, puts every file back at its own path and removes what nothing points at
    res = backup_model(model, [dest], cfg, credentials=creds).destinations[0]
    assert res.outcome == "success", res.error
    restore_model(dest, output_dir=tmp_path / "r2", config=cfg, credentials=creds)
    assert _tree(tmp_path / "r2") == _tree(model)
    keys = _keys(dest, creds, cfg)
    assert not any(k.startswith(OBJECTS) for k in keys) and "tokenizer.json" not in keys
    assert {"config.json", "model.safetensors", "generation_config.json", MANIFEST} <= keys


def test_a_backup_committed_but_cut_off_while_tidying_is_restorable_and_finished_by_the_next(target, model, tmp_path):
    dest, creds, cfg, (host, port), via = target
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    _update(model)
    # the first manifest (the commit) goes through; the second (files back at their paths) never does
    rule = DropRule(f"PUT {_at(dest, MANIFEST)}", skip=1, times=100)
    with FaultyProxy(host, port, rules=[rule]) as proxy:
        (res,) = backup_model(model, [dest], via(proxy.url), credentials=creds).destinations
        assert res.outcome == "success", res.error
        assert rule.dropped >= 1
    store = store_for(parse_location(dest), cfg, creds)
    manifest = json.loads(store.read(MANIFEST))
    moved = {f["path"]: f["object"] for f in manifest["files"] if "object" in f}
    assert set(moved) == {"config.json", "model.safetensors"} and all(k.startswith(OBJECTS) for k in moved.values())
    restore_model(dest, output_dir=tmp_path / "r", config=cfg, credentials=creds)
    assert _tree(tmp_path / "r") == _tree(model)
    again = backup_model(model, [dest], cfg, credentials=creds).destinations[0]
    assert again.outcome == "success" and again.files_sent == 0  # unchanged: nothing sent, only tidied
    assert not any("object" in f for f in json.loads(store.read(MANIFEST))["files"])
    assert not any(k.startswith(OBJECTS) for k in _keys(dest, creds, cfg))
    restore_model(dest, output_dir=tmp_path / "r2", config=cfg, credentials=creds)
    assert _tree(tmp_path / "r2") == _tree(model)


def test_a_file_rewritten_while_its_parts_upload_fails_the_backup(target, tmp_path):
    dest, creds, cfg, (host, port), via = target
    folder = tmp_path / "big"
    folder.mkdir()
    weights = folder / "weights.bin"
    weights.write_bytes(os.urandom(12 * 1024 * 1024))  # two parts of 8 MiB
    assert backup_model(folder, [dest], cfg, credentials=creds).ok
    good = _tree(folder)
    weights.write_bytes(os.urandom(12 * 1024 * 1024))

    rewritten = []

    def rewrite(line: str) -> None:  # a trainer saving again while the backup sends the file
        if "partNumber=2" in line and not rewritten:
            rewritten.append(line)
            with weights.open("r+b") as fh:
                fh.write(os.urandom(1024))

    with FaultyProxy(host, port, on_request=rewrite) as proxy:
        (res,) = backup_model(folder, [dest], via(proxy.url), credentials=creds).destinations
    assert rewritten, "the upload never reached its second part"
    assert res.outcome == "failure" and "changed while it was being backed up" in res.error
    restore_model(dest, output_dir=tmp_path / "r", config=cfg, credentials=creds)
    assert _tree(tmp_path / "r") == good  # the previous backup, intact


def test_a_changed_file_is_never_written_over_what_the_committed_manifest_reads(target, model, tmp_path):
    dest, creds, cfg, (host, port), via = target
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    _update(model)
    with FaultyProxy(host, port, rules=[DropRule(f"PUT {_at(dest, MANIFEST)}", times=100)]) as proxy:
        backup_model(model, [dest], via(proxy.url), credentials=creds)
        writes = [line for line in proxy.seen if line.startswith(("PUT", "POST"))]
    old_paths = (_at(dest, "config.json"), _at(dest, "model.safetensors"))
    assert not any(w.split(" ")[1].split("?")[0] in old_paths for w in writes), writes
    assert any(_at(dest, "generation_config.json") in w for w in writes)  # a new path goes where it belongs
    assert any(_at(dest, OBJECTS) in w for w in writes)


_KILLED_BACKUP = """
import sys
from aptops.backup import BackupConfig, backup_model
dest, endpoint, key, secret, folder = sys.argv[1:6]
backup_model(folder, [dest], BackupConfig(endpoint_url=endpoint, max_retries=0),
             credentials={"aws_access_key_id": key, "aws_secret_access_key": secret})
"""


def test_a_backup_killed_with_sigkill_just_before_its_commit_leaves_the_last_one_restorable(s3_server, model, tmp_path):
    """The process itself dies (SIGKILL) with every changed object sent and the manifest not yet written."""
    import signal
    import subprocess
    import sys
    import threading

    creds = {"aws_access_key_id": s3_server.access_key, "aws_secret_access_key": s3_server.secret_key}
    cfg = BackupConfig(endpoint_url=s3_server.endpoint, backoff_s=0.01)
    dest = f"s3://kill-{uuid.uuid4().hex[:8]}/m"
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    first = _tree(model)
    _update(model)
    committing, release = threading.Event(), threading.Event()

    def hold_the_commit(line: str) -> bool:  # the manifest PUT waits here until the process is killed, then
        if line.startswith("PUT ") and _at(dest, MANIFEST) in line:  # never reaches the server
            committing.set()
            release.wait(60)
            return False
        return True

    host, port = s3_server.endpoint.split("//")[1].split(":")
    with FaultyProxy(host, int(port), on_request=hold_the_commit) as proxy:
        child = subprocess.Popen([sys.executable, "-c", _KILLED_BACKUP, dest, proxy.url, s3_server.access_key,
                                  s3_server.secret_key, str(model)])
        try:
            assert committing.wait(120), "the backup never reached its commit"
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        finally:
            release.set()
    assert child.returncode == -signal.SIGKILL
    restore_model(dest, output_dir=tmp_path / "r", config=cfg, credentials=creds)
    assert _tree(tmp_path / "r") == first
