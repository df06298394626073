"""The ``compress`` pipeline on one machine through kfp.local: clean → import → distill → prune → evaluate."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli import aptops
from tests.models import CORPUS


@pytest.mark.slow
def test_compress_pipeline_runs_locally(tiny_llama, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    out = aptops("run", "compress", "--local", "--param", f"model={tiny_llama}", "--param", f"source={corpus}",
                 "--param", "block_size=32", "--param", "distill_steps=2", "--param", "prune_steps=2",
                 "--param", "batch_size=4", "--param", "prune_method=neuron", "--param", "target_sparsity=0.5",
                 "--param", 'training_args={"use_cpu": true}', "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path,
                 env={"APTOPS_NO_PROGRESS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("compress-*")
    (pruned,) = run_dir.rglob("prune-model/pruned")
    summary = json.loads((pruned / "prune.json").read_text())
    assert summary["after_fine_tuning"]["params"] < summary["before"]["params"]
    lineage = json.loads((pruned / "aptops.json").read_text())
    assert lineage["stage"] == "prune" and lineage["parents"][-1]["stage"] == "distill"
    assert "ratio_params" in out.stdout


def test_compress_pipeline_places_distill_and_prune_on_the_gpu_pool(tmp_path):
    out = aptops("compile", "--pipeline", "compress", "--out", str(tmp_path), "--gpu-node-selector", "pool=gpu",
                 "--cpu-node-selector", "pool=cpu")
    assert out.returncode == 0, out.stderr
    spec = yaml.safe_load((tmp_path / "compress.yaml").read_text().split("\n---\n")[0])
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-distill-model"]["container"]["image"].endswith("aptops-distill:0.1.0")
    assert executors["exec-prune-model"]["container"]["image"].endswith("aptops-prune:0.1.0")
    assert executors["exec-prune-model"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
