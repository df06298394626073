"""Backups on a Hub repo through the real huggingface_hub client, against the stand-in Hub."""

from __future__ import annotations

import json
import logging
import os

import pytest

from aptops.backup import BackupConfig, backup_model, backup_to_huggingface, list_backups, restore_from_cloud
from aptops.core.errors import StorageError


def _model(folder):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(300_000))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "sub").mkdir()
    (folder / "sub" / "tokenizer.json").write_text(json.dumps({"vocab": list(range(50))}))
    return folder


def test_backup_is_one_tagged_commit_and_restores_verified(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    model = _model(tmp_path / "m")
    repo = f"{hub.user}/backups"
    result = backup_model(model, [f"hf://{repo}/models/m"], BackupConfig(max_retries=0))
    assert result.ok, result.destinations
    commits_before = len(hub.state.repos[("model", repo)].commits)
    files = hub.files(repo)
    assert set(files) >= {"models/m/model.safetensors", "models/m/config.json", "models/m/sub/tokenizer.json",
                          "models/m/manifest.json"}
    assert "models/m/model.safetensors" in hub.lfs_paths(repo)
    assert hub.state.repos[("model", repo)].private  # backups are private unless asked otherwise

    # unchanged files are not sent again; the second backup is another tagged version
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "v": 2}))
    again = backup_model(model, [f"hf://{repo}/models/m"], BackupConfig(max_retries=0)).destinations[0]
    assert (again.files_sent, again.files_skipped) == (1, 2)
    assert len(hub.state.repos[("model", repo)].commits) == commits_before + 1  # one commit per backup
    versions = list_backups(f"hf://{repo}")
    assert len(versions) == 2

    restored = restore_from_cloud(f"hf://{repo}/models/m", None, tmp_path / "latest")
    assert json.loads((tmp_path / "latest" / "config.json").read_text())["v"] == 2
    assert restored.metrics["files"] == 3
    first = versions[0]["tag"]
    restore_from_cloud(f"hf://{repo}@{first}/models/m", None, tmp_path / "first")
    assert "v" not in json.loads((tmp_path / "first" / "config.json").read_text())
    assert (tmp_path / "first" / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


def test_hub_and_s3_in_parallel_and_bad_token_reported_without_the_token(hub, s3_server, tmp_path, monkeypatch,
                                                                         caplog):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    bad = "hf_" + "q" * 34
    monkeypatch.setenv("HF_TOKEN", bad)
    caplog.set_level(logging.INFO)
    model = _model(tmp_path / "m")
    result = backup_model(model, ["s3://hf-parallel/m", f"hf://{hub.user}/refused"], BackupConfig(max_retries=1))
    by_dest = {d.destination: d for d in result.destinations}
    assert by_dest["s3://hf-parallel/m"].outcome == "success"
    refused = by_dest[f"hf://{hub.user}/refused"]
    assert refused.outcome == "failure" and "401" in refused.error and "credentials" in refused.error
    assert refused.retries == 0  # a refused token is not transient
    assert bad not in caplog.text and bad not in refused.error


def test_legacy_backup_to_huggingface_and_missing_backup(hub, tmp_path):
    model = _model(tmp_path / "m")
    out = backup_to_huggingface(model, f"{hub.user}/legacy", token=hub.token)
    assert out.ok and out.destinations[0].files_sent == 3
    with pytest.raises(StorageError, match="no complete backup there"):
        restore_from_cloud(f"hf://{hub.user}/never-backed-up", None, tmp_path / "r")
    assert not (tmp_path / "r").exists()
