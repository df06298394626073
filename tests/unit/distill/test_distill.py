"""Students from teachers, the Trainer loop, vocabulary checks and the compression report on tiny Llamas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aptops.core.artifacts import is_complete, read_json
from aptops.core.errors import ConfigError
from aptops.distill import (
    DistillConfig,
    StrategyConfig,
    aligned_vocab,
    check_tokenizers,
    create_student,
    distill_model,
    evaluate_compression,
    feature_distillation,
    response_distillation,
    run_distillation,
)
from aptops.distill.recipe import replay_calibration_batches
from aptops.train import TrainConfig
from tests.models import CORPUS


@pytest.fixture(scope="module")
def teacher_dir(tiny_llama, tmp_path_factory) -> Path:
    """A 4-block Llama with the tiny tokenizer, trained briefly so its predictions are not uniform noise."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    config = LlamaConfig.from_pretrained(tiny_llama)
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    ids = tok("\n".join(CORPUS[:5]), return_tensors="pt")["input_ids"][:, :64]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _teacher(teacher_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(teacher_dir)


def _batches(teacher_dir, n=3, seq=16):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    ids = tok(" ".join(CORPUS[:10]), return_tensors="pt")["input_ids"][0]
    return [{"input_ids": ids[i * seq * 2:(i + 1) * seq * 2].view(2, seq),
             "labels": ids[i * seq * 2:(i + 1) * seq * 2].view(2, seq)} for i in range(n)]


def test_create_student_keeps_every_kth_block_with_the_teachers_weights(teacher_dir):
    teacher = _teacher(teacher_dir)
    student = create_student(teacher, layer_stride=2)
    assert student.config.num_hidden_layers == 3 and student.config.aptops_student["kept_layers"] == [0, 2, 3]
    assert torch.equal(student.model.layers[1].mlp.down_proj.weight, teacher.model.layers[2].mlp.down_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    same = create_student(teacher, layer_stride=1)
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.allclose(same(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)


def test_narrower_student_runs_and_is_smaller(teacher_dir):
    teacher = _teacher(teacher_dir)
    student = create_student(teacher, layer_stride=2, intermediate_size=64, hidden_size=32)
    c = student.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (32, 2, 1, 64)
    assert torch.equal(student.model.layers[0].self_attn.q_proj.weight,
                       teacher.model.layers[0].self_attn.q_proj.weight[:32, :32])
    student(input_ids=torch.tensor([[1, 2, 3]]))
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2
    with pytest.raises(ConfigError, match="hidden_size=40"):
        create_student(teacher, hidden_size=40)
    with pytest.raises(ConfigError, match="keep_layers"):
        create_student(teacher, keep_layers=[0, 7])


def test_gradients_reach_the_student_and_never_the_teacher(teacher_dir):
    teacher = _teacher(teacher_dir)
    student = create_student(teacher, layer_stride=2, hidden_size=32)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    history = run_distillation(teacher, student, _batches(teacher_dir), StrategyConfig(
        strategies={"response": 1.0, "feature": 0.5, "relation": 0.5, "attention": 0.5}, auto_weighting=True),
        learning_rate=1e-3)
    assert history["steps"] == 3 and set(history["terms"][0]) >= {"kd", "ce", "feature", "relation", "attention"}
    assert all(p.grad is None for p in teacher.parameters()) and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    changed = [k for k, v in before_s.items() if not torch.equal(v, student.state_dict()[k])]
    assert len(changed) > len(before_s) // 2


def test_legacy_functions_lower_their_loss(teacher_dir):
    teacher = _teacher(teacher_dir)
    student = create_student(teacher, layer_stride=2)
    out = response_distillation(teacher, student, _batches(teacher_dir) * 4, temperature=2.0, alpha=0.7,
                                learning_rate=3e-3)
    assert out["loss"][-1] < out["loss"][0]
    feat = feature_distillation(teacher, create_student(teacher, layer_stride=2, hidden_size=32),
                                _batches(teacher_dir) * 4, layer_mappings={1: 1, 3: 4}, learning_rate=3e-3)
    assert feat["loss"][-1] < feat["loss"][0]
    with pytest.raises(ConfigError, match="the student has hidden states 0-3"):
        feature_distillation(teacher, create_student(teacher, layer_stride=2), _batches(teacher_dir), layer_mappings={9: 1})


def test_vocab_padding_is_aligned_and_other_tokenizers_refused(teacher_dir, tmp_path):
    from transformers import AutoTokenizer

    from tests.models import build_tiny_llama

    teacher = _teacher(teacher_dir)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    student = create_student(teacher, layer_stride=2)
    student.resize_token_embeddings(len(tok) + 64)  # padded rows, as many checkpoints have
    assert aligned_vocab(teacher, student, tok) == len(tok)
    run_distillation(teacher, student, _batches(teacher_dir)[:1], StrategyConfig())  # no shape error
    other = AutoTokenizer.from_pretrained(build_tiny_llama(tmp_path / "other", vocab_size=300))
    with pytest.raises(ConfigError, match="tokenizers differ"):
        check_tokenizers(tok, other)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0}, "temperature"), ({"alpha": 2}, "alpha"), ({"strategies": {"dark": 1.0}}, "strategies"),
    ({"strategies": {}}, "at least one strategy"), ({"head_mapping": "sum"}, "head_mapping")])
def test_bad_config_fails_before_any_work(kwargs, message):
    from aptops.core.config import from_dict

    with pytest.raises(ConfigError, match=message):
        from_dict(DistillConfig, {"objective": kwargs})


def test_a_student_of_n_blocks_spreads_them_from_first_to_last(teacher_dir, tmp_path):
    from aptops.distill.recipe import spread_layers

    assert spread_layers(30, 24)[:5] == [0, 1, 3, 4, 5] and spread_layers(30, 24)[-1] == 29
    assert spread_layers(30, 2) == [0, 29] and spread_layers(4, 4) == [0, 1, 2, 3]
    for bad in (1, -2):
        with pytest.raises(ConfigError, match="student_layers"):
            DistillConfig(student_layers=bad)
    with pytest.raises(ConfigError, match="more than the teacher's 4 blocks"):
        distill_model(str(teacher_dir), str(_jsonl(tmp_path)), output_dir=tmp_path / "never",
                      config=DistillConfig(student_layers=5, training=TrainConfig(block_size=16)))
    assert not (tmp_path / "never").exists()


def test_distill_config_nests_the_objective_and_the_training_config():
    from aptops.core.config import load_config, to_dict

    cfg = load_config(DistillConfig, overrides=["objective.temperature=1", "training.block_size=64",
                                                "training.lora_r=8", "training.training_args.max_steps=5"])
    assert cfg.objective == StrategyConfig(temperature=1.0)
    assert cfg.training == TrainConfig(block_size=64, lora_r=8, training_args={"max_steps": 5})
    assert to_dict(cfg)["training"]["debug_interval"] == 10  # every train setting reachable, none copied
    with pytest.raises(ConfigError, match=r"unknown config key 'training.blok_size' for TrainConfig"):
        load_config(DistillConfig, overrides=["training.blok_size=64"])
    with pytest.raises(ConfigError, match="block_size=1 is out of range"):
        load_config(DistillConfig, overrides=["training.block_size=1"])


def test_distill_model_writes_a_student_artifact(teacher_dir, tmp_path):
    import datasets

    config = DistillConfig(objective=StrategyConfig(strategies={"response": 1.0, "feature": 0.1}), training=TrainConfig(
        block_size=32, eval_fraction=0.2, training_args={"max_steps": 4, "per_device_train_batch_size": 4,
                                                         "logging_steps": 1, "learning_rate": 2e-3, "use_cpu": True,
                                                         "save_steps": 2}))
    out = tmp_path / "student"
    result = distill_model(str(teacher_dir), datasets.Dataset.from_dict({"text": CORPUS}), output_dir=out, config=config)
    assert is_complete(out) and (out / "model.safetensors").is_file()
    m = result.metrics
    assert m["global_step"] == 4 and 0 <= m["eval_top1_agreement"] <= 1 and m["eval_teacher_kl"] >= 0
    assert m["perplexity"] > 1
    lineage = read_json(out / "aptops.json")
    assert lineage["stage"] == "distill" and lineage["inputs"]["teacher"] == str(teacher_dir)
    assert lineage["config"]["objective"]["strategies"] == {"response": 1.0, "feature": 0.1}
    report = (out / "report.html").read_text()
    assert "Distill loss terms" in report and "aptops distill" in report
    history = json.loads((out / "history.json").read_text())
    assert any("distill_kd" in h and "distill_feature" in h for h in history)
    assert not (out / "checkpoints").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3

    # the compression report: its own artifact, nothing written into the models it compares
    report_dir = tmp_path / "compression"
    lineage_before = (out / "aptops.json").read_bytes()
    result = evaluate_compression(str(teacher_dir), str(out), datasets.Dataset.from_dict({"text": CORPUS}),
                                  output_dir=report_dir, config=_cfg())
    comp = result.details
    assert comp["ratios"]["params"] < 1 and comp["compressed"]["params"] < comp["original"]["params"]
    assert 0 <= comp["compressed"]["top1_agreement"] <= 1 and comp["compressed"]["generate_tokens_per_s"] > 0
    # what a user runs on a laptop: both models exported to the GGUF type and timed in llama.cpp
    assert "skipped" not in comp["llama_cpp"] and comp["llama_cpp"]["gguf_type"] == "Q8_0"
    assert comp["ratios"]["llama_cpp_generate_speedup"] == pytest.approx(
        comp["compressed"]["llama_cpp_generate_tokens_per_s"] / comp["original"]["llama_cpp_generate_tokens_per_s"])
    assert result.metrics["ratio_params"] == comp["ratios"]["params"]
    assert result.metrics["compressed_top1_agreement"] == comp["compressed"]["top1_agreement"]
    assert is_complete(report_dir) and "data:image/png;base64," in (report_dir / "report.html").read_text()
    assert read_json(report_dir / "report.json")["ratios"] == comp["ratios"]
    assert (out / "aptops.json").read_bytes() == lineage_before
    # the old plugin's function: a dict, no report unless asked, and the numbers in the student's lineage
    from aptops.distill.legacy import evaluate_compression as old_evaluate

    old = old_evaluate(str(teacher_dir), str(out), datasets.Dataset.from_dict({"text": CORPUS}), config=_cfg())
    assert set(old) >= {"original", "compressed", "ratios"}
    assert read_json(out / "aptops.json")["metrics"]["compression_params_ratio"] == old["ratios"]["params"]


def _cfg():
    from aptops.lm import EvalConfig
    from aptops.lm.compare import CompressionConfig

    return CompressionConfig(evaluation=EvalConfig(block_size=32, max_blocks=8), latency_runs=2, new_tokens=4,
                             generate_runs=1)


def test_distill_refuses_a_student_with_another_tokenizer(teacher_dir, tmp_path):
    from tests.models import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", vocab_size=300)
    with pytest.raises(ConfigError, match="tokenizers differ"):
        distill_model(str(teacher_dir), str(_jsonl(tmp_path)), student=str(other),
                      config=DistillConfig(training=TrainConfig(block_size=16)), output_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    return path


def test_a_student_keeps_the_blocks_of_most_influence_and_replays_general_text(teacher_dir, tmp_path, caplog):
    """A teacher block that passes its input through is the one a 3-block student leaves out (evenly spread blocks
    would keep it); the replay text is read (a missing one fails before anything is written) and mixed in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = _teacher(teacher_dir)
    with torch.no_grad():
        teacher.model.layers[2].self_attn.o_proj.weight.zero_()
        teacher.model.layers[2].mlp.down_proj.weight.zero_()
    passing = tmp_path / "teacher"
    teacher.save_pretrained(passing)
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(passing)
    general = tmp_path / "news.txt"
    general.write_text("\n".join(f"Report {i}: the council met on Tuesday and voted on the river bridge budget."
                                 for i in range(40)))
    training = TrainConfig(block_size=16, eval_fraction=0.2, replay=str(general), replay_ratio=0.5, training_args={
        "max_steps": 2, "per_device_train_batch_size": 2, "use_cpu": True})
    with pytest.raises(Exception, match=r"missing\.txt"):
        distill_model(str(passing), str(_jsonl(tmp_path)), output_dir=tmp_path / "never", config=DistillConfig(
            student_layers=3, training=TrainConfig(block_size=16, replay=str(tmp_path / "missing.txt"))))
    assert not (tmp_path / "never").exists()
    with caplog.at_level("INFO"):
        distill_model(str(passing), str(_jsonl(tmp_path)), output_dir=tmp_path / "student",
                      config=DistillConfig(student_layers=3, training=training))
    kept = AutoModelForCausalLM.from_pretrained(tmp_path / "student").config.aptops_student["kept_layers"]
    assert kept == [0, 1, 3]
    assert "influence on the replay text: keeps [0, 1, 3], removes [2]" in caplog.text
    assert "general-text blocks" in caplog.text
    # the influence was measured on the replay text as training packs it: its first blocks, as plain text
    tok = AutoTokenizer.from_pretrained(passing)
    first = replay_calibration_batches(tok, training, 2)[0]["input_ids"]
    assert first.shape == (2, 16)
    assert tok.decode(first[0]).lstrip().startswith("Report 0: the council")
    caplog.clear()
    with caplog.at_level("INFO"):
        distill_model(str(passing), str(_jsonl(tmp_path)), output_dir=tmp_path / "on-task", config=DistillConfig(
            student_layers=3, influence_text="task", training=training))
    assert "influence on the training text: keeps [0, 1, 3]" in caplog.text
    with pytest.raises(ConfigError, match="influence_text"):
        DistillConfig(influence_text="news")
    distill_model(str(passing), str(_jsonl(tmp_path)), output_dir=tmp_path / "spread", config=DistillConfig(
        student_layers=3, student_selection="spread", training=training))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "spread").config.aptops_student["kept_layers"] == [0, 2, 3]
