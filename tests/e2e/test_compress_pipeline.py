"""The ``compress`` pipeline on one machine through kfp.local: clean → import → distill → prune → evaluate, on the
families users fine-tune besides Llama (Gemma 3, Qwen3-MoE: Llama runs through it in the demo and the CLI tests)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli import aptops
from tests.models import CORPUS


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma3", "qwen3_moe"])
def test_compress_pipeline_runs_locally(family, tmp_path):
    from tests.conftest import TINY_FAMILIES
    from tests.models import build_tiny_causal_lm

    model_type, fields = TINY_FAMILIES[family]
    model = build_tiny_causal_lm(tmp_path / f"tiny-{family}", model_type, num_hidden_layers=4, **fields | (
        {"layer_types": ["sliding_attention", "full_attention"] * 2} if family == "gemma3" else {}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    # Gemma 3 recovers through LoRA adapters at the recovery's own learning rate
    recovery = ["--param", "prune_lora_r=4", "--param", "prune_learning_rate=0.001"] if family == "gemma3" else []
    out = aptops("run", "compress", "--local", "--param", f"model={model}", "--param", f"source={corpus}", *recovery,
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
    recovered = lineage["config"]["training"]
    if family == "gemma3":  # merged: a plain model comes out
        assert recovered["lora_r"] == 4 and recovered["training_args"]["learning_rate"] == 0.001
        assert not (pruned / "adapter_config.json").exists()
    else:
        assert recovered["lora_r"] == 0 and recovered["training_args"]["learning_rate"] == 1e-4
    assert "ratio_params" in out.stdout
    config = json.loads((pruned / "config.json").read_text())
    assert config["model_type"] == model_type and config["num_hidden_layers"] < 4  # a student of fewer blocks
    if family == "gemma3":  # the student keeps the sliding / full pattern of the blocks it kept
        kept = config["aptops_student"]["kept_layers"]
        assert config["layer_types"] == [["sliding_attention", "full_attention"][i % 2] for i in kept]
    else:  # each expert lost half its neurons; every expert stays
        assert config["moe_intermediate_size"] == 16 and config["num_local_experts"] == 4  # transformers 5 spelling


def test_compress_pipeline_places_distill_and_prune_on_the_gpu_pool(tmp_path):
    out = aptops("compile", "--pipeline", "compress", "--out", str(tmp_path), "--gpu-node-selector", "pool=gpu",
                 "--cpu-node-selector", "pool=cpu")
    assert out.returncode == 0, out.stderr
    spec = yaml.safe_load((tmp_path / "compress.yaml").read_text().split("\n---\n")[0])
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-distill-model"]["container"]["image"].endswith("aptops-distill:0.1.0")
    assert executors["exec-prune-model"]["container"]["image"].endswith("aptops-prune:0.1.0")
    assert executors["exec-prune-model"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
