"""Unstructured pruning: magnitude, first-order Taylor and Wanda scores, turned into masks by
``torch.nn.utils.prune`` and made permanent (plain zeros in a plain state dict, so ``from_pretrained``
still loads the model).

The prunable weights are the ``Linear`` layers inside the model's blocks and the stacked expert weights of
mixture-of-experts blocks (3-D parameters in transformers 5): embeddings, the LM head, routers and normalisation
layers are left dense, as in the Wanda and SparseGPT papers. ``sparsity_report`` counts
what was actually reached, per layer and overall.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aptops.core.config import check_choice, check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError

log = logging.getLogger(__name__)
torch = require("torch", extra="prune", feature="pruning")
prune = require("torch.nn.utils.prune", extra="prune", feature="pruning")


class ExpertWeights:
    """A mixture-of-experts block's stacked expert weights (transformers 5 keeps them as one 3-D parameter,
    ``experts.gate_up_proj`` / ``experts.down_proj`` of shape ``(experts, out, in)``, not as ``Linear`` layers),
    seen as a prunable layer: ``weight`` is the parameter, ``module`` / ``attr`` where it lives."""

    def __init__(self, module: Any, attr: str) -> None:
        self.module, self.attr = module, attr

    @property
    def weight(self) -> Any:
        return getattr(self.module, self.attr)


def _target(layer: Any) -> tuple[Any, str]:
    """The ``(module, parameter name)`` torch's pruning utilities work on."""
    return (layer.module, layer.attr) if isinstance(layer, ExpertWeights) else (layer, "weight")


def prunable_layers(model: Any) -> dict[str, Any]:
    """``{name: layer}`` for every Linear except the output head and embeddings, and every stack of expert
    weights of a mixture-of-experts block (an :class:`ExpertWeights`; the router stays dense)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers: dict[str, Any] = {}
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and m is not head and "lm_head" not in n:
            layers[n] = m
        elif "expert" in type(m).__name__.lower() or n.rsplit(".", 1)[-1] == "experts":
            for attr, param in m.named_parameters(recurse=False):
                if param.dim() == 3:
                    layers[f"{n}.{attr}"] = ExpertWeights(m, attr)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear layer to prune", field="model")
    return layers


def check_sparsity(sparsity: float, field: str = "sparsity") -> None:
    check_range(field, sparsity, min_value=0.0, max_value=1.0, min_inclusive=False, max_inclusive=False)


def sparsity_report(model: Any, layers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Zeros per prunable layer and overall: ``{"layers": {name: sparsity}, "sparsity", "zeros", "weights"}``."""
    layers = layers or prunable_layers(model)
    per = {}
    zeros = total = 0
    for name, m in layers.items():
        z = int((m.weight == 0).sum())
        per[name] = z / m.weight.numel()
        zeros += z
        total += m.weight.numel()
    return {"layers": per, "sparsity": zeros / total if total else 0.0, "zeros": zeros, "weights": total}


def _apply(layers: Mapping[str, Any], sparsity: float, granularity: str, scores: Mapping[str, Any] | None) -> None:
    params = [_target(m) for m in layers.values()]
    importance = {_target(m): scores[n] for n, m in layers.items()} if scores is not None else None
    with torch.no_grad():
        if granularity == "global":
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, importance_scores=importance,
                                      amount=sparsity)
        else:
            for name, m in layers.items():
                prune.l1_unstructured(*_target(m), amount=sparsity,
                                      importance_scores=None if scores is None else scores[name])
        for module, attr in params:
            prune.remove(module, attr)  # permanent: the zeros are in the plain weight now


def magnitude_pruning(model: Any, sparsity: float, granularity: str = "global", *, norm: str = "l1",
                      layers: Iterable[str] | None = None) -> dict[str, Any]:
    """Zero the smallest weights.

    Args:
        model: any ``torch.nn.Module``.
        sparsity: the share of prunable weights to zero, in (0, 1).
        granularity: ``global`` (one threshold over all layers: layers differ in sparsity), ``layer`` (each
            layer to ``sparsity``), or ``neuron`` (whole output rows of each layer, ranked by their ``norm``).
        norm: ``l1`` or ``l2``, for ranking rows with ``granularity="neuron"``.
        layers: restrict to these prunable layer names.

    Returns:
        :func:`sparsity_report` of the model after pruning.
    """
    check_sparsity(sparsity)
    check_choice("granularity", granularity, ("global", "layer", "neuron"))
    check_choice("norm", norm, ("l1", "l2"))
    chosen = _select(model, layers)
    if granularity == "neuron":
        with torch.no_grad():
            for m in chosen.values():
                if isinstance(m, ExpertWeights):  # each expert's own output rows, ranked within that expert
                    w = m.weight
                    rank = w.detach().float().norm(p=1 if norm == "l1" else 2, dim=-1)  # (experts, out)
                    k = round(w.shape[1] * sparsity)
                    mask = torch.ones_like(w, dtype=torch.bool)
                    if k:
                        drop = rank.topk(k, dim=1, largest=False).indices
                        mask.scatter_(1, drop.unsqueeze(-1).expand(-1, -1, w.shape[2]), False)
                    w.mul_(mask.to(w.dtype))
                    continue
                prune.ln_structured(m, "weight", amount=sparsity, n=1 if norm == "l1" else 2, dim=0)
                prune.remove(m, "weight")
    else:
        _apply(chosen, sparsity, granularity, None)
    return sparsity_report(model, chosen)


def _select(model: Any, layers: Iterable[str] | None) -> dict[str, Any]:
    available = prunable_layers(model)
    if layers is None:
        return available
    names = list(layers)
    missing = [n for n in names if n not in available]
    if missing:
        raise ConfigError(f"layers {missing} are not prunable Linear layers of this model; they look like "
                          f"{list(available)[:4]}", field="layers")
    return {n: available[n] for n in names}


def _device_batch(model: Any, batch: Any) -> Any:
    device = next(model.parameters()).device
    if isinstance(batch, Mapping):
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    return batch


def taylor_scores(model: Any, data_loader: Iterable[Any], *, max_batches: int | None = None,
                  layers: Iterable[str] | None = None) -> dict[str, Any]:
    """First-order Taylor importance ``|w · ∂L/∂w|`` summed over batches (dict batches with ``labels``)."""
    chosen = _select(model, layers)
    scores = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in chosen.items()}
    was_training = model.training
    model.eval()  # no dropout: the scores are about the weights, not the noise
    seen = 0
    for batch in itertools.islice(data_loader, max_batches):
        model.zero_grad(set_to_none=True)
        out = model(**_device_batch(model, batch))
        if getattr(out, "loss", None) is None:
            raise ConfigError("Taylor scores need a loss: give batches with labels", field="data_loader")
        out.loss.backward()
        with torch.no_grad():
            for n, m in chosen.items():
                if m.weight.grad is not None:
                    scores[n] += (m.weight.detach() * m.weight.grad).abs().float()
        seen += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if not seen:
        raise ConfigError("the data loader yields no batch: Taylor scores need data", field="data_loader")
    return scores


def taylor_pruning(model: Any, data_loader: Iterable[Any], sparsity: float, *, granularity: str = "global",
                   max_batches: int | None = None) -> dict[str, Any]:
    """Zero the weights whose removal changes the loss least to first order (``|w·g|`` over batches)."""
    check_sparsity(sparsity)
    check_choice("granularity", granularity, ("global", "layer"))
    chosen = _select(model, None)
    scores = taylor_scores(model, data_loader, max_batches=max_batches)
    _apply(chosen, sparsity, granularity, scores)
    return sparsity_report(model, chosen)


def activation_norms(model: Any, data_loader: Iterable[Any], *, max_batches: int | None = None,
                     layers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``‖X_j‖₂`` per input feature of every prunable layer, over all calibration tokens."""
    chosen = dict(layers or prunable_layers(model))
    sums = {n: torch.zeros(m.in_features, dtype=torch.float32, device=m.weight.device) for n, m in chosen.items()}

    def hook(name: str) -> Any:
        def fn(module: Any, inputs: Any, output: Any) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[name] += (x * x).sum(0)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in chosen.items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for batch in itertools.islice(data_loader, max_batches):
                b = _device_batch(model, batch)
                model(**{k: v for k, v in b.items() if k != "labels"}) if isinstance(b, Mapping) else model(b)
                seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ConfigError("the calibration data yields no batch", field="data_loader")
    return {n: s.sqrt() for n, s in sums.items()}


def expert_activation_norms(model: Any, data_loader: Iterable[Any], experts: Mapping[str, ExpertWeights], *,
                            max_batches: int | None = None) -> dict[str, Any]:
    """``‖X_j‖₂`` per input feature of each expert's own weights, over the calibration tokens routed to it: the hidden
    states for ``gate_up_proj``, the gated activations for ``down_proj`` (a hook on each experts module sees the tokens
    and the router's choices it is called with). Returns ``{name: (experts, inputs)}``."""
    modules = {id(layer.module): layer.module for layer in experts.values()}
    for module in modules.values():
        if getattr(module, "is_transposed", False) or not getattr(module, "has_gate", True):
            raise ConfigError(f"{type(module).__name__} stores its experts transposed or without a gate, which Wanda's "
                              "routed input norms do not read: use method=magnitude or taylor", field="method")
    sums: dict[int, tuple[Any, Any]] = {}

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        x_all = hidden.detach().float().reshape(-1, hidden.shape[-1])
        gate_up = module.gate_up_proj.detach().float()
        inp, mid = sums.setdefault(id(module), (torch.zeros(gate_up.shape[0], gate_up.shape[2]),
                                                torch.zeros(gate_up.shape[0], gate_up.shape[1] // 2)))
        for e in range(gate_up.shape[0]):
            x = x_all[(index.reshape(x_all.shape[0], -1) == e).any(-1)]
            if not len(x):
                continue
            gate, up = (x @ gate_up[e].T).chunk(2, dim=-1)
            inp[e] += (x * x).sum(0).cpu()
            mid[e] += (module.act_fn(gate) * up).pow(2).sum(0).cpu()

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules.values()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in itertools.islice(data_loader, max_batches):
                b = _device_batch(model, batch)
                model(**{k: v for k, v in b.items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, layer in experts.items():
        inp, mid = sums.get(id(layer.module), (None, None))
        if inp is None:
            raise ConfigError(f"{name}: the calibration data reached no expert of this block", field="data_loader")
        out[name] = (inp if layer.attr == "gate_up_proj" else mid).sqrt().to(layer.weight.device)
    return out


def wanda_pruning(model: Any, data_loader: Iterable[Any], sparsity: float = 0.5, *, n_m: tuple[int, int] | None = None,
                  max_batches: int | None = 16) -> dict[str, Any]:
    """Wanda (Sun et al. 2023): score ``|W_ij| · ‖X_j‖``, prune the lowest ``sparsity`` of each output row,
    or, with ``n_m=(2, 4)``, keep the best N of every M consecutive weights of a row (2:4 sparsity). A mixture of
    experts' own weights are scored by the norms of the tokens routed to each expert (:func:`expert_activation_norms`),
    each expert's rows pruned like a Linear layer's."""
    chosen = _select(model, None)
    experts = {name: layer for name, layer in chosen.items() if isinstance(layer, ExpertWeights)}
    if n_m is not None:
        n, m = n_m
        if not (0 < n < m):
            raise ConfigError(f"n_m={n_m}: keep N of every M weights with 0 < N < M, e.g. (2, 4)", field="n_m")
    else:
        check_sparsity(sparsity)
    data = list(itertools.islice(data_loader, max_batches))  # read twice when the model has experts
    linear = {n: m for n, m in chosen.items() if n not in experts}
    norms = activation_norms(model, data, layers=linear) if linear else {}
    if experts:
        norms |= expert_activation_norms(model, data, experts)
    with torch.no_grad():
        for name, layer in chosen.items():
            w = layer.weight
            if name in experts:  # (experts, out, in): every expert's rows, scored by its own routed inputs
                score = (w.detach().abs().float() * norms[name].unsqueeze(1)).reshape(-1, w.shape[2])
                w = w.view(-1, w.shape[2])
            else:
                score = w.detach().abs().float() * norms[name].unsqueeze(0)
            mask = torch.ones_like(w, dtype=torch.bool)
            if n_m is not None:
                n, m = n_m
                if w.shape[1] % m:
                    raise ConfigError(f"{name} has {w.shape[1]} inputs, not a multiple of M={m}", field="n_m")
                groups = score.reshape(w.shape[0], -1, m)
                drop = groups.topk(m - n, dim=-1, largest=False).indices
                mask = mask.reshape(w.shape[0], -1, m).scatter(-1, drop, False).reshape(w.shape)
            else:
                k = int(w.shape[1] * sparsity)
                if k:
                    drop = score.topk(k, dim=1, largest=False).indices
                    mask.scatter_(1, drop, False)
            w.mul_(mask.to(w.dtype))
    return sparsity_report(model, chosen)


def weight_masks(model: Any) -> dict[str, Any]:
    """The current zero pattern of every prunable layer (``True`` = kept)."""
    return {n: m.weight.detach() != 0 for n, m in prunable_layers(model).items()}


def apply_masks(model: Any, masks: Mapping[str, Any]) -> None:
    """Zero the masked weights in place."""
    layers = prunable_layers(model)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask.to(layers[name].weight.dtype))


#: What :func:`saved_sparsity` leaves out of the count: not pruned by any method, so counting them would dilute it.
NOT_COUNTED = "embeddings, the output head, norms, biases and MoE routers"


def _kind(name: str) -> str | None:
    """``attention``, ``mlp`` or ``experts`` for a prunable weight's saved name, ``None`` for what is not counted."""
    if (not name.endswith("weight") and not name.endswith(("gate_up_proj", "down_proj"))) or any(
            k in name for k in ("embed", "lm_head", "norm", "wte", "wpe")):
        return None
    if name.endswith((".gate.weight", "router.layer.weight", "router.weight", "shared_expert_gate.weight")):
        return None  # MoE routers stay dense
    if ".experts." in name or "input_linear" in name or "output_linear" in name:
        return "experts"
    if "attn" in name or "attention" in name:
        return "attention"
    return "mlp"


def saved_sparsity(folder: Any) -> dict[str, Any]:
    """The share of zero weights in a saved model folder's safetensors files, overall and per kind (attention, MLP,
    experts), read back from the files themselves; ``not_counted`` says what is left out."""
    from pathlib import Path

    safetensors = require("safetensors", extra="prune", feature="measuring saved sparsity")
    zeros: dict[str, int] = {}
    total: dict[str, int] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safetensors.safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                kind = _kind(name)
                if kind is None:
                    continue
                t = f.get_tensor(name)
                if t.dim() < 2:
                    continue
                zeros[kind] = zeros.get(kind, 0) + int((t == 0).sum())
                total[kind] = total.get(kind, 0) + t.numel()
    everything = sum(total.values())
    return {"sparsity": sum(zeros.values()) / everything if everything else 0.0,
            "kinds": {k: zeros[k] / total[k] for k in sorted(total)}, "weights": everything,
            "not_counted": NOT_COUNTED}
