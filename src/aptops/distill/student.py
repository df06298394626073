"""Make a student from a teacher, and check that the two can be compared token for token.

``create_student`` keeps every k-th block (or the blocks named) and can narrow the MLP and the hidden width;
every kept weight starts as the teacher's (sliced where narrower), so the student begins close to the
teacher instead of from noise (DistilBERT's initialisation; Sanh et al. 2019).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)
SUPPORTED = ("llama", "mistral", "qwen2")


def _layers(model: Any) -> Any:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"create_student supports decoder-only models with model.layers ({', '.join(SUPPORTED)}); "
                          f"{type(model).__name__} has none", field="teacher")
    return layers


def _slice(t: Any, rows: int | None, cols: int | None) -> Any:
    if rows is not None:
        t = t[:rows]
    if cols is not None and t.dim() > 1:
        t = t[:, :cols]
    return t


def kept_blocks(n: int, layer_stride: int = 2, keep_layers: Sequence[int] | None = None) -> list[int]:
    """The teacher blocks a student keeps: ``keep_layers`` (checked), else 0, k, 2k ... and always the last."""
    if keep_layers is None:
        if layer_stride < 1:
            raise ConfigError(f"layer_stride={layer_stride} must be >= 1", field="layer_stride", value=layer_stride)
        keep = list(range(0, n, layer_stride))
        if keep[-1] != n - 1:
            keep.append(n - 1)
        return keep
    keep = [int(i) for i in keep_layers]
    bad = [i for i in keep if not 0 <= i < n]
    if bad or not keep or len(set(keep)) != len(keep):
        raise ConfigError(f"keep_layers={keep_layers!r}: give distinct block indices in 0-{n - 1}",
                          field="keep_layers", value=list(keep_layers))
    return keep


@dataclass(frozen=True)
class _Dims:
    """The rows a student keeps of each projection (``None``: all of them)."""

    hidden: int | None
    intermediate: int | None
    q_rows: int
    kv_rows: int


def student_config(cfg: Any, keep: Sequence[int], *, hidden_size: int | None = None,
                   intermediate_size: int | None = None) -> tuple[Any, _Dims]:
    """The student's config (the teacher's with fewer blocks, and a narrower residual stream or MLP when asked; the
    head size and the GQA grouping stay) and the dimensions its weights are cut to."""
    new = copy.deepcopy(cfg)
    new.num_hidden_layers = len(keep)
    if getattr(new, "layer_types", None):
        new.layer_types = [cfg.layer_types[i] for i in keep]
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // (cfg.num_key_value_heads or cfg.num_attention_heads)
    d = None
    if hidden_size is not None and hidden_size != cfg.hidden_size:
        if not 0 < hidden_size < cfg.hidden_size or hidden_size % (head_dim * group):
            raise ConfigError(f"hidden_size={hidden_size} must be below the teacher's {cfg.hidden_size} and a multiple "
                              f"of head_dim x heads per KV group = {head_dim * group}", field="hidden_size",
                              value=hidden_size)
        d = new.hidden_size = hidden_size
        new.num_attention_heads = d // head_dim
        new.num_key_value_heads = new.num_attention_heads // group
        new.head_dim = head_dim
    inter = None
    if intermediate_size is not None and intermediate_size != cfg.intermediate_size:
        if not 0 < intermediate_size < cfg.intermediate_size:
            raise ConfigError(f"intermediate_size={intermediate_size} must be below the teacher's {cfg.intermediate_size}",
                              field="intermediate_size", value=intermediate_size)
        inter = new.intermediate_size = intermediate_size
    new.aptops_student = {"teacher": getattr(cfg, "_name_or_path", ""), "kept_layers": list(keep),
                          "hidden_size": new.hidden_size, "intermediate_size": new.intermediate_size}
    return new, _Dims(d, inter, new.num_attention_heads * head_dim, new.num_key_value_heads * head_dim)


def _copy_teacher_weights(teacher_state: Mapping[str, Any], student: Any, keep: Sequence[int], dims: _Dims) -> None:
    """Every student weight from the teacher's: kept block ``j`` from teacher block ``keep[j]``, cut to ``dims``."""
    layer_map = {f"model.layers.{i}.": f"model.layers.{j}." for i, j in enumerate(keep)}
    d, inter = dims.hidden, dims.intermediate
    for name, param in student.state_dict().items():
        source = name
        for new_prefix, old_prefix in layer_map.items():
            if name.startswith(new_prefix):
                source = old_prefix + name[len(new_prefix):]
                break
        w = teacher_state[source]
        if "q_proj" in name:
            w = _slice(w, dims.q_rows, d)
        elif "k_proj" in name or "v_proj" in name:
            w = _slice(w, dims.kv_rows, d)
        elif "o_proj" in name:
            w = _slice(w, d, dims.q_rows)
        elif "gate_proj" in name or "up_proj" in name:
            w = _slice(w, inter, d)
        elif "down_proj" in name:
            w = _slice(w, d, inter)
        elif "embed_tokens" in name or "lm_head" in name:
            w = _slice(w, None, d)
        elif w.dim() == 1 and d is not None:  # norms
            w = w[:d]
        if tuple(w.shape) != tuple(param.shape):
            raise ConfigError(f"cannot initialise {name} {tuple(param.shape)} from the teacher's {source} "
                              f"{tuple(w.shape)}", field="teacher")
        param.copy_(w)


def create_student(teacher: Any, *, layer_stride: int = 2, keep_layers: Sequence[int] | None = None,
                   intermediate_size: int | None = None, hidden_size: int | None = None) -> Any:
    """A smaller causal LM initialised from ``teacher``'s weights.

    Args:
        teacher: a Llama / Mistral / Qwen2 family ``PreTrainedModel``.
        layer_stride: keep blocks 0, k, 2k ... and always the last one (ignored when ``keep_layers`` is given).
        keep_layers: the block indices to keep, in order.
        intermediate_size: a narrower MLP: the first ``n`` intermediate channels of every kept block.
        hidden_size: a narrower residual stream: the first ``d`` dimensions everywhere; the head size stays,
            so the number of query and key/value heads shrinks in proportion (the GQA grouping is kept).

    Returns:
        A new model (the teacher is untouched); ``config.aptops_student`` records what was kept.
    """
    torch = require("torch", extra="distill", feature="create_student")
    transformers = require("transformers", extra="distill", feature="create_student")
    cfg = teacher.config
    if getattr(cfg, "model_type", "") not in SUPPORTED:
        raise ConfigError(f"create_student supports {', '.join(SUPPORTED)} models, not {cfg.model_type!r}",
                          field="teacher", value=cfg.model_type)
    n = cfg.num_hidden_layers
    keep = kept_blocks(n, layer_stride, keep_layers)
    new, dims = student_config(cfg, keep, hidden_size=hidden_size, intermediate_size=intermediate_size)
    student = transformers.AutoModelForCausalLM.from_config(new, dtype=teacher.dtype)
    with torch.no_grad():
        _copy_teacher_weights(teacher.state_dict(), student, keep, dims)
    if getattr(new, "tie_word_embeddings", False):
        student.tie_weights()
    log.info("student: %d of %d blocks (%s), %s parameters (teacher %s)", len(keep), n, keep,
             f"{sum(p.numel() for p in student.parameters()):,}", f"{sum(p.numel() for p in teacher.parameters()):,}")
    return student


def check_tokenizers(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Refuse a teacher and a student whose tokenizers differ: their logits cannot be compared."""
    if teacher_tokenizer is None or student_tokenizer is None or teacher_tokenizer is student_tokenizer:
        return
    tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if tv != sv:
        only_t = len(set(tv) - set(sv))
        only_s = len(set(sv) - set(tv))
        moved = sum(1 for k in set(tv) & set(sv) if tv[k] != sv[k])
        raise ConfigError(
            f"the teacher and student tokenizers differ ({len(tv)} vs {len(sv)} tokens; {only_t} only in the "
            f"teacher, {only_s} only in the student, {moved} with other ids): distillation on logits needs one "
            "vocabulary. Make the student from the teacher (create_student) or use the teacher's tokenizer",
            field="tokenizer")


def aligned_vocab(teacher: Any, student: Any, tokenizer: Any | None = None) -> int:
    """The number of logit columns to compare when the vocab sizes differ only by padding rows.

    Embedding matrices are often padded (to a multiple of 64 or 128) past the tokenizer; the columns past
    ``len(tokenizer)`` are never a real token. Sizes that differ inside the real vocabulary are an error.
    """
    tv = teacher.get_output_embeddings().weight.shape[0]
    sv = student.get_output_embeddings().weight.shape[0]
    real = len(tokenizer) if tokenizer is not None else min(tv, sv)
    if real > min(tv, sv):
        raise ConfigError(f"the tokenizer has {real} tokens but the teacher's output layer has {tv} rows and the "
                          f"student's {sv}: the vocabularies differ beyond padding", field="vocab")
    if tv != sv:
        log.info("teacher (%d) and student (%d) vocabularies differ by padding: comparing the first %d logits",
                 tv, sv, real)
    return real if tv != sv else tv
