"""Which transformers causal LMs become which llama.cpp architecture, and what each needs on the way.

One row per architecture (:data:`ARCHITECTURES`): llama.cpp's name for it, whether Q/K rows are permuted to
llama.cpp's rotary layout, the shift Gemma's norms need, the config fields written as GGUF keys, the
config values llama.cpp assumes rather than reads (a config that differs is refused: converted, it would
answer differently), and how experts are stored. The converter (:mod:`aptops.lm.gguf`) reads rows; it
has no branch per architecture. What each row says was learnt from llama.cpp's own loader and converter of
the version the quantizer is built from; every conversion is still checked against transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """A GGUF key filled from the config: ``writer`` is the ``GGUFWriter`` method, ``fields`` the config
    fields tried in order; a required key missing from the config is an error, an optional one is left out."""

    writer: str
    fields: tuple[str, ...]
    required: bool = True


@dataclass(frozen=True)
class Assumed:
    """A config value llama.cpp's graph for the architecture hard-codes: ``default`` is transformers' default
    when the field is absent, ``value`` what llama.cpp computes with."""

    field: str
    default: Any
    value: Any


@dataclass(frozen=True)
class Arch:
    """How one transformers architecture is written for llama.cpp.

    Attributes:
        gguf: llama.cpp's architecture name.
        permute_qk: HF stores each Q/K head as two rotary halves, llama.cpp's "normal" rope wants them
            interleaved (the llama family; NeoX-rope families such as Qwen, Gemma, Phi-3 take them as they are).
        norm_shift: added to every ``*norm.weight`` (Gemma's RMSNorm multiplies by ``1 + w``).
        keys: config fields written as architecture keys.
        assumed: config values llama.cpp does not read but assumes.
        experts: per-expert tensors are stacked into one 3-D tensor per projection.
        swa_pattern: ``layer_types`` is written as the per-layer sliding-window pattern.
        gemma_attention_scale: llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the
            27B sizes it recognises by depth); ``query_pre_attn_scalar`` must be the same.
        output_required: llama.cpp needs an ``output`` matrix even when the embeddings are tied.
        rope_types: rope scalings llama.cpp applies the same way for this architecture.
        full_width_heads: llama.cpp's graph for it takes the attention width from ``hidden_size`` (it reads no
            key / value length), so ``num_attention_heads x head_dim`` must equal ``hidden_size``: a head-pruned
            model of this family cannot be written.
        no_gqa: llama.cpp's graph sizes the key norm by ``hidden_size``, so every query head must have its own
            key/value head (OLMoE).
        qkv_per_head: the fused ``query_key_value`` holds each head's q, k and v rows together (GPT-NeoX); llama.cpp
            wants all q rows, then all k, then all v.
    """

    gguf: str
    permute_qk: bool = False
    norm_shift: float = 0.0
    keys: tuple[Key, ...] = ()
    assumed: tuple[Assumed, ...] = ()
    experts: bool = False
    swa_pattern: bool = False
    gemma_attention_scale: tuple[int, ...] = ()
    output_required: bool = False
    rope_types: tuple[str, ...] = ("default", "linear", "llama3", "yarn")
    full_width_heads: bool = False
    no_gqa: bool = False
    qkv_per_head: bool = False


_EXPERTS = (Key("add_expert_count", ("num_local_experts", "num_experts")),
            Key("add_expert_used_count", ("num_experts_per_tok",)))
_EXPERT_FF = Key("add_expert_feed_forward_length", ("moe_intermediate_size",))
_LLAMA = Arch("llama", permute_qk=True)
_LAYER_NORM_EPS = Key("add_layer_norm_eps", ("layer_norm_eps",))
_GRANITE = (Key("add_embedding_scale", ("embedding_multiplier",)), Key("add_residual_scale", ("residual_multiplier",)),
            Key("add_attention_scale", ("attention_multiplier",)), Key("add_logit_scale", ("logits_scaling",)))

ARCHITECTURES: dict[str, Arch] = {
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,
    "MixtralForCausalLM": Arch("llama", permute_qk=True, keys=_EXPERTS, experts=True),
    "Qwen2ForCausalLM": Arch("qwen2", assumed=(Assumed("use_sliding_window", False, False),), full_width_heads=True),
    "Qwen3ForCausalLM": Arch("qwen3", assumed=(Assumed("use_sliding_window", False, False),)),
    "Qwen2MoeForCausalLM": Arch(
        "qwen2moe", experts=True, output_required=True, full_width_heads=True,
        keys=(*_EXPERTS, _EXPERT_FF, Key("add_expert_shared_feed_forward_length", ("shared_expert_intermediate_size",))),
        assumed=(Assumed("norm_topk_prob", False, False), Assumed("decoder_sparse_step", 1, 1),
                 Assumed("mlp_only_layers", [], []), Assumed("use_sliding_window", False, False))),
    "Qwen3MoeForCausalLM": Arch(
        "qwen3moe", experts=True, keys=(*_EXPERTS, _EXPERT_FF),
        assumed=(Assumed("norm_topk_prob", False, True), Assumed("decoder_sparse_step", 1, 1),
                 Assumed("mlp_only_layers", [], []), Assumed("use_sliding_window", False, False))),
    "Gemma2ForCausalLM": Arch(
        "gemma2", norm_shift=1.0, swa_pattern=True, gemma_attention_scale=(46,),
        keys=(Key("add_attn_logit_softcapping", ("attn_logit_softcapping",)),
              Key("add_final_logit_softcapping", ("final_logit_softcapping",)),
              Key("add_sliding_window", ("sliding_window",)))),
    "Gemma3ForCausalLM": Arch(
        "gemma3", norm_shift=1.0, swa_pattern=True, gemma_attention_scale=(62,),
        keys=(Key("add_final_logit_softcapping", ("final_logit_softcapping",), required=False),
              Key("add_sliding_window", ("sliding_window",))),
        assumed=(Assumed("attn_logit_softcapping", None, None),),
        rope_types=("default", "linear")),
    "GemmaForCausalLM": Arch("gemma", norm_shift=1.0),
    "GPTNeoXForCausalLM": Arch("gptneox", qkv_per_head=True, full_width_heads=True, output_required=True, keys=(
        _LAYER_NORM_EPS, Key("add_parallel_residual", ("use_parallel_residual",), required=False))),
    "Olmo2ForCausalLM": Arch("olmo2", output_required=True, full_width_heads=True),
    "GraniteForCausalLM": Arch("granite", permute_qk=True, keys=_GRANITE),
    "GraniteMoeForCausalLM": Arch("granitemoe", permute_qk=True, experts=True, keys=(*_GRANITE, *_EXPERTS)),
    "OlmoeForCausalLM": Arch("olmoe", experts=True, keys=_EXPERTS, output_required=True, no_gqa=True,
                             assumed=(Assumed("norm_topk_prob", False, False),)),
    "StableLmForCausalLM": Arch("stablelm", keys=(_LAYER_NORM_EPS,), output_required=True),
    "Starcoder2ForCausalLM": Arch("starcoder2", keys=(Key("add_layer_norm_eps", ("norm_epsilon",)),),
                                  full_width_heads=True),
    "PhiForCausalLM": Arch("phi2", keys=(_LAYER_NORM_EPS,), output_required=True, full_width_heads=True),
    "CohereForCausalLM": Arch("command-r", keys=(_LAYER_NORM_EPS, Key("add_logit_scale", ("logit_scale",))),
                              assumed=(Assumed("use_qk_norm", False, False),), full_width_heads=True),
    "Phi3ForCausalLM": Arch("phi3", keys=(Key("add_sliding_window", ("sliding_window",), required=False),),
                            output_required=True, rope_types=("default", "longrope"), full_width_heads=True),
}


def arch_for(cfg: dict[str, Any]) -> tuple[str, Arch]:
    """``(transformers architecture, row)`` of a config, refused with the supported list if not in the table."""
    name = (cfg.get("architectures") or ["?"])[0]
    if name not in ARCHITECTURES:
        raise ConfigError(f"architecture {name!r} is not supported for GGUF export; supported: "
                          f"{', '.join(sorted(ARCHITECTURES))}", field="architecture", value=name)
    arch = ARCHITECTURES[name]
    heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    if arch.full_width_heads and heads and hidden:
        head_dim = cfg.get("head_dim") or hidden // heads
        if heads * head_dim != hidden:
            raise ConfigError(f"{name} with {heads} heads of {head_dim} ({heads * head_dim} wide) and hidden_size "
                              f"{hidden}: llama.cpp's {arch.gguf} graph takes the attention width from hidden_size, so "
                              "it cannot load this model (a head-pruned one, say); prune MLP neurons instead "
                              "(method=neuron), or keep every head", field="num_attention_heads", value=heads)
    kv = cfg.get("num_key_value_heads") or heads
    if arch.no_gqa and kv != heads:
        raise ConfigError(f"{name} with {kv} key/value heads for {heads} query heads: llama.cpp's {arch.gguf} graph "
                          "sizes its key norm for one key/value head per query head, so it cannot load this model",
                          field="num_key_value_heads", value=kv)
    for a in arch.assumed:
        if cfg.get(a.field, a.default) != a.value:
            raise ConfigError(f"{name} with {a.field}={cfg.get(a.field, a.default)!r}: llama.cpp's {arch.gguf} "
                              f"assumes {a.field}={a.value!r}, so the GGUF would answer differently; it is not "
                              "exported", field=a.field, value=cfg.get(a.field, a.default))
    return name, arch


def config_value(cfg: dict[str, Any], *fields: str) -> Any:
    return next((cfg[f] for f in fields if cfg.get(f) is not None), None)


def write_keys(writer: Any, arch: Arch, cfg: dict[str, Any]) -> None:
    """The row's architecture keys, from the config."""
    for key in arch.keys:
        value = config_value(cfg, *key.fields)
        if value is None and key.required:
            raise ConfigError(f"config.json has no {' or '.join(key.fields)}, which llama.cpp's {arch.gguf} needs",
                              field=key.fields[0])
        if value is not None:
            getattr(writer, key.writer)(value)
    if arch.swa_pattern and cfg.get("layer_types"):
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
    if arch.gemma_attention_scale:
        n_layer, hidden, n_head = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or hidden // n_head
        expected = hidden // n_head if n_layer in arch.gemma_attention_scale else head_dim
        given = cfg.get("query_pre_attn_scalar", head_dim)
        if given != expected:
            raise ConfigError(f"query_pre_attn_scalar={given}: llama.cpp's {arch.gguf} scales queries by "
                              f"1/sqrt({expected}) for a {n_layer}-block model; the GGUF would answer differently",
                              field="query_pre_attn_scalar", value=given)


def rope_settings(cfg: dict[str, Any], allowed: tuple[str, ...] = ("default", "linear", "llama3", "yarn")
                  ) -> tuple[float, dict[str, Any] | None, float | None]:
    """``(rope_theta, scaling, swa_theta)`` of a HF config, whichever spelling it uses (``rope_parameters`` in
    transformers 5, per layer type for Gemma 3; ``rope_scaling`` + ``rope_theta`` before). ``scaling`` is
    ``None`` for plain rotary embeddings; ``swa_theta`` the sliding layers' own base, if they have one.

    Raises:
        ConfigError: a scaling type llama.cpp does not reproduce for this architecture (converted anyway it
            would be a silently different model).
    """
    params = dict(cfg.get("rope_parameters") or {})
    swa = params.get("sliding_attention")
    params = dict(params.get("full_attention", params))
    scaling = dict(cfg.get("rope_scaling") or {}) or {k: v for k, v in params.items()
                                                      if k not in ("rope_theta", "partial_rotary_factor")}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = str(scaling.get("rope_type", scaling.get("type", "default"))) if scaling else "default"
    kind = {"su": "longrope"}.get(kind, kind)
    if kind not in allowed:
        raise ConfigError(f"rope scaling {kind!r} is not supported for GGUF export of this architecture "
                          f"(supported: {', '.join(allowed)}); a conversion without it would answer differently",
                          field="rope_scaling", value=kind)
    swa_theta = float(swa["rope_theta"]) if swa and "rope_theta" in swa else None
    return theta, (None if kind == "default" else dict(scaling, rope_type=kind)), swa_theta


def rope_dimensions(cfg: dict[str, Any], head_dim: int) -> int:
    """The rotated part of each head (Phi-3's ``partial_rotary_factor``; the whole head elsewhere)."""
    params = cfg.get("rope_parameters") or {}
    factor = float(config_value(cfg, "partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0)
    return int(head_dim * factor)


def write_rope(gguf: Any, writer: Any, cfg: dict[str, Any], scaling: dict[str, Any] | None, rope_dims: int,
               theta: float) -> list[tuple[str, Any]]:
    """The scaling keys llama.cpp reads; returns the extra tensors it wants (``rope_freqs``, longrope's factors)."""
    np = require("numpy", extra="export", feature="writing GGUF")
    original = config_value(scaling or {}, "original_max_position_embeddings") or cfg.get(
        "original_max_position_embeddings")
    if original:
        writer.add_rope_scaling_orig_ctx_len(int(original))
    if scaling is None:
        return []
    kind, factor = scaling["rope_type"], scaling.get("factor")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "yarn":
        # llama.cpp's dense families read the factor and the original context only: the ramp's betas are its
        # defaults (32 / 1, transformers' too), and the attention scale is its own 0.1 ln(factor) + 1 times
        # rope.scaling.attn_factor
        fixed = {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True, "mscale": None, "mscale_all_dim": None}
        odd = {k: scaling[k] for k, v in fixed.items() if scaling.get(k) is not None and scaling[k] != v}
        if odd:
            raise ConfigError(f"yarn rope scaling with {odd}: llama.cpp uses beta_fast 32, beta_slow 1, truncation and "
                              "no mscale for this architecture, so the GGUF would answer differently; it is not "
                              "exported", field="rope_scaling", value=str(odd))
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        if scaling.get("attention_factor") is not None and float(factor) > 1:
            writer.add_rope_scaling_attn_factors(float(scaling["attention_factor"]) / (0.1 * math.log(factor) + 1))
    elif kind == "llama3":
        return [("rope_freqs.weight", llama3_rope_factors(theta, rope_dims, scaling))]
    elif kind == "longrope":
        n_ctx = cfg.get("max_position_embeddings")
        scale = n_ctx / original
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        writer.add_rope_scaling_attn_factors(
            float(scaling.get("attention_factor") or (math.sqrt(1 + math.log(scale) / math.log(original))
                                                      if scale > 1 else 1.0)))
        long, short = scaling.get("long_factor"), scaling.get("short_factor")
        if not long or not short or len(long) != len(short) or len(long) != rope_dims // 2:
            raise ConfigError(f"longrope needs long_factor and short_factor of {rope_dims // 2} values each",
                              field="rope_scaling")
        return [("rope_factors_long.weight", np.asarray(long, dtype=np.float32)),
                ("rope_factors_short.weight", np.asarray(short, dtype=np.float32))]
    return []


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict[str, Any]) -> Any:
    """The per-frequency divisors of Llama 3.1-style rope scaling, as the ``rope_freqs`` tensor llama.cpp reads:
    high frequencies (wavelength under ``original / high_freq_factor``) keep theirs, low ones (over
    ``original / low_freq_factor``) are divided by ``factor``, and the band between blends the two."""
    np = require("numpy", extra="export", feature="writing GGUF")
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling["original_max_position_embeddings"])
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = np.clip((original / wavelen - low) / (high - low), 0.0, 1.0)
    divisor = 1.0 / (smooth + (1.0 - smooth) / factor)  # 1 where smooth is 1 (high), factor where 0 (low)
    return divisor.astype(np.float32)
