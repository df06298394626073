"""Corpora read where they are kept: a JSONL and a Parquet corpus on the local SeaweedFS S3, cleaned in place by the
data stage (library and CLI) row for row as a local copy is, through prefixes and globs; missing buckets, keys and
wrong credentials named; and a Hub dataset (the Hub stand-in) through hf://."""

from __future__ import annotations

import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aptops.core.errors import ArtifactNotFoundError, StorageError
from aptops.core.remote import is_uri, list_remote_files
from aptops.data import CleanConfig, clean_dataset
from aptops.data.io import read_dataset
from tests.cli import aptops
from tests.unit.data.corpora import lee_news


@pytest.fixture
def corpus(s3_env, tmp_path):
    """The same news as a local folder and under s3://<bucket>/corpus/ (JSONL + Parquet with small row groups)."""
    news = list(lee_news())
    local = tmp_path / "corpus"
    local.mkdir()
    half = len(news) // 2
    (local / "a.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(news[:half])))
    pq.write_table(pa.table({"text": news[half:]}), local / "b.parquet", row_group_size=37)
    bucket = f"src-{uuid.uuid4().hex[:6]}"
    client = s3_env.client()
    client.create_bucket(Bucket=bucket)
    for f in sorted(local.iterdir()):
        client.upload_file(str(f), bucket, f"corpus/{f.name}")
    client.put_object(Bucket=bucket, Key="corpus/.hidden/skip.jsonl", Body=b'{"text": "hidden"}\n')
    return local, bucket, len(news)


def _rows(folder):
    return read_dataset(folder).column("text").to_pylist()


def test_a_corpus_on_s3_is_cleaned_in_place_exactly_as_a_local_copy(corpus, tmp_path):
    local, bucket, n = corpus
    assert is_uri(f"s3://{bucket}/corpus/") and not is_uri(str(local))
    files = list_remote_files(f"s3://{bucket}/corpus/")
    assert [f.name for f in files] == ["a.jsonl", "b.parquet"]  # hidden objects skipped
    config = CleanConfig(strategy="basic")
    clean_dataset(str(local), output_dir=tmp_path / "local", config=config)
    result = clean_dataset(f"s3://{bucket}/corpus/", output_dir=tmp_path / "remote", config=config)
    assert _rows(tmp_path / "remote") == _rows(tmp_path / "local") and result.metrics["rows_in"] == n
    # a glob picks files by name
    clean_dataset(f"s3://{bucket}/corpus/*.parquet", output_dir=tmp_path / "glob", config=config)
    assert _rows(tmp_path / "glob") == _rows(tmp_path / "local")[n // 2:]


def test_the_cli_reads_s3_and_names_what_is_wrong(corpus, s3_env, tmp_path):
    _, bucket, _ = corpus
    env = {"AWS_ACCESS_KEY_ID": s3_env.access_key, "AWS_SECRET_ACCESS_KEY": s3_env.secret_key, "AWS_ENDPOINT_URL": s3_env.endpoint}
    out = aptops("data", "clean", f"s3://{bucket}/corpus/", "--out", str(tmp_path / "cli"), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(_rows(tmp_path / "cli")) > 100
    missing = aptops("data", "clean", f"s3://no-such-{uuid.uuid4().hex[:6]}/x/", "--out", str(tmp_path / "m"), env=env)
    assert missing.returncode != 0 and "no-such-" in missing.stderr and not (tmp_path / "m").exists()
    wrong = aptops("data", "clean", f"s3://{bucket}/corpus/", "--out", str(tmp_path / "w"),
                   env={**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong.returncode != 0 and f"s3://{bucket}/corpus/" in wrong.stderr and "credentials" in wrong.stderr
    assert "not-the-secret" not in wrong.stdout + wrong.stderr and not (tmp_path / "w").exists()


def test_missing_keys_are_named(corpus):
    _, bucket, _ = corpus
    with pytest.raises(ArtifactNotFoundError, match=rf"s3://{bucket}/nothing-here/ names no data files"):
        list_remote_files(f"s3://{bucket}/nothing-here/")
    with pytest.raises((ArtifactNotFoundError, StorageError), match=r"s3://"):
        list_remote_files(f"s3://{bucket}/corpus/absent.jsonl")


def test_a_hub_dataset_is_read_through_hf_uris(hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    repo = f"{hub.user}/news-{uuid.uuid4().hex[:6]}"
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo, repo_type="dataset")
    news = list(lee_news())[:60]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in news))
    api.upload_file(path_or_fileobj=str(data), path_in_repo="data/train.jsonl", repo_id=repo, repo_type="dataset")
    clean_dataset(f"hf://datasets/{repo}/data/", output_dir=tmp_path / "hf", config=CleanConfig(strategy="basic"))
    clean_dataset(str(data), output_dir=tmp_path / "local", config=CleanConfig(strategy="basic"))
    assert _rows(tmp_path / "hf") == _rows(tmp_path / "local")


def test_training_reads_the_corpus_on_s3(corpus, tiny_llama, tmp_path):
    """train run takes the same URI: the model trains on the rows the data stage reads there."""
    from aptops.lm import load_text_dataset
    from aptops.train import TrainConfig, train_with_hf_trainer

    local, bucket, n = corpus
    remote = load_text_dataset(f"s3://{bucket}/corpus/", "text")
    assert remote.num_rows == n and remote["text"][:3] == load_text_dataset(str(local / "a.jsonl"), "text")["text"][:3]
    result = train_with_hf_trainer(str(tiny_llama), None, f"s3://{bucket}/corpus/*.jsonl", tmp_path / "run", TrainConfig(
        block_size=32, eval_fraction=0.1, training_args={"max_steps": 1, "per_device_train_batch_size": 2,
                                                         "use_cpu": True, "report_to": "none"}))
    assert result.metrics["global_step"] == 1
    assert f"s3://{bucket}/corpus/*.jsonl" in (tmp_path / "run" / "aptops.json").read_text()


def test_a_file_over_https_is_read_in_place(tmp_path):
    """http(s):// names one file (a server lists nothing): read through fsspec's HTTP file system."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    from tests.services.http import LocalServer

    news = list(lee_news())[:40]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "news.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in news))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    with LocalServer(functools.partial(Quiet, directory=str(tmp_path / "site"))) as site:
        clean_dataset(f"{site.url}/news.jsonl", output_dir=tmp_path / "web", config=CleanConfig(strategy="basic"))
        with pytest.raises((ArtifactNotFoundError, StorageError), match=r"absent\.jsonl"):
            list_remote_files(f"{site.url}/absent.jsonl")
    clean_dataset(str(tmp_path / "site" / "news.jsonl"), output_dir=tmp_path / "local",
                  config=CleanConfig(strategy="basic"))
    assert _rows(tmp_path / "web") == _rows(tmp_path / "local")


def test_big_jsonl_and_text_files_are_read_block_by_block_row_for_row(tmp_path, monkeypatch, s3_env):
    """A JSONL or text file bigger than a block is read a block of whole lines at a time (memory flat in the file's
    size), locally and on S3, with the same rows as one whole read: fortune records spanning blocks, a GBK file whose
    encoding is settled on the first block, row numbers in errors counted across blocks."""
    from aptops.core import sources

    news = list(lee_news())
    (tmp_path / "n.jsonl").write_text("".join(json.dumps({"text": t, "i": i}) + "\n" for i, t in enumerate(news)))
    (tmp_path / "f.txt").write_text("".join(f"{t[:300]}\nsecond line {i}\n%\n" for i, t in enumerate(news)))
    (tmp_path / "zh.txt").write_bytes("".join(f"第{i}条新闻，今天天气很好。\n" for i in range(3000)).encode("gbk"))

    def rows(path, **kw):
        return [t for b in sources.read_batches(path, **kw) for t in b.column("text").to_pylist()]

    whole = {name: rows(tmp_path / name, **kw) for name, kw in
             (("n.jsonl", {}), ("f.txt", {"separator": "%"}), ("zh.txt", {}))}
    monkeypatch.setattr(sources, "BLOCK_BYTES", 4096)
    for name, kw in (("n.jsonl", {}), ("f.txt", {"separator": "%"}), ("zh.txt", {})):
        assert rows(tmp_path / name, **kw) == whole[name], name
    assert len(whole["f.txt"]) == len(news) and whole["zh.txt"][2999] == "第2999条新闻，今天天气很好。"
    bucket = f"big-{uuid.uuid4().hex[:6]}"
    s3_env.client().create_bucket(Bucket=bucket)
    s3_env.client().upload_file(str(tmp_path / "f.txt"), bucket, "c/f.txt")
    assert rows(f"s3://{bucket}/c/f.txt", separator="%") == whole["f.txt"]
    # CSV through pyarrow's streaming reader, a block (twice the field limit) at a time, quoted newlines included;
    # a GBK CSV is detected and decoded whole, as before
    import csv as csv_module

    with (tmp_path / "n.csv").open("w", newline="") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(["text", "i"])
        for i in range(14):
            writer.writerows([f"{t}\nline two of {i}", i] for t in news)
    streamed = rows(tmp_path / "n.csv", max_field_mb=1)
    assert (tmp_path / "n.csv").stat().st_size > 4 << 20 and len(streamed) == 14 * len(news)
    assert streamed == sources._read_file(tmp_path / "n.csv", "csv", "text", None, (64, 64 << 20)).column(
        "text").to_pylist()
    (tmp_path / "zh.csv").write_bytes(("text\n" + "".join(f"第{i}条新闻\n" for i in range(50))).encode("gbk"))
    assert rows(tmp_path / "zh.csv")[49] == "第49条新闻"
    # a deep row far into the file is named by its row number in the file
    (tmp_path / "deep.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in news[:200])
                                         + '{"text": ' + "[" * 100 + "]" * 100 + "}\n")
    with pytest.raises(Exception, match="row 200 nests"):
        rows(tmp_path / "deep.jsonl")
    # a line over the limit is refused once that much of it is read, not after the whole file
    (tmp_path / "long.jsonl").write_text('{"text": "' + "x" * (2 << 20) + '"}\n')
    with pytest.raises(Exception, match="line limit"):
        rows(tmp_path / "long.jsonl", max_field_mb=1)
