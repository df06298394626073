"""One description of each decoder-only family, read by every stage that reaches inside a model.

A :class:`Family` row says where a transformers model of that ``model_type`` keeps what the model stages cut or
read: the attention projections (separate q/k/v/o, or Phi-3's fused ``qkv_proj``), q/k norms (per head, as Qwen3
and Gemma 3 have them, or over the whole width, as OLMo2 has), the MLP (gate/up/down, Phi-3's fused ``gate_up_proj``,
or a plain two-matrix MLP), the experts of a mixture-of-experts block (the router, the 3-D expert stacks transformers
5 keeps, a shared expert), the config fields that hold those sizes, and the per-layer config lists (``layer_types``
for Gemma's sliding/full pattern, ``mlp_only_layers`` for Qwen-MoE) that follow the blocks a student keeps.

Structured pruning (:mod:`aptops.prune.structured`), student creation (:mod:`aptops.distill.student`) and the GGUF
export (the row's ``architecture``, whose llama.cpp row is :data:`aptops.lm.gguf_architectures.ARCHITECTURES`) read
it; they have no list of families of their own. Adding a family is one row here (and its llama.cpp row to export
it) plus its tests; a model of a family with no row is refused with the list and how to add one.

The layouts are transformers 5's (checked by ``tests/unit/lm/test_architectures.py`` on a tiny model of each row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aptops.core.errors import ConfigError


@dataclass(frozen=True)
class Attention:
    """Where a block's attention keeps its projections (module names inside ``layer.<module>``).

    Attributes:
        module: the attention module's name in the block.
        q / k / v / o: the projections (rows of q/k/v are heads x head_dim; o's columns are).
        qkv: a fused projection holding q, k and v rows in that order (Phi-3), instead of q/k/v.
        qk_norm: ``head`` for q/k norms of one head's width (Qwen3, Gemma 3: untouched by head pruning), ``full``
            for norms over all heads (OLMo2: cut with the heads), ``""`` for none.
    """

    module: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    qkv: str = ""
    qk_norm: str = ""


@dataclass(frozen=True)
class Mlp:
    """Where a dense MLP keeps its projections: ``up`` and ``gate`` rows and ``down`` columns are its neurons.

    Attributes:
        gate: the gate projection, ``""`` for a plain two-matrix MLP (Starcoder2's c_fc / c_proj, Phi-2's fc1 / fc2).
        gate_up: a fused projection with the gate rows then the up rows (Phi-3), instead of gate and up.
        size_field: the config field of the width.
    """

    module: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    gate_up: str = ""
    size_field: str = "intermediate_size"


@dataclass(frozen=True)
class Experts:
    """A mixture-of-experts block (transformers 5: ``experts.gate_up_proj`` of shape ``(experts, 2 x width,
    hidden)`` with each expert's gate rows then up rows, and ``experts.down_proj`` of ``(experts, hidden, width)``).

    Attributes:
        module: the block's name in the decoder layer (``mlp``; GraniteMoE's ``block_sparse_moe``).
        router: the router inside it (a module with a ``weight`` of ``(experts, hidden)``).
        count_field / top_k_field / size_field: the config fields of the expert count, experts per token and
            expert width.
        shared: a shared expert beside the routed ones (Qwen2-MoE's ``shared_expert``, an :class:`Mlp`), with
            ``shared_size_field`` its width.
        dense_layers: the config lists which blocks have a dense MLP instead (``mlp_only_layers``) and the
            every-k-th-block field (``decoder_sparse_step``), for families that mix the two.
    """

    module: str = "mlp"
    router: str = "gate"
    stacks: str = "experts"
    count_field: str = "num_local_experts"
    top_k_field: str = "num_experts_per_tok"
    size_field: str = "intermediate_size"
    shared: Mlp | None = None
    shared_size_field: str = ""
    dense_layers: str = ""
    sparse_step: str = ""


@dataclass(frozen=True)
class Family:
    """One decoder-only family: how its blocks are laid out, and what its config says per layer.

    Attributes:
        model_type: transformers' ``config.model_type``.
        architecture: the ``*ForCausalLM`` class (the GGUF export's row is keyed by it).
        attention / mlp / experts: the block's parts (``mlp`` is the dense MLP: of every block, or of the blocks
            a mixed MoE family keeps dense).
        per_layer: config lists with one entry per block, cut with the blocks a student keeps.
        head_pruning: ``""`` when whole KV groups may be removed, else why not (the message's reason).
    """

    model_type: str
    architecture: str
    attention: Attention = field(default_factory=Attention)
    mlp: Mlp | None = field(default_factory=Mlp)
    experts: Experts | None = None
    per_layer: tuple[str, ...] = ("layer_types", "no_rope_layers")
    head_pruning: str = ""

    def attention_of(self, layer: Any) -> Any:
        return getattr(layer, self.attention.module)

    def moe_of(self, layer: Any) -> Any | None:
        """The layer's mixture-of-experts block, ``None`` when this layer's MLP is dense."""
        if self.experts is None:
            return None
        block = getattr(layer, self.experts.module, None)
        return block if block is not None and hasattr(block, self.experts.stacks) else None

    def mlp_of(self, layer: Any) -> Any | None:
        """The layer's dense MLP, ``None`` when this layer routes to experts instead."""
        if self.mlp is None or self.moe_of(layer) is not None:
            return None
        return getattr(layer, self.mlp.module, None)

    @property
    def plain(self) -> bool:
        """Separate q/k/v and gate/up/down projections, no experts, no q/k norms over all heads: every weight's
        role is told by its name, so a student may also be narrower in its residual stream."""
        a, m = self.attention, self.mlp
        return (self.experts is None and not a.qkv and a.qk_norm != "full" and m is not None and bool(m.gate)
                and not m.gate_up)


_QWEN_MOE = Experts(count_field="num_experts", size_field="moe_intermediate_size", dense_layers="mlp_only_layers",
                    sparse_step="decoder_sparse_step")

#: Every family the model stages reach inside, by ``config.model_type``.
FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM"),
    Family("mistral", "MistralForCausalLM"),
    Family("qwen2", "Qwen2ForCausalLM"),
    Family("qwen3", "Qwen3ForCausalLM", Attention(qk_norm="head")),
    Family("gemma", "GemmaForCausalLM"),
    Family("gemma2", "Gemma2ForCausalLM"),
    Family("gemma3_text", "Gemma3ForCausalLM", Attention(qk_norm="head")),
    Family("phi3", "Phi3ForCausalLM", Attention(qkv="qkv_proj"), Mlp(gate="", up="", gate_up="gate_up_proj")),
    Family("olmo2", "Olmo2ForCausalLM", Attention(qk_norm="full")),
    Family("granite", "GraniteForCausalLM"),
    Family("cohere", "CohereForCausalLM"),
    Family("stablelm", "StableLmForCausalLM", head_pruning=(
        "StableLM's optional per-head q/k layer norms are kept as separate modules per head")),
    Family("starcoder2", "Starcoder2ForCausalLM", mlp=Mlp(gate="", up="c_fc", down="c_proj")),
    Family("phi", "PhiForCausalLM", Attention(o="dense"), Mlp(gate="", up="fc1", down="fc2")),
    Family("mixtral", "MixtralForCausalLM", mlp=None, experts=Experts()),
    Family("qwen3_moe", "Qwen3MoeForCausalLM", Attention(qk_norm="head"), experts=_QWEN_MOE),
    Family("qwen2_moe", "Qwen2MoeForCausalLM", experts=Experts(
        count_field="num_experts", size_field="moe_intermediate_size", dense_layers="mlp_only_layers",
        sparse_step="decoder_sparse_step", shared=Mlp(module="shared_expert"),
        shared_size_field="shared_expert_intermediate_size")),
    Family("olmoe", "OlmoeForCausalLM", Attention(qk_norm="full"), mlp=None,
           experts=Experts(count_field="num_experts"), head_pruning=(
               "OLMoE's q/k norms are as wide as hidden_size whatever the head count, so transformers could not load "
               "a model with fewer heads")),
    Family("granitemoe", "GraniteMoeForCausalLM", mlp=None,
           experts=Experts(module="block_sparse_moe", router="router")),
)}


def family_of(model_or_config: Any, *, what: str = "this stage") -> Family:
    """The row of a model (or its config), refused with the list of families and how to add one."""
    cfg = getattr(model_or_config, "config", model_or_config)
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else getattr(cfg, "model_type", None)
    row = FAMILIES.get(str(model_type))
    if row is None:
        raise ConfigError(f"{what} does not know the {model_type!r} family; it knows {', '.join(sorted(FAMILIES))}. "
                          "A new family is one Family row in aptops/lm/architectures.py (where its attention, MLP and "
                          "experts live) plus its tests; unstructured pruning (magnitude, taylor) needs no row",
                          field="model", value=model_type)
    return row


def decoder_layers(model: Any, *, what: str = "this stage") -> tuple[Family, Any]:
    """``(row, model.model.layers)`` of a decoder-only causal LM."""
    row = family_of(model, what=what)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no model.layers: {what} works on decoder-only causal LMs",
                          field="model")
    return row, layers


def head_dim(cfg: Any) -> int:
    """The width of one attention head (``head_dim``, else ``hidden_size / num_attention_heads``)."""
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
