"""Folders of many small files travel as one archive, and come back only as the manifest lists them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid

import pytest

from aptops.backup import BackupConfig, backup_model, restore_from_cloud
from aptops.backup.manifest import ARCHIVE, FileEntry, extract_members, parse_manifest
from aptops.core.errors import InvalidArtifactError, StorageError


def _tree(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"}



def _many_small(folder, n=400):
    for i in range(n):
        sub = folder / f"shard-{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"piece-{i:04d}.json").write_text(json.dumps({"i": i, "text": "数据" * (i % 13)}, ensure_ascii=False))
    (folder / "model.safetensors").write_bytes(os.urandom(200_000))
    return folder


def test_small_files_go_as_one_archive_and_come_back_verified(s3_env, tmp_path):
    model = _many_small(tmp_path / "m")
    dest = f"s3://pack-{uuid.uuid4().hex[:6]}/m"
    cfg = BackupConfig(pack_small_files_kb=64)
    result = backup_model(model, [dest], cfg)
    (d,) = result.destinations
    assert d.outcome == "success" and d.files_sent == 2  # the archive and the one large file
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=dest[5:].split("/")[0])["Contents"]]
    assert sorted(k.split("/", 1)[1] for k in keys) == sorted([ARCHIVE, "manifest.json", "model.safetensors"])
    assert sum(1 for f in result.manifest["files"] if f.get("archive") == ARCHIVE) == 400

    again = backup_model(model, [dest], cfg).destinations[0]
    assert (again.files_sent, again.files_skipped) == (0, 2)  # a reproducible archive: unchanged, skipped

    restored = restore_from_cloud(dest, None, tmp_path / "r")
    assert _tree(tmp_path / "r") == _tree(model)
    assert not (tmp_path / "r" / ARCHIVE).exists() and restored.metrics["files"] == 401


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(("members", "message"), [
    ([("a.json", b"{}", "file"), ("../evil", b"x", "file")], "does not list"),
    ([("a.json", b"{}", "file"), ("/etc/cron.d/x", b"x", "file")], "does not list"),
    ([("a.json", b"{}", "symlink")], "not a file"),
    ([("a.json", b"{}", "file"), ("extra.json", b"x", "file")], "does not list"),
    ([("a.json", b"{}!", "file")], "manifest says"),
    ([], "lacks 1 listed file"),
])
def test_hostile_archives_are_refused(tmp_path, members, message):
    archive = tmp_path / "in.tar"
    archive.write_bytes(_tar(members))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidArtifactError, match=message):
        extract_members(archive, out, [FileEntry("a.json", 2, hashlib.sha256(b"{}").hexdigest(), "in.tar")])
    assert not (tmp_path / "evil").exists() and not any(out.rglob("x"))


def test_manifest_archive_references_are_checked():
    sha = "0" * 64
    doc = {"files": [{"path": "a.json", "size": 1, "sha256": sha, "archive": "../outside.tar"}]}
    with pytest.raises(InvalidArtifactError, match="unsafe archive"):
        parse_manifest(json.dumps(doc))
    doc = {"files": [{"path": "a.json", "size": 1, "sha256": sha, "archive": "missing.tar"}]}
    with pytest.raises(InvalidArtifactError, match="does not list"):
        parse_manifest(json.dumps(doc))


def test_a_tampered_archive_is_not_restored(s3_env, tmp_path):
    model = _many_small(tmp_path / "m", n=20)
    bucket = f"tamper-{uuid.uuid4().hex[:6]}"
    assert backup_model(model, [f"s3://{bucket}/m"], BackupConfig(pack_small_files_kb=64)).ok
    client = s3_env.client()
    manifest = json.loads(client.get_object(Bucket=bucket, Key="m/manifest.json")["Body"].read())
    evil = _tar([("../../escape.txt", b"pwned", "file")])
    for f in manifest["files"]:
        if f["path"] == ARCHIVE:  # an attacker who can write both objects makes them agree
            f["size"], f["sha256"] = len(evil), hashlib.sha256(evil).hexdigest()
    client.put_object(Bucket=bucket, Key=f"m/{ARCHIVE}", Body=evil)
    client.put_object(Bucket=bucket, Key="m/manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(StorageError, match="does not list"):
        restore_from_cloud(f"s3://{bucket}/m", None, tmp_path / "r")
    assert not (tmp_path / "r").exists() and not list(tmp_path.rglob("escape.txt"))
