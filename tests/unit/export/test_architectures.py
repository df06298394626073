"""Every architecture of the converter's table, exact against transformers when llama.cpp runs it.

Each model is random, 2 blocks, 64 wide, built from its transformers config with a real tokenizer (a byte-level
BPE trained on the test corpus, or SentencePiece); its weights are drawn wide (``initializer_range=0.3``) so the
next token is a clear choice and top-1 agreement means something. Each is exported as F32, F16 and Q8_0 in one
call (each file verified and gated by the export itself) and llama.cpp's logits are compared with transformers'
on the same token ids.
"""

from __future__ import annotations

import json
import shutil

import pytest

from aptops.core.errors import ConfigError, InvalidArtifactError
from aptops.export import ExportConfig, create_modelfile, export_to_gguf
from aptops.export.ollama import CHAT_FORMATS, parse_modelfile
from tests.models import build_tiny_causal_lm

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}
GRANITE = {"embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0078125,
           "logits_scaling": 8.0}
# name -> (transformers model_type, config fields, tokenizer family)
CASES = {
    "llama-3.1": ("llama", {"rope_parameters": LLAMA3_ROPE, "max_position_embeddings": 512}, "bpe"),
    "mistral-nemo": ("mistral", {"head_dim": 32, "tie_word_embeddings": False}, "spm"),  # head_dim != hidden/heads
    "qwen2.5": ("qwen2", {}, "bpe"),
    "qwen3": ("qwen3", {"tie_word_embeddings": False}, "bpe"),
    "gemma-2": ("gemma2", {"query_pre_attn_scalar": 16, "sliding_window": 16}, "spm"),
    "gemma-3": ("gemma3_text", {"query_pre_attn_scalar": 16, "sliding_window": 16,
                                "layer_types": ["sliding_attention", "full_attention"],
                                "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                       "rope_theta": 1000000.0},
                                                    "sliding_attention": {"rope_type": "default",
                                                                          "rope_theta": 10000.0}}}, "bpe"),
    # llama.cpp sets Phi-3 token attributes by general.name, which would need Phi-3's own special tokens
    "p-3.5": ("phi3", {"partial_rotary_factor": 0.5, "tie_word_embeddings": False}, "bpe"),
    "mixtral": ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2, "tie_word_embeddings": False}, "bpe"),
    "qwen2-moe": ("qwen2_moe", {"num_experts": 4, "shared_expert_intermediate_size": 48, **MOE}, "bpe"),
    "qwen3-moe": ("qwen3_moe", {"num_experts": 4, "norm_topk_prob": True, **MOE}, "spm"),
    "gemma": ("gemma", {"hidden_activation": "gelu_pytorch_tanh"}, "spm"),
    "olmo-2": ("olmo2", {}, "bpe"),
    "granite-3": ("granite", GRANITE, "bpe"),
    "granite-moe": ("granitemoe", {"num_local_experts": 4, "num_experts_per_tok": 2, **GRANITE}, "bpe"),
    "olmoe": ("olmoe", {"num_experts": 4, "num_experts_per_tok": 2, "num_key_value_heads": 4}, "bpe"),
    "stablelm-2": ("stablelm", {"partial_rotary_factor": 0.25}, "bpe"),
    "starcoder2": ("starcoder2", {}, "bpe"),
    "phi-2": ("phi", {"partial_rotary_factor": 0.5}, "bpe"),
    "command-r": ("cohere", {"logit_scale": 0.0625}, "bpe"),
    "pythia": ("gpt_neox", {"partial_rotary_factor": 0.25, "use_parallel_residual": True}, "bpe"),
}


# each family's chat template (shortened to the turn markers): it must reach the GGUF and the Modelfile
TEMPLATES = {
    "chatml": "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "llama3": "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + "
              "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
              "<|end_header_id|>\n\n' }}{% endif %}",
    "mistral": "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}"
               "{{ m['content'] + eos_token }}{% endif %}{% endfor %}",
    "gemma": "{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + "
             "'\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
             "{{ '<start_of_turn>model\n' }}{% endif %}",
    "phi3": "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
}
FORMAT = {"llama-3.1": "llama3", "mistral-nemo": "mistral", "mixtral": "mistral", "gemma-2": "gemma", "gemma-3": "gemma",
          "p-3.5": "phi3"}


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
    from tests.models import build_tiny_spm_llama

    return build_tiny_spm_llama(tmp_path_factory.mktemp("spm"))


def _build(name, tmp_path, spm_tokenizer, bpe_tokenizer=None, family=None, **overrides):
    """The case's model in ``tmp_path/<name>-instruct``; the BPE family's tokenizer is trained here unless
    ``bpe_tokenizer`` names a folder to take it from; ``family`` overrides the case's tokenizer family."""
    model_type, fields, default_family = CASES[name]
    folder = build_tiny_causal_lm(tmp_path / f"{name}-instruct", model_type,
                                  tokenizer_from=spm_tokenizer if (family or default_family) == "spm" else bpe_tokenizer,
                                  **({"initializer_range": 0.3} | fields | overrides))
    (folder / "chat_template.jinja").write_text(TEMPLATES[FORMAT.get(name, "chatml")], encoding="utf-8")
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_architecture_is_exported_exactly(name, tmp_path, spm_tokenizer):
    import gguf

    model = _build(name, tmp_path, spm_tokenizer)
    result = export_to_gguf(model, output_dir=tmp_path / "gguf", config=ExportConfig(quantization="F32",
                                                                                       also=("F16", "Q8_0")))
    m = result.metrics
    assert m["min_logit_cosine"] >= 0.999 and m["top1_agreement"] >= 0.95, m  # F32: the conversion itself
    assert m["F16_top1_agreement"] >= 0.95 and m["Q8_0_top1_agreement"] >= 0.8, m
    assert m["tokenizer_agreement"] == 1.0
    reader = gguf.GGUFReader(tmp_path / "gguf" / "model-F32.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith(("GGUF.", "tokenizer.ggml."))}
    cfg = json.loads((model / "config.json").read_text())
    # general.* as llama.cpp's converter names a model: from the folder "<name>-instruct"
    assert (fields["general.basename"], fields["general.finetune"]) == (name, "instruct")
    assert fields["general.size_label"]
    assert fields["tokenizer.chat_template"] == (model / "chat_template.jinja").read_text()
    modelfile = parse_modelfile(create_modelfile("m", tmp_path / "gguf" / "model-Q8_0.gguf", tokenizer_path=model))
    assert CHAT_FORMATS[FORMAT.get(name, "chatml")][1] == modelfile["template"]
    arch = fields["general.architecture"]
    if cfg.get("num_experts") or cfg.get("num_local_experts"):  # experts stacked as llama.cpp reads them
        exps = {t.name: list(t.shape) for t in reader.tensors if "_exps" in t.name}
        assert exps["blk.1.ffn_gate_exps.weight"] == [64, cfg.get("moe_intermediate_size") or 128, 4]
        assert fields[f"{arch}.expert_count"] == 4 and fields[f"{arch}.expert_used_count"] == 2
        f16 = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "gguf" / "model-F16.gguf").tensors}
        assert f16["blk.0.ffn_gate_inp.weight"] == "F32" and f16["blk.0.ffn_up_exps.weight"] == "F16"  # routers F32



@pytest.mark.parametrize("name", list(CASES))
def test_a_compressed_model_of_each_family_is_exported_exactly(name, tmp_path, spm_tokenizer):
    """What the compression stages make of each family - a student with a block dropped, half its MLP neurons (each
    expert's), a KV group of heads where llama.cpp can hold it, half the experts by routing - reaches llama.cpp with
    every width it now has, and the export's own check against transformers passes."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aptops.distill.student import create_student
    from aptops.lm.architectures import FAMILIES, family_of
    from aptops.prune.structured import _check_head_pruning, structured_pruning

    source = _build(name, tmp_path, spm_tokenizer, num_hidden_layers=3,
                    **({"layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}
                       if CASES[name][0] == "gemma3_text" else {}))
    tok = AutoTokenizer.from_pretrained(source)
    if CASES[name][0] not in FAMILIES:  # exported, but the compression stages have no row for it: said before work
        with pytest.raises(ConfigError, match="one Family row"):
            create_student(AutoModelForCausalLM.from_pretrained(source), keep_layers=[0, 2])
        return
    model = create_student(AutoModelForCausalLM.from_pretrained(source), keep_layers=[0, 2])
    fam = family_of(model)
    structured_pruning(model, 0.5, "neuron")
    try:
        _check_head_pruning(fam)
        structured_pruning(model, 0.5, "head")
        heads = 2
    except ConfigError:
        heads = 4  # llama.cpp's graph for the family cannot hold fewer heads: refused, as the stage refuses it
    if fam.experts is not None:
        ids = tok(" ".join(["the quick brown fox jumps over the lazy dog"] * 8), return_tensors="pt")["input_ids"]
        structured_pruning(model, 0.5, "expert", data_loader=[{"input_ids": ids[:, :64]}])
    folder = tmp_path / f"{name}-compressed"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text((source / "chat_template.jinja").read_text(), encoding="utf-8")
    result = export_to_gguf(folder, output_dir=tmp_path / "gguf", config=ExportConfig(quantization="F32"))
    assert result.metrics["min_logit_cosine"] >= 0.999 and result.metrics["top1_agreement"] >= 0.95, result.metrics
    reader = gguf.GGUFReader(result.outputs["gguf"])
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith(("GGUF.", "tokenizer."))}
    arch = fields["general.architecture"]
    assert fields[f"{arch}.block_count"] == 2 and fields[f"{arch}.attention.head_count"] == heads
    if fam.experts is not None:
        assert fields[f"{arch}.expert_count"] == 2

def test_phi3_long_context_rope_factors(tmp_path, spm_tokenizer):
    """Phi-3.5's longrope: both factor tensors and the attention factor, short factors in use below 4096."""
    import gguf

    factors = {"long_factor": [1.0 + i / 4 for i in range(4)], "short_factor": [1.0 + i / 8 for i in range(4)]}
    model = _build("p-3.5", tmp_path, spm_tokenizer, max_position_embeddings=16384,
                   original_max_position_embeddings=4096,
                   rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                    **factors})
    result = export_to_gguf(model, output_dir=tmp_path / "gguf", config=ExportConfig(quantization="F32"))
    assert result.metrics["min_logit_cosine"] >= 0.999 and result.metrics["top1_agreement"] >= 0.95
    names = {t.name for t in gguf.GGUFReader(result.outputs["gguf"]).tensors}
    assert {"rope_factors_long.weight", "rope_factors_short.weight"} <= names


def test_bf16_weights_stay_bf16_and_convert_exactly(tmp_path):
    """A BF16 checkpoint: BF16 GGUF tensors bit for bit the source's, and F16 made one tensor at a time."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    model = build_tiny_causal_lm(tmp_path / "bf16", "qwen3", initializer_range=0.3, dtype="bfloat16")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).save_pretrained(model)
    result = export_to_gguf(model, output_dir=tmp_path / "gguf", config=ExportConfig(quantization="BF16",
                                                                                       also=("F16",)))
    assert result.metrics["top1_agreement"] >= 0.95 and result.metrics["F16_top1_agreement"] >= 0.95
    reader = gguf.GGUFReader(result.outputs["gguf"])
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert tensor.tensor_type == gguf.GGMLQuantizationType.BF16
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        source = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert np.array_equal(np.asarray(tensor.data).view(np.uint16), source.view(torch.int16).numpy().view(np.uint16))


def test_architectures_llama_cpp_would_run_differently_are_refused(tmp_path, spm_tokenizer):
    """Bad input: a MoE checkpoint missing an expert, a config llama.cpp would compute differently, pickled weights:
    each a clear error naming what is wrong, and no artifact."""
    moe = _build("mixtral", tmp_path, spm_tokenizer)
    broken = tmp_path / "broken-moe"
    shutil.copytree(moe, broken)
    from safetensors.torch import load_file, save_file

    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidArtifactError, match=r"experts\.\*\.w2: the config has 4 experts, the checkpoint 3 "
                                                   r"\(missing \[3\]"):
        export_to_gguf(broken, output_dir=tmp_path / "a", config=ExportConfig(quantization="F16"))

    qwen3moe = _build("qwen3-moe", tmp_path, spm_tokenizer, norm_topk_prob=False)
    with pytest.raises(ConfigError, match=r"norm_topk_prob=False: llama.cpp's qwen3moe assumes norm_topk_prob=True"):
        export_to_gguf(qwen3moe, output_dir=tmp_path / "b", config=ExportConfig(quantization="F16"))

    gemma = _build("gemma-2", tmp_path, spm_tokenizer, query_pre_attn_scalar=256)
    with pytest.raises(ConfigError, match=r"query_pre_attn_scalar=256: llama.cpp's gemma2 scales queries by "
                                          r"1/sqrt\(16\)"):
        export_to_gguf(gemma, output_dir=tmp_path / "c", config=ExportConfig(quantization="F16"))

    # a head-pruned Qwen2 (3 heads of 16 in a 64-wide model): llama.cpp's qwen2 graph cannot load it (its own
    # words: "attn_q.weight has wrong shape"), so it is refused before anything is converted
    qwen2 = _build("qwen2.5", tmp_path, spm_tokenizer, num_attention_heads=3, num_key_value_heads=1, head_dim=16)
    with pytest.raises(ConfigError, match=r"3 heads of 16 \(48 wide\) and hidden_size 64: llama.cpp's qwen2 graph "
                                          r"takes the attention width from hidden_size.*method=neuron"):
        export_to_gguf(qwen2, output_dir=tmp_path / "e", config=ExportConfig(quantization="F16"))

    pickled = tmp_path / "pickled"  # weights only as pytorch_model.bin: refused before anything is read
    shutil.copytree(moe, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(InvalidArtifactError, match=r"no \*\.safetensors weights\. It has pickled weights "
                                                   r"\(pytorch_model\.bin\).*save_pretrained"):
        export_to_gguf(pickled, output_dir=tmp_path / "d", config=ExportConfig(quantization="F16"))
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_fused_expert_layout_is_split_as_llama_cpp_reads_it(tmp_path, spm_tokenizer):
    """A MoE checkpoint written in transformers' in-memory layout (``experts.gate_up_proj`` [experts, 2 x ff, hidden],
    ``experts.down_proj``), as a raw ``state_dict`` save gives it, exports as exactly as the per-expert one."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = _build("qwen3-moe", tmp_path, spm_tokenizer)
    state = {k: v.contiguous() for k, v in AutoModelForCausalLM.from_pretrained(model).state_dict().items()
             if k != "lm_head.weight"}  # tied: the head is the embedding
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    result = export_to_gguf(model, output_dir=tmp_path / "gguf", config=ExportConfig(quantization="F32"))
    assert result.metrics["min_logit_cosine"] >= 0.999 and result.metrics["top1_agreement"] >= 0.95


def test_an_architecture_beyond_the_table_goes_through_llama_cpps_converter_then_is_verified(tmp_path, smollm2):
    """SmolLM3 is in no row of aptops' table: llama.cpp's own converter (installed by setup from the locked
    llama-cpp-python source) writes it, aptops' verification and quant gate check it, and verify.json says so."""
    from importlib.metadata import version

    model = build_tiny_causal_lm(tmp_path / "smollm3-tiny", "smollm3", tokenizer_from=smollm2, initializer_range=0.3)
    result = export_to_gguf(model, output_dir=tmp_path / "gguf", config=ExportConfig(quantization="F16"))
    verify = json.loads((tmp_path / "gguf" / "verify.json").read_text())
    assert verify["converter"] == result.details["converter"]
    assert verify["converter"]["converter"] == "llama.cpp" and verify["converter"]["version"] == version("llama_cpp_python")
    assert verify["converter"]["architecture"] == "SmolLM3ForCausalLM" and verify["verify"]["passed"]
    assert result.metrics["top1_agreement"] >= 0.95 and result.metrics["tokenizer_agreement"] == 1.0
