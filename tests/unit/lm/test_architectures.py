"""The one description of each family (aptops.lm.architectures), checked against transformers' own layout on a tiny
random model of every row, and the stages that read it: structured pruning of neurons (each expert's, a shared
expert's, fused projections), heads (whole KV groups, q/k norms) and experts (by routing), and students, on every
family; each result saved, reloaded and compared with the model in memory, and each cut shown to remove only what
it says it removes (units made inert first are exactly the ones removed, the logits unchanged)."""

from __future__ import annotations

import pytest
import torch

from aptops.core.errors import ConfigError
from aptops.distill.student import create_student
from aptops.lm.architectures import FAMILIES, family_of
from aptops.prune.structured import expert_routing_counts, structured_pruning

BASE = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
EXTRA = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "granitemoe": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 2},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 64, "mlp_only_layers": [1]},
    "gemma3_text": {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"] * 2},
}
IDS = torch.tensor([[3, 8, 20, 7, 9, 11, 40, 5]])


def tiny(model_type: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **(BASE | EXTRA.get(model_type, {})), initializer_range=0.2)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _reloads(model, tmp_path):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(_logits(again), _logits(model), atol=1e-5)
    return again


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_each_row_says_where_transformers_keeps_the_parts(model_type):
    model = tiny(model_type)
    fam = family_of(model)
    assert fam.architecture == type(model).__name__
    a = fam.attention
    for layer in model.model.layers:
        attn = fam.attention_of(layer)
        names = [a.qkv] if a.qkv else [a.q, a.k, a.v]
        assert all(isinstance(getattr(attn, n), torch.nn.Linear) for n in [*names, a.o])
        if a.qk_norm:
            width = attn.q_norm.weight.shape[0]
            assert width == (16 if a.qk_norm == "head" else width) and (a.qk_norm == "head") == (width == 16)
        mlp, moe = fam.mlp_of(layer), fam.moe_of(layer)
        assert (mlp is None) != (moe is None)
        if mlp is not None:
            parts = [fam.mlp.gate_up] if fam.mlp.gate_up else [p for p in (fam.mlp.gate, fam.mlp.up) if p]
            assert all(isinstance(getattr(mlp, p), torch.nn.Linear) for p in [*parts, fam.mlp.down])
        else:
            ex = fam.experts
            stacks = getattr(moe, ex.stacks)
            experts = getattr(model.config, ex.count_field)
            assert stacks.gate_up_proj.dim() == 3 and stacks.gate_up_proj.shape[0] == experts
            assert stacks.down_proj.shape[2] == getattr(model.config, ex.size_field)
            assert getattr(moe, ex.router).weight.shape == (experts, 64)


def test_a_family_with_no_row_is_refused_with_the_list_and_how_to_add_one():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    for run in (lambda: structured_pruning(model, 0.5, "neuron"), lambda: create_student(model)):
        with pytest.raises(ConfigError, match=r"'gpt2' family.*qwen3.*one Family row in aptops/lm/architectures\.py"):
            run()


def _inert_neurons(model, fam):
    """Zero the down-projection columns of the first half of every MLP's (and expert's) channels."""
    with torch.no_grad():
        for layer in model.model.layers:
            if (mlp := fam.mlp_of(layer)) is not None:
                down = getattr(mlp, fam.mlp.down).weight
                down[:, : down.shape[1] // 2] = 0
            else:
                moe = fam.moe_of(layer)
                getattr(moe, fam.experts.stacks).down_proj[:, :, : getattr(moe, fam.experts.stacks).down_proj.shape[2] // 2] = 0
                if fam.experts.shared is not None:
                    down = getattr(getattr(moe, fam.experts.shared.module), fam.experts.shared.down).weight
                    down[:, : down.shape[1] // 2] = 0


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_neuron_pruning_removes_only_the_channels_it_says_on_every_family(model_type, tmp_path):
    model = tiny(model_type)
    fam = family_of(model)
    _inert_neurons(model, fam)  # these channels change nothing, score 0, and must be the ones removed
    before, params = _logits(model), sum(p.numel() for p in model.parameters())
    info = structured_pruning(model, 0.5, "neuron", multiple=8)
    assert torch.allclose(_logits(model), before, atol=1e-5)
    assert info["params_after"] == sum(p.numel() for p in model.parameters()) < params
    widths = [info[k] for k in ("intermediate_size", "expert_intermediate_size") if k in info]
    assert widths and all(new == old // 2 for old, new in widths)
    _reloads(model, tmp_path)


def _heads_that_see_nothing(model, fam):
    """Zero the output columns of the last KV group's query heads in every block."""
    hd, heads, kv = 16, model.config.num_attention_heads, model.config.num_key_value_heads
    group = heads // kv
    with torch.no_grad():
        for layer in model.model.layers:
            getattr(fam.attention_of(layer), fam.attention.o).weight[:, (heads - group) * hd:] = 0


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_head_pruning_keeps_gqa_groups_on_every_family_or_says_why_not(model_type, tmp_path):
    model = tiny(model_type)
    fam = family_of(model)
    _heads_that_see_nothing(model, fam)
    before = _logits(model)
    from aptops.lm.gguf_architectures import ARCHITECTURES

    row = ARCHITECTURES.get(fam.architecture)
    if fam.head_pruning or (row is not None and row.full_width_heads):
        with pytest.raises(ConfigError, match="method=neuron"):
            structured_pruning(model, 0.5, "head")
        assert torch.equal(_logits(model), before)  # refused before any change
        return
    info = structured_pruning(model, 0.5, "head")
    assert info["heads"] == [4, 2] and info["kv_heads"] == [2, 1]
    if fam.attention.qk_norm != "full":  # norms over all heads renormalise over fewer features: not the same model
        assert torch.allclose(_logits(model), before, atol=1e-5)
    again = _reloads(model, tmp_path)
    assert again.config.num_attention_heads == 2 and again.config.head_dim == 16


MOE = sorted(name for name, fam in FAMILIES.items() if fam.experts is not None)


@pytest.mark.parametrize("model_type", MOE)
def test_expert_pruning_drops_the_least_routed_experts_and_their_router_rows(model_type, tmp_path):
    model = tiny(model_type)
    fam = family_of(model)
    batches = [{"input_ids": torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(i))}
               for i in range(3)]
    counts = expert_routing_counts(model, batches)
    assert counts and all(int(c.sum()) == 3 * 2 * 24 * 2 for c in counts.values())  # tokens x experts per token
    info = structured_pruning(model, 0.5, "expert", data_loader=batches)
    assert info["experts"] == [4, 2] and getattr(model.config, fam.experts.count_field) == 2
    for i, kept in info["kept"].items():
        assert sorted(counts[i][kept].tolist()) == sorted(counts[i].tolist())[2:]  # the two most routed
        moe = fam.moe_of(model.model.layers[i])
        assert getattr(moe, fam.experts.router).weight.shape[0] == 2
        assert getattr(moe, fam.experts.stacks).gate_up_proj.shape[0] == 2
    assert info["routed_share_kept"] >= 0.5
    model.config.output_router_logits = True  # recovery training with the load-balancing loss counts the experts left
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    model.eval()
    _reloads(model, tmp_path)
    with pytest.raises(ConfigError, match="keep 2"):
        structured_pruning(tiny(model_type), 0.75, "expert", data_loader=batches)  # fewer than experts per token
    with pytest.raises(ConfigError, match="dense model"):
        structured_pruning(tiny("llama"), 0.5, "expert", data_loader=batches)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_student_of_every_family_starts_as_the_teacher_and_reloads(model_type, tmp_path):
    teacher = tiny(model_type)
    fam = family_of(teacher)
    whole = create_student(teacher, keep_layers=[0, 1, 2, 3]).eval()
    assert torch.allclose(_logits(whole), _logits(teacher), atol=1e-5)
    student = create_student(teacher, keep_layers=[0, 3]).eval()
    again = _reloads(student, tmp_path)
    assert again.config.num_hidden_layers == 2 and again.config.aptops_student["kept_layers"] == [0, 3]
    for name, p in student.named_parameters():  # block j is teacher block keep[j], weight for weight
        source = name.replace("layers.1.", "layers.3.")
        assert torch.equal(p, teacher.get_parameter(source)), name
    if getattr(teacher.config, "layer_types", None):
        assert again.config.layer_types == [teacher.config.layer_types[i] for i in (0, 3)]
    if model_type == "qwen3_moe":  # blocks 0 and 2 of the teacher are dense (decoder_sparse_step=2)
        assert again.config.mlp_only_layers == [0] and fam.mlp_of(again.model.layers[0]) is not None
        assert fam.moe_of(again.model.layers[1]) is not None
    if fam.experts is None:
        narrow = create_student(teacher, layer_stride=2, intermediate_size=64).eval()
        assert getattr(narrow.config, fam.mlp.size_field) == 64 and _logits(narrow).shape == (1, 8, 256)
    else:
        with pytest.raises(ConfigError, match="method=neuron"):
            create_student(teacher, intermediate_size=64)
