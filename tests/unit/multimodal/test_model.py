"""The multimodal model: encoder families, fusion with missing modalities, gated cross-attention, save / load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.multimodal import (
    CrossModalAttention,
    MultimodalModel,
    create_multimodal_model,
    cross_modal_attention,
)
from aptops.multimodal.encoders import ModalityEncoder, load_encoder


def _batch(model, b=4, with_image=(0, 1, 2, 3), with_audio=(1, 3), with_text=(0, 2)):
    torch.manual_seed(0)
    tok = model.processors["text"]
    texts = ["a cat", "a rocket on the pad", "coffee", "stars at night"]
    batch = {"batch_size": b, "labels": torch.tensor([0, 1, 2, 0])[:b]}
    if with_text:
        enc = tok([texts[i] for i in with_text], padding=True, return_tensors="pt")
        batch["text"] = {**enc, "index": torch.tensor(with_text)}
    if with_image:
        batch["image"] = {"pixel_values": torch.randn(len(with_image), 3, 32, 32), "index": torch.tensor(with_image)}
    if with_audio:
        wave = torch.randn(len(with_audio), 8000)
        mask = torch.ones_like(wave, dtype=torch.long)
        mask[0, 5000:] = 0  # a shorter clip, padded
        batch["audio"] = {"input_values": wave, "attention_mask": mask, "index": torch.tensor(with_audio)}
    return batch


@pytest.fixture(scope="module")
def models(minilm, tiny_specs):
    torch.manual_seed(0)
    return {f: create_multimodal_model(str(minilm), tiny_specs["image"], tiny_specs["audio"], f, num_labels=3,
                                       hidden_size=32, freeze=("text",))
            for f in ("concat", "add", "attention")}


@pytest.mark.parametrize("fusion", ["concat", "add", "attention"])
def test_every_fusion_handles_rows_with_different_modalities(models, fusion):
    model = models[fusion].eval()
    out = model(**_batch(model))
    assert out.logits.shape == (4, 3) and torch.isfinite(out.logits).all()
    assert out.present["text"].tolist() == [True, False, True, False]
    assert out.present["audio"].tolist() == [False, True, False, True]
    assert torch.isfinite(out.loss)
    # a row's prediction depends only on that row's own inputs: change another row's audio, row 0 stays
    batch = _batch(model)
    batch["audio"]["input_values"][1] += 5.0
    assert torch.allclose(model(**batch).logits[0], out.logits[0], atol=1e-5)
    assert not torch.allclose(model(**batch).logits[3], out.logits[3], atol=1e-5)


def test_missing_modality_is_not_a_zero_vector_in_concat(models):
    model = models["concat"].eval()
    with torch.no_grad():
        model.fusion.missing["audio"].fill_(0.5)
        a = model(**_batch(model)).logits
        model.fusion.missing["audio"].fill_(-0.5)
        b = model(**_batch(model)).logits
        model.fusion.missing["audio"].zero_()
    # rows 0 and 2 have no audio: the learned stand-in decides their audio slot; rows 1 and 3 ignore it
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_drop_hides_a_modality_and_a_row_with_nothing_is_an_error(models):
    model = models["add"].eval()
    batch = _batch(model)
    alone = model(**batch, drop={"text": torch.ones(4, dtype=torch.bool), "audio": torch.ones(4, dtype=torch.bool)})
    images_only = model(**{k: v for k, v in batch.items() if k not in ("text", "audio")})
    assert torch.allclose(alone.logits, images_only.logits, atol=1e-5)
    with pytest.raises(ConfigError, match="no modality at all"):
        model(**_batch(model, with_image=(0, 1), with_audio=(1,), with_text=(0,)))


def test_mismatched_batch_sizes_are_named(models):
    model = models["concat"]
    batch = _batch(model)
    batch["image"].pop("index")  # 4 images for 4 rows is fine ...
    model(**batch)
    batch["image"]["pixel_values"] = batch["image"]["pixel_values"][:3]  # ... 3 is not
    with pytest.raises(ConfigError, match="image inputs hold 3 rows but the batch has 4"):
        model(**batch)
    with pytest.raises(ConfigError, match="no input"):
        model(labels=torch.tensor([0]))


def test_cross_modal_attention_gate_masks_and_widths():
    torch.manual_seed(0)
    block = CrossModalAttention(16, num_heads=4, key_dim=24)
    q, k = torch.randn(3, 2, 16), torch.randn(3, 5, 24)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(block(q, k, key_mask=mask), q)  # the gate starts closed
    with torch.no_grad():
        block.gate.fill_(1.0)
    out = block(q, k, key_mask=mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[2], q[2])  # no key at all: the query comes back unchanged
    k2 = k.clone()
    k2[0, 3:] = 100.0  # masked keys cannot matter
    assert torch.allclose(block(q, k2, key_mask=mask)[0], out[0], atol=1e-5)
    assert not torch.allclose(out[1], q[1])
    # the function form: a new block for the given widths (gate closed) or a trained one
    assert torch.allclose(cross_modal_attention(q, k), q)
    assert torch.allclose(cross_modal_attention(q, k, key_mask=mask, attention=block), out)
    with pytest.raises(ConfigError, match="do not line up"):
        block(q, torch.randn(2, 5, 24))


def test_custom_fusion_module(minilm, tiny_specs):
    class MaxFusion(nn.Module):
        def forward(self, pooled, tokens, present):
            stacked = torch.stack([torch.where(present[m][:, None], pooled[m], torch.full_like(pooled[m], -1e4))
                                   for m in pooled], 1)
            return stacked.max(1).values

    model = create_multimodal_model(str(minilm), tiny_specs["image"], None, MaxFusion(), num_labels=3, hidden_size=32)
    assert model.config.fusion == "custom"
    out = model(**_batch(model, with_audio=()))
    assert out.logits.shape == (4, 3)


def test_freeze_keeps_encoder_fixed_and_in_eval_mode(models):
    model = models["concat"]
    model.train()
    assert not model.encoders["text"].model.training and model.encoders["image"].model.training
    assert not any(p.requires_grad for p in model.encoders["text"].parameters())
    model.freeze("image")
    assert model.config.frozen == ["text", "image"]
    model.freeze("image", False)
    assert model.config.frozen == ["text"] and all(p.requires_grad for p in model.encoders["image"].parameters())
    with pytest.raises(ConfigError, match="no video encoder"):
        model.freeze("video")


def test_save_and_load_give_the_same_predictions(models, tmp_path):
    model = models["attention"].eval()
    model.config.id2label = {0: "cat", 1: "rocket", 2: "coffee"}
    batch = _batch(model)
    before = model(**batch).logits
    model.save_pretrained(tmp_path / "mm")
    assert {p.name for p in (tmp_path / "mm").iterdir()} >= {"text_encoder", "image_encoder", "audio_encoder",
                                                              "fusion_head.safetensors", "multimodal_config.json"}
    loaded = MultimodalModel.from_pretrained(tmp_path / "mm")
    assert loaded.config.id2label == {0: "cat", 1: "rocket", 2: "coffee"} and loaded.config.frozen == ["text"]
    assert torch.allclose(loaded(**batch).logits, before, atol=1e-5)
    assert type(loaded.processors["image"]).__name__.startswith("ViTImageProcessor")
    (tmp_path / "mm" / "fusion_head.safetensors").unlink()
    with pytest.raises(InvalidArtifactError, match=r"fusion_head\.safetensors"):
        MultimodalModel.from_pretrained(tmp_path / "mm")
    with pytest.raises(InvalidArtifactError, match="not an aptops multimodal model"):
        MultimodalModel.from_pretrained(tmp_path)


def test_bad_model_arguments():
    with pytest.raises(ConfigError, match="at least one encoder"):
        create_multimodal_model()
    with pytest.raises(ConfigError, match="unknown fusion 'sum'"):
        create_multimodal_model(image_encoder={"model_type": "vit", "image_size": 32, "patch_size": 8}, fusion_method="sum")
    with pytest.raises(ConfigError, match="cannot freeze audio"):
        create_multimodal_model(image_encoder={"model_type": "vit", "image_size": 32, "patch_size": 8}, freeze=("audio",))
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        create_multimodal_model(text_encoder={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "intermediate_size": 64})
    with pytest.raises(ConfigError, match="model_type"):
        load_encoder("image", {"image_size": 32})
    with pytest.raises(ConfigError, match=r"does not exist|cannot load"):
        load_encoder("image", "/nonexistent/encoder")


SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.mark.parametrize("modality, spec, inputs, width", [
    ("image", {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
     {"pixel_values": torch.randn(2, 3, 32, 32)}, 16),
    ("image", {"model_type": "clip", "vision_config": {**SMALL, "image_size": 32, "patch_size": 8},
               "text_config": SMALL}, {"pixel_values": torch.randn(2, 3, 32, 32)}, 32),
    ("audio", {"model_type": "whisper", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
               "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
               "decoder_ffn_dim": 64, "num_mel_bins": 16, "max_source_positions": 50},
     {"input_features": torch.randn(2, 16, 100)}, 32),
    ("audio", {"model_type": "hubert", **SMALL, "conv_dim": [16, 16], "conv_kernel": [10, 3], "conv_stride": [5, 2],
               "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2},
     {"input_values": torch.randn(2, 4000), "attention_mask": torch.ones(2, 4000, dtype=torch.long)}, 32),
    ("text", {"model_type": "t5", "d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "d_kv": 16,
              "vocab_size": 100}, {"input_ids": torch.randint(0, 100, (2, 7)),
                                   "attention_mask": torch.ones(2, 7, dtype=torch.long)}, 32),
    ("text", {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 100},
     {"input_ids": torch.randint(0, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}, 32),
])
def test_encoder_families_give_token_states(modality, spec, inputs, width):
    encoder = ModalityEncoder(modality, load_encoder(modality, spec))
    tokens, mask = encoder(inputs)
    assert tokens.shape[0] == 2 and tokens.shape[-1] == width == encoder.hidden_size
    assert mask.shape == tokens.shape[:2] and mask.dtype == torch.bool and mask.any()
    if spec["model_type"] in ("t5", "whisper"):
        assert "Encoder" in type(encoder.model).__name__ or "Stack" in type(encoder.model).__name__
    if spec["model_type"] == "clip":
        assert type(encoder.model).__name__ == "CLIPVisionModel"
