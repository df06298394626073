"""Training: the real sample task is learned (also with modalities missing), balancing, caching, the stage."""

from __future__ import annotations

import json

import pytest
import torch

from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.multimodal import (
    MultimodalConfig,
    MultimodalModel,
    cache_encoder_features,
    create_multimodal_dataloader,
    create_multimodal_model,
    inference_multimodal,
    train_multimodal,
    train_multimodal_model,
)
from aptops.multimodal.training import MultimodalTrainer, modality_dropout, modulation_coefficients

NO_SAVE = {"save_strategy": "no", "disable_tqdm": True}


def test_modality_dropout_never_empties_a_row():
    batch = {"batch_size": 64, "text": {"index": torch.arange(64)}, "image": {"index": torch.arange(0, 64, 2)}}
    drop = modality_dropout(batch, ["text", "image", "audio"], 0.9, torch.Generator().manual_seed(0))
    kept_text = ~drop["text"]
    kept_image = ~drop["image"] & (torch.arange(64) % 2 == 0)
    assert bool((kept_text | kept_image).all())  # every row keeps something
    assert not bool(drop["text"][1::2].any())  # a text-only row keeps its text
    assert int(drop["text"].sum()) > 8 and not bool(drop["audio"].any())  # absent modalities are never "dropped"


def test_ogm_slows_the_dominant_modality_only():
    coef = modulation_coefficients({"text": 0.9, "image": 0.3, "audio": 0.3}, alpha=0.5)
    assert coef["image"] == coef["audio"] == 1.0
    assert 0.0 < coef["text"] < 0.5  # ratio 3: 1 - tanh(1) = 0.24
    assert modulation_coefficients({"text": 0.9}, 0.5) == {}


def test_cached_features_give_the_same_outputs(sample_task, minilm, tiny_specs):
    torch.manual_seed(0)
    model = create_multimodal_model(str(minilm), tiny_specs["image"], None, "attention", num_labels=6,
                                    hidden_size=32, freeze=("text", "image"))
    loader = create_multimodal_dataloader(manifest=sample_task / "eval.jsonl", model=model, batch_size=12,
                                          shuffle=False)
    model.eval()
    live = torch.cat([model(**batch).logits for batch in loader])
    stats = cache_encoder_features(model, loader.dataset, loader.collate_fn)
    assert stats["cache_mb_text"] > 0 and stats["cache_mb_image"] > 0
    batch = next(iter(loader))
    assert "features" in batch["text"] and "pixel_values" not in batch["image"]
    cached = torch.cat([model(**batch).logits for batch in loader])
    assert torch.allclose(live, cached, atol=1e-4)


def test_evaluation_encodes_each_batch_once_and_scores_each_modality_alone(sample_task, minilm, tiny_specs):
    from aptops.multimodal import evaluate_multimodal

    torch.manual_seed(0)
    model = create_multimodal_model(str(minilm), tiny_specs["image"], None, "attention", num_labels=6,
                                    hidden_size=32)
    loader = create_multimodal_dataloader(manifest=sample_task / "eval.jsonl", model=model, batch_size=12,
                                          shuffle=False)
    calls = {m: 0 for m in model.modalities}
    for m in model.modalities:
        model.encoders[m].register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    scores = evaluate_multimodal(model, loader)
    assert calls == {m: len(loader) for m in model.modalities}  # not once more per modality scored alone
    assert {"eval_accuracy", "eval_accuracy_text_only", "eval_accuracy_image_only"} <= set(scores)
    # the same figures as hiding the other modality in a full forward pass
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        alone = model(**batch, drop={"text": torch.ones(len(batch["labels"]), dtype=torch.bool)})
        tokens, present = model.encode_inputs(batch["text"], batch["image"], None, labels=batch["labels"])
        fused = model.fuse(tokens, present, drop={"text": torch.ones(len(batch["labels"]), dtype=torch.bool)})
    assert torch.allclose(alone.logits, fused.logits)


def test_parameter_groups_take_per_modality_learning_rates(sample_task, minilm, tiny_specs, tmp_path):
    model = create_multimodal_model(str(minilm), tiny_specs["image"], None, num_labels=6, hidden_size=32)
    loader = create_multimodal_dataloader(manifest=sample_task / "train.jsonl", model=model, batch_size=8)
    from aptops.lm import training_arguments

    args = training_arguments(tmp_path, NO_SAVE, recipe_defaults={"learning_rate": 1e-3, "remove_unused_columns": False})
    trainer = MultimodalTrainer(model=model, args=args,
                                train_dataset=loader.dataset, data_collator=loader.collate_fn,
                                modality_lr={"text": 1e-5})
    groups = {g["name"]: g["lr"] for g in trainer.create_optimizer().param_groups}
    assert groups["text_encoder"] == 1e-5 and groups["image_encoder"] == 1e-3 and groups["fusion"] == 1e-3
    with pytest.raises(ConfigError, match="modality_lr names audio"):
        MultimodalTrainer(model=model, args=args,
                          train_dataset=loader.dataset, data_collator=loader.collate_fn, modality_lr={"audio": 1.0})


@pytest.mark.slow
def test_the_sample_task_is_learned_with_modalities_missing(sample_task, minilm, tmp_path):
    """Photos crops + spoken recordings + captions, a quarter of the rows missing one modality: the stage
    learns it well above chance, fused and from each modality alone, and the artifact reloads."""
    train = [json.loads(line) for line in (sample_task / "train.jsonl").read_text().splitlines()]
    assert sum(r["image"] is None or r["audio"] is None or r["text"] is None for r in train) > 10
    config = MultimodalConfig(text_encoder=str(minilm), freeze=("text",), fusion="attention", hidden_size=64,
                              epochs=12, modality_lr={"audio": 5e-3}, training_args={"disable_tqdm": True})
    result = train_multimodal_model(sample_task / "train.jsonl", output_dir=tmp_path / "mm", config=config,
                                    eval_data=sample_task / "eval.jsonl")
    m = result.metrics
    chance = m["chance_accuracy"]
    assert chance == pytest.approx(1 / 6)
    assert m["eval_accuracy"] >= 0.9
    assert m["eval_accuracy_text_only"] >= 0.9  # held-out captions, a frozen pretrained encoder
    assert m["eval_accuracy_image_only"] >= 3 * chance  # learned from scratch: a tiny ViT on photo crops
    assert m["eval_accuracy_audio_only"] >= 2 * chance  # a tiny Wav2Vec2 on speech segments
    assert m["cache_mb_text"] > 0 and m["train_rows_with_audio"] < m["train_rows"]
    out = tmp_path / "mm"
    assert (out / "result.json").is_file() and not (out / "checkpoints").exists()
    html = (out / "report.html").read_text()
    assert "Gradient balancing" in html and "image only" in html and "<svg" in html
    lineage = json.loads((out / "aptops.json").read_text())
    assert lineage["stage"] == "multimodal" and lineage["config"]["fusion"] == "attention"

    model = MultimodalModel.from_pretrained(out)
    rows = [json.loads(line) for line in (sample_task / "eval.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["label"] == "coffee")
    by_text = inference_multimodal(model, text_input="a cup of coffee on the table")
    assert by_text["label"] == "coffee" and by_text["modalities"] == ["text"]
    both = inference_multimodal(model, image_input=[sample_task / row["image"]],
                                audio_input=[(sample_task / row["audio"])])
    assert both[0]["modalities"] == ["image", "audio"] and len(both[0]["probabilities"]) == 6


@pytest.mark.slow
def test_embedding_task_learns_to_match_captions_and_photos(sample_task, minilm, tiny_specs, tmp_path):
    torch.manual_seed(0)
    model = create_multimodal_model(str(minilm), tiny_specs["image"], None, "add", task="embedding",
                                    hidden_size=32, freeze=("text",))
    train = create_multimodal_dataloader(manifest=sample_task / "train.jsonl", model=model, batch_size=16)
    evaluation = create_multimodal_dataloader(manifest=sample_task / "eval.jsonl", model=model, batch_size=36,
                                              shuffle=False, label2id=train.dataset.label2id)
    run = train_multimodal(model, train, epochs=8, eval_dataloader=evaluation, output_dir=tmp_path,
                           cache_features=True, training_args=NO_SAVE)
    # retrieving the photo for a caption among 36 held-out rows of 6 classes: chance is 1/6
    assert run["metrics"]["eval_recall@1_text_to_image"] >= 0.5
    assert run["metrics"]["eval_recall@1_image_to_text"] >= 0.5


def test_stage_refuses_bad_setups(sample_task, tmp_path):
    with pytest.raises(ConfigError, match="no text_encoder is set"):
        train_multimodal_model(sample_task / "train.jsonl", output_dir=tmp_path / "a", config=MultimodalConfig())
    with pytest.raises(ConfigError, match="fusion"):
        MultimodalConfig(fusion="sum")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"image": str(sample_task / "images" / "eval-cat-000.png"), "label": "cat"}) + "\n")
    with pytest.raises(InvalidArtifactError, match="1 class"):
        train_multimodal_model(one, output_dir=tmp_path / "b",
                               config=MultimodalConfig(eval_fraction=0, media_roots=(str(sample_task),)))
    assert not (tmp_path / "b" / "result.json").exists()


def test_stage_with_the_debugger_and_one_modality_left_out(sample_task, tmp_path):
    config = MultimodalConfig(modalities=("image",), epochs=1, hidden_size=32, debug=True, debug_interval=2,
                              training_args={"disable_tqdm": True})
    result = train_multimodal_model(sample_task / "train.jsonl", output_dir=tmp_path / "mm", config=config,
                                    eval_data=sample_task / "eval.jsonl")
    assert json.loads((tmp_path / "mm" / "multimodal_config.json").read_text())["modalities"] == ["image"]
    assert (tmp_path / "mm" / "debug" / "report.html").is_file() and "debug_report" in result.outputs
    assert result.metrics["debug_nan_events"] == 0 and result.metrics["debug_max_grad_norm"] > 0
