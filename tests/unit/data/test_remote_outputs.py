"""Artifacts written to object storage (``--out s3://...``) on the local SeaweedFS S3: the data stage's steps chained
through the bucket with no local folder between them, row for row as the same steps run locally; a publish killed
half-way leaves nothing any reader takes as complete, and the next run replaces it; outputs that would destroy what
aptops did not make are refused before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from aptops.core.errors import ArtifactNotFoundError, ConfigError, OutputExistsError, StorageError
from aptops.core.remote import list_remote_files
from aptops.core.remote_artifacts import check_remote_output, fetch_artifact, publish_artifact, remote_files
from aptops.data import CleanConfig, clean_dataset, dedup_dataset
from aptops.data.io import read_dataset
from tests.cli import aptops
from tests.unit.data.corpora import lee_news


@pytest.fixture
def bucket(s3_env):
    name = f"out-{uuid.uuid4().hex[:6]}"
    s3_env.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def news(tmp_path):
    texts = list(lee_news())
    path = tmp_path / "news.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts + texts[:25]))  # 25 exact duplicates
    return path


def _env(s3):
    return {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_ENDPOINT_URL": s3.endpoint}


def _rows(folder):
    return read_dataset(folder).column("text").to_pylist()


def test_data_steps_chain_through_s3_as_they_do_through_folders(news, bucket, s3_env, tmp_path):
    env, base = _env(s3_env), f"s3://{bucket}/runs"
    clean = aptops("data", "clean", str(news), "--out", f"{base}/clean", env=env, cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    objects = remote_files(f"{base}/clean")
    assert {"result.json", "stats.json", "config.json", "part-00000.parquet"} <= set(objects)
    assert ".aptops-in-progress.json" not in objects and not (tmp_path / "clean").exists()
    assert (tmp_path / "clean.metrics").is_dir()  # the metrics textfile, beside where the command ran
    assert f"{base}/clean" in clean.stdout
    dedup = aptops("data", "dedup", f"{base}/clean", "--out", f"{base}/dedup", env=env, cwd=tmp_path)
    assert dedup.returncode == 0, dedup.stdout + dedup.stderr
    stats = aptops("data", "stats", f"{base}/dedup", "--out", str(tmp_path / "stats"), env=env, cwd=tmp_path)
    assert stats.returncode == 0, stats.stdout + stats.stderr

    clean_dataset(news, output_dir=tmp_path / "l-clean", config=CleanConfig())
    dedup_dataset(tmp_path / "l-clean", output_dir=tmp_path / "l-dedup")
    fetched = fetch_artifact(f"{base}/dedup", tmp_path / "fetched")
    assert _rows(fetched) == _rows(tmp_path / "l-dedup") and len(_rows(fetched)) < len(_rows(tmp_path / "l-clean"))
    result = json.loads((fetched / "result.json").read_text())
    assert result["outputs"]["dataset"] == f"{base}/dedup"  # where it is, not where it was staged
    assert json.loads((tmp_path / "stats" / "result.json").read_text())["metrics"]["rows"] == len(_rows(fetched))
    # the training stages read the published dataset in place
    from aptops.lm import load_text_dataset

    assert load_text_dataset(f"{base}/dedup/", "text")["text"] == _rows(fetched)

    again = aptops("data", "clean", str(news), "--out", f"{base}/clean", env=env, cwd=tmp_path)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    replaced = aptops("data", "clean", str(news), "--out", f"{base}/clean", "--overwrite", "--set", "shard_rows=100",
                      env=env, cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    now = remote_files(f"{base}/clean")
    parts = sorted(n for n in now if n.startswith("part-"))
    assert len(parts) > 1 and _rows(fetch_artifact(f"{base}/clean", tmp_path / "re")) == _rows(tmp_path / "l-clean")
    assert all(n in now for n in ("result.json", "stats.json")) and ".aptops-in-progress.json" not in now


def test_outputs_that_would_destroy_what_aptops_did_not_make_are_refused_before_work(news, bucket, s3_env, tmp_path):
    env = _env(s3_env)
    s3_env.client().put_object(Bucket=bucket, Key="mine/notes.txt", Body=b"keep me")
    mine = aptops("data", "clean", str(news), "--out", f"s3://{bucket}/mine", "--overwrite", env=env, cwd=tmp_path)
    assert mine.returncode != 0 and "did not make" in mine.stderr and "notes.txt" in mine.stderr
    assert remote_files(f"s3://{bucket}/mine") == {"notes.txt": 7}
    missing = aptops("data", "clean", str(news), "--out", f"s3://no-such-{bucket}/x", env=env, cwd=tmp_path)
    assert missing.returncode != 0 and "does not exist" in missing.stderr and f"no-such-{bucket}" in missing.stderr
    hub = aptops("data", "clean", str(news), "--out", "hf://datasets/me/x", env=env, cwd=tmp_path)
    assert hub.returncode != 0 and "hub publish" in hub.stderr
    wrong = aptops("data", "clean", str(news), "--out", f"s3://{bucket}/w", env={**env, "AWS_SECRET_ACCESS_KEY": "nope-x"}, cwd=tmp_path)
    assert wrong.returncode != 0 and "credentials" in wrong.stderr and "nope-x" not in wrong.stdout + wrong.stderr
    with pytest.raises(ConfigError, match="whole bucket"):
        check_remote_output(f"s3://{bucket}")
    assert not (tmp_path / "clean").exists()


_KILLED = """
import sys, time, pathlib
from aptops.core.remote_artifacts import publish_artifact
def pause(name, seen=[]):
    seen.append(name)
    if len(seen) == 2:
        pathlib.Path(sys.argv[3]).touch()
        time.sleep(600)
publish_artifact(sys.argv[1], sys.argv[2], overwrite=True, on_file=pause)
"""


def _killed_publish(folder, uri, flag):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(folder), uri, str(flag)], env=dict(os.environ))
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the publish ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_publish_killed_half_way_is_never_read_as_complete(news, bucket, s3_env, tmp_path):
    from aptops.lm import load_text_dataset

    small = clean_dataset(news, output_dir=tmp_path / "a", config=CleanConfig(shard_rows=50)).metrics["shards"]
    assert small > 4
    uri = f"s3://{bucket}/runs/clean"
    _killed_publish(tmp_path / "a", uri, tmp_path / "flag1")
    left = remote_files(uri)
    assert "result.json" not in left and ".aptops-in-progress.json" in left and len(left) >= 3
    for read in (lambda: fetch_artifact(uri, tmp_path / "f1"), lambda: list_remote_files(uri + "/"),
                 lambda: load_text_dataset(uri, "text")):
        with pytest.raises(ArtifactNotFoundError, match="unfinished"):
            read()
    # the next run of the same stage replaces its own unfinished output without --overwrite
    publish_artifact(tmp_path / "a", uri)
    assert _rows(fetch_artifact(uri, tmp_path / "f2")) == _rows(tmp_path / "a")

    # replacing a complete artifact: killed half-way, the old one no longer reads as complete either
    clean_dataset(news, output_dir=tmp_path / "b", config=CleanConfig(shard_rows=400))
    _killed_publish(tmp_path / "b", uri, tmp_path / "flag2")
    with pytest.raises(ArtifactNotFoundError, match="unfinished"):
        fetch_artifact(uri, tmp_path / "f3")
    publish_artifact(tmp_path / "b", uri)
    final = remote_files(uri)
    assert sorted(n for n in final if n.startswith("part-")) == sorted(p.name for p in (tmp_path / "b").glob("part-*"))
    assert _rows(fetch_artifact(uri, tmp_path / "f4")) == _rows(tmp_path / "b")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        publish_artifact(tmp_path / "a", uri)
    with pytest.raises((StorageError, ArtifactNotFoundError)):
        fetch_artifact(f"s3://{bucket}/runs/nothing", tmp_path / "f5")


def test_a_stage_function_given_a_uri_says_how_to_write_there(news, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    for out in ("s3://bucket/clean", Path("s3://bucket/clean")):
        with pytest.raises(ConfigError, match="staged_output"):
            clean_dataset(news, output_dir=out)
        with pytest.raises(ConfigError, match="staged_output"):
            dedup_dataset(tmp_path, output_dir=out)
    assert not (tmp_path / "s3:").exists()
