"""Issue 24: saved models carried ``use_cache: false`` from training, so ``generate`` ran without a KV cache (a
pruned SmolLM2 generated at 0.45x). No stage that saves a causal LM may ship a training-only setting."""

from __future__ import annotations

import json

import datasets
import pytest

from aptops.train import TrainConfig
from tests.models import CORPUS

# gradient checkpointing on: the setting that needs use_cache off while training
TRAINING = {"max_steps": 2, "use_cpu": True, "per_device_train_batch_size": 2, "gradient_checkpointing": True}


def _assert_inference_ready(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config.get("use_cache") is True, config.get("use_cache")
    assert "gradient_checkpointing" not in config
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation.get("use_cache", True) is True


def _data():
    return datasets.Dataset.from_dict({"text": CORPUS})


@pytest.mark.parametrize("stage", ["train", "distill", "prune"])
def test_a_saved_model_carries_no_training_only_setting(stage, tiny_llama, tmp_path):
    training = TrainConfig(block_size=16, eval_fraction=0, resume="never", training_args=TRAINING)
    out = tmp_path / stage
    if stage == "train":
        from aptops.train import train_model

        train_model(tiny_llama, _data(), output_dir=out, config=training)
    elif stage == "distill":
        from aptops.distill import DistillConfig, distill_model

        distill_model(str(tiny_llama), _data(), output_dir=out, config=DistillConfig(training=training))
    else:
        from aptops.prune import PruneConfig, prune_model

        prune_model(str(tiny_llama), _data(), output_dir=out,
                    config=PruneConfig(method="magnitude", target_sparsity=0.3, recovery_steps=2, training=training))
    _assert_inference_ready(out)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.use_cache is True


def test_for_inference_undoes_what_training_set(tiny_llama):
    from transformers import AutoModelForCausalLM

    from aptops.lm.saving import for_inference

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.generation_config.use_cache = False
    assert for_inference(model) is model
    assert model.config.use_cache and model.generation_config.use_cache and not model.is_gradient_checkpointing
