"""The four distillation objectives, as pure functions on model outputs and as small modules.

- response: KL divergence between temperature-softened teacher and student distributions, scaled by T²
  (Hinton et al. 2015, so gradients keep their size as T changes), mixed with the hard-label loss by
  ``alpha`` (the weight of the soft term);
- feature: MSE between mapped hidden states, through a learned linear projection where widths differ
  (FitNets);
- relation: the structure between the samples of a batch — pairwise distances (normalised by their mean)
  and angles between triplets (RKD, Park et al. 2019), optionally the similarity (Gram) matrix (Tung &
  Mori 2019) — of pooled representations;
- attention: KL divergence between attention distributions of mapped layers (MiniLM-style), heads averaged
  or teacher heads grouped onto student heads.

For causal LMs every position-wise term is taken at the positions that predict a real next token
(``labels[:, 1:] != -100`` and the attention mask), the same positions the hard loss uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError

torch = require("torch", extra="distill", feature="distillation")
F = torch.nn.functional
IGNORE = -100


def prediction_positions(logits: Any, labels: Any | None, attention_mask: Any | None) -> tuple[Any, Any | None, Any]:
    """For ``[B, L, V]`` logits: the logits predicting positions 1..L-1, their targets and a boolean mask."""
    shifted = logits[:, :-1, :]
    mask = torch.ones(shifted.shape[:2], dtype=torch.bool, device=logits.device)
    targets = None
    if labels is not None:
        targets = labels[:, 1:]
        mask &= targets != IGNORE
    if attention_mask is not None:
        mask &= attention_mask[:, 1:].bool()
    return shifted, targets, mask


class _SoftTargetCrossEntropy(torch.autograd.Function):
    """Per-row ``H(target, softmax(logits))`` for ``[N, V]`` rows, and each row's hard cross-entropy at ``y``.

    The same value and gradient as ``F.cross_entropy(logits, target, reduction="none")``, with less memory
    traffic over a 50k-token vocabulary: the forward keeps only the log-probabilities (the dot products with
    the target are one batched matmul, no ``N x V`` product), and the backward turns that buffer into the
    gradient ``softmax · Σtarget − target`` in place, in three passes. The hard cross-entropy (for logging)
    is a gather from the same log-probabilities. The graph can be walked backwards once.
    """

    @staticmethod
    def forward(ctx: Any, logits: Any, target: Any, y: Any) -> tuple[Any, Any]:
        logq = F.log_softmax(logits, dim=-1)
        rows = -torch.einsum("nv,nv->n", target, logq)
        hard = -logq.gather(1, y[:, None]).squeeze(1)
        ctx.save_for_backward(logq, target)
        ctx.mark_non_differentiable(hard)
        return rows, hard

    @staticmethod
    def backward(ctx: Any, grad_rows: Any, _grad_hard: Any) -> tuple[Any, None, None]:
        logq, target = ctx.saved_tensors
        grad = logq.exp_()  # softmax, in the log-probabilities' own buffer
        grad.mul_((target.sum(-1) * grad_rows)[:, None])
        grad.addcmul_(target, grad_rows[:, None], value=-1.0)
        return grad, None, None


def soft_cross_entropy(logits: Any, target: Any, y: Any | None = None) -> tuple[Any, Any]:
    """``(H(target, softmax(logits)) per row, -log softmax(logits)[y] per row)`` for ``[N, V]`` float rows;
    the second is for logging (no gradient), zeros without ``y``."""
    ids = y if y is not None else torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    rows, hard = _SoftTargetCrossEntropy.apply(logits, target, ids.clamp_min(0))
    return rows, hard if y is not None else torch.zeros_like(hard)


def _teacher_probs(teacher_logits: Any, temperature: float) -> tuple[Any, Any]:
    """The teacher's softened probabilities ``[N, V]`` and each row's negative entropy, without gradient.

    ``-H(p) = Σ p·t − logsumexp(t)``; the log-sum-exp comes from the largest probability
    (``t_max − log p_max``), so the teacher's logits are read three times instead of five."""
    vocab = teacher_logits.shape[-1]
    with torch.no_grad():
        t = teacher_logits.float().reshape(-1, vocab)
        if temperature != 1.0:
            t = t / temperature
        p = F.softmax(t, dim=-1)
        p_max, at = p.max(dim=-1)
        lse = t.gather(1, at[:, None]).squeeze(1) - p_max.log()
        neg_entropy = torch.einsum("nv,nv->n", p, t) - lse
    return p, neg_entropy


def kl_divergence(student_logits: Any, teacher_logits: Any, temperature: float = 1.0) -> Any:
    """Per-row ``KL(teacher || student)`` of the softened distributions (no T² scaling).

    Computed as the soft-target cross-entropy ``H(p_t, p_s)`` minus the teacher's entropy (taken without
    gradient): the same value and gradient as summing ``p_t·(log p_t - log p_s)``, at a fraction of the
    memory traffic over a 50k-token vocabulary.
    """
    shape = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    p_t, neg_entropy = _teacher_probs(teacher_logits, temperature)
    z = student_logits.float().reshape(-1, vocab)
    cross, _ = soft_cross_entropy(z / temperature if temperature != 1.0 else z, p_t)
    return (cross + neg_entropy).reshape(shape)


def response_loss(student_logits: Any, teacher_logits: Any, labels: Any | None = None, *, temperature: float = 1.0,
                  alpha: float = 0.8, attention_mask: Any | None = None) -> dict[str, Any]:
    """``alpha · T² · KL(teacher_T || student_T) + (1 - alpha) · CE(student, labels)``.

    Args:
        student_logits / teacher_logits: ``[B, L, V]`` (causal LM; position i predicts token i+1) or
            ``[B, C]`` (classification). The vocabularies must already be aligned.
        labels: token ids (``-100`` ignored) or class ids; without labels only the soft term is used.
        temperature: softening temperature (> 0).
        alpha: weight of the soft term, in [0, 1].

    Returns:
        ``{"loss", "kd", "ce"}`` (``ce`` is ``None`` without labels, or with ``alpha=1`` where it has no weight).
    """
    check_range("temperature", temperature, min_value=0.0, min_inclusive=False)
    check_range("alpha", alpha, min_value=0.0, max_value=1.0)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ: align the vocabularies first", field="vocab")
    if student_logits.dim() == 3:
        # every position of the contiguous [B, L, V] logits (no sliced copies); the last position and ignored
        # labels get zero weight
        b, length, vocab = student_logits.shape
        valid = torch.ones(b, length, dtype=torch.bool, device=student_logits.device)
        valid[:, -1] = False
        targets = None
        if labels is not None:
            targets = torch.full_like(labels, IGNORE)
            targets[:, :-1] = labels[:, 1:]
            valid &= targets != IGNORE
        if attention_mask is not None:
            valid[:, :-1] &= attention_mask[:, 1:].bool()
        if temperature == 1.0 and targets is not None and 0.0 < alpha < 1.0:
            return _mixed_target_loss(student_logits, teacher_logits, targets, valid, alpha)
        weight = valid.reshape(-1).float()
        rows = kl_divergence(student_logits, teacher_logits, temperature).reshape(-1)
        kd = (rows * weight).sum() / weight.sum().clamp_min(1.0) * temperature ** 2
        ce = None
        if targets is not None and alpha < 1.0:  # alpha = 1: the hard loss has no weight, skip its vocab pass
            ce = F.cross_entropy(student_logits.float().reshape(-1, vocab), targets.masked_fill(~valid, IGNORE).reshape(-1),
                                 ignore_index=IGNORE)
    else:
        kd = kl_divergence(student_logits, teacher_logits, temperature).mean() * temperature ** 2
        ce = F.cross_entropy(student_logits.float(), labels) if labels is not None and alpha < 1.0 else None
    loss = kd if ce is None else alpha * kd + (1 - alpha) * ce
    return {"loss": loss, "kd": kd, "ce": ce}


def _mixed_target_loss(student_logits: Any, teacher_logits: Any, targets: Any, valid: Any, alpha: float) -> dict[str, Any]:
    """At T=1 both terms are cross-entropies of the same student distribution, so they are one:
    ``alpha·KL(p_t||q) + (1-alpha)·CE(y, q) = H(alpha·p_t + (1-alpha)·onehot(y), q) - alpha·H(p_t)``.
    One log-softmax of the student's logits and one backward pass over them instead of two of each."""
    vocab = student_logits.shape[-1]
    v = valid.reshape(-1)
    y = targets.reshape(-1).clamp_min(0)
    n = v.sum().clamp_min(1)
    target, neg_entropy = _teacher_probs(teacher_logits, 1.0)
    with torch.no_grad():
        target.mul_(alpha)
        target[torch.arange(len(y), device=y.device), y] += 1.0 - alpha
        target[~v] = 0.0  # no weight, no gradient: the last position, padding, ignored labels
    rows, hard = soft_cross_entropy(student_logits.float().reshape(-1, vocab), target, y)
    loss = rows.sum() / n + alpha * (neg_entropy * v).sum() / n
    with torch.no_grad():
        ce = (hard * v).sum() / n
        kd = (loss - (1.0 - alpha) * ce) / alpha
    return {"loss": loss, "kd": kd, "ce": ce}


def feature_loss(student_hidden: Sequence[Any], teacher_hidden: Sequence[Any], layer_mappings: Mapping[int, int],
                 projections: Mapping[str, Any] | None = None, *, attention_mask: Any | None = None) -> Any:
    """Mean over the mappings of the MSE between ``proj(student_hidden[s])`` and ``teacher_hidden[t]``.

    Indices are those of ``output_hidden_states`` (0 = the embeddings, i = after block i). ``projections``
    maps ``str(s)`` to a module taking the student width to the teacher width (omitted: same width).
    """
    check_layer_mappings(layer_mappings, len(student_hidden), len(teacher_hidden))
    losses = []
    for s_idx, t_idx in layer_mappings.items():
        hs, ht = student_hidden[s_idx], teacher_hidden[t_idx]
        if projections is not None and str(s_idx) in projections:
            hs = projections[str(s_idx)](hs)
        if hs.shape[-1] != ht.shape[-1]:
            raise ConfigError(f"student layer {s_idx} is {hs.shape[-1]} wide and teacher layer {t_idx} "
                              f"{ht.shape[-1]}: a projection is needed (the Distiller makes one per mapping)",
                              field="layer_mappings")
        if attention_mask is not None and hs.dim() == 3:
            m = attention_mask.bool()
            losses.append(F.mse_loss(hs[m].float(), ht[m].float()))
        else:
            losses.append(F.mse_loss(hs.float(), ht.float()))
    return torch.stack(losses).mean()


def check_layer_mappings(layer_mappings: Mapping[int, int], student_states: int, teacher_states: int) -> None:
    """Every ``student → teacher`` index must exist among the hidden states (0 = embeddings)."""
    if not layer_mappings:
        raise ConfigError("layer_mappings is empty: map at least one student layer to a teacher layer, e.g. {2: 4}",
                          field="layer_mappings")
    for s_idx, t_idx in layer_mappings.items():
        if not 0 <= int(s_idx) < student_states:
            raise ConfigError(f"layer mapping {s_idx}→{t_idx}: the student has hidden states 0-{student_states - 1} "
                              "(0 = embeddings, i = after block i)", field="layer_mappings", value=s_idx)
        if not 0 <= int(t_idx) < teacher_states:
            raise ConfigError(f"layer mapping {s_idx}→{t_idx}: the teacher has hidden states 0-{teacher_states - 1} "
                              "(0 = embeddings, i = after block i)", field="layer_mappings", value=t_idx)


def pool(hidden: Any, attention_mask: Any | None = None) -> Any:
    """Mean over the real tokens: ``[B, L, D] -> [B, D]``."""
    if hidden.dim() == 2:
        return hidden
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _pairwise_distances(x: Any) -> Any:
    d = torch.cdist(x, x)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return d / d[off].mean().clamp_min(1e-12)


def _angles(x: Any) -> Any:
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # [B, B, D]: unit vectors x_i - x_j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cosines of the angle at each anchor


def relation_loss(student_repr: Any, teacher_repr: Any, *, distance_weight: float = 1.0, angle_weight: float = 2.0,
                  similarity_weight: float = 0.0) -> dict[str, Any]:
    """RKD distance and angle terms (and optionally the similarity-preserving Gram term) on ``[B, D]``
    representations; the widths of student and teacher may differ."""
    if len(student_repr) < 2:
        raise ConfigError("relation distillation compares samples within a batch: use a batch size of at least 2 "
                          "(3 for the angle term)", field="batch_size")
    s, t = student_repr.float(), teacher_repr.float()
    out: dict[str, Any] = {}
    total = s.new_zeros(())
    if distance_weight:
        out["distance"] = F.smooth_l1_loss(_pairwise_distances(s), _pairwise_distances(t))
        total = total + distance_weight * out["distance"]
    if angle_weight and len(s) >= 3:
        out["angle"] = F.smooth_l1_loss(_angles(s), _angles(t))
        total = total + angle_weight * out["angle"]
    if similarity_weight:
        gs, gt = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
        out["similarity"] = F.mse_loss(gs, gt)
        total = total + similarity_weight * out["similarity"]
    out["loss"] = total
    return out


def merge_heads(attn: Any, heads: int, mode: str) -> Any:
    """``[B, H, L, L]`` attention to ``heads`` heads: ``average`` over all (one head), or ``map`` (group
    consecutive heads and average each group)."""
    if mode == "average":
        return attn.mean(1, keepdim=True)
    h = attn.shape[1]
    if h == heads:
        return attn
    if h % heads:
        raise ConfigError(f"head_mapping='map' needs the teacher's {h} heads to be a multiple of the student's "
                          f"{heads}; use head_mapping='average'", field="head_mapping")
    return attn.reshape(attn.shape[0], heads, h // heads, *attn.shape[2:]).mean(2)


def attention_loss(student_attentions: Sequence[Any], teacher_attentions: Sequence[Any],
                   layer_mapping: Mapping[int, int] | None = None, *, head_mapping: str = "average",
                   attention_mask: Any | None = None, eps: float = 1e-8) -> Any:
    """Mean ``KL(teacher || student)`` over the rows of mapped attention maps (``[B, H, Lq, Lk]`` each).

    ``layer_mapping`` is ``{student_layer: teacher_layer}`` over attention layers (0-based); the default
    maps student layer i to teacher layer ``round((i+1)·Lt/Ls) - 1`` (the last onto the last).
    """
    check_choice("head_mapping", head_mapping, ("average", "map"))
    if any(a is None for a in (*student_attentions, *teacher_attentions)) or not student_attentions:
        raise ConfigError("the models returned no attention maps: load them with attn_implementation='eager'",
                          field="attention_type")
    ls, lt = len(student_attentions), len(teacher_attentions)
    mapping = dict(layer_mapping) if layer_mapping else {i: round((i + 1) * lt / ls) - 1 for i in range(ls)}
    for s_idx, t_idx in mapping.items():
        if not (0 <= s_idx < ls and 0 <= t_idx < lt):
            raise ConfigError(f"attention layer mapping {s_idx}→{t_idx}: the student has layers 0-{ls - 1}, the "
                              f"teacher 0-{lt - 1}", field="layer_mappings")
    losses = []
    for s_idx, t_idx in mapping.items():
        sa = student_attentions[s_idx].float()
        ta = merge_heads(teacher_attentions[t_idx].float(), sa.shape[1], head_mapping)
        if head_mapping == "average":
            sa = sa.mean(1, keepdim=True)
        rows = (ta * (torch.log(ta + eps) - torch.log(sa + eps))).sum(-1)  # [B, H, Lq]
        if attention_mask is not None:
            m = attention_mask.bool()[:, None, :].expand_as(rows)
            losses.append(rows[m].mean())
        else:
            losses.append(rows.mean())
    return torch.stack(losses).mean()
