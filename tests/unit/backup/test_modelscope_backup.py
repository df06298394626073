"""Backups on ModelScope through the real modelscope client, against the stand-in ModelScope hub."""

from __future__ import annotations

import json
import logging
import os

import pytest

from aptops.backup import BackupConfig, backup_model, backup_to_modelscope, restore_from_cloud
from aptops.core.errors import StorageError
from tests.services.modelscope_standin import ModelScopeStandIn


@pytest.fixture
def ms(monkeypatch):
    with ModelScopeStandIn() as server:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.endpoint)
        monkeypatch.setenv("MODELSCOPE_API_TOKEN", server.token)
        yield server


def _model(folder):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(250_000))
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps({"你好": 1, "世界": 2}, ensure_ascii=False))
    return folder


def test_backup_restore_versions_and_skips(ms, tmp_path):
    model = _model(tmp_path / "m")
    repo = f"{ms.user}/backups"
    first = backup_model(model, [f"modelscope://{repo}/qwen"], BackupConfig(max_retries=0))
    assert first.ok, first.destinations
    stored = ms.files(repo)
    assert stored["qwen/model.safetensors"] == (model / "model.safetensors").read_bytes()
    assert "qwen/manifest.json" in stored and ms.state.repos[("model", repo)].private
    assert len(ms.state.blobs_verified) == 1  # the weights went up as a verified LFS blob

    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "v": 2}))
    second = backup_model(model, [f"modelscope://{repo}/qwen"], BackupConfig(max_retries=0)).destinations[0]
    assert (second.files_sent, second.files_skipped) == (1, 2)
    tags = sorted(t for t in ms.state.repos[("model", repo)].tags)
    assert len(tags) == 2 and all(t.startswith("backup-") for t in tags)

    restore_from_cloud(f"modelscope://{repo}/qwen", None, tmp_path / "latest")
    assert json.loads((tmp_path / "latest" / "config.json").read_text())["v"] == 2
    assert (tmp_path / "latest" / "tokenizer" / "vocab.json").read_text() == (model / "tokenizer" / "vocab.json").read_text()
    restore_from_cloud(f"modelscope://{repo}@{tags[0]}/qwen", None, tmp_path / "first")
    assert "v" not in json.loads((tmp_path / "first" / "config.json").read_text())


def test_corrupt_blob_on_modelscope_falls_back_to_the_hub(ms, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub.token)
    model = _model(tmp_path / "m")
    repo = f"{ms.user}/fallback"
    result = backup_model(model, [f"modelscope://{repo}", f"hf://{hub.user}/fallback"], BackupConfig(max_retries=0))
    assert result.ok
    files = ms.state.repos[("model", repo)].branches["master"][-1]
    data, lfs = files["model.safetensors"]
    files["model.safetensors"] = (bytes([data[0] ^ 1]) + data[1:], lfs)  # one flipped bit at rest
    out = restore_from_cloud([f"modelscope://{repo}", f"hf://{hub.user}/fallback"], None, tmp_path / "r")
    assert out.outputs["source"].startswith("hf://")
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


def test_refused_token_is_reported_without_it(ms, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms-not-the-token-0123456789")
    caplog.set_level(logging.INFO)
    result = backup_model(_model(tmp_path / "m"), [f"modelscope://{ms.user}/x"], BackupConfig(max_retries=2))
    (dest,) = result.destinations
    assert dest.outcome == "failure" and "401" in dest.error and "credentials" in dest.error and dest.retries == 0
    assert "ms-not-the-token" not in caplog.text + dest.error
    with pytest.raises(StorageError):
        restore_from_cloud(f"modelscope://{ms.user}/x", None, tmp_path / "r")


def test_legacy_backup_to_modelscope(ms, tmp_path):
    out = backup_to_modelscope(_model(tmp_path / "m"), f"{ms.user}/legacy", token=ms.token, endpoint=ms.endpoint)
    assert out.ok and out.destinations[0].files_sent == 3
