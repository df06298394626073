"""Pruning on tiny models: sparsity reached, masks kept while training, structured results that equal the
masked original and reload with from_pretrained, lottery tickets, and the automated flow."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from aptops.core.artifacts import is_complete, read_json
from aptops.core.errors import ConfigError
from aptops.prune import (
    PruneConfig,
    cubic_schedule,
    fine_tune_after_pruning,
    lottery_ticket_pruning,
    magnitude_pruning,
    prunable_layers,
    prune_model,
    sparsity_report,
    structured_pruning,
    taylor_pruning,
    wanda_pruning,
    weight_masks,
)
from aptops.train import TrainConfig
from tests.models import CORPUS


def _model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama)


def _batches(tiny_llama, n=4):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)(" ".join(CORPUS[:20]), return_tensors="pt")["input_ids"][0]
    return [{"input_ids": ids[i * 32:(i + 1) * 32].view(2, 16), "labels": ids[i * 32:(i + 1) * 32].view(2, 16)}
            for i in range(n)]


@pytest.mark.parametrize("granularity", ["global", "layer"])
def test_magnitude_reaches_the_target(tiny_llama, granularity):
    model = _model(tiny_llama)
    embeddings = model.model.embed_tokens.weight.clone()
    report = magnitude_pruning(model, 0.5, granularity)
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    if granularity == "layer":
        assert all(v == pytest.approx(0.5, abs=1e-2) for v in report["layers"].values())
    assert torch.equal(model.model.embed_tokens.weight, embeddings)  # embeddings (and the tied head) stay dense
    assert not any("_orig" in k or "_mask" in k for k in model.state_dict())  # permanent, plain state dict


def test_neuron_granularity_zeroes_whole_rows(tiny_llama):
    model = _model(tiny_llama)
    magnitude_pruning(model, 0.25, "neuron", norm="l2")
    w = model.model.layers[0].mlp.up_proj.weight
    assert int((w.abs().sum(1) == 0).sum()) == round(w.shape[0] * 0.25)


def test_taylor_and_wanda(tiny_llama):
    model = _model(tiny_llama)
    assert taylor_pruning(model, _batches(tiny_llama), 0.4)["sparsity"] == pytest.approx(0.4, abs=1e-3)
    model = _model(tiny_llama)
    report = wanda_pruning(model, _batches(tiny_llama), 0.5)
    assert all(v == pytest.approx(0.5, abs=1e-6) for v in report["layers"].values())  # per output row
    model = _model(tiny_llama)
    wanda_pruning(model, _batches(tiny_llama), n_m=(2, 4))
    w = model.model.layers[1].self_attn.q_proj.weight
    assert torch.all((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2)


def test_wanda_keeps_lower_perplexity_than_magnitude_on_outlier_features(tiny_llama):
    # a model with a few large input features (as in real LLMs): Wanda's |W|·‖X‖ keeps their weights
    from transformers import AutoModelForCausalLM

    batches = _batches(tiny_llama)

    def loss(m):
        with torch.no_grad():
            return sum(float(m(**b).loss) for b in batches)

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for layer in base.model.layers:
            layer.input_layernorm.weight[:4] = 20.0
            layer.post_attention_layernorm.weight[:4] = 20.0
    import copy

    mag, wan = copy.deepcopy(base), copy.deepcopy(base)
    magnitude_pruning(mag, 0.5, "layer")
    wanda_pruning(wan, batches, 0.5)
    assert loss(wan) < loss(mag)


def test_structured_neurons_equal_the_masked_original_and_reload(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model(tiny_llama)
    masked = _model(tiny_llama)
    info = structured_pruning(model, 0.5, "neuron", multiple=8)
    assert info["intermediate_size"] == [128, 64] and model.config.intermediate_size == 64
    assert info["params_after"] < info["params_before"]
    # zero the removed channels in the original: outputs must match the shrunk model
    with torch.no_grad():
        for small, full in zip(model.model.layers, masked.model.layers, strict=True):
            kept = [int(torch.nonzero((full.mlp.up_proj.weight == row).all(1))[0]) for row in small.mlp.up_proj.weight]
            drop = sorted(set(range(128)) - set(kept))
            full.mlp.down_proj.weight[:, drop] = 0
    ids = torch.tensor([[3, 8, 20, 7, 9]])
    assert torch.allclose(model(input_ids=ids).logits, masked(input_ids=ids).logits, atol=1e-5)
    model.save_pretrained(tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert again.config.intermediate_size == 64
    assert torch.allclose(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_structured_heads_keep_gqa_groups_and_reload(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model(tiny_llama)  # 4 query heads in 2 KV groups
    masked = _model(tiny_llama)
    info = structured_pruning(model, 0.5, "head")
    assert info["heads"] == [4, 2] and info["kv_heads"] == [2, 1]
    assert model.config.head_dim == 16 and model.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    with torch.no_grad():  # the same as zeroing the removed group's output columns in the original
        for small, full in zip(model.model.layers, masked.model.layers, strict=True):
            o = full.self_attn.o_proj.weight
            keep_first = torch.equal(small.self_attn.o_proj.weight, o[:, :32])
            cols = slice(32, 64) if keep_first else slice(0, 32)
            o[:, cols] = 0
    ids = torch.tensor([[3, 8, 20, 7, 9]])
    assert torch.allclose(model(input_ids=ids).logits, masked(input_ids=ids).logits, atol=1e-5)
    model.save_pretrained(tmp_path / "heads")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "heads")
    assert torch.allclose(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    with pytest.raises(ConfigError, match="whole groups"):
        structured_pruning(_model(tiny_llama), 0.9, "head")  # would leave no KV group


def test_filter_pruning_on_a_conv_stack():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 4 * 4, 10)).eval()
    x = torch.randn(2, 3, 4, 4)
    info = structured_pruning(net, 0.5, "filter")
    assert [c["filters"] for c in info["layers"]] == [[8, 4], [16, 8]]
    assert net(x).shape == (2, 10) and net[6].in_features == 8 * 16


def test_bad_input_fails_before_any_change(tiny_llama):
    model = _model(tiny_llama)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for call, message in [
        (lambda: magnitude_pruning(model, 1.0), "sparsity"), (lambda: magnitude_pruning(model, 0.0), "sparsity"),
        (lambda: structured_pruning(model, 0.5, "row"), "prune_type"),
        (lambda: structured_pruning(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.5, "neuron"), "family"),
        (lambda: structured_pruning(model, 0.5, "filter"), "Sequential"),
        (lambda: PruneConfig(method="random"), "method"), (lambda: PruneConfig(n_m="two of four"), "2:4"),
    ]:
        with pytest.raises(ConfigError, match=message):
            call()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_lottery_ticket_masks_grow_and_weights_rewind(tiny_llama):
    model = _model(tiny_llama)
    out = lottery_ticket_pruning(model, _batches(tiny_llama), iterations=3, prune_rate=0.3, steps=3, rewind_step=1,
                                 learning_rate=1e-3)
    assert [r["round"] for r in out["rounds"]] == [1, 2, 3]
    assert out["rounds"][-1]["sparsity"] == pytest.approx(1 - 0.7 ** 3, abs=1e-2)
    assert out["rounds"][0]["sparsity"] < out["rounds"][1]["sparsity"] < out["rounds"][2]["sparsity"]
    assert sparsity_report(model)["sparsity"] == pytest.approx(out["sparsity"])


def test_masks_stay_zero_while_fine_tuning(tiny_llama, tmp_path):
    import datasets

    model = _model(tiny_llama)
    magnitude_pruning(model, 0.6)
    masks = weight_masks(model)
    pruned = {n: m.weight.detach().clone() for n, m in prunable_layers(model).items()}
    from transformers import AutoTokenizer

    cfg = PruneConfig(training=TrainConfig(block_size=32, eval_fraction=0.1, training_args={
        "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "use_cpu": True,
        "save_strategy": "no"}))
    out = tmp_path / "ft"
    result = fine_tune_after_pruning(model, datasets.Dataset.from_dict({"text": CORPUS}), output_dir=out,
                                     tokenizer=AutoTokenizer.from_pretrained(tiny_llama), config=cfg, masks=masks)
    assert result.metrics["global_step"] == 4 and is_complete(out)
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(out)
    layers = prunable_layers(tuned)
    assert all(torch.all(layers[n].weight[~m] == 0) for n, m in masks.items())
    assert all(not torch.equal(layers[n].weight[m], pruned[n][m]) for n, m in masks.items())  # kept weights trained


def test_cubic_schedule():
    assert cubic_schedule(0.5, 1) == [0.5]
    s = cubic_schedule(0.8, 4)
    assert s[-1] == pytest.approx(0.8) and all(a < b for a, b in itertools.pairwise(s))
    assert s[0] > 0.8 / 4  # prunes more early, when the model has most redundancy


@pytest.mark.parametrize("method", ["wanda", "neuron"])
def test_prune_model_writes_artifact_report_and_lineage(tiny_llama, tmp_path, method):
    import datasets

    cfg = PruneConfig(method=method, target_sparsity=0.5, schedule_steps=2, recovery_steps=1, training=TrainConfig(
        block_size=32, eval_fraction=0.1, training_args={"max_steps": 2, "per_device_train_batch_size": 4,
                                                         "use_cpu": True, "save_strategy": "no"}))
    out = tmp_path / method
    result = prune_model(str(tiny_llama), datasets.Dataset.from_dict({"text": CORPUS}), output_dir=out, config=cfg)
    assert is_complete(out) and result.metrics["prune_perplexity_after"] > 1
    summary = json.loads((out / "prune.json").read_text())
    if method == "wanda":
        assert summary["sparsity"] == pytest.approx(0.5, abs=0.01) and len(summary["stages"]) == 2
    else:
        assert summary["after_fine_tuning"]["params"] < summary["before"]["params"]
        assert summary["size_bytes"]["after"] < summary["size_bytes"]["before"]
    lineage = read_json(out / "aptops.json")
    assert lineage["stage"] == "prune" and "prune_sparsity" in lineage["metrics"]
    assert "Before and after" in (out / "report.html").read_text()
    # the speedup compares the unpruned model and the final one timed in turns, not two runs minutes apart
    assert summary["speed"]["method"] == "paired"
    assert summary["speedup"] == pytest.approx(summary["speed"]["before_s"] / summary["speed"]["after_s"])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_paired_latency_times_both_models_in_turns():
    import torch

    from aptops.prune.recipe import paired_latency

    calls = []

    class Slow(torch.nn.Module):
        def __init__(self, name, seconds):
            super().__init__()
            self.name, self.seconds, self.w = name, seconds, torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            import time

            calls.append(self.name)
            time.sleep(self.seconds)

    times = paired_latency({"a": Slow("a", 0.02), "b": Slow("b", 0.01)}, torch.zeros(1, 4, dtype=torch.long), rounds=3)
    assert calls == ["a", "b"] * 4  # a warm-up each, then turns
    assert times["a"] > times["b"] >= 0.01


@pytest.fixture(scope="module", params=["mixtral", "qwen3_moe", "qwen2_moe"])
def tiny_moe(request, tmp_path_factory):
    from tests.models import build_tiny_causal_lm

    extra = {"mixtral": {"num_local_experts": 4}, "qwen3_moe": {"num_experts": 4, "moe_intermediate_size": 32},
             "qwen2_moe": {"num_experts": 4, "moe_intermediate_size": 32,
                           "shared_expert_intermediate_size": 48}}[request.param]
    return build_tiny_causal_lm(tmp_path_factory.mktemp(request.param), request.param, num_experts_per_tok=2, **extra)


def _expert_zeros(model):
    stacks = [p for n, p in model.named_parameters() if p.dim() == 3 and "experts" in n]
    assert stacks, "the tiny MoE has no stacked expert weights"
    return sum(int((p == 0).sum()) for p in stacks) / sum(p.numel() for p in stacks)


def test_unstructured_pruning_reaches_the_experts_of_a_moe(tiny_moe, tmp_path):
    """transformers 5 keeps experts as 3-D parameters, not Linear layers: magnitude, Taylor and Wanda (by the tokens
    routed to each expert) prune them too, the report counts them, and the router stays dense."""
    import datasets
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_moe)
    assert any(n.endswith("experts.gate_up_proj") for n in prunable_layers(model))
    router = {n: p.clone() for n, p in model.named_parameters() if ".gate." in n or n.endswith("mlp.gate.weight")}
    report = magnitude_pruning(model, 0.5, "layer")
    assert _expert_zeros(model) == pytest.approx(0.5, abs=0.01)
    zeros = sum(int((m.weight == 0).sum()) for m in prunable_layers(model).values())
    assert report["zeros"] == zeros and report["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(torch.equal(p, router[n]) for n, p in model.named_parameters() if n in router)
    model = AutoModelForCausalLM.from_pretrained(tiny_moe)
    magnitude_pruning(model, 0.25, "neuron")  # each expert's own rows
    w = next(p for n, p in model.named_parameters() if n.endswith("experts.down_proj"))
    assert all(int((w[e].abs().sum(-1) == 0).sum()) == round(w.shape[1] * 0.25) for e in range(w.shape[0]))
    model = AutoModelForCausalLM.from_pretrained(tiny_moe)
    taylor_pruning(model, _batches(tiny_moe), 0.4)
    assert _expert_zeros(model) > 0.2
    # Wanda: each expert's weights scored by the norms of the tokens routed to it, half of every row of each expert
    model = AutoModelForCausalLM.from_pretrained(tiny_moe)
    from aptops.prune.unstructured import expert_activation_norms

    stacks = {n: m for n, m in prunable_layers(model).items() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    norms = expert_activation_norms(model, _batches(tiny_moe), stacks)
    gate_up = next(n for n in norms if n.endswith("gate_up_proj"))
    assert norms[gate_up].shape == stacks[gate_up].weight.shape[::2] and (norms[gate_up].sum(1) > 0).sum() >= 2
    report = wanda_pruning(model, _batches(tiny_moe), 0.5)
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    w = next(p for n, p in model.named_parameters() if n.endswith("experts.gate_up_proj"))
    assert all(int((row == 0).sum()) == w.shape[2] // 2 for row in w.reshape(-1, w.shape[2]))
    # the stage: the sparsity it reports is the zeros it wrote, experts included, and they stay through recovery
    cfg = PruneConfig(method="magnitude", target_sparsity=0.5, training=TrainConfig(
        block_size=32, eval_fraction=0.1, training_args={"max_steps": 2, "per_device_train_batch_size": 4,
                                                         "use_cpu": True, "save_strategy": "no"}))
    out = tmp_path / "pruned"
    result = prune_model(str(tiny_moe), datasets.Dataset.from_dict({"text": CORPUS}), output_dir=out, config=cfg)
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert _expert_zeros(pruned) >= 0.45
    assert result.metrics["prune_sparsity"] == pytest.approx(sparsity_report(pruned)["sparsity"], abs=0.01)
    # per kind, read back from the saved files (per-expert tensors in them): the experts hold their share of zeros
    from aptops.prune.unstructured import saved_sparsity

    saved = saved_sparsity(out)
    shared = "qwen2_moe" in str(tiny_moe)  # its shared expert is a dense MLP beside the routed ones
    assert set(saved["kinds"]) == {"attention", "experts", *(["mlp"] if shared else [])}
    assert "routers" in saved["not_counted"]
    assert result.metrics["prune_sparsity_experts"] == saved["kinds"]["experts"] == pytest.approx(
        _expert_zeros(pruned), abs=1e-6)
    assert saved["kinds"]["experts"] >= 0.45 and "zeros in the saved experts weights" in (out / "report.html").read_text()
