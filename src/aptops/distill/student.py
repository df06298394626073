"""Make a student from a teacher, and check that the two can be compared token for token.

``create_student`` keeps every k-th block (or the blocks named) of a model of any family in
:data:`aptops.lm.architectures.FAMILIES`, and can narrow the MLP (dense families, fused ``gate_up_proj`` included)
and the residual stream (families whose weights are told apart by name); every kept weight starts as the teacher's
(sliced where narrower), so the student begins close to the teacher instead of from noise (DistilBERT's
initialisation; Sanh et al. 2019). The config's per-layer lists follow the kept blocks: Gemma's sliding / full
``layer_types``, and for Qwen-MoE which blocks are dense (``mlp_only_layers``, ``decoder_sparse_step``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.lm.architectures import Family, family_of, head_dim

log = logging.getLogger(__name__)


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
    teacher_intermediate: int = 0


def _dense_layers(cfg: Any, fam: Family) -> set[int] | None:
    """The blocks of a mixed MoE family whose MLP is dense, ``None`` when the family does not mix them."""
    ex = fam.experts
    if ex is None or not ex.sparse_step:
        return None
    step = int(getattr(cfg, ex.sparse_step, 1) or 1)
    only = set(getattr(cfg, ex.dense_layers, None) or [])
    return {i for i in range(cfg.num_hidden_layers) if i in only or (i + 1) % step}


def student_config(cfg: Any, keep: Sequence[int], *, hidden_size: int | None = None,
                   intermediate_size: int | None = None) -> tuple[Any, _Dims]:
    """The student's config (the teacher's with fewer blocks, and a narrower residual stream or MLP when asked; the
    head size and the GQA grouping stay) and the dimensions its weights are cut to."""
    fam = family_of(cfg, what="create_student")
    new = copy.deepcopy(cfg)
    new.num_hidden_layers = len(keep)
    for name in fam.per_layer:
        values = getattr(cfg, name, None)
        if isinstance(values, list | tuple) and len(values) == cfg.num_hidden_layers:
            setattr(new, name, [values[i] for i in keep])
    dense = _dense_layers(cfg, fam)
    if dense is not None and fam.experts is not None:  # which student blocks are dense, said by index
        setattr(new, fam.experts.sparse_step, 1)
        setattr(new, fam.experts.dense_layers, [j for j, i in enumerate(keep) if i in dense])
    hd = head_dim(cfg)
    group = cfg.num_attention_heads // (cfg.num_key_value_heads or cfg.num_attention_heads)
    d = None
    if hidden_size is not None and hidden_size != cfg.hidden_size:
        if not fam.plain:
            raise ConfigError(f"a narrower residual stream is made for families whose weights are told apart by name; "
                              f"{fam.model_type} has fused projections, experts or q/k norms over all heads: keep "
                              "hidden_size and narrow the MLP, or prune neurons / heads afterwards (aptops prune run)",
                              field="hidden_size", value=hidden_size)
        if not 0 < hidden_size < cfg.hidden_size or hidden_size % (hd * group):
            raise ConfigError(f"hidden_size={hidden_size} must be below the teacher's {cfg.hidden_size} and a multiple "
                              f"of head_dim x heads per KV group = {hd * group}", field="hidden_size",
                              value=hidden_size)
        d = new.hidden_size = hidden_size
        new.num_attention_heads = d // hd
        new.num_key_value_heads = new.num_attention_heads // group
        new.head_dim = hd
    inter = None
    size_field = fam.mlp.size_field if fam.mlp is not None else ""
    teacher_inter = int(getattr(cfg, size_field, 0) or 0) if size_field else 0
    if intermediate_size is not None and intermediate_size != teacher_inter:
        if fam.experts is not None or fam.mlp is None:
            raise ConfigError(f"a narrower MLP is made for dense families; {fam.model_type} routes to experts: keep their "
                              "width and prune each expert's neurons afterwards (aptops prune run --set method=neuron)",
                              field="intermediate_size", value=intermediate_size)
        if not 0 < intermediate_size < teacher_inter:
            raise ConfigError(f"intermediate_size={intermediate_size} must be below the teacher's {teacher_inter}",
                              field="intermediate_size", value=intermediate_size)
        inter = intermediate_size
        setattr(new, size_field, intermediate_size)
    new.aptops_student = {"teacher": getattr(cfg, "_name_or_path", ""), "kept_layers": list(keep),
                          "hidden_size": new.hidden_size, "intermediate_size": getattr(new, size_field, None)}
    return new, _Dims(d, inter, new.num_attention_heads * hd, new.num_key_value_heads * hd, teacher_inter)


def _cut(name: str, w: Any, fam: Family, dims: _Dims) -> Any:
    """The teacher weight ``w`` cut to the student's widths, by the role ``name`` has in the family's row."""
    d, inter = dims.hidden, dims.intermediate
    part = name.split(".")
    if inter is not None and fam.mlp is not None and len(part) >= 2 and part[-3:-2] == [fam.mlp.module]:
        m, proj = fam.mlp, part[-2]
        if proj == m.gate_up:  # the gate rows, then the up rows
            w = w.index_select(0, _cat_range(inter, dims.teacher_intermediate, w.device))
        elif proj in (m.gate, m.up):
            w = w[:inter]
        elif proj == m.down and w.dim() > 1:
            w = w[:, :inter]
    if d is None:
        return w
    if "q_proj" in name:
        return _slice(w, dims.q_rows, d)
    if "k_proj" in name or "v_proj" in name:
        return _slice(w, dims.kv_rows, d)
    if "o_proj" in name:
        return _slice(w, d, dims.q_rows)
    if "gate_proj" in name or "up_proj" in name:
        return _slice(w, None, d)
    if "down_proj" in name:
        return _slice(w, d, None)
    if "embed_tokens" in name or "lm_head" in name:
        return _slice(w, None, d)
    if w.dim() == 1 and not name.endswith(("q_norm.weight", "k_norm.weight")):  # the residual stream's norms
        return w[:d]
    return w


def _cat_range(n: int, total: int, device: Any) -> Any:
    torch = require("torch", extra="distill", feature="create_student")
    return torch.cat([torch.arange(n, device=device), total + torch.arange(n, device=device)])


def _copy_teacher_weights(teacher_state: Mapping[str, Any], student: Any, keep: Sequence[int], dims: _Dims,
                          fam: Family) -> None:
    """Every student weight from the teacher's: kept block ``j`` from teacher block ``keep[j]``, cut to ``dims``."""
    layer_map = {f"model.layers.{i}.": f"model.layers.{j}." for i, j in enumerate(keep)}
    for name, param in student.state_dict().items():
        source = name
        for new_prefix, old_prefix in layer_map.items():
            if name.startswith(new_prefix):
                source = old_prefix + name[len(new_prefix):]
                break
        if source not in teacher_state:
            raise ConfigError(f"the student's {name} has no counterpart {source} in the teacher: the {fam.model_type} "
                              "row of aptops/lm/architectures.py does not match this model", field="teacher")
        w = _cut(name, teacher_state[source], fam, dims)
        if tuple(w.shape) != tuple(param.shape):
            raise ConfigError(f"cannot initialise {name} {tuple(param.shape)} from the teacher's {source} "
                              f"{tuple(w.shape)}", field="teacher")
        param.copy_(w)


def create_student(teacher: Any, *, layer_stride: int = 2, keep_layers: Sequence[int] | None = None,
                   intermediate_size: int | None = None, hidden_size: int | None = None) -> Any:
    """A smaller causal LM initialised from ``teacher``'s weights.

    Args:
        teacher: a ``PreTrainedModel`` of a family in :data:`aptops.lm.architectures.FAMILIES`.
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
    fam = family_of(cfg, what="create_student")
    n = cfg.num_hidden_layers
    keep = kept_blocks(n, layer_stride, keep_layers)
    new, dims = student_config(cfg, keep, hidden_size=hidden_size, intermediate_size=intermediate_size)
    student = transformers.AutoModelForCausalLM.from_config(new, dtype=teacher.dtype)
    with torch.no_grad():
        _copy_teacher_weights(teacher.state_dict(), student, keep, dims, fam)
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
