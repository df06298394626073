"""Forward-hook statistics of activations: distribution, dead units and saturation.

:class:`ActivationMonitor` hooks the chosen modules (by default every activation-function module: ReLU,
GELU, SiLU, sigmoid, tanh, and the ``transformers`` activation classes; a model without any gets its
``Linear`` layers). Per layer it accumulates count, mean, variance, min, max and a histogram; per unit
(the last dimension) the largest magnitude seen and how often the unit sat in its saturated range.
Hooks can be switched off between recorded steps (``enabled = False``) so monitoring costs nothing then.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aptops.core.config import check_range
from aptops.core.deps import require
from aptops.core.errors import ConfigError
from aptops.debug.findings import Finding, select_names

HIST_BINS = 40
# activation kind -> the output range counted as saturated
_KIND_BY_CLASS = {
    "ReLU": "relu", "ReLU6": "relu", "LeakyReLU": "relu", "ReLUSquaredActivation": "relu",
    "Sigmoid": "sigmoid", "Hardsigmoid": "sigmoid", "Tanh": "tanh", "Hardtanh": "tanh",
    "GELU": "smooth", "SiLU": "smooth", "Mish": "smooth", "ELU": "smooth", "SELU": "smooth", "Softplus": "smooth",
    "GELUActivation": "smooth", "NewGELUActivation": "smooth", "FastGELUActivation": "smooth",
    "QuickGELUActivation": "smooth", "SiLUActivation": "smooth", "PytorchGELUTanh": "smooth",
    "GELUTanh": "smooth", "AccurateGELUActivation": "smooth", "MishActivation": "smooth",
}


def activation_kind(module: Any) -> str | None:
    """``relu``, ``sigmoid``, ``tanh`` or ``smooth`` for an activation module, ``None`` otherwise."""
    return _KIND_BY_CLASS.get(type(module).__name__)


@dataclass
class LayerActivations:
    """Accumulated statistics of one hooked module's output."""

    kind: str
    count: int = 0
    sum: float = 0.0
    sumsq: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    hist_range: tuple[float, float] | None = None
    hist: list[float] = field(default_factory=lambda: [0.0] * HIST_BINS)
    unit_absmax: Any = None   # tensor [units]
    unit_saturated: Any = None  # tensor [units]: count of positions in the saturated range
    positions: int = 0  # rows seen per unit

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    @property
    def var(self) -> float:
        return max(self.sumsq / self.count - self.mean ** 2, 0.0) if self.count else math.nan

    @property
    def units(self) -> int:
        return 0 if self.unit_absmax is None else int(self.unit_absmax.numel())

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "mean": self.mean, "var": self.var, "min": self.min,
                "max": self.max, "units": self.units, "hist_range": self.hist_range, "hist": self.hist}


def _saturated(torch: Any, out: Any, kind: str, eps: float) -> Any:
    if kind == "relu":
        return out <= 0
    if kind == "sigmoid":
        return (out < eps) | (out > 1 - eps)
    if kind == "tanh":
        return out.abs() > 1 - eps
    return out.abs() <= eps  # smooth activations saturate only where they are flat at zero


class ActivationMonitor:
    """Hooks modules and accumulates statistics of their outputs.

    Args:
        model: any ``torch.nn.Module``.
        layers: module names, prefixes or globs (default: every activation module, else every Linear).
        saturation_eps: distance from a bound counted as saturated (sigmoid 0/1, tanh ±1).
    """

    def __init__(self, model: Any, layers: Sequence[str] | str | None = None, *, saturation_eps: float = 0.01) -> None:
        torch = require("torch", extra="debug", feature="activation monitoring")
        check_range("saturation_eps", saturation_eps, min_value=0.0, max_value=0.5)
        modules = dict(model.named_modules())
        if layers is None:
            names = [n for n, m in modules.items() if n and activation_kind(m)]
            if not names:
                names = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
            if not names:
                raise ConfigError("the model has neither activation modules nor Linear layers to monitor; "
                                  "name the layers to hook with layers=[...]", field="layers")
        else:
            names = select_names([n for n in modules if n], layers, what="layer")
        self.eps = saturation_eps
        self.enabled = True
        self.stats: dict[str, LayerActivations] = {
            n: LayerActivations(kind=activation_kind(modules[n]) or "linear") for n in names}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if not self.enabled:
                return
            out = output[0] if isinstance(output, tuple | list) else output
            if hasattr(out, "last_hidden_state"):
                out = out.last_hidden_state
            if not hasattr(out, "detach") or not out.is_floating_point():
                return
            self._record(name, out.detach())
        return hook

    def _record(self, name: str, out: Any) -> None:
        torch = require("torch", extra="debug", feature="debugging")
        st = self.stats[name]
        flat = out.float().reshape(-1, out.shape[-1]) if out.dim() > 1 else out.float().reshape(1, -1)
        finite = flat[torch.isfinite(flat)]
        if finite.numel() == 0:
            return
        lo, hi = float(finite.min()), float(finite.max())
        st.count += finite.numel()
        st.sum += float(finite.sum())
        st.sumsq += float((finite * finite).sum())
        st.min, st.max = min(st.min, lo), max(st.max, hi)
        if st.hist_range is None:
            pad = (hi - lo) * 0.05 or 1.0
            st.hist_range = (lo - pad, hi + pad)
        a, b = st.hist_range
        counts = torch.histc(finite.clamp(a, b), bins=HIST_BINS, min=a, max=b).tolist()
        st.hist = [x + y for x, y in zip(st.hist, counts, strict=True)]
        absmax = flat.abs().nan_to_num(0.0).amax(dim=0)
        sat = _saturated(torch, flat, st.kind, self.eps).sum(dim=0).float()
        if st.unit_absmax is None or st.unit_absmax.shape != absmax.shape:
            st.unit_absmax, st.unit_saturated, st.positions = absmax, sat, 0
        else:
            st.unit_absmax = torch.maximum(st.unit_absmax, absmax)
            st.unit_saturated = st.unit_saturated + sat
        st.positions += flat.shape[0]

    def reset(self) -> None:
        for name, st in self.stats.items():
            self.stats[name] = LayerActivations(kind=st.kind)

    def remove(self) -> None:
        """Remove every hook (the model runs as if never monitored)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> ActivationMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def summary(self) -> dict[str, dict[str, Any]]:
        return {n: s.summary() for n, s in self.stats.items()}


def run_model(model: Any, batch: Any) -> Any:
    """Call ``model`` on a batch the way data loaders hand it: a mapping, a tuple (inputs first) or a tensor."""
    device = next((p.device for p in model.parameters()), None)

    def move(x: Any) -> Any:
        return x.to(device) if device is not None and hasattr(x, "to") else x

    if isinstance(batch, Mapping):
        return model(**{k: move(v) for k, v in batch.items()})
    if isinstance(batch, tuple | list):
        return model(move(batch[0]))
    return model(move(batch))


def monitor_activations(model: Any, data_loader: Iterable[Any], layers: Sequence[str] | str | None = None, *,
                        max_batches: int | None = None, saturation_eps: float = 0.01) -> dict[str, LayerActivations]:
    """Run ``data_loader`` through ``model`` (no gradients) and return per-layer activation statistics."""
    torch = require("torch", extra="debug", feature="activation monitoring")
    was_training = model.training
    model.eval()
    monitor = ActivationMonitor(model, layers, saturation_eps=saturation_eps)
    try:
        with torch.no_grad():
            for batch in itertools.islice(data_loader, max_batches):
                run_model(model, batch)
    finally:
        monitor.remove()
        model.train(was_training)
    return monitor.stats


def _stats(activations: Any) -> Mapping[str, LayerActivations]:
    return activations.stats if isinstance(activations, ActivationMonitor) else activations


def detect_dead_neurons(activations: Any, threshold: float = 1e-6, *, min_ratio: float = 0.05) -> dict[str, Any]:
    """Units whose output never exceeded ``threshold`` in magnitude over everything observed.

    Args:
        activations: an :class:`ActivationMonitor` or the mapping :func:`monitor_activations` returns.
        threshold: the largest magnitude still counted as "never active".
        min_ratio: a layer with at least this share of dead units becomes a finding.

    Returns:
        ``{"layers": {name: {"dead_ratio", "dead_units", "units", "candidates"}}, "findings": [...],
        "dead_ratio": overall share}``; ``candidates`` are the unit indices a structured pruner can drop.
    """
    check_range("threshold", threshold, min_value=0.0)
    layers: dict[str, Any] = {}
    findings: list[Finding] = []
    dead_total = units_total = 0
    for name, st in _stats(activations).items():
        if st.unit_absmax is None:
            continue
        dead = (st.unit_absmax <= threshold).nonzero().flatten().tolist()
        ratio = len(dead) / max(st.units, 1)
        layers[name] = {"dead_ratio": ratio, "dead_units": len(dead), "units": st.units, "candidates": dead}
        dead_total += len(dead)
        units_total += st.units
        if dead and ratio >= min_ratio:
            findings.append(Finding(
                "dead_neurons", "warning" if ratio < 0.5 else "critical",
                f"{len(dead)} of {st.units} units of {name} ({ratio:.0%}) never activated over {st.positions} inputs",
                "lower the learning rate, use LeakyReLU/GELU instead of ReLU, or check the initialisation; "
                "the dead units can be pruned (structured pruning, type 'neuron')", where=name, value=ratio))
    return {"layers": layers, "findings": findings, "dead_ratio": dead_total / units_total if units_total else 0.0}


def detect_saturated_neurons(activations: Any, saturation_threshold: float = 0.95, *,
                             min_ratio: float = 0.05) -> dict[str, Any]:
    """Units that sit in their saturated range (ReLU at 0, sigmoid near 0/1, tanh near ±1) most of the time.

    Args:
        activations: an :class:`ActivationMonitor` or the mapping :func:`monitor_activations` returns.
        saturation_threshold: the share of inputs a unit must spend saturated to count.
        min_ratio: a layer with at least this share of saturated units becomes a finding.
    """
    check_range("saturation_threshold", saturation_threshold, min_value=0.0, max_value=1.0, min_inclusive=False)
    layers: dict[str, Any] = {}
    findings: list[Finding] = []
    for name, st in _stats(activations).items():
        if st.unit_saturated is None or st.kind not in ("relu", "sigmoid", "tanh") or not st.positions:
            continue
        share = st.unit_saturated / st.positions
        units = (share >= saturation_threshold).nonzero().flatten().tolist()
        ratio = len(units) / max(st.units, 1)
        layers[name] = {"kind": st.kind, "saturated_ratio": ratio, "saturated_units": len(units),
                        "mean_saturation": float(share.mean())}
        if units and ratio >= min_ratio:
            fix = {"relu": "use LeakyReLU/GELU or lower the learning rate",
                   "sigmoid": "normalise the inputs (LayerNorm) or rescale the initialisation",
                   "tanh": "normalise the inputs (LayerNorm) or rescale the initialisation"}[st.kind]
            findings.append(Finding(
                "saturated_neurons", "warning",
                f"{len(units)} of {st.units} {st.kind} units of {name} ({ratio:.0%}) are saturated on at least "
                f"{saturation_threshold:.0%} of inputs: their gradients are near zero", fix, where=name, value=ratio))
    return {"layers": layers, "findings": findings}
