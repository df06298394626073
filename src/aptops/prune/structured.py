"""Structured pruning: whole MLP neurons (inside each expert too), whole attention head groups, whole experts, whole
convolution filters.

The tensors physically shrink and the config follows (the MLP and expert widths, ``num_attention_heads``,
``num_key_value_heads`` and an explicit ``head_dim``, the expert count), so the result is an ordinary, smaller model
that ``save_pretrained`` writes and ``from_pretrained`` reads back, and that runs faster for real. Every layer loses
the same number of units: the configs hold one width and one head count for all layers. Where a model keeps its
parts is its family's row (:mod:`aptops.lm.architectures`): fused projections (Phi-3's ``qkv_proj`` and
``gate_up_proj``), q/k norms over all heads (OLMo2), shared experts (Qwen2-MoE) and mixed dense / MoE blocks are cut
as the row says.

Expert pruning removes the experts the router sends the fewest tokens to on calibration text (each layer's own;
with no calibration, or ``by="random"`` for a baseline, chosen at random), with their router rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.lm.architectures import Family, decoder_layers, head_dim

log = logging.getLogger(__name__)
torch = require("torch", extra="prune", feature="structured pruning")
TYPES = ("neuron", "head", "expert", "channel", "filter")


def _keep_rows(linear: Any, keep: Any) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[keep].clone())
    if getattr(linear, "bias", None) is not None:
        linear.bias = torch.nn.Parameter(linear.bias.data[keep].clone())
    if hasattr(linear, "out_features"):
        linear.out_features = len(keep)


def _keep_cols(linear: Any, keep: Any) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[:, keep].clone())
    if hasattr(linear, "in_features"):
        linear.in_features = len(keep)


def _count(total: int, ratio: float, multiple: int, unit: str) -> int:
    keep = total - round(total * ratio)
    keep = max(multiple, (keep // multiple) * multiple) if multiple > 1 else max(1, keep)
    if keep >= total:
        raise ConfigError(f"prune_ratio={ratio} removes no whole {unit} of {total} (in steps of {multiple}); raise it",
                          field="prune_ratio", value=ratio)
    return keep


def _decoder_layers(model: Any, what: str = "structured neuron/head/expert pruning") -> tuple[Family, Any]:
    return decoder_layers(model, what=what + " (unstructured pruning - magnitude, taylor - works on any model)")


def _dense_parts(row: Any, mlp: Any) -> tuple[list[tuple[Any, int]], Any]:
    """``([(module, row offset)] of the projections whose rows are neurons, the down projection)``."""
    if row.gate_up:
        fused = getattr(mlp, row.gate_up)
        width = fused.weight.shape[0] // 2
        return [(fused, 0), (fused, width)], getattr(mlp, row.down)
    rows = [(getattr(mlp, row.up), 0)] + ([(getattr(mlp, row.gate), 0)] if row.gate else [])
    return rows, getattr(mlp, row.down)


def _dense_scores(row: Any, mlp: Any, activation: Any | None) -> Any:
    rows, down = _dense_parts(row, mlp)
    width = down.weight.shape[1]
    score = down.weight.detach().float().norm(dim=0)
    if activation is not None:
        return score * activation.float()
    for module, offset in rows:
        score = score * module.weight.detach().float()[offset:offset + width].norm(dim=1)
    return score


def _cut_dense(row: Any, mlp: Any, keep: Any) -> None:
    rows, down = _dense_parts(row, mlp)
    if row.gate_up:
        width = down.weight.shape[1]
        _keep_rows(rows[0][0], torch.cat([keep, keep + width]))
    else:
        for module, _ in rows:
            _keep_rows(module, keep)
    _keep_cols(down, keep)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def neuron_importance(model: Any, activation_norms: Mapping[int, Any] | None = None) -> list[Any]:
    """Per layer with a dense MLP, the importance of each intermediate channel: the norm of its output column in the
    down projection times (with calibration) the norm of its activation, else times its gate/up row norms."""
    fam, layers = _decoder_layers(model)
    return [_dense_scores(fam.mlp, mlp, (activation_norms or {}).get(i))
            for i, layer in enumerate(layers) if (mlp := fam.mlp_of(layer)) is not None]


def mlp_activation_norms(model: Any, data_loader: Iterable[Any], max_batches: int = 8) -> dict[int, Any]:
    """‖a_j‖ of each intermediate channel (the input of the down projection) of every dense MLP, over calibration
    tokens, by layer index."""
    from aptops.prune.unstructured import activation_norms

    fam, layers = _decoder_layers(model)
    downs = {str(i): getattr(mlp, fam.mlp.down) for i, layer in enumerate(layers)  # type: ignore[union-attr]
             if (mlp := fam.mlp_of(layer)) is not None}
    if not downs:
        return {}
    norms = activation_norms(model, data_loader, max_batches=max_batches, layers=downs)
    return {int(i): n for i, n in norms.items()}


def _expert_neuron_scores(stacks: Any) -> Any:
    """``(experts, width)`` weight-based scores of each expert's neurons (routed inputs are not seen per expert)."""
    gate_up = stacks.gate_up_proj.detach().float()  # (E, 2W, H)
    down = stacks.down_proj.detach().float()  # (E, H, W)
    width = down.shape[2]
    return down.norm(dim=1) * gate_up[:, :width].norm(dim=2) * gate_up[:, width:].norm(dim=2)


def prune_neurons(model: Any, prune_ratio: float, *, multiple: int = 8,
                  data_loader: Iterable[Any] | None = None) -> dict[str, Any]:
    """Remove the least important ``prune_ratio`` of every block's MLP intermediate channels: of the dense MLP, of
    each expert (its own least important ones) and of a shared expert."""
    fam, layers = _decoder_layers(model)
    cfg = model.config
    norms = mlp_activation_norms(model, data_loader) if data_loader is not None else {}
    info: dict[str, Any] = {"type": "neuron"}
    with torch.no_grad():
        dense = [(i, mlp) for i, layer in enumerate(layers) if (mlp := fam.mlp_of(layer)) is not None]
        if dense:
            total = getattr(dense[0][1], fam.mlp.down).weight.shape[1]  # type: ignore[union-attr]
            keep_n = _count(total, prune_ratio, multiple, "MLP channel")
            for i, mlp in dense:
                keep = _dense_scores(fam.mlp, mlp, norms.get(i)).topk(keep_n).indices.sort().values
                _cut_dense(fam.mlp, mlp, keep)
            setattr(cfg, fam.mlp.size_field, keep_n)  # type: ignore[union-attr]
            info["intermediate_size"] = [total, keep_n]
        moes = [moe for layer in layers if (moe := fam.moe_of(layer)) is not None]
        if moes:
            ex = fam.experts
            assert ex is not None
            total = getattr(moes[0], ex.stacks).down_proj.shape[2]
            keep_n = _count(total, prune_ratio, multiple, "expert channel")
            for moe in moes:
                stacks = getattr(moe, ex.stacks)
                keep = _expert_neuron_scores(stacks).topk(keep_n, dim=1).indices.sort(dim=1).values  # (E, keep)
                gate_up = stacks.gate_up_proj.data
                index = keep[:, :, None].expand(-1, -1, gate_up.shape[2])
                stacks.gate_up_proj = torch.nn.Parameter(torch.cat(
                    [gate_up[:, :total].gather(1, index), gate_up[:, total:].gather(1, index)], dim=1).clone())
                down = stacks.down_proj.data
                stacks.down_proj = torch.nn.Parameter(
                    down.gather(2, keep[:, None, :].expand(-1, down.shape[1], -1)).clone())
                stacks.intermediate_dim = keep_n
                if ex.shared is not None:
                    shared = getattr(moe, ex.shared.module)
                    width = getattr(shared, ex.shared.down).weight.shape[1]
                    keep_s = _count(width, prune_ratio, multiple, "shared expert channel")
                    _cut_dense(ex.shared, shared, _dense_scores(ex.shared, shared, None).topk(keep_s).indices.sort().values)
                    setattr(cfg, ex.shared_size_field, keep_s)
                    info["shared_expert_intermediate_size"] = [width, keep_s]
            setattr(cfg, ex.size_field, keep_n)
            info["expert_intermediate_size"] = [total, keep_n]
    return info


def _check_head_pruning(fam: Family) -> None:
    from aptops.lm.gguf_architectures import ARCHITECTURES

    if fam.head_pruning:
        raise ConfigError(f"head pruning of {fam.model_type} models is not done: {fam.head_pruning}; prune MLP "
                          "neurons instead (method=neuron)", field="prune_type", value="head")
    gguf = ARCHITECTURES.get(fam.architecture)
    if gguf is not None and gguf.full_width_heads:
        raise ConfigError(f"head pruning of {fam.model_type} is refused before any change: llama.cpp's {gguf.gguf} "
                          "graph takes the attention width from hidden_size, so a head-pruned model could not be "
                          "exported to GGUF (nor run by Ollama); prune MLP neurons (method=neuron) or experts instead",
                          field="prune_type", value="head")


def prune_heads(model: Any, prune_ratio: float) -> dict[str, Any]:
    """Remove whole key/value groups (each KV head with the query heads that share it), so grouped-query
    attention keeps its grouping; in multi-head attention every head is its own group."""
    fam, layers = _decoder_layers(model)
    _check_head_pruning(fam)
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    if heads % kv:
        raise ConfigError(f"{heads} query heads do not divide into {kv} KV groups", field="model")
    group = heads // kv
    hd = head_dim(cfg)
    keep_groups = kv - round(kv * prune_ratio)
    if keep_groups < 1 or keep_groups >= kv:
        raise ConfigError(
            f"prune_ratio={prune_ratio} on {kv} KV groups ({group} query heads each) would keep {keep_groups} groups: "
            f"grouped-query attention can only lose whole groups, so choose a ratio that keeps 1 to {kv - 1} of them "
            f"(multiples of {1 / kv:.3g})", field="prune_ratio", value=prune_ratio)
    row = fam.attention
    with torch.no_grad():
        for layer in layers:
            attn = fam.attention_of(layer)
            o_proj = getattr(attn, row.o)
            o = o_proj.weight.detach().float()  # [hidden, heads*head_dim]
            q = (getattr(attn, row.qkv).weight[: heads * hd] if row.qkv else getattr(attn, row.q).weight).detach().float()
            per_head = o.reshape(o.shape[0], heads, hd).norm(dim=(0, 2)) * q.reshape(heads, hd, -1).norm(dim=(1, 2))
            per_group = per_head.reshape(kv, group).sum(1)
            groups = per_group.topk(keep_groups).indices.sort().values
            q_heads = (groups[:, None] * group + torch.arange(group)).flatten()
            q_idx = (q_heads[:, None] * hd + torch.arange(hd)).flatten()
            kv_idx = (groups[:, None] * hd + torch.arange(hd)).flatten()
            if row.qkv:
                _keep_rows(getattr(attn, row.qkv), torch.cat([q_idx, heads * hd + kv_idx, (heads + kv) * hd + kv_idx]))
            else:
                _keep_rows(getattr(attn, row.q), q_idx)
                _keep_rows(getattr(attn, row.k), kv_idx)
                _keep_rows(getattr(attn, row.v), kv_idx)
            _keep_cols(o_proj, q_idx)
            if row.qk_norm == "full":  # norms over every head's features: keep the kept heads' entries
                _keep_rows(attn.q_norm, q_idx)
                _keep_rows(attn.k_norm, kv_idx)
            for name, value in (("num_heads", keep_groups * group), ("num_key_value_heads", keep_groups)):
                if hasattr(attn, name):
                    setattr(attn, name, value)
            if hasattr(attn, "config"):
                attn.config = cfg
    cfg.head_dim = hd
    cfg.num_attention_heads = keep_groups * group
    cfg.num_key_value_heads = keep_groups
    return {"type": "head", "heads": [heads, keep_groups * group], "kv_heads": [kv, keep_groups]}


def expert_routing_counts(model: Any, data_loader: Iterable[Any], max_batches: int = 8) -> dict[int, Any]:
    """How many tokens the router of each MoE layer sends to each expert (its top-k choices) over calibration
    batches, by layer index: a hook on each router recomputes its logits from the hidden states it is given."""
    fam, layers = _decoder_layers(model, "expert pruning")
    ex = fam.experts
    if ex is None:
        raise ConfigError(f"{fam.model_type} has no experts to prune: it is a dense model", field="model")
    top_k = int(getattr(model.config, ex.top_k_field))
    counts: dict[int, Any] = {}
    hooks = []

    def hook(index: int, router: Any) -> Any:
        def count(_module: Any, args: tuple[Any, ...], _out: Any) -> None:
            h = args[0].reshape(-1, args[0].shape[-1])
            logits = torch.nn.functional.linear(h.to(router.weight.dtype), router.weight)
            chosen = logits.topk(top_k, dim=-1).indices.flatten()
            counts[index] = counts.get(index, 0) + torch.bincount(chosen, minlength=router.weight.shape[0]).cpu()
        return count

    for i, layer in enumerate(layers):
        if (moe := fam.moe_of(layer)) is not None:
            router = getattr(moe, ex.router)
            hooks.append(router.register_forward_hook(hook(i, router)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for n, batch in enumerate(data_loader):
                if n >= max_batches:
                    break
                model(**{k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")})
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counts


def prune_experts(model: Any, prune_ratio: float, *, data_loader: Iterable[Any] | None = None, by: str = "routing",
                  seed: int = 0) -> dict[str, Any]:
    """Remove ``prune_ratio`` of every MoE layer's experts, with their router rows: the ones its router sends the
    fewest calibration tokens to (``by="routing"``, which needs ``data_loader``), or chosen at random (``"random"``,
    a baseline). At least ``num_experts_per_tok`` experts stay."""
    check_choice("by", by, ("routing", "random"))
    fam, layers = _decoder_layers(model, "expert pruning")
    ex = fam.experts
    if ex is None:
        raise ConfigError(f"{fam.model_type} has no experts to prune: it is a dense model (method=neuron or head)",
                          field="model")
    cfg = model.config
    total, top_k = int(getattr(cfg, ex.count_field)), int(getattr(cfg, ex.top_k_field))
    keep_n = total - round(total * prune_ratio)
    if keep_n < top_k or keep_n >= total:
        raise ConfigError(f"prune_ratio={prune_ratio} of {total} experts would keep {keep_n}: keep {top_k} (the experts "
                          f"each token uses) to {total - 1} of them", field="prune_ratio", value=prune_ratio)
    if by == "routing" and data_loader is None:
        raise ConfigError("expert pruning by routing needs calibration batches (data_loader)", field="data_loader")
    counts = expert_routing_counts(model, data_loader) if by == "routing" else {}  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    kept: dict[int, list[int]] = {}
    routed_share = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if (moe := fam.moe_of(layer)) is None:
                continue
            if by == "routing":
                score = counts[i].float() + torch.rand(total, generator=generator) * 1e-3  # ties broken at random
                share = float(counts[i][score.topk(keep_n).indices].sum() / max(1, int(counts[i].sum())))
                routed_share.append(share)
            else:
                score = torch.rand(total, generator=generator)
            keep = score.topk(keep_n).indices.sort().values
            router, stacks = getattr(moe, ex.router), getattr(moe, ex.stacks)
            _keep_rows(router, keep)
            for name in ("gate_up_proj", "down_proj"):
                setattr(stacks, name, torch.nn.Parameter(getattr(stacks, name).data[keep].clone()))
            kept[i] = keep.tolist()
    for module in model.modules():  # routers, expert stacks, and the model's own load-balancing loss count them
        if getattr(module, "num_experts", None) == total:
            module.num_experts = keep_n
    setattr(cfg, ex.count_field, keep_n)
    info: dict[str, Any] = {"type": "expert", "by": by, "experts": [total, keep_n], "kept": kept}
    if routed_share:  # what share of the calibration tokens' expert choices went to the experts kept
        info["routed_share_kept"] = sum(routed_share) / len(routed_share)
    return info


_PASS = ("BatchNorm2d", "ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "MaxPool2d", "AvgPool2d",
         "AdaptiveAvgPool2d", "Dropout", "Dropout2d", "Identity")


def prune_filters(model: Any, prune_ratio: float, *, norm: int = 1) -> dict[str, Any]:
    """Remove the filters with the smallest L1 (or L2) norm from every Conv2d of a sequential convolutional
    model except the last, shrinking the next layer's inputs (and a BatchNorm2d between them)."""
    if not isinstance(model, torch.nn.Sequential):
        raise ConfigError(f"channel/filter pruning supports torch.nn.Sequential conv stacks, not {type(model).__name__} "
                          "(residual connections need a dependency graph); use unstructured pruning", field="model")
    mods = list(model)
    convs = [i for i, m in enumerate(mods) if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ConfigError("the model has no Conv2d layer: channel/filter pruning is for convolutional models",
                          field="model")
    changed = []
    with torch.no_grad():
        for i in convs:
            conv = mods[i]
            nxt = next((j for j in range(i + 1, len(mods)) if type(mods[j]).__name__ not in _PASS), None)
            if nxt is None or conv.groups != 1:
                continue
            keep_n = _count(conv.out_channels, prune_ratio, 1, "filter")
            keep = conv.weight.detach().float().flatten(1).norm(p=norm, dim=1).topk(keep_n).indices.sort().values
            conv.weight = torch.nn.Parameter(conv.weight.data[keep].clone())
            if conv.bias is not None:
                conv.bias = torch.nn.Parameter(conv.bias.data[keep].clone())
            before = conv.out_channels
            conv.out_channels = keep_n
            for j in range(i + 1, nxt):
                bn = mods[j]
                if isinstance(bn, torch.nn.BatchNorm2d):
                    for attr in ("weight", "bias"):
                        setattr(bn, attr, torch.nn.Parameter(getattr(bn, attr).data[keep].clone()))
                    bn.running_mean = bn.running_mean[keep].clone()
                    bn.running_var = bn.running_var[keep].clone()
                    bn.num_features = keep_n
            target = mods[nxt]
            if isinstance(target, torch.nn.Conv2d):
                target.weight = torch.nn.Parameter(target.weight.data[:, keep].clone())
                target.in_channels = keep_n
            elif isinstance(target, torch.nn.Flatten) and nxt + 1 < len(mods) and isinstance(mods[nxt + 1], torch.nn.Linear):
                lin = mods[nxt + 1]
                spatial = lin.in_features // before
                cols = (keep[:, None] * spatial + torch.arange(spatial)).flatten()
                _keep_cols(lin, cols)
            elif isinstance(target, torch.nn.Linear) and target.in_features == before:
                _keep_cols(target, keep)
            else:
                raise ConfigError(f"cannot follow Conv2d {i} into {type(target).__name__}: supported are Conv2d, "
                                  "Flatten + Linear and Linear", field="model")
            changed.append({"layer": i, "filters": [before, keep_n]})
    return {"type": "filter", "layers": changed}


def structured_pruning(model: Any, prune_ratio: float, prune_type: str = "neuron", **kwargs: Any) -> dict[str, Any]:
    """Physically remove the least important ``prune_ratio`` of units of one kind.

    Args:
        model: a causal LM of a family in :data:`aptops.lm.architectures.FAMILIES` (``neuron``, ``head``,
            ``expert``), or a ``torch.nn.Sequential`` convolutional model (``channel`` / ``filter``).
        prune_ratio: the share of units to remove, in (0, 1).
        prune_type: ``neuron`` (MLP intermediate channels, each expert's too), ``head`` (attention heads, whole KV
            groups), ``expert`` (whole experts, the least routed), ``channel`` / ``filter`` (convolution filters
            and the matching input channels).
        kwargs: ``multiple`` (neuron counts rounded to it), ``data_loader`` (activation-aware neuron scores,
            routing counts), ``by`` / ``seed`` (experts), ``norm`` (filters: 1 or 2).

    Returns:
        What changed, with the parameter counts before and after.
    """
    check_range("prune_ratio", prune_ratio, min_value=0.0, max_value=1.0, min_inclusive=False, max_inclusive=False)
    check_choice("prune_type", prune_type, TYPES)
    before = sum(p.numel() for p in model.parameters())
    if prune_type == "neuron":
        info = prune_neurons(model, prune_ratio, **kwargs)
    elif prune_type == "head":
        info = prune_heads(model, prune_ratio)
    elif prune_type == "expert":
        info = prune_experts(model, prune_ratio, **kwargs)
    else:
        info = prune_filters(model, prune_ratio, **kwargs)
    after = sum(p.numel() for p in model.parameters())
    info |= {"params_before": before, "params_after": after}
    log.info("structured %s pruning: %s -> %s parameters", prune_type, f"{before:,}", f"{after:,}")
    return info
