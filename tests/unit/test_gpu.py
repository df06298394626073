"""The CUDA paths of the GPU-pool stages: train, debug, distill, prune and multimodal on a CUDA device, in bf16
where the stage offers it. Marked ``gpu``: skipped where no CUDA device is present (CI); run them on a GPU
machine with ``pytest -m gpu`` (scripts/gpu_check.sh)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aptops.core.artifacts import is_complete, read_json
from tests.models import CORPUS

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


def _dataset():
    import datasets

    return datasets.Dataset.from_dict({"text": CORPUS})


def _debug_memory(out) -> dict:
    return json.loads((out / "debug" / "report.json").read_text())["memory"]


def test_bf16_training_on_cuda_with_the_debugger(tiny_llama, tmp_path):
    from aptops.train import TrainConfig, train_with_hf_trainer

    cfg = TrainConfig(block_size=32, eval_fraction=0.1, debug=True, debug_interval=1, training_args={
        "max_steps": 6, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 3, "bf16": True,
        "learning_rate": 1e-3})
    out = tmp_path / "bf16"
    result = train_with_hf_trainer(str(tiny_llama), None, _dataset(), out, cfg)
    m = result.metrics
    assert is_complete(out) and m["global_step"] == 6 and math.isfinite(m["train_loss"])
    assert m["debug_nan_events"] == 0 and m["debug_max_grad_norm"] > 0
    memory = _debug_memory(out)
    assert memory["device"].startswith("cuda") and memory["peak_bytes"] > 0  # GPU memory, not process RSS
    # the saved model loads back and still runs on the GPU
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).to("cuda")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]], device="cuda")).logits).all()


def test_training_resumes_on_cuda_from_its_checkpoint(tiny_llama, tmp_path):
    from aptops.train import TrainConfig, train_with_hf_trainer

    args = {"per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 2, "learning_rate": 1e-3}
    out = tmp_path / "resume"
    train_with_hf_trainer(str(tiny_llama), None, _dataset(), out,
                          TrainConfig(block_size=32, eval_fraction=0.0, training_args=args | {"max_steps": 2}))
    (out / "result.json").unlink()  # pretend the first run was cut off after its checkpoint
    resumed = train_with_hf_trainer(str(tiny_llama), None, _dataset(), out,
                                    TrainConfig(block_size=32, eval_fraction=0.0, training_args=args | {"max_steps": 4}))
    assert resumed.metrics["global_step"] == 4 and is_complete(out)


def test_distillation_on_cuda_in_bf16(tiny_llama, tmp_path):
    from aptops.distill import DistillConfig, StrategyConfig, distill_model
    from aptops.train import TrainConfig

    config = DistillConfig(objective=StrategyConfig(strategies={"response": 1.0, "feature": 0.1}), student_layer_stride=1,
                           training=TrainConfig(block_size=32, eval_fraction=0.2, training_args={
                               "max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1,
                               "learning_rate": 2e-3, "save_steps": 2, "bf16": True}))
    out = tmp_path / "student"
    result = distill_model(str(tiny_llama), _dataset(), output_dir=out, config=config)
    m = result.metrics
    assert is_complete(out) and m["global_step"] == 4
    assert 0 <= m["eval_top1_agreement"] <= 1 and m["eval_teacher_kl"] >= 0 and math.isfinite(m["perplexity"])


def test_wanda_calibration_and_masked_fine_tuning_on_cuda(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aptops.prune import (
        PruneConfig,
        fine_tune_after_pruning,
        sparsity_report,
        wanda_pruning,
        weight_masks,
    )

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).to("cuda")
    ids = tok(" ".join(CORPUS[:20]), return_tensors="pt")["input_ids"][0][:64].view(4, 16).to("cuda")
    wanda_pruning(model, [{"input_ids": ids, "labels": ids}], 0.5)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.5, abs=0.02)
    masks = weight_masks(model)
    from aptops.train import TrainConfig

    cfg = PruneConfig(training=TrainConfig(block_size=32, eval_fraction=0.1, training_args={
        "max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "save_strategy": "no",
        "bf16": True}))
    out = tmp_path / "ft"
    result = fine_tune_after_pruning(model, _dataset(), output_dir=out, tokenizer=tok, config=cfg, masks=masks)
    assert result.metrics["global_step"] == 3
    tuned = AutoModelForCausalLM.from_pretrained(out)
    assert sparsity_report(tuned)["sparsity"] == pytest.approx(0.5, abs=0.02)  # masks held through bf16 steps


def _media_task(root, per_class=12):
    """Two classes told apart by image colour and tone pitch: red + 300 Hz vs blue + 900 Hz."""
    import soundfile as sf
    from PIL import Image

    root.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for label, colour, hz in (("low", (200, 30, 30), 300), ("high", (30, 30, 200), 900)):
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / f"{label}-{i}.png")
            t = np.arange(8000) / 16000
            sf.write(root / f"{label}-{i}.wav", 0.3 * np.sin(2 * np.pi * hz * t) + rng.normal(0, 0.01, t.size), 16000)
            rows.append({"image": f"{label}-{i}.png", "audio": f"{label}-{i}.wav", "label": label})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "manifest.jsonl"


def test_multimodal_training_on_cuda_with_the_debugger(tmp_path):
    from aptops.multimodal import MultimodalConfig, train_multimodal_model

    manifest = _media_task(tmp_path / "task")
    config = MultimodalConfig(epochs=4, hidden_size=32, eval_fraction=0.25, debug=True, debug_interval=2,
                              training_args={"disable_tqdm": True, "bf16": True})
    out = tmp_path / "mm"
    result = train_multimodal_model(manifest, output_dir=out, config=config)
    m = result.metrics
    assert is_complete(out) and m["debug_nan_events"] == 0 and math.isfinite(m["train_loss"])
    assert m["eval_accuracy"] >= 0.5
    assert _debug_memory(out)["device"].startswith("cuda")
    assert read_json(out / "aptops.json")["stage"] == "multimodal"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_distributed_strategies_train_on_the_gpus_present(tiny_llama, tmp_path, strategy):
    """What a Kubeflow Trainer node runs (torchrun over the aptops CLI), one process per GPU present (up to 2),
    with DDP and with FSDP2 (sharded, one unit per block): the run finishes, rank 0 writes one full model."""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    gpus = min(torch.cuda.device_count(), 2)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 4))
    out = tmp_path / strategy
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
         "-m", "aptops.cli", "train", "run", str(tiny_llama), str(data), "--out", str(out),
         "--set", f"strategy={strategy}", "--set", "block_size=32", "--set", "training_args.max_steps=6",
         "--set", "training_args.per_device_train_batch_size=2", "--set", "training_args.bf16=true",
         "--set", "training_args.save_steps=3"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    assert is_complete(out) and metrics["world_size"] == gpus and math.isfinite(metrics["train_loss"])
    source = AutoModelForCausalLM.from_pretrained(tiny_llama)
    trained = AutoModelForCausalLM.from_pretrained(out)  # a full state dict, not shards
    assert {k: v.shape for k, v in trained.state_dict().items()} == {k: v.shape for k, v in source.state_dict().items()}
