"""The ``multimodal`` pipeline on one machine through kfp.local: prepare train + eval → train."""

from __future__ import annotations

import json

import pytest
import yaml

from aptops.core.assets import minilm_folder
from aptops.multimodal.samples import build_sample_task
from tests.cli import aptops


@pytest.mark.slow
def test_multimodal_pipeline_runs_locally(tmp_path):
    task = build_sample_task(tmp_path / "task", classes=3, train_per_class=8, eval_per_class=4, image_size=32)
    out = aptops("run", "multimodal", "--local", "--param", f"train_manifest={task / 'train.jsonl'}",
                 "--param", f"eval_manifest={task / 'eval.jsonl'}", "--param", f"text_encoder={minilm_folder()}",
                 "--param", "epochs=2", "--param", "fusion=add", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path,
                 env={"APTOPS_NO_PROGRESS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("multimodal-*")
    (model,) = run_dir.rglob("train-multimodal-model/model")
    config = json.loads((model / "multimodal_config.json").read_text())
    assert config["modalities"] == ["text", "image", "audio"] and config["fusion"] == "add"
    (prepared,) = [p for p in run_dir.rglob("prepare-multimodal-data/dataset")]
    rows = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all((prepared / r["image"]).is_file() for r in rows)  # self-contained copy
    # the console says it briefly; every metric stays in summary.json and the run report
    assert "  ✓ train-multimodal-model " in out.stdout and "multimodal    eval accuracy" in out.stdout
    summary = {t["task"]: t["metrics"] for t in json.loads((run_dir / "summary.json").read_text())}
    assert "eval_accuracy_image_only" in summary["train-multimodal-model"]
    assert "eval_accuracy_image_only" in (run_dir / "report.html").read_text()


def test_multimodal_pipeline_trains_on_the_gpu_pool_and_prepares_on_the_cpu_pool(tmp_path):
    out = aptops("compile", "--pipeline", "multimodal", "--out", str(tmp_path), "--gpu-node-selector", "pool=gpu",
                 "--cpu-node-selector", "pool=cpu")
    assert out.returncode == 0, out.stderr
    docs = (tmp_path / "multimodal.yaml").read_text().split("\n---\n")
    executors = yaml.safe_load(docs[0])["deploymentSpec"]["executors"]
    train = executors["exec-train-multimodal-model"]["container"]
    assert train["image"].endswith("aptops-multimodal:0.1.0") and train["resources"]["accelerator"]["resourceCount"] == "1"
    assert "accelerator" not in executors["exec-prepare-multimodal-data"]["container"].get("resources", {})
    platform = yaml.safe_load(docs[1])["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-prepare-multimodal-data"]["nodeSelector"]["labels"] == {"pool": "cpu"}
    assert platform["exec-train-multimodal-model"]["nodeSelector"]["labels"] == {"pool": "gpu"}


def test_local_run_refuses_a_parameter_kfp_local_would_mangle(tmp_path):
    out = aptops("run", "multimodal", "--local", "--param", "train_manifest=/opt/python3.11/x.jsonl",
                 "--param", "eval_manifest=e.jsonl", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode != 0 and "python3" in out.stderr and "rewrites" in out.stderr
