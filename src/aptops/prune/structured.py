"""Structured pruning: whole MLP neurons, whole attention head groups, whole convolution filters.

The tensors physically shrink and the config follows (``intermediate_size``; ``num_attention_heads``,
``num_key_value_heads`` and an explicit ``head_dim``), so the result is an ordinary, smaller model that
``save_pretrained`` writes and ``from_pretrained`` reads back, and that runs faster for real. Every layer
loses the same number of units: Llama-family configs hold one ``intermediate_size`` and one head count
for all layers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)
torch = require("torch", extra="prune", feature="structured pruning")
SUPPORTED = ("llama", "mistral", "qwen2")
TYPES = ("neuron", "head", "channel", "filter")


def _keep_rows(linear: Any, keep: Any) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[keep].clone())
    if linear.bias is not None:
        linear.bias = torch.nn.Parameter(linear.bias.data[keep].clone())
    linear.out_features = len(keep)


def _keep_cols(linear: Any, keep: Any) -> None:
    linear.weight = torch.nn.Parameter(linear.weight.data[:, keep].clone())
    linear.in_features = len(keep)


def _count(total: int, ratio: float, multiple: int, unit: str) -> int:
    keep = total - round(total * ratio)
    keep = max(multiple, (keep // multiple) * multiple) if multiple > 1 else max(1, keep)
    if keep >= total:
        raise ConfigError(f"prune_ratio={ratio} removes no whole {unit} of {total} (in steps of {multiple}); raise it",
                          field="prune_ratio", value=ratio)
    return keep


def _decoder_layers(model: Any) -> Any:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in SUPPORTED or not hasattr(getattr(model, "model", None), "layers"):
        name = getattr(cfg, "model_type", type(model).__name__)
        raise ConfigError(f"structured neuron/head pruning supports {', '.join(SUPPORTED)} models, not {name!r}; "
                          "use unstructured pruning (magnitude, taylor, wanda) for it", field="model", value=name)
    return model.model.layers


def neuron_importance(model: Any, activation_norms: Mapping[int, Any] | None = None) -> list[Any]:
    """Per layer, the importance of each MLP intermediate channel: the norm of its output column in
    ``down_proj`` times (with calibration) the norm of its activation, else times its gate/up row norms."""
    out = []
    for i, layer in enumerate(_decoder_layers(model)):
        mlp = layer.mlp
        down = mlp.down_proj.weight.detach().float().norm(dim=0)
        if activation_norms is not None and i in activation_norms:
            out.append(down * activation_norms[i].float())
        else:
            up = mlp.up_proj.weight.detach().float().norm(dim=1)
            gate = mlp.gate_proj.weight.detach().float().norm(dim=1) if hasattr(mlp, "gate_proj") else 1.0
            out.append(down * up * gate)
    return out


def mlp_activation_norms(model: Any, data_loader: Iterable[Any], max_batches: int = 8) -> dict[int, Any]:
    """‖a_j‖ of each intermediate channel (the input of ``down_proj``) over calibration tokens."""
    from aptops.prune.unstructured import activation_norms

    downs = {str(i): layer.mlp.down_proj for i, layer in enumerate(_decoder_layers(model))}
    norms = activation_norms(model, data_loader, max_batches=max_batches, layers=downs)
    return {int(i): n for i, n in norms.items()}


def prune_neurons(model: Any, prune_ratio: float, *, multiple: int = 8,
                  data_loader: Iterable[Any] | None = None) -> dict[str, Any]:
    """Remove the least important ``prune_ratio`` of every block's MLP intermediate channels."""
    layers = _decoder_layers(model)
    norms = mlp_activation_norms(model, data_loader) if data_loader is not None else None
    scores = neuron_importance(model, norms)
    total = layers[0].mlp.down_proj.in_features
    keep_n = _count(total, prune_ratio, multiple, "MLP channel")
    with torch.no_grad():
        for layer, score in zip(layers, scores, strict=True):
            keep = score.topk(keep_n).indices.sort().values
            mlp = layer.mlp
            for name in ("gate_proj", "up_proj"):
                if hasattr(mlp, name):
                    _keep_rows(getattr(mlp, name), keep)
            _keep_cols(mlp.down_proj, keep)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = keep_n
    model.config.intermediate_size = keep_n
    return {"type": "neuron", "intermediate_size": [total, keep_n]}


def prune_heads(model: Any, prune_ratio: float) -> dict[str, Any]:
    """Remove whole key/value groups (each KV head with the query heads that share it), so grouped-query
    attention keeps its grouping; in multi-head attention every head is its own group."""
    layers = _decoder_layers(model)
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    if heads % kv:
        raise ConfigError(f"{heads} query heads do not divide into {kv} KV groups", field="model")
    group = heads // kv
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    keep_groups = kv - round(kv * prune_ratio)
    if keep_groups < 1 or keep_groups >= kv:
        raise ConfigError(
            f"prune_ratio={prune_ratio} on {kv} KV groups ({group} query heads each) would keep {keep_groups} groups: "
            f"grouped-query attention can only lose whole groups, so choose a ratio that keeps 1 to {kv - 1} of them "
            f"(multiples of {1 / kv:.3g})", field="prune_ratio", value=prune_ratio)
    with torch.no_grad():
        for layer in layers:
            attn = layer.self_attn
            o = attn.o_proj.weight.detach().float()  # [hidden, heads*head_dim]
            q = attn.q_proj.weight.detach().float()
            per_head = o.reshape(o.shape[0], heads, head_dim).norm(dim=(0, 2)) * q.reshape(heads, head_dim, -1).norm(dim=(1, 2))
            per_group = per_head.reshape(kv, group).sum(1)
            groups = per_group.topk(keep_groups).indices.sort().values
            q_heads = (groups[:, None] * group + torch.arange(group)).flatten()
            q_idx = (q_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
            kv_idx = (groups[:, None] * head_dim + torch.arange(head_dim)).flatten()
            _keep_rows(attn.q_proj, q_idx)
            _keep_rows(attn.k_proj, kv_idx)
            _keep_rows(attn.v_proj, kv_idx)
            _keep_cols(attn.o_proj, q_idx)
            for name, value in (("num_heads", keep_groups * group), ("num_key_value_heads", keep_groups)):
                if hasattr(attn, name):
                    setattr(attn, name, value)
            if hasattr(attn, "config"):
                attn.config = cfg
    cfg.head_dim = head_dim
    cfg.num_attention_heads = keep_groups * group
    cfg.num_key_value_heads = keep_groups
    return {"type": "head", "heads": [heads, keep_groups * group], "kv_heads": [kv, keep_groups]}


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
        model: a Llama / Mistral / Qwen2 causal LM (``neuron``, ``head``), or a ``torch.nn.Sequential``
            convolutional model (``channel`` / ``filter``).
        prune_ratio: the share of units to remove, in (0, 1).
        prune_type: ``neuron`` (MLP intermediate channels), ``head`` (attention heads, whole KV groups),
            ``channel`` / ``filter`` (convolution filters and the matching input channels).
        kwargs: ``multiple`` (neuron counts rounded to it), ``data_loader`` (activation-aware neuron
            scores), ``norm`` (filters: 1 or 2).

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
    else:
        info = prune_filters(model, prune_ratio, **kwargs)
    after = sum(p.numel() for p in model.parameters())
    info |= {"params_before": before, "params_after": after}
    log.info("structured %s pruning: %s -> %s parameters", prune_type, f"{before:,}", f"{after:,}")
    return info
