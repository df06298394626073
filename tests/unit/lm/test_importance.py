"""Block influence (which blocks a student keeps) and replay (general text mixed into training) on tiny models."""

from __future__ import annotations

import pytest
import torch

from aptops.core.errors import ConfigError
from aptops.lm.importance import block_influence, most_influential_blocks


def _model(tiny_llama, blocks=4):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig.from_pretrained(tiny_llama)
    config.num_hidden_layers = blocks
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _pass_through(block):
    """A block that adds nothing to the residual stream: its two output projections are zero."""
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def test_a_block_that_passes_its_input_through_has_no_influence_and_is_the_one_removed(tiny_llama):
    model = _model(tiny_llama).train()
    _pass_through(model.model.layers[2])
    ids = torch.randint(3, model.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding is not measured
    influence = block_influence(model, [{"input_ids": ids, "attention_mask": mask}])
    assert len(influence) == 4 and all(0 <= v <= 2 for v in influence)
    assert influence[2] == pytest.approx(0.0, abs=1e-6) and min(influence[:2] + influence[3:]) > 1e-3
    assert most_influential_blocks(influence, 3) == [0, 1, 3]
    assert model.training  # its mode is restored
    with pytest.raises(ConfigError, match="cannot keep 5 of 4 blocks"):
        most_influential_blocks(influence, 5)
    with pytest.raises(ConfigError, match="no calibration token"):
        block_influence(model, [])


def test_replay_mixes_general_text_blocks_in_the_ratio_asked(tmp_path):
    import datasets

    from aptops.lm.training import mix_replay

    train = datasets.Dataset.from_dict({"input_ids": [[1, 2]] * 30, "labels": [[1, 2]] * 30})
    replay = datasets.Dataset.from_dict({"input_ids": [[7, 8]] * 100, "labels": [[7, 8]] * 100})
    mixed = mix_replay(train, replay, 0.25)
    assert len(mixed) == 40 and sum(r["input_ids"] == [7, 8] for r in mixed) == 10
    few = mix_replay(train, replay.select(range(5)), 0.5)  # fewer replay blocks than wanted: all of them
    assert len(few) == 35
    streamed = list(mix_replay(train.to_iterable_dataset(), replay, 0.5, seed=1))
    assert {tuple(r["input_ids"]) for r in streamed} == {(1, 2), (7, 8)}
