"""The ``train`` pipeline run on one machine through kfp.local: clean → import → train → evaluate → publish, the corpus
read in place from S3 (the local SeaweedFS)."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.cli import aptops
from tests.models import CORPUS


@pytest.mark.slow
def test_train_pipeline_runs_locally_and_publishes(tiny_llama, hub, s3_env, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    bucket = f"corpus-{uuid.uuid4().hex[:6]}"
    s3_env.client().create_bucket(Bucket=bucket)
    s3_env.client().upload_file(str(corpus), bucket, "text/corpus.jsonl")
    repo = f"{hub.user}/pipeline-model"
    out = aptops("run", "train", "--local", "--param", f"model={tiny_llama}", "--param", f"source=s3://{bucket}/text/",
                 "--param", "block_size=32", "--param", "max_steps=3", "--param", "learning_rate=0.001",
                 "--param", f"publish_repo={repo}", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path,
                 env={"HF_TOKEN": hub.token})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert hub.token not in out.stdout + out.stderr
    for metric in ("perplexity_trained", "perplexity_base", "tokens_per_second", "rows_out"):
        assert metric in out.stdout
    (run_dir,) = (tmp_path / "runs").glob("train-*")
    (cleaned,) = run_dir.rglob("clean-text/dataset")
    assert json.loads((cleaned / "stats.json").read_text())["rows_in"] == len(CORPUS)
    (trained,) = run_dir.rglob("train-model/trained")
    assert (trained / "result.json").is_file() and (trained / "model.safetensors").is_file()
    files = hub.files(repo)
    assert files["model.safetensors"] == (trained / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    perplexity = json.loads((trained / "metrics.json").read_text())["perplexity"]
    reported = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert reported["perplexity"] == pytest.approx(perplexity, rel=1e-5)
    assert hub.state.repos[("model", repo)].private


def test_train_pipeline_compiles_with_gpu_placement_and_the_hf_secret(tmp_path):
    out = aptops("compile", "--pipeline", "train", "--out", str(tmp_path), "--gpu-node-selector",
                 "pool=gpu", "--secret", "hf=hf-token", "--secret", "modelscope=ms-token")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "train.yaml").read_text()
    docs = list(yaml.safe_load_all(text))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-train-model"]["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert platform["exec-clean-text"]["nodeSelector"]["labels"] == {"aptops.io/pool": "cpu"}
    secrets = platform["exec-export-model"]["secretAsEnv"][0]
    assert secrets["secretName"] == "hf-token" and {"envVar": "HF_TOKEN", "secretKey": "HF_TOKEN"} in secrets["keyToEnv"]
    # the data stage reads corpora in place (hf://datasets/...), so it sees the Hub token, and nothing it never uses
    assert {x["secretName"] for x in platform["exec-clean-text"]["secretAsEnv"]} == {"hf-token"}
    assert {x["secretName"] for x in platform["exec-export-model"]["secretAsEnv"]} == {"hf-token"}
    executors = docs[0]["deploymentSpec"]["executors"]
    assert executors["exec-train-model"]["container"]["image"].endswith("aptops-train:0.1.0")
    assert executors["exec-train-model"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
