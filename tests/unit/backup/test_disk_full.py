"""Issue 32: a full disk said only "OSError" and stayed full. Now a restore (or a stage) that runs out of space
says so, with the path and the bytes needed, and removes what it half-wrote. A real 1 MiB tmpfs."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from aptops.backup import BackupConfig, backup_model, restore_model
from aptops.core.errors import DiskFullError
from tests.cli import aptops


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}): needs root with CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.integration
def test_a_restore_onto_a_full_disk_says_so_and_gives_the_space_back(s3_server, small_disk, tmp_path):
    creds = {"aws_access_key_id": s3_server.access_key, "aws_secret_access_key": s3_server.secret_key}
    cfg = BackupConfig(endpoint_url=s3_server.endpoint, backoff_s=0.01)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024))  # 3 MiB onto a 1 MiB disk
    dest = f"s3://full-{uuid.uuid4().hex[:8]}/m"
    assert backup_model(model, [dest], cfg, credentials=creds).ok
    with pytest.raises(DiskFullError, match=r"is full: this backup needs 3,145,7\d\d bytes"):
        restore_model([dest, dest], output_dir=small_disk / "restored", config=cfg, credentials=creds)
    assert list(small_disk.iterdir()) == []  # the partial restore is gone, the space given back
    proc = aptops("restore", dest, "--out", str(small_disk / "restored"),
                  env={"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": s3_server.access_key,
                       "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    assert proc.returncode == 1 and "is full" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in small_disk.iterdir()] == ["restored.metrics"]  # the run's failure, recorded


def test_a_stage_that_fills_the_disk_says_so_and_leaves_nothing(small_disk, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w") as fh:  # about 3 MiB of distinct text, more than the disk holds even compressed
        for i in range(6000):
            fh.write(json.dumps({"text": f"document {i}: " + os.urandom(256).hex()}) + "\n")
    proc = aptops("data", "clean", str(corpus), "--out", str(small_disk / "clean"))
    assert proc.returncode == 1, proc.stderr
    assert "the disk is full" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in small_disk.iterdir() if not p.name.endswith(".metrics")] == []
