"""Issue 25: what a hostile or careless user found in backup and restore, each case against real SeaweedFS."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid

import pytest

from aptops.backup import BackupConfig, backup_model, restore_model
from aptops.backup.manifest import list_model_files, parse_manifest
from aptops.core.errors import ConfigError, InvalidArtifactError, StorageError

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(s3_server):
    creds = {"aws_access_key_id": s3_server.access_key, "aws_secret_access_key": s3_server.secret_key}
    return s3_server, creds, BackupConfig(endpoint_url=s3_server.endpoint, backoff_s=0.01)


def _dest() -> str:
    return f"s3://hf-{uuid.uuid4().hex[:8]}/m"


def test_symlinks_are_skipped_with_a_warning_not_followed(s3, tiny_llama, tmp_path, caplog):
    """A link to /etc/passwd in the folder uploaded /etc/passwd's content and listed it in the manifest."""
    server, creds, cfg = s3
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    (model / "passwd_link").symlink_to("/etc/passwd")
    (model / "dir_link").symlink_to("/etc")
    (model / "inside_link.json").symlink_to(model / "config.json")
    caplog.set_level(logging.WARNING)
    dest = _dest()
    result = backup_model(model, [dest], cfg, credentials=creds)
    listed = {f["path"] for f in result.manifest["files"]}
    assert not listed & {"passwd_link", "dir_link", "inside_link.json"}
    assert "skipped 3 symbolic link(s)" in caplog.text and "passwd_link" in caplog.text
    bucket, prefix = dest[5:].split("/", 1)
    keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert f"{prefix}/passwd_link" not in keys
    # asked for: a link to a file inside the folder is backed up as that file; one leaving it never
    followed = backup_model(model, [_dest()], BackupConfig(endpoint_url=server.endpoint, follow_symlinks=True),
                            credentials=creds)
    listed = {f["path"]: f for f in followed.manifest["files"]}
    assert "inside_link.json" in listed and "passwd_link" not in listed and "dir_link" not in listed
    assert listed["inside_link.json"]["sha256"] == listed["config.json"]["sha256"]


def test_restore_refuses_a_folder_with_files_unless_overwrite(s3, tiny_llama, tmp_path):
    """Restoring into a folder holding the user's own files deleted them without a flag."""
    _server, creds, cfg = s3
    dest = _dest()
    backup_model(tiny_llama, [dest], cfg, credentials=creds)
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    with pytest.raises(ConfigError, match=r"already holds 1 entry; .* pass overwrite \(--overwrite\)"):
        restore_model(dest, output_dir=out, config=cfg, credentials=creds)
    assert (out / "thesis.txt").read_text() == "years of work" and not list(tmp_path.glob(".out.restore-*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    restore_model(dest, output_dir=empty, config=cfg, credentials=creds)  # an empty folder is fine
    restore_model(dest, output_dir=out, config=cfg, credentials=creds, overwrite=True)
    assert not (out / "thesis.txt").exists() and (out / "model.safetensors").is_file()


def test_leftover_cleanup_matches_exact_names_not_globs(s3, tiny_llama, tmp_path):
    """--out 'runs/o*' deleted a sibling .other.restore-abc folder when it cleaned leftovers."""
    _server, creds, cfg = s3
    dest = _dest()
    backup_model(tiny_llama, [dest], cfg, credentials=creds)
    sibling = tmp_path / ".other.restore-abc"
    sibling.mkdir()
    (sibling / "keep").write_text("mine")
    lookalike = tmp_path / ".o*.restore-notours"
    lookalike.mkdir()
    ours = tmp_path / f".o*.restore-{'0' * 16}"  # an earlier restore's staging folder into the same name
    ours.mkdir()
    restore_model(dest, output_dir=tmp_path / "o*", config=cfg, credentials=creds)
    assert (sibling / "keep").read_text() == "mine" and lookalike.is_dir() and not ours.exists()
    assert (tmp_path / "o*" / "config.json").is_file()


def test_restore_into_the_working_folder_is_refused_clearly(s3, tiny_llama, tmp_path, monkeypatch):
    """--out . failed with a bare ValueError and left a ..restore-* folder."""
    _server, creds, cfg = s3
    dest = _dest()
    backup_model(tiny_llama, [dest], cfg, credentials=creds)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", str(work)):
        with pytest.raises(ConfigError, match="it is the working folder"):
            restore_model(dest, output_dir=out, config=cfg, credentials=creds)
    assert list(work.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["work"]


def test_a_manifest_listing_a_file_and_a_folder_of_the_same_name_is_refused(s3, tmp_path):
    """A manifest listing x and x/y failed with IsADirectoryError and left its staging folder."""
    server, creds, cfg = s3
    bucket = f"fx-{uuid.uuid4().hex[:8]}"
    client = server.client()
    client.create_bucket(Bucket=bucket)
    doc = {"files": [{"path": "x", "size": 1, "sha256": "0" * 64}, {"path": "x/y", "size": 1, "sha256": "1" * 64}]}
    client.put_object(Bucket=bucket, Key="m/manifest.json", Body=json.dumps(doc).encode())
    with pytest.raises(StorageError, match="'x' is listed as a file and as a folder"):
        restore_model(f"s3://{bucket}/m", output_dir=tmp_path / "r", config=cfg, credentials=creds)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArtifactError, match="'a/b' is listed as a file and as a folder"):
        parse_manifest(json.dumps({"files": [{"path": "a/b/c", "size": 1, "sha256": "0" * 64},
                                             {"path": "a/b", "size": 1, "sha256": "0" * 64}]}))


def test_list_model_files_names_only_real_files(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("bb")
    os.symlink(tmp_path / "sub", tmp_path / "sub_link")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # a link to itself
    assert list_model_files(tmp_path) == [("a.txt", 1), ("sub/b.txt", 2)]
    assert list_model_files(tmp_path, follow_symlinks=True) == [("a.txt", 1), ("sub/b.txt", 2)]
